"""Running the methods on the workloads and recording every measurement.

Per-document workloads run document by document: every method prepares the document, answers
its questions and releases it before the next document (memory stays bounded; ``hybrid``
reuses the adapter ``d2l`` just made, and is still charged its internalization time). The
stream workload runs method by method over the same event stream: every document is prepared
up front, each edit re-prepares the edited document (``update``), each query is answered
against the document's current text.

Each answer is timed from outside (``wall``): that wall time is the per-query cost. Time to
first token is the generator's own plus the work done before generation (retrieval, routing,
reading the document). Peak memory (growth of the resident set) is measured around every
``prepare`` and around the first answer of each document.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from d2l_haystack.core.engine import D2LEngine
from d2l_haystack.core.errors import D2LError, InputError

from .measure import PeakRSS, kv_cache_bytes
from .workloads import (
    BenchDoc,
    Workload,
    mixed_workload,
    niah_workload,
    squad_article_workload,
    squad_paragraph_workload,
)

logger = logging.getLogger(__name__)

ALL_METHODS = ["base", "icl", "rag", "d2l", "hybrid", "routed"]
ALL_WORKLOADS = ["squad_paragraphs", "squad_articles", "niah", "mixed"]
WARMUP_TEXT = ("The Marlow lighthouse was built in 1873 by the engineer Ada Finch. It stands 41 metres tall "
               "on the northern cliff.")


@dataclass
class BenchConfig:
    """Sizes of one benchmark run (see :meth:`quick` and :meth:`full`)."""

    preset: str = "full"
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    workloads: list[str] = field(default_factory=lambda: list(ALL_WORKLOADS))
    max_new_tokens: int = 24
    squad_paragraph_docs: int = 16
    squad_paragraph_questions: int = 2
    squad_article_docs: int = 3
    squad_article_questions: int = 3
    niah_lengths: list[int] = field(default_factory=lambda: [256, 1024, 4096, 7680, 16384, 32768, 43520])
    niah_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    niah_per_cell: int = 1
    mixed_docs: int = 8
    mixed_queries: int = 40
    mixed_volatile: int = 2
    mixed_edits: int = 3
    mixed_skew: float = 1.1
    accuracy_metric: str = ""
    """Override every workload's accuracy metric (``f1``, ``contains``, ``exact_match``); empty: per workload."""
    measure_memory: bool = True
    router: dict[str, Any] = field(default_factory=dict)
    query_router: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke-sized run (under 5 minutes on 2 idle cores)."""
        base = dict(preset="quick", max_new_tokens=16, squad_paragraph_docs=2, squad_paragraph_questions=2,
                    squad_article_docs=1, squad_article_questions=1, niah_lengths=[256, 1024, 2048],
                    niah_depths=[0.5], mixed_docs=3, mixed_queries=8, mixed_volatile=1, mixed_edits=2)
        return cls(**{**base, **overrides})

    @classmethod
    def full(cls, **overrides: Any) -> BenchConfig:
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_workloads(tokenizer: Any, cfg: BenchConfig) -> list[Workload]:
    out = []
    for name in cfg.workloads:
        if name == "squad_paragraphs":
            out.append(squad_paragraph_workload(tokenizer, cfg.squad_paragraph_docs, cfg.squad_paragraph_questions,
                                                seed=cfg.seed))
        elif name == "squad_articles":
            out.append(squad_article_workload(tokenizer, cfg.squad_article_docs, cfg.squad_article_questions,
                                              seed=cfg.seed))
        elif name == "niah":
            out.append(niah_workload(tokenizer, cfg.niah_lengths, cfg.niah_depths, cfg.niah_per_cell,
                                     seed=1234 + cfg.seed))
        elif name == "mixed":
            out.append(mixed_workload(tokenizer, cfg.mixed_docs, cfg.mixed_queries, cfg.mixed_volatile,
                                      cfg.mixed_edits, skew=cfg.mixed_skew, seed=7 + cfg.seed))
        else:
            raise InputError(f"unknown workload '{name}' (known: {', '.join(ALL_WORKLOADS)})")
    return out


# -- method plumbing ------------------------------------------------------------------------------
def make_method(name: str, engine: D2LEngine, cfg: BenchConfig) -> Any:
    from d2l_haystack.evaluation.methods import METHODS
    from d2l_haystack.evaluation.runner import available_methods

    known = available_methods()
    if name not in known:
        raise InputError(f"unknown method '{name}'; available: {', '.join(known)}")
    if name == "routed":
        return METHODS[name](engine, cfg.max_new_tokens, router=cfg.router or None,  # type: ignore[call-arg]
                             query_router=cfg.query_router or None)
    return METHODS[name](engine, cfg.max_new_tokens)


def warm_method(method: Any) -> None:
    """Prepare, answer and release a tiny document (loads lazily built components, untimed)."""
    try:
        method.prepare("__warmup__", WARMUP_TEXT)
        method.answer("__warmup__", WARMUP_TEXT, "Who built the Marlow lighthouse?")
    finally:
        method.release("__warmup__")
    if hasattr(method, "truncated"):
        method.truncated = 0


def share_adapter(method: Any, engine: D2LEngine, doc_id: str, text: str, seconds: float) -> None:
    """After ``d2l`` prepared a document, offer its adapter to ``hybrid`` (same text, same engine)."""
    adapters = getattr(method, "adapters", None)
    if getattr(method, "name", "") == "d2l" and isinstance(adapters, dict) and doc_id in adapters:
        from d2l_haystack.evaluation.haystack_methods import ADAPTERS

        ADAPTERS.put(engine, text, adapters[doc_id], seconds)


def doc_info(method: Any, doc_id: str) -> dict[str, Any]:
    """What the method holds for a document (``state_bytes``, ``adapter_bytes``, route...)."""
    if hasattr(method, "doc_info"):
        return dict(method.doc_info(doc_id))
    adapters = getattr(method, "adapters", None)
    if isinstance(adapters, dict) and doc_id in adapters:
        n = int(adapters[doc_id].nbytes)
        return {"state_bytes": n, "adapter_bytes": n, "adapter_chunks": int(adapters[doc_id].num_chunks)}
    return {"state_bytes": 0}


def _update(method: Any, doc_id: str, text: str) -> float:
    if hasattr(method, "update"):
        return float(method.update(doc_id, text))
    method.release(doc_id)
    return float(method.prepare(doc_id, text))


# -- measurement of one call ----------------------------------------------------------------------
class Recorder:
    """Collects document rows and query rows of one workload."""

    def __init__(self, engine: D2LEngine, workload: Workload, cfg: BenchConfig,
                 tick: Callable[[int], Any] | None = None) -> None:
        self.engine, self.workload, self.cfg = engine, workload, cfg
        self.tick = tick or (lambda n: None)
        self.doc_rows: list[dict[str, Any]] = []
        self.query_rows: list[dict[str, Any]] = []
        config = engine.model.config
        self.model_config = config
        self.value_bytes = int(engine.model.dtype.itemsize)
        self.window = int(getattr(config, "max_position_embeddings", 8192))

    def prepare(self, method: Any, name: str, doc: BenchDoc, text: str, tokens: int, kind: str,
                version: int = 0) -> None:
        with PeakRSS(self.cfg.measure_memory) as mem:
            t = time.perf_counter()
            seconds = _update(method, doc.id, text) if kind == "edit" else float(method.prepare(doc.id, text))
            wall = time.perf_counter() - t
        share_adapter(method, self.engine, doc.id, text, seconds)
        info = doc_info(method, doc.id)
        self.doc_rows.append({
            "workload": self.workload.name, "method": name, "doc_id": doc.id, "kind": kind, "version": version,
            "doc_tokens": tokens, "prepare_seconds": seconds, "prepare_wall_seconds": wall,
            "peak_prepare_bytes": mem.delta_bytes if self.cfg.measure_memory else None,
            "kv_doc_bytes": kv_cache_bytes(self.model_config, tokens, self.value_bytes),
            "kv_doc_bytes_16bit": kv_cache_bytes(self.model_config, tokens, 2),
            "beyond_window": tokens > self.window, **doc.meta, **info,
        })

    def answer(self, method: Any, name: str, doc: BenchDoc, text: str, tokens: int, question: str,
               answers: list[str], measure: bool, extra: dict[str, Any] | None = None) -> None:
        from d2l_haystack.evaluation.metrics import contains, exact_match, f1_score

        error = None
        with PeakRSS(self.cfg.measure_memory and measure) as mem:
            t = time.perf_counter()
            try:
                r = method.answer(doc.id, text, question)
            except D2LError as exc:  # keep going: the row records the failure
                r, error = None, f"{type(exc).__name__}: {exc}"
            wall = time.perf_counter() - t
        reply = r.text if r is not None else ""
        meta = dict(r.meta) if r is not None else {}
        gen_seconds = float(r.seconds) if r is not None else wall
        ttft = (float(r.time_to_first_token) + max(0.0, wall - gen_seconds)) if r is not None else wall
        prompt_tokens = int(r.prompt_tokens) if r is not None else 0
        self.query_rows.append({
            "workload": self.workload.name, "method": name, "doc_id": doc.id, "doc_tokens": tokens,
            "question": question, "answers": answers, "reply": reply,
            "exact_match": exact_match(reply, answers), "f1": f1_score(reply, answers),
            "contains": contains(reply, answers),
            "seconds": wall, "generation_seconds": gen_seconds, "ttft": ttft, "prompt_tokens": prompt_tokens,
            "new_tokens": int(r.num_tokens) if r is not None else 0,
            "kv_prompt_bytes": kv_cache_bytes(self.model_config, prompt_tokens, self.value_bytes),
            "peak_answer_bytes": mem.delta_bytes if (self.cfg.measure_memory and measure) else None,
            "truncated": bool(meta.get("truncated", False)), "route": meta.get("route", name),
            "right_document": meta.get("right_document"), "error": error,
            "beyond_window": tokens > self.window, **doc.meta, **(extra or {}),
            "meta": {k: v for k, v in meta.items() if k in ("reason", "adapters", "chunk_sources", "chunks",
                                                           "doc_route", "retrieval_seconds")},
        })
        self.tick(1)


def run_per_document(engine: D2LEngine, workload: Workload, cfg: BenchConfig,
                     methods: dict[str, Any], rec: Recorder) -> None:
    from d2l_haystack.evaluation.haystack_methods import ADAPTERS

    for doc in workload.docs:
        for name, method in methods.items():
            rec.prepare(method, name, doc, doc.text, doc.tokens, "initial")
            for i, q in enumerate(doc.questions):
                rec.answer(method, name, doc, doc.text, doc.tokens, q.question, q.answers, measure=(i == 0),
                           extra={k: v for k, v in q.meta.items() if k in ("depth", "length")})
            method.release(doc.id)
        ADAPTERS.clear()


def run_stream(engine: D2LEngine, workload: Workload, cfg: BenchConfig, methods: dict[str, Any],
               rec: Recorder) -> None:
    from d2l_haystack.evaluation.haystack_methods import ADAPTERS

    by_id = {d.id: d for d in workload.docs}
    for name, method in methods.items():
        texts = {d.id: d.text for d in workload.docs}
        tokens = {d.id: d.tokens for d in workload.docs}
        measured: set[str] = set()
        for doc in workload.docs:
            rec.prepare(method, name, doc, doc.text, doc.tokens, "initial")
        for i, ev in enumerate(workload.events):
            doc = by_id[ev["doc"]]
            if ev["kind"] == "edit":
                texts[doc.id], tokens[doc.id] = ev["text"], ev["tokens"]
                rec.prepare(method, name, doc, ev["text"], ev["tokens"], "edit", ev["version"])
                continue
            rec.answer(method, name, doc, texts[doc.id], tokens[doc.id], ev["question"], ev["answers"],
                       measure=doc.id not in measured,
                       extra={"event": i, "about": ev["about"], "version": ev["version"]})
            measured.add(doc.id)
        for doc in workload.docs:
            method.release(doc.id)
    ADAPTERS.clear()


# -- the whole run --------------------------------------------------------------------------------
def run_benchmark(engine: D2LEngine, cfg: BenchConfig, progress: bool = True,
                  on_workload: Callable[[dict[str, Any]], Any] | None = None,
                  workloads: list[Workload] | None = None) -> dict[str, Any]:
    """Run every workload of ``cfg`` with every method; returns the raw results (see :mod:`.report`).

    :param on_workload: called with the raw results so far after each workload (to save partial results).
    :param workloads: run these instead of the ones ``cfg`` describes (tests, custom data).
    """
    from tqdm.auto import tqdm

    from d2l_haystack.evaluation.haystack_methods import embedders

    started = time.time()
    load_start = os.getloadavg()
    if workloads is None:
        workloads = build_workloads(engine.tokenizer, cfg)
    total = sum(w.num_questions for w in workloads) * len(cfg.methods)
    bar = tqdm(total=total, desc="bench", unit="q", disable=not progress, dynamic_ncols=True)
    # warm-up (untimed): the model's first generation, the hypernetwork, the embedding model
    engine.generate("Hello!", max_new_tokens=2)
    engine.internalize(WARMUP_TEXT, progress=False)
    if any(m in cfg.methods for m in ("rag", "hybrid", "routed")):
        embedders()
    results: dict[str, Any] = {}
    timing: dict[str, float] = {}
    # one instance per method for the whole run (every workload releases its documents)
    t0 = time.perf_counter()
    methods: dict[str, Any] = {}
    for name in cfg.methods:
        methods[name] = make_method(name, engine, cfg)
        warm_method(methods[name])
    timing["warm_up"] = time.perf_counter() - t0
    for workload in workloads:
        t0 = time.perf_counter()
        bar.set_description(f"bench {workload.name}")
        rec = Recorder(engine, workload, cfg, bar.update)
        if workload.kind == "stream":
            run_stream(engine, workload, cfg, methods, rec)
        else:
            run_per_document(engine, workload, cfg, methods, rec)
        timing[workload.name] = time.perf_counter() - t0
        results[workload.name] = {"workload": workload.describe(), "documents": rec.doc_rows,
                                  "queries": rec.query_rows,
                                  "events": [{k: v for k, v in e.items() if k != "text"} for e in workload.events]}
        if on_workload is not None:
            on_workload(_raw(engine, cfg, started, load_start, timing, results))
    bar.close()
    for method in methods.values():
        if hasattr(method, "close"):
            method.close()
    return _raw(engine, cfg, started, load_start, timing, results)


def _raw(engine: D2LEngine, cfg: BenchConfig, started: float, load_start: tuple[float, ...],
         timing: dict[str, float], results: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {
        "benchmark": "compare",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.time() - started,
        "workload_seconds": timing,
        "config": cfg.to_dict(),
        "engine": engine.describe(portable=True),
        "window_tokens": int(getattr(engine.model.config, "max_position_embeddings", 8192)),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average_start": list(load_start),
                    "load_average_end": list(os.getloadavg()), "memory_method": PeakRSS.method},
        "workloads": results,
    }


# -- duration estimate ----------------------------------------------------------------------------
PREFILL_A, PREFILL_B = 1.68e-3, 2.27e-7
"""Prefill seconds ``a * t + b * t^2`` for ``t`` prompt tokens (SmolLM2-135M, fp32, 2 idle cores:
about 0.5 s at 256 tokens, 2 s at 1k, 4.4 s at 2k, 29 s at 8k)."""
DECODE_SECONDS_PER_TOKEN = 1 / 17
INTERNALIZE_SECONDS_PER_CHUNK = 0.45
INDEX_SECONDS_PER_1K_TOKENS = 0.15
ANSWER_TOKENS = 8
CALIBRATION = 1.9
"""Measured over modelled: the last two full runs of 2026-11-27 (``--threads 1``, memory measured,
chunk keys) took 55.8 and 49.1 min against 27 modelled (1.7-2.1x per workload), from one thread
instead of two, answers longer than :data:`ANSWER_TOKENS` and embedding chunk keys."""


def _prefill(tokens: float) -> float:
    return PREFILL_A * tokens + PREFILL_B * tokens * tokens


def estimate_seconds(workloads: list[Workload], cfg: BenchConfig, chunk_tokens: int = 512,
                     window: int = 8192) -> dict[str, float]:
    """A rough duration estimate per workload on 2 idle cores (model load and warm-up excluded),
    scaled by :data:`CALIBRATION` to what the last full runs measured."""
    decode = ANSWER_TOKENS * DECODE_SECONDS_PER_TOKEN
    rag_prompt = 700
    out: dict[str, float] = {}
    for w in workloads:
        items: list[tuple[int, int]] = []  # (document tokens, questions)
        if w.kind == "stream":
            counts: dict[str, int] = {}
            for e in w.events:
                if e["kind"] == "query":
                    counts[e["doc"]] = counts.get(e["doc"], 0) + 1
            items = [(d.tokens, counts.get(d.id, 0)) for d in w.docs]
            edits = [e["tokens"] for e in w.events if e["kind"] == "edit"]
        else:
            items = [(d.tokens, len(d.questions)) for d in w.docs]
            edits = []
        total = 0.0
        for m in cfg.methods:
            for tokens, nq in items + [(t, 0) for t in edits]:
                chunks = -(-tokens // chunk_tokens)
                internalize = chunks * INTERNALIZE_SECONDS_PER_CHUNK
                index = tokens / 1000 * INDEX_SECONDS_PER_1K_TOKENS
                if m == "base":
                    total += nq * (_prefill(30) + decode)
                elif m == "icl":
                    total += nq * (_prefill(min(tokens, window)) + decode)
                elif m == "d2l":
                    total += internalize + nq * (_prefill(30) + decode)
                elif m == "rag":
                    total += index + nq * (_prefill(min(tokens, rag_prompt)) + decode)
                elif m == "hybrid":  # the adapter is shared with d2l when both run
                    total += index + (0 if "d2l" in cfg.methods else internalize) \
                        + nq * (_prefill(min(tokens, rag_prompt)) + decode)
                else:  # routed: internalized up to the router's 4096 tokens, else indexed
                    prep = internalize + index if tokens <= 4096 else index
                    total += prep + nq * (_prefill(min(tokens, rag_prompt) if tokens > 4096 else 30) + decode)
        out[w.name] = total * CALIBRATION
    return out
