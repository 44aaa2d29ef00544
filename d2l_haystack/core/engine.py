"""The D2L engine: ``internalize(text) -> Adapter`` and ``generate(question, adapters)``.

One :class:`D2LEngine` holds one loaded base model (shared through the process-level model
cache), a hypernetwork, the context encoder and the LoRA hooks.

Usage example::

    from d2l_haystack.core import D2LEngine

    engine = D2LEngine()                      # embedded SmolLM2-135M + shipped checkpoint
    adapter = engine.internalize(open("manual.txt").read())
    print(engine.generate("What is the warranty period?", adapters=adapter).text)

Adapters carry chunk keys (:mod:`d2l_haystack.core.keys`): per question the engine applies only
the chunks the question is about, and no adapter at all when no chunk reaches ``min_relevance``
(the base model then answers as if nothing was internalized). ``max_chunks=0`` applies every
chunk unconditionally (the hypernetwork alone).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .adapter import ADAPTER_KINDS, Adapter, compose
from .encoder import ContextEncoder, decoder_of, run_until
from .errors import AdapterError, CheckpointError, InputError, ModelNotFoundError
from .hypernet import HypernetConfig, Hypernetwork, config_for_model, load_checkpoint, read_checkpoint_id
from .keys import DEFAULT_KEY_MODEL, KEY_SCHEME, KeyEncoder, get_key_encoder
from .lora import Factors, RowUse, ValueEnds, document_factors, encode_chunks, get_hooks
from .memory import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MODULE,
    DEFAULT_OVERRIDE,
    DEFAULT_YIELD_ABOVE,
    OverrideRule,
    ReadingMemory,
    memory_digest,
)
from .models import DEFAULT_DTYPE, DEFAULT_MODEL, LoadedModel, cache_dir, get_model, model_label
from .prompts import ChatFormat, chunk_text_ids
from .rowcache import MadeRows, chunk_key
from .textio import CHUNKINGS, DEFAULT_CHUNKING, content_hash, validate_text

SEGMENT_TOKENS = 48
"""The longest memory segment (:meth:`D2LEngine._memory_segments`): text without sentence ends is
cut every this many tokens."""
_SEGMENT_END = re.compile(r"[.!?][\"')\]]*\s*$|\n")
logger = logging.getLogger(__name__)
# under bf16 autocast an RMSNorm sees bf16 input with float32 weight and takes the unfused path:
# correct, and said once per process by torch; not something a user can act on
warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"

DEFAULT_MAX_CHUNKS = 8
"""Chunks applied per question by default (the most chunks per document seen in meta-training)."""

DEFAULT_MIN_RELEVANCE = 0.35
"""Best chunk-key similarity below which a question gets no adapter. Chosen on training-side data
with the keys of :data:`~d2l_haystack.core.keys.KEY_SCHEME`: first 0.4 on training filler with
facts, SQuAD training paragraphs and the training pool of unrelated questions (99.4 % of related
questions kept, 97.7 % of unrelated ones gated); then 0.35 with generated everyday documents
(``benchmarks/gate_calibration.py``: related kept 0.947 -> 0.972, unrelated gated 0.995 -> 0.990),
confirmed held out (docs/training.md, "The relevance gate at 0.35")."""

DEFAULT_RELEVANCE_MARGIN = 0.1
"""Chunks within this similarity of the best chunk are applied with it (up to ``max_chunks``)."""
ENGINE_SETTING: Any = object()
"""Sentinel of a per-call argument left to the engine's own setting."""

AUTOCASTS = ("auto", "bf16", "off")
DEFAULT_AUTOCAST = "auto"
"""Precision of internalization (encoder, hypernetwork, chunk keys; answering is never affected):
``auto`` runs it under bf16 autocast where bf16 matrix products are fast (a CUDA GPU with bf16, a
CPU with AMX tiles) and in float32 elsewhere; ``bf16`` always; ``off`` never. The environment
variable ``D2L_AUTOCAST`` overrides this default. Measured in ``benchmarks/bench_core.py``."""


def resolve_autocast(mode: str | None, device: str, dtype: str = DEFAULT_DTYPE) -> bool:
    """Whether internalization runs under bf16 autocast (:data:`DEFAULT_AUTOCAST`).

    :raises ValueError: an unknown mode.
    """
    mode = mode or os.environ.get("D2L_AUTOCAST") or DEFAULT_AUTOCAST
    if mode not in AUTOCASTS:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCASTS)}, got {mode!r}")
    if mode == "off" or dtype not in ("float32", "fp32"):
        return False
    if mode == "bf16":
        return True
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":  # AMX tiles: a bf16 matrix product ~10x the float32 one on the same cores
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def default_checkpoint(model_label: str, kind: str = "document") -> Path | None:
    """The checkpoint shipped with the package for ``model_label`` and adapter ``kind``, if any
    (instructions: ``<model>-instructions``)."""
    folder = CHECKPOINTS_DIR / (model_label if kind == "document" else f"{model_label}-{kind}")
    return folder if (folder / "config.json").is_file() else None


def _with_memory(checkpoint_id: str, digest: str | None) -> str:
    """The id of a hypernetwork checkpoint combined with its reading memory's digest."""
    return hashlib.sha256(f"{checkpoint_id}:{digest}".encode()).hexdigest()[:12]


def checkpoint_folder(model: str, checkpoint: str | None = "default") -> Path | None:
    """The folder of the document checkpoint ``checkpoint`` names for ``model`` (``"default"``:
    the shipped one, ``None`` where there is none or it is untrained)."""
    return default_checkpoint(model_label(model)) if checkpoint == "default" else (
        Path(checkpoint) if checkpoint is not None else None)


def checkpoint_id_of(model: str, checkpoint: str | None = "default", reading_memory: bool = True) -> str | None:
    """The checkpoint id that an engine with these settings gives its document adapters, read from
    the checkpoint's files without loading a model (a workspace tells adapters of an older
    checkpoint by it, e.g. after the package's shipped one was upgraded). ``None``: an untrained
    hypernetwork (its id depends on the engine's seed).

    :raises CheckpointError: the checkpoint's files are missing or damaged.
    """
    path = checkpoint_folder(model, checkpoint)
    if path is None:
        return None
    cid = read_checkpoint_id(path)
    digest = memory_digest(path) if reading_memory else None
    return _with_memory(cid, digest) if digest is not None else cid


@dataclass
class _Reader:
    """One hypernetwork with its context encoder (the engine has one per adapter kind)."""

    hypernet: Hypernetwork
    encoder: ContextEncoder
    checkpoint_id: str
    checkpoint_path: str | None

    @property
    def config(self) -> HypernetConfig:
        return self.hypernet.config


@dataclass
class GenerationResult:
    """A generated reply with its timing."""

    text: str
    num_tokens: int
    seconds: float
    time_to_first_token: float
    prompt_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReaderAnswers:
    """Both readers' greedy answers to one question (:meth:`D2LEngine.both_readers`).

    ``adapter`` is the answer of the selected adapters alone, ``memory`` the answer with their
    reading-memory rows. ``adapter_confidence`` is the probability the adapters alone give the
    answer's first token (the yield test compares it with ``yield_above``). The three mean token
    log-probabilities are what :class:`~d2l_haystack.core.memory.OverrideRule` judges: ``own``
    (the memory's answer under the memory), ``memory_on_adapter`` (the adapter's answer under the
    memory) and ``adapter_on_memory`` (the memory's answer under the adapters alone); ``None``
    where the answers are the same and nothing was scored. ``meta`` is the chunk selection's
    (:meth:`D2LEngine.select_chunks`).
    """

    adapter: str
    memory: str
    adapter_confidence: float
    own: float | None
    memory_on_adapter: float | None
    adapter_on_memory: float | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        """Whether both readers gave the same answer."""
        return self.adapter == self.memory


def _without_rows(factors: Factors) -> Factors:
    """``factors`` without the reading-memory rows (their ``"module@layer"`` keys): the adapters alone."""
    return {m: f for m, f in factors.items() if "@" not in m}


class _CallbackStreamer:
    """A ``transformers`` streamer calling ``callback(text_delta)`` and timing the first token."""

    def __init__(self, tokenizer: Any, callback: Callable[[str], None] | None, start: float) -> None:
        self.tokenizer, self.callback, self.start = tokenizer, callback, start
        self.tokens: list[int] = []
        self.first_token_at: float | None = None
        self._printed = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter() - self.start
        self.tokens.extend(value.reshape(-1).tolist())
        self._emit(final=False)

    def _emit(self, final: bool) -> None:
        """Send the new text; an incomplete UTF-8 sequence waits for more tokens, unless ``final``."""
        if self.callback is not None:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            if len(text) > self._printed and (final or not text.endswith("\ufffd")):
                self.callback(text[self._printed:])
                self._printed = len(text)

    def end(self) -> None:
        self._emit(final=True)


class D2LEngine:
    """Internalize documents into LoRA adapters and answer questions with them.

    :param model: embedded model name, local folder or hub id.
    :param checkpoint: ``"default"`` (the shipped checkpoint for this model, else untrained),
        a checkpoint folder, or ``None`` for an untrained hypernetwork.
    :param device: ``cpu``/``cuda``; defaults to CUDA when available.
    :param dtype: base model dtype.
    :param chunk_tokens: tokens per chunk (default: the checkpoint's).
    :param chunking: ``"tokens"`` (default): chunks of ``chunk_tokens`` tokens; ``"sentences"``: one
        chunk per sentence (:func:`~d2l_haystack.core.textio.split_text_sentences`), so the chunk
        keys choose the sentences a question is about. Measured on 390 SQuAD validation questions
        with the shipped checkpoint: F1 0.067 -> 0.103 (base 0.044); each chunk's factors cost the
        same, so an adapter holds as many chunks as the document has sentences (model card);
        ``"auto"``: sentences for a document of at most ``chunk_tokens`` tokens, else tokens.
    :param hypernet_widths: widths for an untrained hypernetwork (ignored with a checkpoint).
    :param max_chunks: most chunks applied per question (:meth:`select_chunks`); 0 applies every
        chunk of every adapter, without selection or relevance gate.
    :param keys: sentence-embedding model for chunk keys (default: the packaged MiniLM); ``None``
        internalizes without keys (chunks are then ranked by their response to the question).
    :param min_relevance: a question whose best chunk-key similarity is below this gets no
        adapter; ``None`` never gates.
    :param relevance_margin: chunks within this similarity of the best one are applied with it.
    :param autocast: precision of internalization, ``auto``/``bf16``/``off``
        (:data:`DEFAULT_AUTOCAST`; ``None``: ``D2L_AUTOCAST`` or the default).
    :param instructions_checkpoint: the hypernetwork of ``kind="instructions"`` adapters
        (:meth:`reader`): ``"default"`` (shipped for the model), a folder, or ``None`` (untrained).
    :param reading_memory: use the checkpoint's reading memory (:mod:`~d2l_haystack.core.memory`),
        if it has one: document adapters then carry one row per token on the memory's layer, made
        by one more pass over the document (through that layer, no further). ``False`` makes the
        adapters of the hypernetwork alone (cheaper to internalize, and they carry the hypernetwork's checkpoint id).
    """

    def __init__(self, model: str = DEFAULT_MODEL, checkpoint: str | None = "default",
                 device: str | None = None, dtype: str = DEFAULT_DTYPE, chunk_tokens: int | None = None,
                 hypernet_widths: dict[str, Any] | None = None, seed: int = 0, chunking: str = DEFAULT_CHUNKING,
                 max_chunks: int = DEFAULT_MAX_CHUNKS, keys: str | None = DEFAULT_KEY_MODEL,
                 min_relevance: float | None = DEFAULT_MIN_RELEVANCE,
                 relevance_margin: float = DEFAULT_RELEVANCE_MARGIN, autocast: str | None = None,
                 instructions_checkpoint: str | None = "default", reading_memory: bool = True) -> None:
        self.loaded: LoadedModel = get_model(model, device=device, dtype=dtype)
        self.model = self.loaded.model
        self.tokenizer = self.loaded.tokenizer
        self.device = self.loaded.device
        self.format = ChatFormat(self.tokenizer)
        label = self.loaded.name
        ckpt_path = default_checkpoint(label) if checkpoint == "default" else checkpoint
        self.hypernet, self.checkpoint_id, self.checkpoint_info = self._load_hypernet(ckpt_path, seed, hypernet_widths)
        #: The hypernetwork's own checkpoint id (``checkpoint_id`` also covers the reading memory).
        self.network_id: str = self.checkpoint_id
        #: The checkpoint's reading memory (:mod:`~d2l_haystack.core.memory`), or ``None``.
        self.memory: ReadingMemory | None = None
        #: Whether the engine was asked for the checkpoint's reading memory (part of its cache key).
        self.reading_memory = bool(reading_memory)
        if ckpt_path is not None and reading_memory:
            self.memory = ReadingMemory.load(ckpt_path, self.device)
        if self.memory is not None and ckpt_path is not None:
            if self.memory.module not in self.hypernet.config.target_modules or not (
                    0 <= self.memory.layer < self.hypernet.config.num_layers):
                raise CheckpointError(f"the reading memory of {ckpt_path} targets {self.memory.key}, which the "
                                      f"checkpoint's adapters do not have")
            self.checkpoint_id = _with_memory(self.checkpoint_id, memory_digest(ckpt_path))
        self.checkpoint_path: str | None = str(ckpt_path) if ckpt_path is not None else None
        self.trained = ckpt_path is not None
        self.config: HypernetConfig = self.hypernet.config
        self.chunk_tokens = chunk_tokens or self.config.chunk_tokens
        if chunking not in CHUNKINGS:
            raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {chunking!r}")
        self.chunking = chunking
        self.max_chunks = _checked_max_chunks(max_chunks)
        self.key_model = keys or None
        self.min_relevance = min_relevance
        if relevance_margin < 0:
            raise ValueError(f"relevance_margin must be >= 0, got {relevance_margin}")
        self.relevance_margin = relevance_margin
        self._key_encoder: KeyEncoder | None = None
        self.autocast = resolve_autocast(autocast, str(self.device), dtype)
        self.encoder = ContextEncoder(self.model, self.config.encoder_mode, self.config.exit_layer)
        self.instructions_checkpoint = instructions_checkpoint
        self._readers: dict[str, _Reader] = {"document": _Reader(self.hypernet, self.encoder, self.checkpoint_id,
                                                                 self.checkpoint_path)}
        self._seed = seed
        self.hooks = get_hooks(self.model, self.config.target_modules)
        self._gen_lock = threading.Lock()
        #: Rows and sentence keys made for long documents' questions (:mod:`~d2l_haystack.core.rowcache`).
        self.made_rows = MadeRows()
        self._value_ends: ValueEnds | None = None  # the token classes of row_use "value", made when first used

    # -- internalization ------------------------------------------------------------------
    @property
    def key_encoder(self) -> KeyEncoder | None:
        """The chunk-key embedding model (loaded on first use), or ``None`` with keys disabled."""
        if self.key_model is None:
            return None
        if self._key_encoder is None:
            self._key_encoder = get_key_encoder(self.key_model, str(self.device))
        return self._key_encoder

    def precision(self) -> contextlib.AbstractContextManager[Any]:
        """The context internalization runs in: bf16 autocast when :attr:`autocast`, else none."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=torch.bfloat16)

    def reader(self, kind: str = "document", instructions_checkpoint: Any = ENGINE_SETTING) -> _Reader:
        """The hypernetwork (and its encoder) that internalizes adapters of ``kind``.

        Instructions use their own checkpoint (``instructions_checkpoint``: ``"default"`` is the
        one shipped for this model as ``<model>-instructions``; a folder; ``None`` an untrained
        hypernetwork, whose adapters are zero), loaded on first use and kept per checkpoint, so
        components sharing one engine may each name their own.

        :param instructions_checkpoint: this call's instructions checkpoint (default: the
            engine's :attr:`instructions_checkpoint`).

        :raises ValueError: an unknown kind.
        :raises ModelNotFoundError: ``"default"`` and no instructions checkpoint shipped for this model.
        """
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"kind must be one of {', '.join(ADAPTER_KINDS)}, got {kind!r}")
        if kind == "document":
            return self._readers[kind]
        path: str | Path | None = (self.instructions_checkpoint if instructions_checkpoint is ENGINE_SETTING
                                   else instructions_checkpoint)
        slot = f"{kind}:{path}"
        if slot not in self._readers:
            label = self.loaded.name
            if path == "default":
                path = default_checkpoint(label, kind)
                if path is None:
                    raise ModelNotFoundError(
                        f"no {kind} checkpoint is shipped for {label}: train one (docs/instructions.md) and "
                        f"pass instructions_checkpoint=FOLDER (d2l internalize --instructions-checkpoint)")
            hypernet, cid, _ = self._load_hypernet(path, self._seed, kind=kind)
            cfg = hypernet.config
            encoder = ContextEncoder(self.model, cfg.encoder_mode, cfg.exit_layer)
            self._readers[slot] = _Reader(hypernet, encoder, cid, str(path) if path is not None else None)
        return self._readers[slot]

    def _load_hypernet(self, path: str | Path | None, seed: int, widths: dict[str, Any] | None = None,
                       kind: str = "document") -> tuple[Hypernetwork, str, dict[str, Any]]:
        """``(hypernetwork in eval mode, checkpoint id, checkpoint info)`` of the checkpoint at
        ``path``, or of an untrained hypernetwork (``widths``, seeded) when ``path`` is ``None``."""
        if path is not None:
            hypernet, payload = load_checkpoint(path, expected_base_model=self.loaded.name, map_location=self.device)
            cid, info = str(payload["checkpoint_id"]), dict(payload.get("info", {}))
        else:
            torch.manual_seed(seed)
            hypernet = Hypernetwork(config_for_model(self.model, self.loaded.name, **(widths or {}))).to(self.device)
            cid, info = (f"untrained-seed{seed}" if kind == "document" else f"untrained-{kind}-seed{seed}"), {}
        hypernet.eval().requires_grad_(False)
        return hypernet, cid, info

    def set_instructions_checkpoint(self, checkpoint: str | None) -> None:
        """Make another instructions hypernetwork (``"default"``, a folder or ``None``) this engine's
        default from now on (a component sharing the engine passes its own to :meth:`internalize`)."""
        self.instructions_checkpoint = checkpoint

    @torch.no_grad()
    def chunk_factors(self, wrapped: list[list[int]], timings: dict[str, float] | None = None,
                      kind: str = "document", instructions_checkpoint: Any = ENGINE_SETTING) -> Factors:
        """Run encoder + hypernetwork on wrapped chunks: ``A: (chunks, L, r, d_in)`` (float32).

        :param timings: if given, the seconds of each stage are added to ``"encoder"`` and
            ``"hypernetwork"``.
        :param kind: which hypernetwork (:meth:`reader`).
        """
        reader = self.reader(kind, instructions_checkpoint)
        out = encode_chunks(reader.encoder, reader.hypernet, wrapped, self.tokenizer.pad_token_id, self.device,
                            self.precision, timings)
        return {m: (a.float(), b.float()) for m, (a, b) in out.items()}

    def internalize(self, text: str, *, source: str = "document", progress: bool | None = None,
                    batch_size: int = 4, meta: dict[str, Any] | None = None,
                    timings: dict[str, float] | None = None, kind: str = "document",
                    instructions_checkpoint: Any = ENGINE_SETTING) -> Adapter:
        """Turn a document into an :class:`Adapter` (one forward pass per chunk batch).

        Memory stays bounded for any length: chunks are encoded ``batch_size`` at a time and only
        their (small) factors are kept.

        ``kind="instructions"`` internalizes a system prompt or task description instead (the
        Text-to-LoRA variant): its own hypernetwork (:meth:`reader`), token chunks, no chunk
        keys; :meth:`generate` applies such an adapter to every question, beside any document
        adapters, so no query pays for the instructions' tokens again.

        :param progress: show a progress bar (``None``: when there is more than one batch of chunks).
        :param timings: if given, seconds per stage are added to it: ``chunking``, ``encoder``,
            ``hypernetwork``, ``keys`` (the chunk-key embeddings), ``memory`` (the reading memory's
            pass up to its layer, when the checkpoint has one) and ``assembly``.
        :param instructions_checkpoint: ``kind="instructions"``: this call's checkpoint (default:
            the engine's, :meth:`reader`).
        :raises InputError: empty or binary text.
        """
        clock = time.perf_counter()
        stages: dict[str, float] = timings if timings is not None else {}

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - clock
            clock = now

        validate_text(text, source)
        reader = self.reader(kind, instructions_checkpoint)
        documents = kind == "document"
        chunks = self.chunk_ids(text) if documents else chunk_text_ids(self.format, text, "tokens",
                                                                        reader.config.chunk_tokens)
        lap("chunking")
        show = progress if progress is not None else len(chunks) > batch_size  # more than one batch
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # no stubs installed (types-tqdm is not a dependency)

        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in reader.config.target_modules}
        keys: list[tuple[torch.Tensor, torch.Tensor]] = []
        encoder = self.key_encoder if documents else None
        bar = tqdm(total=len(chunks), desc="internalizing", unit="chunk", disable=not show)
        for start in range(0, len(chunks), batch_size):
            batch = [self.format.wrap_chunk(c) for c in chunks[start:start + batch_size]]
            out = self.chunk_factors(batch, stages, kind, instructions_checkpoint)
            for m, (a, b) in out.items():
                # (n, L, r, d) -> per-chunk (L, r, d), kept on CPU
                for i in range(a.shape[0]):
                    parts[m].append((a[i].cpu(), b[i].cpu()))
            clock = time.perf_counter()
            if encoder is not None:
                with self.precision():
                    vectors, owners = encoder.chunk_keys(
                        [self.tokenizer.decode(c) for c in chunks[start:start + batch_size]])
                keys.append((vectors, owners + start))
                lap("keys")
            bar.update(len(batch))
        bar.close()
        clock = time.perf_counter()
        bias = reader.hypernet.bias_block()
        factors: Factors = {}
        for m, plist in parts.items():
            ba, bb = bias[m]
            factors[m] = document_factors(torch.stack([a for a, _ in plist]), torch.stack([b for _, b in plist]),
                                          (ba.detach().float().cpu(), bb.detach().float().cpu()))
        adapter = Adapter(factors=factors, scale=reader.config.alpha, rank=reader.config.rank,
                          bias_rank=reader.config.bias_rank, num_chunks=len(chunks),
                          base_model=self.loaded.name, checkpoint_id=reader.checkpoint_id,
                          content_hash=content_hash(text), num_tokens=sum(len(c) for c in chunks),
                          module_paths=list(reader.config.module_paths),
                          meta={**(meta or {}), **({} if documents else {"kind": kind})},
                          keys=torch.cat([v for v, _ in keys]) if keys else None,
                          key_chunks=torch.cat([o for _, o in keys]) if keys else None,
                          key_model=(self.key_model or "") if keys else "", key_scheme=KEY_SCHEME if keys else "")
        lap("assembly")
        if documents and self.memory is not None and sum(map(len, chunks)) <= self.memory.max_tokens:
            adapter = self._with_rows(adapter, chunks, stages)
        elif documents and self.memory is not None and self.memory.long_documents != "none":
            adapter.token_ids = torch.tensor([t for c in chunks for t in c], dtype=torch.long)
            adapter.token_chunks = torch.tensor([i for i, c in enumerate(chunks) for _ in c], dtype=torch.long)
        return adapter

    def _with_rows(self, adapter: Adapter, chunks: list[list[int]], stages: dict[str, float] | None = None,
                   numbers: list[int] | None = None,
                   segments: tuple[torch.Tensor, torch.Tensor] | None = None, cached: bool = False) -> Adapter:
        """``adapter`` with the reading-memory rows of ``chunks`` (its chunks, in order; ``numbers``:
        their chunk numbers in the adapter where they are only some of them), and their segments with
        chunk keys (``segments``: those of ``chunks`` where the caller has them; ``stages``: seconds
        added to ``memory`` and ``keys``; ``cached``: rows and keys made for a question, kept in and
        taken from :attr:`made_rows`)."""
        assert self.memory is not None
        stages = stages if stages is not None else {}
        t0 = time.perf_counter()
        if cached:
            rows, owners = self.made_rows.get_or_make(("rows", tuple(chunk_key(c) for c in chunks)),
                                                      lambda: self._memory_rows(chunks))
        else:
            rows, owners = self._memory_rows(chunks)
        if numbers is not None:
            owners = torch.tensor(numbers, dtype=torch.long)[owners]
        adapter = replace(adapter, memory=rows, memory_chunks=owners, memory_key=self.memory.key)
        t1 = time.perf_counter()
        stages["memory"] = stages.get("memory", 0.0) + t1 - t0
        if segments is None and self.key_encoder is not None:
            segments = self._chunk_segments(chunks) if cached else self._memory_segments(chunks)
        if segments is not None:
            adapter.memory_segments, adapter.memory_segment_keys = segments
            stages["keys"] = stages.get("keys", 0.0) + time.perf_counter() - t1
        return adapter

    def _long_rows(self, selected: list[Adapter], meta: dict[str, Any], query: str | None = None,
                   q: torch.Tensor | None = None) -> list[Adapter]:
        """The selected adapters, those of long documents (:attr:`Adapter.token_ids`) with the rows of
        their chosen chunks, made now, where the memory reads long documents and the chunks hold at
        most its ``max_tokens`` tokens (``meta["memory_rows_made"]``: how many).

        A chunk's rows cost a pass of the model up to the memory's layer, so where the chunks hold
        more than the memory's ``max_rows``, only the chunks with the sentences the row budget will
        keep (:meth:`_row_budget`, ranked by ``query``; ``q`` its embedding) are passed."""
        memory = self.memory
        if memory is None or memory.long_documents == "none":
            return selected
        out, made = [], 0
        for a in selected:
            ids, owners = a.token_ids, a.token_chunks
            if ids is None or owners is None or a.memory is not None or not 0 < len(ids) <= memory.max_tokens:
                out.append(a)
                continue
            chunks = [ids[owners == c].tolist() for c in range(a.num_chunks)]
            if not all(chunks):
                out.append(a)
                continue
            needed, segments = self._budgeted_chunks(chunks, memory.max_rows, query, q)
            out.append(self._with_rows(a, [chunks[c] for c in needed], numbers=needed, segments=segments,
                                       cached=True) if needed else a)
            made += out[-1].memory_rows
        if made:
            meta["memory_rows_made"] = made
        return out

    def _budgeted_chunks(self, chunks: list[list[int]], budget: int, query: str | None, q: torch.Tensor | None
                         ) -> tuple[list[int], tuple[torch.Tensor, torch.Tensor] | None]:
        """The chunks holding the sentences the row budget keeps for ``query`` (every chunk where
        they hold at most ``budget`` tokens, or where nothing ranks the sentences), and, where the
        sentences were ranked, those chunks' segments and segment keys (:meth:`_memory_segments`
        of the chunks alone: a segment never spans two chunks, so the ranking's are renumbered)."""
        encoder = self.key_encoder
        if q is None and encoder is not None and query:
            q = encoder.query(query)
        if sum(map(len, chunks)) <= budget or q is None:
            return list(range(len(chunks))), None
        segments, keys = self._chunk_segments(chunks)
        present, counts = segments.unique(return_counts=True)
        sims = keys[present].float() @ q
        keep, _ = _within_budget([(float(sim), 0, int(seg), int(n))
                                  for sim, seg, n in zip(sims, present, counts, strict=True)], budget)
        owner = torch.tensor([c for c, ids in enumerate(chunks) for _ in ids], dtype=torch.long)
        needed = sorted(set(owner[torch.isin(segments, torch.tensor(keep.get(0, []), dtype=torch.long))].tolist()))
        mine = segments[torch.isin(owner, torch.tensor(needed, dtype=torch.long))]
        kept = mine.unique()
        return needed, (torch.searchsorted(kept, mine), keys[kept])

    def _memory_segments(self, chunks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each memory row's segment ``(n,)`` (a sentence: a segment ends after a token ending in
        ``.``, ``!``, ``?`` or a line break, at a chunk's end, or after :data:`SEGMENT_TOKENS`
        tokens) and each segment's chunk-key embedding ``(segments, dim)``."""
        assert self.key_encoder is not None
        owner: list[int] = []
        texts: list[list[int]] = []
        for ids in chunks:
            start = True
            for t in ids:
                if start:
                    texts.append([])
                texts[-1].append(t)
                owner.append(len(texts) - 1)
                start = len(texts[-1]) >= SEGMENT_TOKENS or bool(_SEGMENT_END.search(self.tokenizer.decode([t])))
        with self.precision():
            vectors = self.key_encoder.embed([self.tokenizer.decode(t) for t in texts])
        return torch.tensor(owner, dtype=torch.long), vectors

    def _chunk_segments(self, chunks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_memory_segments` of ``chunks``, each chunk's taken from :attr:`made_rows` where a
        question before made them (a segment never spans two chunks, so a chunk's are its own)."""
        owners, vectors, offset = [], [], 0
        for ids in chunks:
            owner, keys = self.made_rows.get_or_make(("keys", chunk_key(ids)),
                                                     functools.partial(self._memory_segments, [ids]))
            owners.append(owner + offset)
            vectors.append(keys)
            offset += len(keys)
        return torch.cat(owners), torch.cat(vectors)

    def _row_budget(self, selected: list[Adapter], query: str | None, meta: dict[str, Any],
                    q: torch.Tensor | None = None) -> list[Adapter]:
        """The selected adapters with at most the memory's ``max_rows`` memory rows in all: where they
        hold more, the rows of the segments most like ``query`` (chunk-key similarity; ``q`` its
        embedding when the caller has it), best first, while the budget lasts; adapters without
        segment keys then keep none (``meta``: ``memory_rows`` applied of ``memory_rows_total``)."""
        total = sum(a.memory_rows for a in selected)
        budget = self.memory.max_rows if self.memory is not None else DEFAULT_MAX_ROWS
        if total <= budget:
            if total:
                meta.update(memory_rows=total, memory_rows_total=total)
            return selected
        encoder = self.key_encoder
        if q is None and encoder is not None and query:
            q = encoder.query(query)
        ranked: list[tuple[float, int, int, int]] = []  # (similarity, adapter, segment, rows)
        for i, a in enumerate(selected):
            segs, keys = a.memory_segments, a.memory_segment_keys
            if not a.memory_rows or segs is None or keys is None or q is None or keys.shape[-1] != q.shape[-1]:
                continue
            present, counts = segs.unique(return_counts=True)
            sims = keys[present].float() @ q
            ranked += [(float(sim), i, int(seg), int(n)) for sim, seg, n in zip(sims, present, counts, strict=True)]
        keep, used = _within_budget(ranked, budget)
        out = []
        for i, a in enumerate(selected):
            if not a.memory_rows:
                out.append(a)
                continue
            segs = a.memory_segments
            mask = (torch.isin(segs, torch.tensor(keep.get(i, []), dtype=torch.long)) if segs is not None
                    else torch.zeros(a.memory_rows, dtype=torch.bool))
            out.append(a.memory_subset(mask))
        meta.update(memory_rows=used, memory_rows_total=total)
        return out

    def memory_states(self, chunks: list[list[int]], layer: int | None = None, module: str | None = None
                      ) -> list[tuple[torch.Tensor, list[int], list[int]]]:
        """What the reading memory reads: per pass, the memory layer's inputs ``(n, d_in)`` at the
        positions that predict the pass's ``n`` document tokens, those tokens and their chunks.

        Consecutive chunks are read together, up to ``chunk_tokens`` tokens per pass (a short
        document in one pass, whatever its chunking), so each position's state has its context.
        The trainer (:mod:`d2l_haystack.training.memory`) caches exactly these.

        :param layer: the layer to read (default: the one the memory's match reads,
            :attr:`ReadingMemory.reads`).
        :param module: the module whose input is read (default: the memory's, else
            :data:`~d2l_haystack.core.memory.DEFAULT_MODULE`).
        :raises AdapterError: no layer given and the checkpoint has no reading memory.
        """
        return list(self._iter_memory_states(chunks, layer, module))

    @torch.no_grad()
    def _iter_memory_states(self, chunks: list[list[int]], layer: int | None = None, module: str | None = None
                            ) -> Iterator[tuple[torch.Tensor, list[int], list[int]]]:
        """:meth:`memory_states` one pass at a time (a long document's states are never all held)."""
        if layer is None:
            if self.memory is None:
                raise AdapterError(f"checkpoint {self.checkpoint_id} has no reading memory: name the layer to read")
            layer = self.memory.reads
        module = module or (self.memory.module if self.memory is not None else DEFAULT_MODULE)
        pre = len(self.format.doc_prefix_ids)
        groups: list[list[int]] = []
        size = 0
        for c, ids in enumerate(chunks):
            if not groups or size + len(ids) > self.chunk_tokens:
                groups.append([])
                size = 0
            groups[-1].append(c)
            size += len(ids)
        for group in groups:
            ids = [t for c in group for t in chunks[c]]
            wrapped = self.format.wrap_chunk(ids)
            with self.precision(), self.hooks.capture() as rec:  # the layers above the memory's are not needed
                run_until(self.model, layer, input_ids=torch.tensor([wrapped], device=self.device))
            states = rec[module][layer][pre - 1:pre - 1 + len(ids)].float()
            yield states, ids, [c for c in group for _ in chunks[c]]

    def _memory_rows(self, chunks: list[list[int]]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The reading memory of a document's chunks: ``(A, B)`` rows on CPU and each row's chunk."""
        assert self.memory is not None
        emb = self.model.get_output_embeddings().weight
        a_parts, b_parts, owners = [], [], []
        for states, ids, chunk_of in self._iter_memory_states(chunks):
            a, b = self.memory.rows(states, torch.tensor(ids), emb)
            a_parts.append(a.cpu())
            b_parts.append(b.cpu())
            owners.append(torch.tensor(chunk_of, dtype=torch.long))
        return (torch.cat(a_parts), torch.cat(b_parts)), torch.cat(owners)

    def chunk_ids(self, text: str) -> list[list[int]]:
        """The token ids of each chunk of ``text`` (no template), as :attr:`chunking` cuts it."""
        return chunk_text_ids(self.format, text, self.chunking, self.chunk_tokens)

    # -- generation -----------------------------------------------------------------------
    def _adapter_list(self, adapters: Adapter | list[Adapter] | None) -> list[Adapter]:
        """The adapters as a list, each checked against the loaded model."""
        if adapters is None:
            return []
        items = [adapters] if isinstance(adapters, Adapter) else list(adapters)
        for a in items:
            if a.base_model != self.loaded.name:
                raise AdapterError(f"adapter was made for base model '{a.base_model}', "
                                   f"but the loaded base model is '{self.loaded.name}'")
            if a.num_layers != self.config.num_layers:
                raise AdapterError(f"adapter has {a.num_layers} layers, the model has {self.config.num_layers}")
        return items

    def _factors_for(self, adapters: Adapter | list[Adapter] | None,
                     weights: list[float] | None) -> Factors | None:
        return self._compose(self._adapter_list(adapters), weights)

    def _compose(self, items: list[Adapter], weights: list[float] | None) -> Factors | None:
        """Factors of already validated adapters, on this engine's device."""
        if not items:
            return None
        factors = compose(items, weights)
        return {m: (a.to(self.device), b.to(self.device)) for m, (a, b) in factors.items()}

    def prompt_ids(self, question: str | list[dict[str, str]], context: str | None = None) -> list[int]:
        if isinstance(question, str):
            if not question.strip():
                raise InputError("question is empty")
            return self.format.question_ids(question, context)
        if context is not None:
            raise InputError("context= applies to a single question; put it into the messages instead")
        return self.format.messages_ids(question)

    def generate(self, question: str | list[dict[str, str]], adapters: Adapter | list[Adapter] | None = None,
                 *, weights: list[float] | None = None, context: str | None = None,
                 max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, streaming_callback: Callable[[str], None] | None = None,
                 max_chunks: int | None = None, gate: bool = True, query: str | None = None) -> GenerationResult:
        """Answer a question (or a chat history) with optional adapters and optional context.

        Greedy by default. Several adapters compose (concatenated along rank, ``weights`` scale
        each one). The base weights are never modified; concurrent calls from different threads
        use their own adapters.

        Only the chunks the question is about are applied (:meth:`select_chunks`; at most
        ``max_chunks``, default the engine's; 0 applies every chunk), and with ``gate`` no
        adapter at all when none is relevant. The result's ``meta`` says what was applied:
        ``chunks_applied``, ``chunks_total``, ``selection`` and, with chunk keys, ``relevance``
        and ``gated``; for adapters with reading-memory rows, ``memory`` and ``adapter_confidence``:
        ``"applied"``, or where the adapters alone were sure of the first token
        (:attr:`ReadingMemory.yield_above`) ``"yielded"`` (``"followed"`` with the memory's
        ``follow_on_yield``: the document's next position still pushes after a copied token) or,
        greedy, ``"overrode"`` when the memory's own answer was taken
        (:class:`~d2l_haystack.core.memory.OverrideRule`; both answers are made first, so a
        streaming callback then gets the answer in one piece). ``query`` is the
        text compared with the chunk keys (default: the question, or the last user message).
        """
        _check_generation(max_new_tokens, temperature, top_p)
        ids = self.prompt_ids(question, context)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(ids) + max_new_tokens > limit:
            raise InputError(f"prompt has {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds "
                             f"the model's {limit}-token window")
        meta: dict[str, Any] = {}
        selected: list[Adapter] = []
        start = time.perf_counter()  # choosing chunks, a long document's rows and the yield test are part of it
        if adapters is not None:  # select_chunks validates the adapters
            selected, weights, meta = self.select_chunks(ids, adapters, weights, max_chunks,
                                                         query=query or _query_text(question), gate=gate)
        factors, with_rows = self._memory_or_not(ids, selected, weights, meta, greedy=not do_sample)
        streamer = _CallbackStreamer(self.tokenizer, streaming_callback, start)
        if with_rows is not None:  # the adapters alone are sure: both readers answer, one answer is sent
            chosen = self._two_readers(ids, with_rows, max_new_tokens, meta)
            streamer.put(torch.tensor(ids))
            streamer.put(torch.tensor(chosen))
            streamer.end()
        else:
            self._run_generate(ids, factors, streamer, max_new_tokens, do_sample, temperature, top_p,
                               follow=meta.get("memory") == "followed")
        seconds = time.perf_counter() - start
        text = self.tokenizer.decode(streamer.tokens, skip_special_tokens=True).strip()
        return GenerationResult(text=text, num_tokens=len(streamer.tokens), seconds=seconds,
                                time_to_first_token=streamer.first_token_at or seconds,
                                prompt_tokens=len(ids), meta=meta)

    def _run_generate(self, ids: list[int], factors: Factors | None, streamer: _CallbackStreamer,
                      max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                      top_p: float = 1.0, follow: bool = False) -> list[int]:
        """Generate after ``ids`` with ``factors`` into ``streamer``; the new tokens (a stop token
        included). ``follow``: only the document's next position after a copied token fires
        (:class:`~d2l_haystack.core.lora.RowUse`), where the memory yielded."""
        input_ids = torch.tensor([ids], device=self.device)
        use = self._new_row_use(follow=True) if follow else self._row_use(factors)
        with torch.no_grad(), self.hooks.apply(factors, row_use=use):
            self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                                **self._generation_settings(max_new_tokens, do_sample, temperature, top_p))
        return streamer.tokens

    def _row_use(self, factors: Factors | None) -> RowUse | None:
        """A fresh :class:`~d2l_haystack.core.lora.RowUse` for one generation where ``factors`` carry
        reading-memory rows and the memory's :attr:`ReadingMemory.row_use` is not ``all``. Only
        generation spends rows: the yield test and the two readers' cross-scores are single passes
        over a whole prompt and answer, which every row reads."""
        if factors is None or self.memory is None or self.memory.row_use == "all" \
                or len(_without_rows(factors)) == len(factors):
            return None
        return self._new_row_use(carry=self.memory.row_use in ("next", "value"))

    def _new_row_use(self, carry: bool = False, follow: bool | torch.Tensor = False) -> RowUse:
        """A fresh :class:`~d2l_haystack.core.lora.RowUse` over this model's output embeddings; its
        carry stops where the value ends where the memory's ``row_use`` is ``value``."""
        embeddings = self.model.get_output_embeddings().weight
        ends = None
        if self.memory is not None and self.memory.row_use == "value":
            if self._value_ends is None:  # the tokenizer's classes, once per engine
                self._value_ends = ValueEnds(self.tokenizer, embeddings)
            ends = self._value_ends
        return RowUse(embeddings, carry=carry, follow=follow, ends=ends,
                      firm=self.memory.firm_carry if self.memory is not None and ends is not None else 1.0)

    def _follows(self) -> bool:
        """Whether a yielded answer still follows the document (:attr:`ReadingMemory.follow_on_yield`)."""
        return self.memory is not None and self.memory.follow_on_yield

    def _generation_settings(self, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                             top_p: float = 1.0) -> dict[str, Any]:
        """``generate()``'s keyword arguments: the length, the stop and pad tokens, and sampling or
        greedy (the model config's sampling defaults switched off)."""
        settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                    "pad_token_id": self.format.pad_id,
                                    "eos_token_id": self.format.stop_ids}
        if do_sample:
            settings.update(temperature=temperature, top_p=top_p)
        else:
            settings.update(temperature=None, top_p=None, top_k=None)
        return settings

    @torch.no_grad()
    def _memory_or_not(self, prompt_ids: list[int], selected: list[Adapter], weights: list[float] | None,
                       meta: dict[str, Any], greedy: bool = True) -> tuple[Factors | None, Factors | None]:
        """The factors to answer with, and the factors with the reading-memory rows where both
        readers are to answer (else ``None``).

        The rows apply unless the adapters alone give the answer's first token a probability of at
        least the memory's ``yield_above``: then the adapters are sure (trained needles, where the
        rows would only add noise), and, greedy and with the memory's
        :class:`~d2l_haystack.core.memory.OverrideRule`, :meth:`_two_readers` decides; without
        the rule, with the memory's ``follow_on_yield``, the factors keep their rows for the follow
        (``meta["memory"]`` ``"followed"``)."""
        factors = self._compose(selected, weights)  # None without adapters
        if not any(a.memory_rows for a in selected):
            return factors, None
        if self.memory is not None and self.memory.long_documents == "follow" and any(
                a.memory_rows and a.token_ids is not None for a in selected):
            meta["memory"] = "followed"  # a long document's rows, made for this question: they only follow
            return factors, None
        threshold = self.memory.yield_above if self.memory is not None else DEFAULT_YIELD_ABOVE
        if threshold is None:
            meta["memory"] = "applied"
            return factors, None
        assert factors is not None
        plain = _without_rows(factors)
        sure = self._first_token_confidence(prompt_ids, plain)
        meta.update(memory="yielded" if sure >= threshold else "applied", adapter_confidence=round(sure, 4))
        if sure < threshold:
            return factors, None
        if greedy and self._override() is not None:
            return plain, factors
        if self._follows():
            meta["memory"] = "followed"
            return factors, None
        return plain, None

    @torch.no_grad()
    def _first_token_confidence(self, prompt_ids: list[int], factors: Factors | None) -> float:
        """The probability ``factors`` give the answer's most likely first token (the yield test)."""
        with self.hooks.apply(factors):
            logits = self.model(input_ids=torch.tensor([prompt_ids], device=self.device)).logits[0, -1]
        return float(logits.float().softmax(-1).max())

    def _override(self) -> OverrideRule | None:
        """The rule by which the memory's answer replaces a sure adapter's (``None``: it never does)."""
        return self.memory.override if self.memory is not None else DEFAULT_OVERRIDE

    @torch.no_grad()
    def _read_both(self, prompt_ids: list[int], with_rows: Factors, max_new_tokens: int, follow: bool = False
                   ) -> tuple[list[int], list[int], tuple[float, float, float] | None, list[int] | None]:
        """Greedy answers (token ids) of the adapters alone and with the memory rows, where they
        differ the three log-probabilities the :class:`~d2l_haystack.core.memory.OverrideRule`
        judges: ``(own, memory_on_adapter, adapter_on_memory)``, and with ``follow`` the adapters'
        answer followed (:class:`~d2l_haystack.core.lora.RowUse` ``follow``; ``None`` where the
        memory's ``row_use`` is not ``next``: the caller makes it).

        The readers are one batch (the rows switched off for the first sequence; the followed
        answer a third), and the two cross-scores one more batch: two passes over the model
        instead of five or six."""
        n = len(prompt_ids)
        use = self._row_use(with_rows)
        batched = follow and use is not None and use.carry  # the followed answer shares next's carry
        mask = [0.0, 1.0, 1.0] if batched else [0.0, 1.0]
        if batched:
            use = self._new_row_use(carry=True, follow=torch.tensor([False, False, True]))
        input_ids = torch.tensor([prompt_ids] * len(mask), device=self.device)
        with self.hooks.apply(with_rows, row_mask=torch.tensor(mask, device=self.device), row_use=use):
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      output_logits=True, return_dict_in_generate=True,
                                      **self._generation_settings(max_new_tokens))
        adapter, memory, *rest = (self.format.until_stop(out.sequences[i, n:].tolist()) for i in range(len(mask)))
        followed = rest[0] if rest else None
        if adapter == memory:
            return adapter, memory, None, followed
        own = torch.stack([out.logits[t][1].float().log_softmax(-1)[token] for t, token in enumerate(memory)])
        memory_on_adapter, adapter_on_memory = self._mean_logprobs(with_rows, prompt_ids, [adapter, memory],
                                                                   torch.tensor([1.0, 0.0], device=self.device))
        return adapter, memory, (float(own.mean()), memory_on_adapter, adapter_on_memory), followed

    def _two_readers(self, prompt_ids: list[int], with_rows: Factors, max_new_tokens: int,
                     meta: dict[str, Any]) -> list[int]:
        """The adapters' answer, or the memory's where its
        :class:`~d2l_haystack.core.memory.OverrideRule` says so (``meta["memory"]`` ``"overrode"``,
        with the three log-probabilities in ``meta["memory_check"]``); where the adapters' answer
        stands and the memory has ``follow_on_yield``, that answer followed (``"followed"``)."""
        follow = self._follows()
        adapter, memory, check, followed = self._read_both(prompt_ids, with_rows, max_new_tokens, follow)
        if check is not None:
            rule = self._override()
            assert rule is not None  # _memory_or_not asks for two readers only with a rule
            take = rule.prefers_memory(*check)
            meta.update(memory="overrode" if take else "yielded",
                        memory_check=dict(zip(("own", "memory_on_adapter", "adapter_on_memory"),
                                              (round(v, 4) for v in check), strict=True)))
            if take:
                return memory
        if not follow:
            return adapter
        meta["memory"] = "followed"
        if followed is None:
            followed = self._run_generate(prompt_ids, with_rows, _CallbackStreamer(self.tokenizer, None, 0.0),
                                          max_new_tokens, follow=True)
        return followed

    @torch.no_grad()
    def both_readers(self, question: str, adapters: Adapter | list[Adapter], *, max_new_tokens: int = 64,
                     weights: list[float] | None = None, max_chunks: int | None = None,
                     gate: bool = True) -> ReaderAnswers | None:
        """Both readers' greedy answers to ``question``, whatever the yield test would say: what
        :meth:`generate` chooses between, for studying the choice (``benchmarks/two_readers.py``).

        Usage example::

            engine = D2LEngine()
            adapter = engine.internalize("The Kelar M5 weighs 567 grams.")
            both = engine.both_readers("How heavy is the Kelar M5?", adapter, max_new_tokens=16)
            if both is not None:
                print(both.adapter, "|", both.memory, "| sure:", both.adapter_confidence)

        :returns: ``None`` where the relevance gate applies no chunk.
        :raises InputError: the selected adapters carry no reading-memory rows (a checkpoint without
            a memory, ``reading_memory=False`` or a document over the memory's ``max_tokens``).
        """
        _check_generation(max_new_tokens, 1.0, 1.0)
        ids = self.prompt_ids(question)
        selected, weights, meta = self.select_chunks(ids, adapters, weights, max_chunks, query=question, gate=gate)
        if not selected:
            return None
        if not any(a.memory_rows for a in selected):
            raise InputError("the selected adapters carry no reading-memory rows: there is only one reader")
        with_rows = self._compose(selected, weights)
        assert with_rows is not None
        plain = _without_rows(with_rows)
        sure = self._first_token_confidence(ids, plain)
        adapter, memory, check, _ = self._read_both(ids, with_rows, max_new_tokens)
        own, memory_on_adapter, adapter_on_memory = check if check is not None else (None, None, None)
        return ReaderAnswers(adapter=self.tokenizer.decode(adapter, skip_special_tokens=True).strip(),
                             memory=self.tokenizer.decode(memory, skip_special_tokens=True).strip(),
                             adapter_confidence=sure, own=own,
                             memory_on_adapter=memory_on_adapter, adapter_on_memory=adapter_on_memory, meta=meta)

    @torch.no_grad()
    def _mean_logprobs(self, with_rows: Factors, prompt_ids: list[int], answers: list[list[int]],
                       row_mask: torch.Tensor) -> list[float]:
        """The mean log-probability of each of ``answers`` after ``prompt_ids``, in one batch: under
        ``with_rows``, the memory rows on where ``row_mask`` is 1 and off where it is 0."""
        n, width = len(prompt_ids), len(prompt_ids) + max(len(a) for a in answers)
        pad = self.format.pad_id
        x = torch.tensor([prompt_ids + a + [pad] * (width - n - len(a)) for a in answers], device=self.device)
        mask = torch.tensor([[1] * (n + len(a)) + [0] * (width - n - len(a)) for a in answers], device=self.device)
        with self.hooks.apply(with_rows, row_mask=row_mask):
            logits = self.model(input_ids=x, attention_mask=mask).logits.float()
        return [float(logits[i, n - 1:n - 1 + len(a)].log_softmax(-1)
                      .gather(1, torch.tensor(a, device=self.device)[:, None]).mean()) for i, a in enumerate(answers)]

    @torch.no_grad()
    def select_chunks(self, prompt_ids: list[int], adapters: Adapter | list[Adapter],
                      weights: list[float] | None = None, max_chunks: int | None = None,
                      query: str | None = None, gate: bool = True,
                      ) -> tuple[list[Adapter], list[float] | None, dict[str, Any]]:
        """The chunk adapters to apply for one prompt.

        * ``max_chunks`` 0: every chunk of every adapter (``selection: "all"``).
        * Adapters with chunk keys from this engine's key model and a ``query`` text
          (``selection: "relevance"``): chunks are ranked by the cosine similarity of the query
          embedding to their best key window (:meth:`Adapter.chunk_relevance`). With ``gate``
          and a best similarity under ``min_relevance`` nothing is applied (``gated: True``);
          otherwise the chunks within ``relevance_margin`` of the best (and at or above
          ``min_relevance``), at most ``max_chunks``. On 41k-token needle documents this ranked
          the needle's chunk first in 5 of 5 (model card).
        * Otherwise, when the adapters hold more than ``max_chunks`` chunks
          (``selection: "response"``): the chunks whose update responds most strongly to the
          prompt (:meth:`Adapter.chunk_responses` on the target-layer inputs of one adapter-free
          pass). Weaker: the needle's chunk ranked 4th-5th with checkpoint ``2d30f348a935``.

        Selected chunks keep document order and each adapter its bias block; adapters left
        without chunks are dropped.

        :returns: ``(adapters, weights, meta)``.
        """
        items = self._adapter_list(adapters)
        if any(a.kind == "instructions" for a in items):  # instructions apply to every question, whole
            w_all = list(weights) if weights is not None else [1.0] * len(items)
            standing = [(a, wi) for a, wi in zip(items, w_all, strict=True) if a.kind == "instructions"]
            rest = [(a, wi) for a, wi in zip(items, w_all, strict=True) if a.kind != "instructions"]
            if rest:
                chosen_docs, doc_weights, doc_meta = self.select_chunks(
                    prompt_ids, [a for a, _ in rest], [wi for _, wi in rest], max_chunks, query, gate)
            else:
                chosen_docs, doc_weights, doc_meta = [], [], {"chunks_applied": 0, "chunks_total": 0,
                                                              "selection": "all"}
            doc_meta["instructions_applied"] = len(standing)
            out_weights = [wi for _, wi in standing] + list(doc_weights or [])
            return [a for a, _ in standing] + chosen_docs, (out_weights if weights is not None else None), doc_meta
        limit = _checked_max_chunks(self.max_chunks if max_chunks is None else max_chunks)
        total = sum(a.num_chunks for a in items)
        every: dict[str, Any] = {"chunks_applied": total, "chunks_total": total, "selection": "all"}
        if limit == 0 or not items:
            return self._row_budget(self._long_rows(items, every, query), query, every), weights, every
        w = list(weights) if weights is not None else [1.0] * len(items)
        meta: dict[str, Any] = {"chunks_total": total}
        encoder = self.key_encoder
        q: torch.Tensor | None = None
        if query and encoder is not None and all(a.has_keys and a.key_model == self.key_model
                                                       and a.key_scheme == KEY_SCHEME for a in items):
            q = encoder.query(query)
            scores = torch.cat([a.chunk_relevance(q) for a in items])
            best = float(scores.max()) if len(scores) else -1.0
            meta.update(selection="relevance", relevance=round(best, 4), gated=False)
            threshold = self.min_relevance if gate else None
            if threshold is not None and best < threshold:
                meta.update(chunks_applied=0, gated=True)
                return [], None, meta
            floor = best - self.relevance_margin if threshold is None else max(best - self.relevance_margin, threshold)
            eligible = (scores >= floor).nonzero().flatten()
            top = eligible[scores[eligible].argsort(descending=True)][:limit].tolist()
        elif total <= limit:
            return self._row_budget(self._long_rows(items, every, query), query, every), weights, every
        else:
            with self.hooks.capture() as inputs:  # the decoder only: no vocabulary projection needed
                decoder_of(self.model)(input_ids=torch.tensor([prompt_ids], device=self.device))
            scores = torch.cat([a.chunk_responses(inputs) * abs(wi) for a, wi in zip(items, w)])
            top = scores.topk(limit).indices.tolist()
            meta["selection"] = "response"
        chosen, offset = set(top), 0
        selected: list[Adapter] = []
        kept_weights: list[float] = []
        for a, wi in zip(items, w):
            mine = [c for c in range(a.num_chunks) if offset + c in chosen]
            offset += a.num_chunks
            if mine:
                selected.append(a if len(mine) == a.num_chunks else a.select_chunks(mine))
                kept_weights.append(wi)
        meta["chunks_applied"] = len(chosen)
        selected = self._row_budget(self._long_rows(selected, meta, query, q), query, meta, q)
        return selected, (kept_weights if weights is not None else None), meta

    @torch.no_grad()
    def logits(self, input_ids: list[int] | torch.Tensor,
               adapters: Adapter | list[Adapter] | None = None) -> torch.Tensor:
        """Next-token logits for every position (for checks and evaluation)."""
        ids = torch.as_tensor(input_ids, device=self.device).reshape(1, -1)
        with self.hooks.apply(self._factors_for(adapters, None)):
            return self.model(input_ids=ids).logits[0]

    def describe(self, portable: bool = False) -> dict[str, Any]:
        """Model, checkpoint and widths of this engine.

        :param portable: for result files shared between machines: paths inside this machine's
            model cache become ``<cache>/...`` and a checkpoint inside the repository is given
            relative to it (``d2l info`` shows the real paths).
        """
        model_path, checkpoint = self.loaded.path, self.checkpoint_path or "untrained"
        if portable:
            model_path = _portable_path(model_path, cache_dir(), "<cache>")
            checkpoint = _portable_path(checkpoint, CHECKPOINTS_DIR.parents[1], None)
        return {"base_model": self.loaded.name, "model_path": model_path, "device": self.device,
                "checkpoint": checkpoint, "checkpoint_id": self.checkpoint_id,
                "trained": self.trained, "hypernet_parameters": self.hypernet.num_parameters(),
                "encoder_mode": self.config.encoder_mode, "exit_layer": self.config.exit_layer,
                "rank": self.config.rank, "chunk_tokens": self.chunk_tokens, "chunking": self.chunking,
                "max_chunks": self.max_chunks,
                "key_model": self.key_model, "min_relevance": self.min_relevance,
                "relevance_margin": self.relevance_margin, "autocast": "bf16" if self.autocast else "off",
                "reading_memory": self.memory.key if self.memory is not None else None,
                **({"memory_yield_above": self.memory.yield_above, "memory_max_tokens": self.memory.max_tokens,
                    "memory_max_rows": self.memory.max_rows, "memory_row_use": self.memory.row_use,
                    "memory_follow_on_yield": self.memory.follow_on_yield,
                    "memory_long_documents": self.memory.long_documents,
                    "memory_override": self.memory.override.to_text() if self.memory.override else None}
                   if self.memory is not None else {}),
                "instructions_checkpoint": self.instructions_checkpoint}


def _within_budget(ranked: list[tuple[float, int, int, int]], budget: int) -> tuple[dict[int, list[int]], int]:
    """The row budget's choice: from ``(similarity, adapter, segment, rows)``, the segments kept per
    adapter, best first while the budget lasts (one segment over the budget alone is passed over),
    and the rows they hold."""
    keep: dict[int, list[int]] = {}
    used = 0
    for _, i, seg, n in sorted(ranked, key=lambda r: -r[0]):
        if used + n > budget:
            if used:
                break
            continue
        keep.setdefault(i, []).append(seg)
        used += n
    return keep, used


def _query_text(question: str | list[dict[str, str]]) -> str | None:
    """The text a question is about: the question itself or the last user message."""
    if isinstance(question, str):
        return question
    for message in reversed(question):
        if message.get("role") == "user" and str(message.get("content", "")).strip():
            return str(message["content"])
    return None


def _check_generation(max_new_tokens: Any, temperature: Any, top_p: Any) -> None:
    """:raises InputError: a generation setting transformers would reject with its own error."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise InputError(f"temperature must be a number > 0, got {temperature!r}")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise InputError(f"top_p must be a number in (0, 1], got {top_p!r}")


def _checked_max_chunks(n: int) -> int:
    if n < 0:
        raise ValueError(f"max_chunks must be >= 0 (0 applies every chunk), got {n}")
    return n


def _portable_path(path: str, root: Path, label: str | None) -> str:
    """``path`` relative to ``root`` (prefixed by ``label``) when it lies inside it."""
    try:
        rel = Path(path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return path
    return f"{label}/{rel.as_posix()}" if label else rel.as_posix()


_ENGINES: dict[tuple[Any, ...], D2LEngine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_key(model: str, checkpoint: str | None, device: str, dtype: str, chunk_tokens: int | None,
               chunking: str | None, reading_memory: bool = True) -> tuple[Any, ...]:
    """The key of :func:`get_engine`'s process-level cache (``chunking`` ``None`` is ``"tokens"``)."""
    return (model, checkpoint, device, dtype, chunk_tokens, chunking or "tokens", bool(reading_memory))


def get_engine(model: str = DEFAULT_MODEL, checkpoint: str | None = "default", device: str | None = None,
               dtype: str = DEFAULT_DTYPE, chunk_tokens: int | None = None,
               chunking: str = DEFAULT_CHUNKING, reading_memory: bool = True) -> D2LEngine:
    """One engine per (model, checkpoint, device, dtype, chunk size, chunking, reading memory) per process."""
    from .models import default_device

    device = device or default_device()
    key = engine_key(model, checkpoint, device, dtype, chunk_tokens, chunking, reading_memory)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = D2LEngine(model, checkpoint, device=device, dtype=dtype, chunk_tokens=chunk_tokens,
                                      chunking=chunking, reading_memory=reading_memory)
        return _ENGINES[key]
