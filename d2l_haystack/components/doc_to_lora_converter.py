"""Internalize documents into LoRA adapters kept in an :class:`AdapterStore`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from haystack import Document, component, default_from_dict, default_to_dict

from d2l_haystack.core.errors import InputError
from d2l_haystack.core.keys import resolve_embedding_model, split_words
from d2l_haystack.core.models import DEFAULT_DTYPE, DEFAULT_MODEL
from d2l_haystack.core.textio import DEFAULT_CHUNKING, content_hash, validate_text
from d2l_haystack.stores.adapter_store import AdapterStore
from d2l_haystack.stores.faiss_document_store import PersistentFAISSDocumentStore

from ._utils import document_label, source_filter, source_key

logger = logging.getLogger(__name__)


def routing_sections(text: str, title: str = "", words: int = 50, overlap: int = 12) -> list[str]:
    """The passages of a document embedded for query routing (title prefixed to each)."""
    parts = split_words(text, words, overlap) or [text[:2000]]
    return [f"{title}\n{p}" if title and not p.startswith(title) else p for p in parts]


@dataclass
class PreparedAdapter:
    """What :meth:`DocToLoRAConverter.prepare` decided for one document, for :meth:`~DocToLoRAConverter.commit`.

    ``action``: ``internalized`` (the hypernetwork ran), ``copied`` (a stored adapter of the same
    content is reused) or ``unchanged`` (already stored under its key; nothing to write).
    """

    key: str
    action: str
    start: float
    adapter: Any = None
    routing: np.ndarray | None = None
    title: str = ""
    seconds: float = 0.0


@component
class DocToLoRAConverter:
    """Turn each document into a LoRA adapter (one hypernetwork forward pass) and store it.

    Every document is stored under its source key: ``meta["d2l_doc_id"]``, else
    ``meta["file_path"]``, else the document id. A document whose content hash is already
    stored under that key for the same base model and hypernetwork checkpoint is skipped, and a
    copy of a stored document (same content under another key) reuses the stored adapter;
    neither runs the hypernetwork. The passages of each document are also embedded (MiniLM,
    normalised) and stored as routing embeddings for :class:`QueryRouter`.

    The base model and hypernetwork come from the core's process-level cache
    (:func:`~d2l_haystack.core.get_engine`), shared with :class:`AdapterGenerator`.

    Bad input: every document is validated before anything is written. An empty or binary
    document raises :class:`~d2l_haystack.core.errors.InputError` naming it and leaves the store
    untouched; with ``skip_invalid=True`` it is skipped with a warning instead (and not returned).

    When ``document_store`` is given, the chunks of internalized documents are removed from it
    (a document that moved from the RAG side to the adapter side is not retrieved twice).

    Usage example::

        from haystack import Document
        from d2l_haystack.components import DocToLoRAConverter
        from d2l_haystack.stores import AdapterStore

        converter = DocToLoRAConverter(store="kb/adapters")
        result = converter.run(documents=[Document(content=open("manual.md").read(),
                                                   meta={"file_path": "manual.md"})])
        print(result["internalized"], result["documents"][0].meta["adapter_id"])

    :param store: an :class:`AdapterStore`, its folder, or its serialized form.
    :param model: base model (embedded name, local folder or hub id).
    :param checkpoint: hypernetwork checkpoint (``"default"``, a folder, or ``None`` for untrained).
    :param device: ``cpu``/``cuda`` (default: CUDA when available).
    :param dtype: base model dtype.
    :param chunk_tokens: tokens per internalized chunk (default: the checkpoint's).
    :param chunking: ``"tokens"`` (chunks of ``chunk_tokens``) or ``"sentences"`` (one chunk per
        sentence: better answers on short factual text, an adapter as large as its sentence count;
        :class:`~d2l_haystack.core.D2LEngine`).
    :param reading_memory: give each adapter the checkpoint's reading-memory rows (if it has a
        memory; :mod:`~d2l_haystack.core.memory`): better reading of ordinary documents, for one
        more pass over the document and 4.2 KB per token. ``False``: the hypernetwork's adapter alone.
    :param embedding_model: sentence-transformers model for routing embeddings (``None``: the
        packaged all-MiniLM-L6-v2).
    :param routing_words: words per routing passage.
    :param document_store: optional FAISS store whose chunks of internalized documents are removed.
    :param skip_invalid: skip empty/binary documents with a warning instead of raising.
    :param progress: show a progress bar for long documents (``None``: automatic).
    """

    def __init__(self, store: AdapterStore | str, model: str = DEFAULT_MODEL, checkpoint: str | None = "default",
                 device: str | None = None, dtype: str = DEFAULT_DTYPE, chunk_tokens: int | None = None,
                 chunking: str = DEFAULT_CHUNKING, reading_memory: bool = True,
                 embedding_model: str | None = None, routing_words: int = 50, document_store: Any = None,
                 skip_invalid: bool = False, progress: bool | None = False) -> None:
        self.store = store
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.chunk_tokens = chunk_tokens
        self.chunking = chunking
        self.reading_memory = reading_memory
        self.embedding_model = embedding_model
        self.routing_words = routing_words
        self.document_store = document_store
        self.skip_invalid = skip_invalid
        self.progress = progress
        self._store: AdapterStore | None = None
        self._engine: Any = None
        self._embedder: Any = None

    # -- lifecycle ------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load the base model, hypernetwork and embedding model (shared, idempotent)."""
        if self._store is None:
            self._store = AdapterStore.resolve(self.store)
        if self._engine is None:
            from d2l_haystack.core import get_engine

            self._engine = get_engine(self.model, self.checkpoint, self.device, self.dtype, self.chunk_tokens,
                                      self.chunking, self.reading_memory)
        if self._embedder is None:
            from haystack_integrations.components.embedders.sentence_transformers import (
                SentenceTransformersDocumentEmbedder,
            )

            embedder = SentenceTransformersDocumentEmbedder(
                model=resolve_embedding_model(self.embedding_model), normalize_embeddings=True,
                progress_bar=False, local_files_only=True)
            embedder.warm_up()
            self._embedder = embedder

    @property
    def engine(self) -> Any:
        """The :class:`~d2l_haystack.core.D2LEngine` (loaded by this access, if not yet)."""
        self.warm_up()
        return self._engine

    @property
    def loaded_engine(self) -> Any:
        """The engine if :meth:`warm_up` has loaded it, else ``None`` (never loads a model)."""
        return self._engine

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, store=self.store, model=self.model, checkpoint=self.checkpoint, device=self.device,
            dtype=self.dtype, chunk_tokens=self.chunk_tokens, chunking=self.chunking,
            reading_memory=self.reading_memory, embedding_model=self.embedding_model,
            routing_words=self.routing_words, document_store=self.document_store,
            skip_invalid=self.skip_invalid, progress=self.progress)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocToLoRAConverter:
        params = dict(data.get("init_parameters", {}))
        data = {**data, "init_parameters": params}
        if isinstance(params.get("store"), dict):
            params["store"] = AdapterStore.from_dict(params["store"])
        if isinstance(params.get("document_store"), dict):
            params["document_store"] = PersistentFAISSDocumentStore.resolve(params["document_store"])
        return default_from_dict(cls, data)

    # -- helpers --------------------------------------------------------------------------
    def routing_embeddings(self, text: str, title: str = "") -> np.ndarray:
        """Normalised MiniLM embeddings of a document's passages, ``(sections, dim)`` (at the
        engine's internalization precision, :data:`~d2l_haystack.core.engine.DEFAULT_AUTOCAST`)."""
        self.warm_up()
        sections = routing_sections(text, title, self.routing_words, max(0, self.routing_words // 4))
        with self._engine.precision():
            docs = self._embedder.run(documents=[Document(content=s) for s in sections])["documents"]
        return np.array([d.embedding for d in docs], dtype=np.float32)

    def internalize(self, text: str, key: str, title: str = "",
                    timings: dict[str, float] | None = None) -> tuple[Any, np.ndarray]:
        """The heavy part of :meth:`prepare` alone: the adapter of ``text`` (the hypernetwork pass)
        and its routing embeddings. Reads and writes no store (a batch worker,
        :mod:`d2l_haystack.kb.ray_index`, calls this and the workspace commits the result).

        :param timings: if given, seconds per stage are added to it (the engine's stages,
            :meth:`~d2l_haystack.core.D2LEngine.internalize`, and ``routing``).
        """
        self.warm_up()
        adapter = self._engine.internalize(text, source=key, progress=self.progress, timings=timings)
        start = time.perf_counter()
        routing = self.routing_embeddings(text, title)
        if timings is not None:
            timings["routing"] = timings.get("routing", 0.0) + time.perf_counter() - start
        return adapter, routing

    # -- the two steps of run(): prepare (the heavy part) and commit (the store writes) -----------
    def prepare(self, doc: Document, force: bool = False) -> PreparedAdapter:
        """Decide what ``doc`` needs and do the heavy part: run the hypernetwork (and embed the
        routing passages) unless a stored adapter can serve it. Writes nothing.

        A caller that must keep readers from seeing a half-updated knowledge base (the
        :class:`~d2l_haystack.kb.workspace.Workspace`) runs this first and :meth:`commit` under
        its own lock, so readers wait only for the store writes.

        :raises InputError: empty or binary content.
        """
        validate_text(doc.content if doc.content is not None else "", document_label(doc))
        self.warm_up()
        store, engine = self._store, self._engine
        assert store is not None
        text = doc.content or ""
        key = source_key(doc.meta, doc.id)
        digest = content_hash(text)
        base_model, checkpoint_id = engine.loaded.name, engine.checkpoint_id
        start = time.perf_counter()
        current = not force and store.is_current(key, digest, base_model, checkpoint_id, engine.chunking)
        damage = store.check(key) if current else None  # checksums the stored files: once
        if damage is not None:
            logger.warning("DocToLoRAConverter: %s; internalizing it again", damage)
            current = False
        if current:
            return PreparedAdapter(key=key, action="unchanged", start=start)
        title = str(doc.meta.get("title") or "")
        twin = None if force else store.find(digest, base_model, checkpoint_id, engine.chunking)
        if twin is not None and store.check(twin["id"]) is not None:
            twin = None
        adapter = store.get(twin["id"]) if twin is not None else None
        if adapter is not None and twin is not None:
            routing = store.get_routing(twin["id"])
            action = "copied"
        else:
            (adapter, routing), action = self.internalize(text, key, title), "internalized"
        if routing is None:
            routing = self.routing_embeddings(text, title)
        return PreparedAdapter(key=key, action=action, start=start, adapter=adapter, routing=routing, title=title,
                               seconds=time.perf_counter() - start)

    def commit(self, doc: Document, prepared: PreparedAdapter) -> Document:
        """Store what :meth:`prepare` made (nothing for an unchanged document) and remove the
        document's chunks from the document store; returns the document with its D2L meta. Loads
        no model (what was prepared elsewhere, a Ray worker's adapter, is committed without one)."""
        if self._store is None:
            self._store = AdapterStore.resolve(self.store)
        store = self._store
        assert store is not None
        key = prepared.key
        if prepared.adapter is not None:
            store.put(key, prepared.adapter, source=str(doc.meta.get("file_path") or key), routing=prepared.routing,
                      title=prepared.title, meta={"internalize_seconds": round(prepared.seconds, 4),
                                                  "chunking": self.chunking,
                                                  "reading_memory": self.reading_memory})
        chunk_store = PersistentFAISSDocumentStore.resolve(self.document_store)
        if chunk_store is not None:
            chunk_store.delete_by_filter(source_filter(key))
        meta = {**doc.meta, "adapter_id": key, "d2l_route": "d2l", "d2l_action": prepared.action,
                "d2l_internalize_seconds": round(time.perf_counter() - prepared.start, 4)}
        return replace(doc, meta=meta)

    # -- run ------------------------------------------------------------------------------
    @component.output_types(documents=list[Document], internalized=int, skipped=int)
    def run(self, documents: list[Document], force: bool = False) -> dict[str, Any]:
        """Internalize ``documents`` into the store.

        A stored adapter is only reused after its files pass their checksum (a damaged one is
        regenerated).

        :param documents: documents with text content.
        :param force: run the hypernetwork even for documents already stored.
        :returns: ``documents`` (copies with ``meta["adapter_id"]``, ``meta["d2l_route"] = "d2l"``
            and ``meta["d2l_internalize_seconds"]``), ``internalized`` (hypernetwork runs) and
            ``skipped`` (already stored with the same content, model and checkpoint, or copied).
        :raises InputError: an empty or binary document (unless ``skip_invalid``); nothing is stored.
        """
        valid: list[Document] = []
        for doc in documents:
            try:
                validate_text(doc.content if doc.content is not None else "", document_label(doc))
            except InputError:
                if not self.skip_invalid:
                    raise
                logger.warning("DocToLoRAConverter: skipping %s: empty or binary content", document_label(doc))
                continue
            valid.append(doc)
        if not valid:
            return {"documents": [], "internalized": 0, "skipped": 0}
        out, internalized, skipped = [], 0, 0
        for doc in valid:
            prepared = self.prepare(doc, force=force)
            out.append(self.commit(doc, prepared))
            internalized += prepared.action == "internalized"
            skipped += prepared.action != "internalized"
        return {"documents": out, "internalized": internalized, "skipped": skipped}

    @component.output_types(documents=list[Document], internalized=int, skipped=int)
    async def run_async(self, documents: list[Document], force: bool = False) -> dict[str, Any]:
        """:meth:`run` for Haystack's ``Pipeline.run_async``: the hypernetwork pass and the store
        writes in a worker thread, so the event loop (a server's other requests) is not blocked."""
        return await asyncio.to_thread(self.run, documents, force)
