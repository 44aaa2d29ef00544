"""Shared test fixtures: tiny random models with the real SmolLM2 tokenizer, and the real engine.

The tiny models have the same architectures as the embedded model (Llama) and as a second
family (Qwen2), with a few layers and narrow widths, saved as ordinary Hugging Face folders in
a session temporary folder. They use the real SmolLM2 tokenizer (vocabulary 49152, chat
template), copied from the converted embedded model, so every prompt-handling path is real.

Environment: nothing may be downloaded, so ``HF_HUB_OFFLINE=1`` is set before anything imports
``transformers``; internalization runs in float32 (``D2L_AUTOCAST=off``). The converted embedded
model is cached once per machine: an existing
``D2L_HAYSTACK_CACHE`` is respected (repeated runs do not reconvert), otherwise the package's
default cache folder (``$XDG_CACHE_HOME/d2l-haystack`` or ``~/.cache/d2l-haystack``) is pinned
for the session, so a fresh clone on the same machine (CI) reuses the conversion.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# internalization in float32 (the engine's default is bf16 autocast on a CPU with AMX): tests compare
# an engine's adapters and keys with values computed another way; tests/core/test_precision.py
# covers the bf16 path
os.environ["D2L_AUTOCAST"] = "off"

from d2l_haystack.core.models import cache_dir  # noqa: E402  (after the environment is set)

os.environ.setdefault("D2L_HAYSTACK_CACHE", str(cache_dir()))

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

EMBEDDED = "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")

TINY_COMMON = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted embedded model folder (converted once per machine, ~25 s)."""
    from d2l_haystack.core.models import resolve_model

    return Path(resolve_model(EMBEDDED))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A folder with only the real SmolLM2 tokenizer files."""
    folder = tmp_path_factory.mktemp("tokenizer")
    for name in TOKENIZER_FILES:
        src = embedded_model_dir / name
        if src.is_file():
            shutil.copy(src, folder / name)
    return folder


def _save_tiny(kind: str, folder: Path, tokenizer_dir: Path, seed: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY_COMMON))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**TINY_COMMON))
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        src = tokenizer_dir / name
        if src.is_file() and name != "generation_config.json":
            shutil.copy(src, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random LlamaForCausalLM folder named ``tiny-llama`` (4 layers, hidden 64)."""
    return _save_tiny("llama", tmp_path_factory.mktemp("models") / "tiny-llama", tokenizer_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random Qwen2ForCausalLM folder named ``tiny-qwen2`` (4 layers, hidden 64)."""
    return _save_tiny("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen2", tokenizer_dir, seed=2)


@pytest.fixture(scope="session")
def tiny_engine(tiny_llama_dir: Path):
    """An engine over the tiny Llama with an untrained (zero-output) early-exit hypernetwork."""
    from d2l_haystack.core import D2LEngine

    return D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64)


def randomize_outputs(engine, seed: int = 0, scale: float = 0.05) -> None:
    """Make an untrained hypernetwork produce non-zero adapters (random B scalars and bias B)."""
    gen = torch.Generator().manual_seed(seed)
    h = engine.hypernet
    with torch.no_grad():
        h.scale_B.copy_(torch.randn(h.scale_B.shape, generator=gen) * scale)
        for p in h.bias_B:
            p.copy_(torch.randn(p.shape, generator=gen) * scale * 0.1)


@pytest.fixture(scope="session")
def nonzero_engine(tiny_llama_dir: Path):
    """An engine over the tiny Llama whose hypernetwork produces non-zero adapters."""
    from d2l_haystack.core import D2LEngine

    engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, seed=3)
    randomize_outputs(engine, seed=3)
    return engine


INTEGRATION_FIXTURES = {"real_engine"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test using the real embedded engine is marked ``integration`` (``-m "not integration"``),
    and the tests marked ``requires_squad`` are skipped when the evaluation data is not beside the
    clone."""
    from d2l_haystack.training import data as D

    no_squad = None if D.has_squad() else pytest.mark.skip(
        reason=f"evaluation data not available (D2L_EVALDATA; {D.SQUAD_FILE} not found)")
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if no_squad is not None and item.get_closest_marker("requires_squad"):
            item.add_marker(no_squad)


@pytest.fixture(scope="session")
def real_engine(embedded_model_dir: Path):
    """The embedded SmolLM2-135M engine with its default checkpoint (its tests are marked ``integration``)."""
    from d2l_haystack.core import get_engine

    return get_engine(EMBEDDED, device="cpu")


@pytest.fixture(scope="session")
def sample_text() -> str:
    return (
        "The Marlow lighthouse was built in 1873 by the engineer Ada Finch. It stands 41 metres "
        "tall on the northern cliff and its lamp can be seen from 30 kilometres away. The keeper, "
        "Tomas Reed, lives in the cottage beside it with two cats named Pepper and Salt."
    )


def make_long_text(words: int = 600) -> str:
    """Deterministic natural-looking text of about ``words`` words."""
    base = ("The river town kept careful records of every harvest, flood and festival. "
            "Each spring the council met in the stone hall to read the ledgers aloud. ")
    out = []
    i = 0
    while sum(len(s.split()) for s in out) < words:
        out.append(base + f"Entry number {i} noted {i * 7 % 13} barrels and {i * 3 % 11} carts. ")
        i += 1
    return "".join(out)


@pytest.fixture(scope="session")
def long_text():
    """``long_text(words)``: deterministic natural-looking text of about ``words`` words."""
    return make_long_text


@pytest.fixture
def count_internalize(monkeypatch: pytest.MonkeyPatch):
    """``count_internalize(engine) -> calls``: record the text of every ``engine.internalize`` call."""

    def attach(engine) -> list[str]:
        calls: list[str] = []
        original = engine.internalize

        def counting(text, **kw):
            calls.append(text)
            return original(text, **kw)

        monkeypatch.setattr(engine, "internalize", counting)
        return calls

    return attach


def _magic_number_document(engine, sentences: int, at: int) -> tuple[str, int]:
    """Synthetic filler with "The special magic number is 51370." inserted before sentence ``at``.

    :returns: ``(document, index of the chunk of engine holding the number)``.
    """
    import numpy as np

    from d2l_haystack.core.prompts import chunk_token_ids
    from d2l_haystack.training.data import synthetic_sentence

    rng = np.random.default_rng(0)
    parts = [synthetic_sentence(rng) for _ in range(sentences)]
    parts.insert(at, "The special magic number is 51370.")
    document = " ".join(parts)
    chunks = chunk_token_ids(engine.format.document_ids(document), engine.chunk_tokens)
    return document, next(i for i, c in enumerate(chunks) if "51370" in engine.tokenizer.decode(c))


@pytest.fixture(scope="session")
def magic_number_document():
    """``magic_number_document(engine, sentences, at) -> (document, needle chunk index)``."""
    return _magic_number_document


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL 16 with pgvector (the ``pgserver`` wheel the project installs), started on a
    Unix socket in a session folder and stopped at the end of the session."""
    from d2l_haystack.kb.postgres import start_local_server, stop_local_server

    data = tmp_path_factory.mktemp("postgres")
    url = start_local_server(data)
    yield url
    stop_local_server(data)
