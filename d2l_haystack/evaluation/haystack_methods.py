"""The Haystack-side evaluation methods ``rag``, ``hybrid`` and ``routed``.

Importing this module registers them with :func:`d2l_haystack.evaluation.methods.register_method`
(``available_methods()`` imports it), so ``d2l eval --methods base,icl,rag,d2l,routed,hybrid``
and ``d2l bench`` can compare all six. Every method follows the
:class:`~d2l_haystack.evaluation.methods.Method` interface: ``prepare(doc_id, text) -> seconds``,
``answer(doc_id, text, question) -> GenerationResult`` (with ``meta``), ``release(doc_id)``, and
additionally ``update(doc_id, text) -> seconds`` (a changed document) and ``doc_info(doc_id)``
(what is held per document, for the benchmark).

* ``rag``: the document is split into passages of :data:`SPLIT_WORDS` words (overlap
  :data:`SPLIT_OVERLAP`), embedded with the packaged all-MiniLM-L6-v2 (normalised) and written
  to an in-memory FAISS ``Flat`` store of its own; a question retrieves the :data:`TOP_K` nearest
  passages, which go into the prompt (most similar first, at most :data:`MAX_CONTEXT_TOKENS`
  tokens) of the same base model (``engine.generate(question, context=...)``). These are the
  Workspace's defaults (``split_length`` 60, ``split_overlap`` 10, ``top_k`` 4) and the
  ``AdapterGenerator``'s context budget, so ``rag`` here is the RAG side of the system.
  Retrieval is restricted to the question's own document (the evaluation knows it).
* ``hybrid``: the document's adapter *and* the retrieved passages in the prompt.
* ``routed``: the system itself. A :class:`~d2l_haystack.kb.workspace.Workspace` in a temporary
  folder sharing the evaluation's engine: ``prepare`` is ``Workspace.index_text`` (the
  :class:`~d2l_haystack.components.InternalizationRouter` decides D2L or RAG for the document;
  the converter also embeds routing passages), ``answer`` is ``Workspace.query`` (the
  :class:`~d2l_haystack.components.QueryRouter` decides adapter, RAG or hybrid for the query,
  over *every* document currently in the workspace: unlike the other methods it is not told
  which document a question is about), ``update`` re-indexes a changed text (the workspace keeps
  its change history, so frequently edited documents move to RAG), ``release`` removes it.

Timing: ``GenerationResult.seconds`` is the whole answer (query embedding + retrieval +
routing + generation); ``time_to_first_token`` adds the work before generation to the
generator's own time to first token.

The ``routed`` method gives the workspace the evaluation's already-loaded engine by placing it
in the core's process-level engine cache under the key the workspace will ask for (the
Workspace API has no parameter to pass an engine in), so the base model is loaded once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from d2l_haystack.core.engine import D2LEngine, GenerationResult
from d2l_haystack.core.errors import D2LError
from d2l_haystack.core.textio import content_hash

from .methods import Method, register_method

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # before Haystack is imported (offline machine)

logger = logging.getLogger(__name__)

SPLIT_WORDS = 60
"""Words per retrieval passage (the Workspace's ``split_length``)."""
SPLIT_OVERLAP = 10
"""Overlap between passages in words (the Workspace's ``split_overlap``)."""
TOP_K = 4
"""Passages retrieved per question (the Workspace's ``top_k``)."""
MAX_CONTEXT_TOKENS = 1536
"""Token budget of the retrieved context (the ``AdapterGenerator``'s ``max_context_tokens``)."""
EMBEDDING_BYTES_PER_VALUE = 4

_EMBEDDERS: dict[str, tuple[Any, Any]] = {}
_EMBEDDERS_LOCK = threading.Lock()


def embedders(model: str | None = None) -> tuple[Any, Any]:
    """``(document embedder, text embedder)`` for the MiniLM model, warmed up once per process."""
    from d2l_haystack.core.keys import resolve_embedding_model

    path = resolve_embedding_model(model)
    with _EMBEDDERS_LOCK:
        if path not in _EMBEDDERS:
            from haystack_integrations.components.embedders.sentence_transformers import (
                SentenceTransformersDocumentEmbedder,
                SentenceTransformersTextEmbedder,
            )

            doc = SentenceTransformersDocumentEmbedder(model=path, normalize_embeddings=True, progress_bar=False,
                                                       local_files_only=True)
            text = SentenceTransformersTextEmbedder(model=path, normalize_embeddings=True, progress_bar=False,
                                                    local_files_only=True)
            doc.warm_up()
            text.warm_up()
            _EMBEDDERS[path] = (doc, text)
        return _EMBEDDERS[path]


# -- adapters shared between methods of one run ---------------------------------------------------
class AdapterCache:
    """Adapters keyed by (engine, checkpoint, chunk size, content hash), with what they cost.

    ``hybrid`` reuses the adapter the ``d2l`` method made for the same text (the benchmark puts
    it here), so a run internalizes each document once; the recorded seconds are still charged
    to ``hybrid``'s cost, as if it had internalized the document itself.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[Any, ...], tuple[Any, float]] = {}

    @staticmethod
    def key(engine: D2LEngine, text: str) -> tuple[Any, ...]:
        return (id(engine), engine.checkpoint_id, engine.chunk_tokens, engine.chunking, content_hash(text))

    def get(self, engine: D2LEngine, text: str) -> tuple[Any, float] | None:
        return self._items.get(self.key(engine, text))

    def put(self, engine: D2LEngine, text: str, adapter: Any, seconds: float) -> None:
        self._items[self.key(engine, text)] = (adapter, seconds)

    def drop(self, engine: D2LEngine, text: str) -> None:
        self._items.pop(self.key(engine, text), None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


ADAPTERS = AdapterCache()


def internalize_cached(engine: D2LEngine, text: str) -> tuple[Any, float, bool]:
    """``(adapter, seconds it cost, reused)`` from :data:`ADAPTERS`, internalizing on a miss."""
    hit = ADAPTERS.get(engine, text)
    if hit is not None:
        return hit[0], hit[1], True
    t = time.perf_counter()
    adapter = engine.internalize(text, progress=False)
    seconds = time.perf_counter() - t
    ADAPTERS.put(engine, text, adapter, seconds)
    return adapter, seconds, False


# -- retrieval ------------------------------------------------------------------------------------
class _DocIndex:
    """One document's passages in an in-memory FAISS store."""

    def __init__(self, text: str, doc_id: str, embedding_model: str | None = None) -> None:
        from haystack import Document
        from haystack.components.preprocessors import DocumentSplitter
        from haystack_integrations.components.retrievers.faiss import FAISSEmbeddingRetriever
        from haystack_integrations.document_stores.faiss import FAISSDocumentStore

        from d2l_haystack.core.keys import EMBEDDING_DIM

        doc_embedder, self.text_embedder = embedders(embedding_model)
        splitter = DocumentSplitter(split_by="word", split_length=SPLIT_WORDS, split_overlap=SPLIT_OVERLAP)
        if hasattr(splitter, "warm_up"):
            splitter.warm_up()
        passages = splitter.run(documents=[Document(content=text, meta={"d2l_doc_id": doc_id})])["documents"]
        for i, p in enumerate(passages):
            p.meta["d2l_chunk"] = i
        embedded = doc_embedder.run(documents=passages)["documents"]
        self.store = FAISSDocumentStore(embedding_dim=EMBEDDING_DIM)
        self.store.write_documents(embedded)
        self.retriever = FAISSEmbeddingRetriever(document_store=self.store, top_k=TOP_K)
        self.num_passages = len(embedded)
        self.nbytes = sum(len((d.content or "").encode("utf-8")) for d in embedded) \
            + self.num_passages * EMBEDDING_DIM * EMBEDDING_BYTES_PER_VALUE

    def retrieve(self, question: str) -> list[Any]:
        emb = self.text_embedder.run(text=question)["embedding"]
        return self.retriever.run(query_embedding=emb)["documents"]


def build_context(engine: D2LEngine, passages: list[Any], max_tokens: int = MAX_CONTEXT_TOKENS) -> tuple[str, int]:
    """Passages joined in retrieval order within ``max_tokens`` (the first always kept): ``(text, used)``."""
    parts: list[str] = []
    total = 0
    for p in passages:
        text = (p.content or "").strip()
        if not text:
            continue
        n = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        if parts and total + n > max_tokens:
            break
        parts.append(text)
        total += n
    return "\n\n".join(parts), len(parts)


def _with_overhead(result: GenerationResult, before: float, total: float, **meta: Any) -> GenerationResult:
    """Charge the work before generation to the result's seconds and time to first token."""
    result.meta.update(generation_seconds=round(result.seconds, 4), pre_generation_seconds=round(before, 4), **meta)
    result.time_to_first_token = before + result.time_to_first_token
    result.seconds = total
    return result


class RAGMethod(Method):
    """Top-k MiniLM/FAISS passages of the document in the prompt of the same base model."""

    name = "rag"

    def __init__(self, engine: D2LEngine, max_new_tokens: int = 32, embedding_model: str | None = None) -> None:
        super().__init__(engine, max_new_tokens)
        self.embedding_model = embedding_model
        self.indexes: dict[str, _DocIndex] = {}
        embedders(embedding_model)  # load the embedding model now, not inside the first prepare's timing

    def prepare(self, doc_id: str, text: str) -> float:
        if doc_id in self.indexes:
            return 0.0
        t = time.perf_counter()
        self.indexes[doc_id] = _DocIndex(text, doc_id, self.embedding_model)
        return time.perf_counter() - t

    def update(self, doc_id: str, text: str) -> float:
        """A changed document: rebuild its passages."""
        self.release(doc_id)
        return self.prepare(doc_id, text)

    def _retrieve(self, doc_id: str, text: str, question: str) -> tuple[str, int, float]:
        if doc_id not in self.indexes:
            self.prepare(doc_id, text)
        t = time.perf_counter()
        passages = self.indexes[doc_id].retrieve(question)
        context, used = build_context(self.engine, passages)
        return context, used, time.perf_counter() - t

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        start = time.perf_counter()
        context, used, retrieval = self._retrieve(doc_id, text, question)
        before = time.perf_counter() - start
        result = self.engine.generate(question, context=context, max_new_tokens=self.max_new_tokens)
        return _with_overhead(result, before, time.perf_counter() - start, route="rag", chunks=used,
                              retrieval_seconds=round(retrieval, 4))

    def release(self, doc_id: str) -> None:
        self.indexes.pop(doc_id, None)

    def doc_info(self, doc_id: str) -> dict[str, Any]:
        index = self.indexes.get(doc_id)
        return {"state_bytes": index.nbytes if index else 0, "chunks": index.num_passages if index else 0}


class HybridMethod(RAGMethod):
    """The document's adapter plus the retrieved passages in the prompt."""

    name = "hybrid"

    def __init__(self, engine: D2LEngine, max_new_tokens: int = 32, embedding_model: str | None = None) -> None:
        super().__init__(engine, max_new_tokens, embedding_model)
        self.adapters: dict[str, Any] = {}
        self.texts: dict[str, str] = {}
        self.reused: dict[str, bool] = {}

    def prepare(self, doc_id: str, text: str) -> float:
        if doc_id in self.adapters:
            return 0.0
        adapter, seconds, reused = internalize_cached(self.engine, text)
        self.adapters[doc_id], self.texts[doc_id], self.reused[doc_id] = adapter, text, reused
        return seconds + super().prepare(doc_id, text)

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        start = time.perf_counter()
        if doc_id not in self.adapters:
            self.prepare(doc_id, text)
        context, used, retrieval = self._retrieve(doc_id, text, question)
        before = time.perf_counter() - start
        result = self.engine.generate(question, adapters=self.adapters[doc_id], context=context,
                                      max_new_tokens=self.max_new_tokens)
        return _with_overhead(result, before, time.perf_counter() - start, route="hybrid", chunks=used,
                              retrieval_seconds=round(retrieval, 4))

    def release(self, doc_id: str) -> None:
        super().release(doc_id)
        self.adapters.pop(doc_id, None)
        self.reused.pop(doc_id, None)
        text = self.texts.pop(doc_id, None)
        if text is not None:
            ADAPTERS.drop(self.engine, text)

    def doc_info(self, doc_id: str) -> dict[str, Any]:
        info = super().doc_info(doc_id)
        adapter = self.adapters.get(doc_id)
        info.update(adapter_bytes=adapter.nbytes if adapter is not None else 0,
                    adapter_reused=self.reused.get(doc_id, False))
        info["state_bytes"] += info["adapter_bytes"]
        return info


# -- the routed system ----------------------------------------------------------------------------
def share_engine(engine: D2LEngine, settings: dict[str, Any], device: str) -> None:
    """Put ``engine`` in the core's engine cache under the key the workspace's components will use.

    The workspace is opened with ``device=engine.device``, so the key is the same whether or not
    :func:`~d2l_haystack.core.get_engine` normalizes a missing device.
    """
    from d2l_haystack.core import engine as engine_module

    key = engine_module.engine_key(settings["model"], settings["checkpoint"], device, settings["dtype"],
                                   settings["chunk_tokens"], settings.get("chunking"),
                                   settings.get("reading_memory", True))
    with engine_module._ENGINES_LOCK:
        engine_module._ENGINES[key] = engine


class RoutedMethod(Method):
    """A temporary :class:`~d2l_haystack.kb.workspace.Workspace`: the project's routers decide.

    :param router: :class:`~d2l_haystack.components.InternalizationRouter` parameters.
    :param query_router: :class:`~d2l_haystack.components.QueryRouter` parameters.
    :param workspace_dir: where the temporary workspace goes (default: the system temp folder).
    """

    name = "routed"

    def __init__(self, engine: D2LEngine, max_new_tokens: int = 32, router: dict[str, Any] | None = None,
                 query_router: dict[str, Any] | None = None, workspace_dir: str | None = None) -> None:
        super().__init__(engine, max_new_tokens)
        from d2l_haystack.kb.workspace import Workspace

        self.folder = Path(tempfile.mkdtemp(prefix="d2l-routed-", dir=workspace_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self.settings: dict[str, Any] = {
            "model": engine.loaded.path, "checkpoint": engine.checkpoint_path, "dtype": "float32",
            "chunk_tokens": engine.chunk_tokens, "chunking": engine.chunking,
            "reading_memory": engine.reading_memory, "split_length": SPLIT_WORDS, "split_overlap": SPLIT_OVERLAP,
            "top_k": TOP_K, "max_new_tokens": max_new_tokens, "router": dict(router or {}),
            "query_router": dict(query_router or {}),
        }
        share_engine(engine, self.settings, engine.device)
        self.workspace = Workspace(self.folder / "kb", device=engine.device, **self.settings)
        self.routes: dict[str, dict[str, Any]] = {}

    def _index(self, doc_id: str, text: str) -> float:
        t = time.perf_counter()
        result = self.workspace.index_text(text, doc_id)
        seconds = time.perf_counter() - t
        self.routes[doc_id] = {"route": result.route, "reason": result.reason, "action": result.action,
                               "chunks": result.chunks, "num_tokens": result.num_tokens}
        return seconds

    def prepare(self, doc_id: str, text: str) -> float:
        if doc_id in self.routes:
            return 0.0
        return self._index(doc_id, text)

    def update(self, doc_id: str, text: str) -> float:
        """A changed document: re-indexed in place (its change history is kept, the router sees it)."""
        return self._index(doc_id, text)

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        if doc_id not in self.routes:
            self.prepare(doc_id, text)
        start = time.perf_counter()
        q = self.workspace.query(question, max_new_tokens=self.max_new_tokens)
        total = time.perf_counter() - start
        gen = float(q.meta.get("seconds", q.generation_seconds) or 0.0)
        ttft = float(q.meta.get("time_to_first_token", gen) or 0.0)
        usage = q.meta.get("usage", {}) or {}
        adapters = [a["id"] for a in q.adapters]
        sources = sorted({str(c["source"]) for c in q.chunks if c.get("source")})
        result = GenerationResult(text=q.answer.strip(), num_tokens=int(usage.get("completion_tokens", 0)),
                                  seconds=total, time_to_first_token=max(0.0, total - gen) + ttft,
                                  prompt_tokens=int(usage.get("prompt_tokens", 0)))
        result.meta.update(route=q.route, reason=q.reason, adapters=adapters, chunk_sources=sources,
                           chunks=len(q.chunks), doc_route=self.routes[doc_id]["route"],
                           right_document=(doc_id in adapters or doc_id in sources) if (adapters or sources)
                           else None, generation_seconds=round(gen, 4))
        return result

    def release(self, doc_id: str) -> None:
        if self.routes.pop(doc_id, None) is not None:
            try:
                self.workspace.remove_file(doc_id)
            except D2LError as exc:  # pragma: no cover - a damaged temporary workspace
                logger.warning("routed: could not remove %s: %s", doc_id, exc)

    def doc_info(self, doc_id: str) -> dict[str, Any]:
        info = dict(self.routes.get(doc_id, {}))
        entry = self.workspace.adapters.info(doc_id) if info.get("route") == "d2l" else None
        info["adapter_bytes"] = int(entry["nbytes"]) if entry else 0
        from d2l_haystack.core.keys import EMBEDDING_DIM

        info["state_bytes"] = info["adapter_bytes"] + int(info.get("chunks", 0)) * EMBEDDING_DIM \
            * EMBEDDING_BYTES_PER_VALUE
        return info

    def close(self) -> None:
        """Delete the temporary workspace."""
        self._cleanup()


register_method("rag", RAGMethod)
register_method("hybrid", HybridMethod)
register_method("routed", RoutedMethod)

__all__ = ["ADAPTERS", "AdapterCache", "HybridMethod", "RAGMethod", "RoutedMethod", "build_context", "embedders",
           "internalize_cached", "share_engine"]
