"""Decide per query: answer with the adapter of a relevant internalized document, or with RAG."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from haystack import Document, component, default_from_dict, default_to_dict

from d2l_haystack.core.errors import InputError
from d2l_haystack.stores.adapter_store import AdapterStore

from ._utils import source_key

logger = logging.getLogger(__name__)

MODES = ("auto", "d2l", "rag", "hybrid")


def chunk_similarity(doc: Document, query: np.ndarray | None) -> float | None:
    """Cosine similarity of a retrieved chunk to the query (normalised embeddings).

    From the chunk's embedding when it has one, else from a FAISS ``Flat`` score
    (``1 / (1 + squared L2)``, and ``cos = 1 - d / 2`` for unit vectors).
    """
    if doc.embedding is not None and query is not None and len(doc.embedding) == len(query):
        emb = np.asarray(doc.embedding, dtype=np.float32)
        norm = float(np.linalg.norm(emb)) or 1.0
        return float(emb @ query / norm)
    if doc.score is not None and doc.score > 0:
        return 1.0 - (1.0 / float(doc.score) - 1.0) / 2.0
    return None


@component
class QueryRouter:
    """Route a query to the adapter of a relevant internalized document, to RAG, or to both.

    Relevance: every internalized document has routing embeddings (normalised MiniLM
    embeddings of its passages, stored with its adapter by :class:`DocToLoRAConverter`); a
    document's score is the best cosine similarity between the query embedding and its
    passages. Only documents scoring at least ``threshold`` get their adapter used (at most
    ``max_adapters``, each within ``adapter_margin`` of the best), so questions unrelated to
    every internalized document never get an adapter (an irrelevant adapter makes answers
    worse than none).

    Routes (``mode="auto"``; a retrieved chunk more relevant than the best adapter's document by
    ``rag_margin`` sends the query to RAG without the adapter):

    * ``d2l``: a relevant adapter and no retrieved chunk at ``hybrid_threshold`` or above;
      emitted on ``adapter`` (the query) with ``adapter_ids``.
    * ``hybrid``: a relevant adapter *and* retrieved chunks at ``hybrid_threshold`` or above
      (the question also touches RAG-side documents); emitted on ``rag`` with ``adapter_ids``
      and those chunks.
    * ``rag``: no relevant adapter; emitted on ``rag`` with the retrieved chunks scoring at least
      ``min_chunk_similarity`` (possibly none: the base model then answers alone).

    ``mode="d2l"`` always emits on ``adapter`` (adapters only when relevant), ``mode="rag"``
    always on ``rag`` without adapters, ``mode="hybrid"`` adds the chunks whenever an adapter is
    used. ``routing`` describes the decision (scores, thresholds, reason) and is meant for the
    generator's ``routing`` input, which copies it into the reply's meta.

    Usage example::

        from haystack import Pipeline
        from haystack_integrations.components.embedders.sentence_transformers import (
            SentenceTransformersTextEmbedder)
        from d2l_haystack.components import QueryRouter

        router = QueryRouter(store="kb/adapters", threshold=0.45)
        embedding = SentenceTransformersTextEmbedder(model=minilm_path, normalize_embeddings=True)
        out = router.run(query="What is the warranty?", query_embedding=embedding.run("...")["embedding"])
        print(out["routing"]["route"], out["adapter_ids"])

    :param store: the :class:`AdapterStore` (or its folder) holding internalized documents.
    :param threshold: minimum cosine similarity for an adapter to be used.
    :param max_adapters: most adapters composed for one query.
    :param adapter_margin: further adapters must score within this of the best one.
    :param hybrid_threshold: chunk similarity that adds retrieved chunks to an adapter
        (``None``: never hybrid in ``auto`` mode).
    :param rag_margin: in ``auto`` mode, a retrieved chunk this much more similar to the query
        than the best adapter's document sends the query to RAG without the adapter (the answer
        is more likely on the RAG side); ``None`` disables the rule.
    :param min_chunk_similarity: retrieved chunks below this are dropped from RAG prompts.
    :param max_chunks: most chunks passed on.
    :param mode: ``auto``, ``d2l``, ``rag`` or ``hybrid``.
    """

    def __init__(self, store: AdapterStore | str, threshold: float = 0.35, max_adapters: int = 1,
                 adapter_margin: float = 0.05, hybrid_threshold: float | None = 0.5, rag_margin: float | None = 0.1,
                 min_chunk_similarity: float = 0.2, max_chunks: int = 4, mode: str = "auto") -> None:
        if mode not in MODES:
            raise InputError(f"QueryRouter mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.store = store
        self.threshold = threshold
        self.max_adapters = max_adapters
        self.adapter_margin = adapter_margin
        self.hybrid_threshold = hybrid_threshold
        self.rag_margin = rag_margin
        self.min_chunk_similarity = min_chunk_similarity
        self.max_chunks = max_chunks
        self.mode = mode
        self._store: AdapterStore | None = None
        self._index: tuple[int, list[str], np.ndarray, np.ndarray] | None = None
        self._index_lock = threading.Lock()

    def warm_up(self) -> None:
        """Open the adapter store (idempotent)."""
        if self._store is None:
            self._store = AdapterStore.resolve(self.store)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, store=self.store, threshold=self.threshold, max_adapters=self.max_adapters,
                               adapter_margin=self.adapter_margin, hybrid_threshold=self.hybrid_threshold,
                               rag_margin=self.rag_margin,
                               min_chunk_similarity=self.min_chunk_similarity, max_chunks=self.max_chunks,
                               mode=self.mode)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueryRouter:
        params = dict(data.get("init_parameters", {}))
        if isinstance(params.get("store"), dict):
            params["store"] = AdapterStore.from_dict(params["store"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    # -- document-level index -------------------------------------------------------------
    def _document_index(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(doc ids, passage embeddings, owner row per passage)``, rebuilt when the store changes."""
        self.warm_up()
        store = self._store
        assert store is not None
        with self._index_lock:
            store.count()  # refreshes the manifest, bumping the generation on changes
            if self._index is not None and self._index[0] == store.generation:
                return self._index[1], self._index[2], self._index[3]
            ids: list[str] = []
            mats: list[np.ndarray] = []
            owners: list[np.ndarray] = []
            for entry in store.list():
                try:
                    matrix = store.get_routing(entry["id"])
                except Exception as exc:  # a damaged routing file: that document is not routable
                    logger.warning("QueryRouter: %s", exc)
                    continue
                if matrix is None or not len(matrix):
                    continue
                owners.append(np.full(len(matrix), len(ids)))
                ids.append(entry["id"])
                mats.append(matrix)
            emb = np.concatenate(mats).astype(np.float32) if mats else np.zeros((0, 1), np.float32)
            own = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
            self._index = (store.generation, ids, emb, own)
            return ids, emb, own

    def score_documents(self, query_embedding: list[float]) -> list[tuple[str, float]]:
        """Every internalized document with its relevance to the query, best first."""
        ids, emb, owners = self._document_index()
        if not ids:
            return []
        q = np.asarray(query_embedding, dtype=np.float32)
        if emb.shape[1] != q.shape[0]:
            raise InputError(f"query embedding has {q.shape[0]} dimensions, the routing embeddings "
                             f"have {emb.shape[1]} (use the same embedding model)")
        q = q / (float(np.linalg.norm(q)) or 1.0)
        sims = emb @ q
        best = np.full(len(ids), -1.0, dtype=np.float32)
        np.maximum.at(best, owners, sims)
        order = np.argsort(-best)
        return [(ids[i], float(best[i])) for i in order]

    # -- run ------------------------------------------------------------------------------
    @component.output_types(adapter=str, rag=str, adapter_ids=list[str], documents=list[Document],
                            routing=dict[str, Any])
    def run(self, query: str, query_embedding: list[float], documents: list[Document] | None = None,
            mode: str | None = None) -> dict[str, Any]:
        """Route one query.

        :param query: the question.
        :param query_embedding: its normalised embedding (same model as the routing embeddings).
        :param documents: retrieved chunks (RAG side), optional.
        :param mode: overrides the init ``mode`` for this query.
        :returns: ``adapter`` (the query, route ``d2l``) or ``rag`` (the query, routes ``rag`` and
            ``hybrid``), plus ``adapter_ids`` (always), ``documents`` (with ``rag``) and ``routing``.
        """
        if not query or not query.strip():
            raise InputError("query is empty")
        mode = mode or self.mode
        if mode not in MODES:
            raise InputError(f"QueryRouter mode must be one of {', '.join(MODES)}, got {mode!r}")
        start = time.perf_counter()
        scored = self.score_documents(query_embedding) if mode != "rag" else []
        chosen: list[tuple[str, float]] = []
        for doc_id, score in scored:
            if score < self.threshold or len(chosen) >= self.max_adapters:
                break
            if chosen and score < chosen[0][1] - self.adapter_margin:
                break
            chosen.append((doc_id, score))
        q = np.asarray(query_embedding, dtype=np.float32)
        q = q / (float(np.linalg.norm(q)) or 1.0)
        chunks = []
        for doc in documents or []:
            sim = chunk_similarity(doc, q)
            if sim is None or sim >= self.min_chunk_similarity:
                chunks.append((doc, sim))
        chunks.sort(key=lambda c: -(c[1] if c[1] is not None else 0.0))
        chunks = chunks[: self.max_chunks]
        best_chunk = max((s for _, s in chunks if s is not None), default=None)

        outranked = (mode == "auto" and chosen and self.rag_margin is not None and best_chunk is not None
                     and best_chunk >= chosen[0][1] + self.rag_margin)
        if outranked:
            route, used_chunks = "rag", chunks
            reason = (f"a retrieved chunk ({best_chunk:.2f}) is more relevant than the best internalized "
                      f"document ({chosen[0][1]:.2f}: {chosen[0][0]}) by at least {self.rag_margin:.2f}")
        elif mode == "rag" or (not chosen and mode != "d2l"):
            route, used_chunks = "rag", chunks
            reason = ("mode 'rag'" if mode == "rag" else
                      f"no internalized document reaches the relevance threshold {self.threshold:.2f}"
                      + (f" (best {scored[0][1]:.2f}: {scored[0][0]})" if scored else " (none internalized)"))
        elif mode == "d2l":
            route, used_chunks = "d2l", []
            reason = ("mode 'd2l': " + (f"adapter relevance {chosen[0][1]:.2f} >= {self.threshold:.2f}" if chosen
                                        else "no relevant adapter, the base model answers alone"))
        elif mode == "hybrid" or (self.hybrid_threshold is not None and best_chunk is not None
                                  and best_chunk >= self.hybrid_threshold):
            floor = self.min_chunk_similarity if mode == "hybrid" or self.hybrid_threshold is None \
                else self.hybrid_threshold
            route = "hybrid"
            used_chunks = [(d, s) for d, s in chunks if s is None or s >= floor]
            reason = (f"adapter relevance {chosen[0][1]:.2f} >= {self.threshold:.2f} and "
                      + ("mode 'hybrid'" if mode == "hybrid"
                         else f"retrieved chunks also relevant ({best_chunk:.2f} >= {self.hybrid_threshold:.2f})"))
        else:
            route, used_chunks = "d2l", []
            reason = f"adapter relevance {chosen[0][1]:.2f} >= threshold {self.threshold:.2f}"
        adapter_ids = [d for d, _ in chosen] if route != "rag" else []
        routing = {
            "route": route, "reason": reason, "mode": mode, "threshold": self.threshold,
            "adapters": [{"id": d, "score": round(s, 4)} for d, s in chosen] if route != "rag" else [],
            "candidates": [{"id": d, "score": round(s, 4)} for d, s in scored[:5]],
            "chunks": [{"id": d.id, "source": source_key(d.meta, d.id),
                        "similarity": None if s is None else round(s, 4)} for d, s in used_chunks],
            "router_seconds": round(time.perf_counter() - start, 5),
        }
        out: dict[str, Any] = {"adapter_ids": adapter_ids, "routing": routing}
        if route == "d2l":
            out["adapter"] = query
        else:
            out["rag"] = query
            out["documents"] = [d for d, _ in used_chunks]
        return out

    @component.output_types(adapter=str, rag=str, adapter_ids=list[str], documents=list[Document],
                            routing=dict[str, Any])
    async def run_async(self, query: str, query_embedding: list[float], documents: list[Document] | None = None,
                        mode: str | None = None) -> dict[str, Any]:
        """:meth:`run` for Haystack's ``Pipeline.run_async``: reading the adapter store's keys in a worker thread, so
        the event loop (a server's other requests) is not blocked."""
        return await asyncio.to_thread(self.run, query, query_embedding, documents, mode)
