"""Write embedded chunks, replacing the earlier chunks of the same sources."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.document_stores.types import DuplicatePolicy

from d2l_haystack.stores.adapter_store import AdapterStore
from d2l_haystack.stores.faiss_document_store import PersistentFAISSDocumentStore

from ._utils import source_filter, source_key


@component
class ChunkWriter:
    """Write the chunks of source documents into a document store, replacing their old chunks.

    In Haystack 3 a chunk's id hashes its content and meta, so an edited file yields new chunk
    ids and a plain ``DocumentWriter`` would keep the stale ones. This writer first deletes every
    chunk of each incoming source (filter on ``meta.file_path`` / ``meta.d2l_doc_id``), then
    writes the new chunks, in one batch (one save for a :class:`PersistentFAISSDocumentStore`).
    When ``adapter_store`` is given, the adapters of those sources are deleted too (a document
    that moved from the adapter side to the RAG side is not answered twice).

    Usage example::

        from d2l_haystack.components import ChunkWriter
        from d2l_haystack.stores import PersistentFAISSDocumentStore

        writer = ChunkWriter(document_store=PersistentFAISSDocumentStore.open("kb/faiss/index"))
        writer.run(documents=embedded_chunks)   # chunks carrying meta["file_path"]

    :param document_store: the store to write into (a persisted ``FAISSDocumentStore`` is bound
        to the shared :class:`PersistentFAISSDocumentStore` of its path).
    :param adapter_store: optional :class:`AdapterStore` (or folder) whose adapters of the written
        sources are removed.
    :param policy: duplicate policy name for the write (``OVERWRITE``, ``SKIP``, ``FAIL``, ``NONE``).
    """

    def __init__(self, document_store: Any, adapter_store: AdapterStore | str | None = None,
                 policy: str = "OVERWRITE") -> None:
        self.document_store = PersistentFAISSDocumentStore.resolve(document_store)
        self.adapter_store = adapter_store
        self.policy = policy.name if isinstance(policy, DuplicatePolicy) else str(policy)
        DuplicatePolicy[self.policy]  # validate early

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, document_store=self.document_store, adapter_store=self.adapter_store,
                               policy=self.policy)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkWriter:
        params = dict(data.get("init_parameters", {}))
        if isinstance(params.get("document_store"), dict):
            params["document_store"] = PersistentFAISSDocumentStore.resolve(params["document_store"])
        if isinstance(params.get("adapter_store"), dict):
            params["adapter_store"] = AdapterStore.from_dict(params["adapter_store"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    @component.output_types(documents_written=int, sources=list[str])
    def run(self, documents: list[Document]) -> dict[str, Any]:
        """Replace the chunks of every source present in ``documents``.

        :returns: ``documents_written`` and the ``sources`` (ids) that were replaced.
        """
        sources = list(dict.fromkeys(source_key(d.meta, d.id) for d in documents))
        store = self.document_store
        if store is None:  # pragma: no cover - __init__ requires one
            raise ValueError("ChunkWriter needs a document store")
        batch = store.batch() if isinstance(store, PersistentFAISSDocumentStore) else contextlib.nullcontext()
        with batch:
            for key in sources:
                store.delete_by_filter(source_filter(key))
            written = store.write_documents(documents, policy=DuplicatePolicy[self.policy]) if documents else 0
        adapters = AdapterStore.resolve(self.adapter_store)
        if adapters is not None:
            for key in sources:
                adapters.delete(key)
        return {"documents_written": written, "sources": sources}

    @component.output_types(documents_written=int, sources=list[str])
    async def run_async(self, documents: list[Document]) -> dict[str, Any]:
        """:meth:`run` for Haystack's ``Pipeline.run_async``: writing the stores in a worker thread, so
        the event loop (a server's other requests) is not blocked."""
        return await asyncio.to_thread(self.run, documents)
