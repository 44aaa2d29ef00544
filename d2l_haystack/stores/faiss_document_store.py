"""A :class:`FAISSDocumentStore` that persists itself atomically and is safe to share.

``faiss-haystack`` persistence is manual (``save(path)`` writes ``.faiss`` then ``.json``,
non-atomically, and nothing locks concurrent writers). This subclass:

* saves after every change (or once at the end of a :meth:`batch`), each file written to a
  temporary name and renamed into place; the ``.json`` (documents with their embeddings) is
  written last and records the SHA-256 of the ``.faiss`` file it belongs to;
* on load, rebuilds the FAISS index from the ``.json`` documents when the ``.faiss`` file is
  missing, damaged or from another save (a crash between the two renames);
* serializes writers with a thread lock plus an inter-process file lock (``<index>.lock``) and
  reloads from disk before reading or writing when another process saved in between;
* is shared per index path within a process (:meth:`open`), so the indexing and the query
  pipeline of one process use one copy of the index.

It serializes as a plain ``FAISSDocumentStore`` (same init parameters and file format), because
``FAISSEmbeddingRetriever.from_dict`` only accepts that type;
:func:`d2l_haystack.kb.pipelines.load_pipeline` binds such stores back to the shared persistent one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from haystack.dataclasses import Document
from haystack.document_stores.errors import DocumentStoreError
from haystack.document_stores.types import DuplicatePolicy
from haystack_integrations.document_stores.faiss import FAISSDocumentStore

from d2l_haystack.core.errors import D2LError
from d2l_haystack.core.keys import EMBEDDING_DIM

from .files import FileLock, atomic_write_bytes, file_signature, sha256_file, shared_lock, writable

logger = logging.getLogger(__name__)

class DamagedIndexError(D2LError, DocumentStoreError):
    """The persisted documents of a FAISS index (its ``.json``) are missing or unreadable; a
    :class:`~d2l_haystack.core.errors.D2LError` (one line at the command line) and Haystack's
    ``DocumentStoreError`` (for code that catches that)."""


_BASE_TYPE = "haystack_integrations.document_stores.faiss.document_store.FAISSDocumentStore"
_REGISTRY: dict[str, PersistentFAISSDocumentStore] = {}
_REGISTRY_LOCK = threading.Lock()


class PersistentFAISSDocumentStore(FAISSDocumentStore):
    """FAISS document store with atomic auto-save, integrity checks and locking.

    Usage example::

        from haystack import Document
        from d2l_haystack.stores import PersistentFAISSDocumentStore

        store = PersistentFAISSDocumentStore.open("kb/faiss/index", embedding_dim=384)
        with store.batch():          # one save at the end
            store.delete_by_filter({"field": "meta.file_path", "operator": "==", "value": "a.md"})
            store.write_documents([Document(content="...", embedding=[0.0] * 384, meta={"file_path": "a.md"})])

    :param index_path: base path of the ``.faiss``/``.json`` pair; ``None`` keeps it in memory.
    :param index_string: FAISS index factory string.
    :param embedding_dim: embedding dimension (384 for the packaged MiniLM).
    """

    def __init__(self, index_path: str | None = None, index_string: str = "Flat",
                 embedding_dim: int = EMBEDDING_DIM) -> None:
        self._lock: FileLock | None = shared_lock(f"{index_path}.lock") if index_path else None
        self._tlock = threading.RLock()
        self._depth = 0
        self._dirty = False
        self._signature: tuple[int, int, int] | None = None
        super().__init__(index_path=None, index_string=index_string, embedding_dim=embedding_dim)
        self.index_path = index_path
        if index_path and (self._json_path().exists() or Path(index_path).with_suffix(".faiss").exists()):
            self.load(index_path)

    # -- sharing, serialization -----------------------------------------------------------
    @classmethod
    def open(cls, index_path: str | Path, index_string: str = "Flat",
             embedding_dim: int = EMBEDDING_DIM) -> PersistentFAISSDocumentStore:
        """The process-wide shared store persisted at ``index_path``."""
        key = os.path.realpath(os.path.expanduser(str(index_path)))
        with _REGISTRY_LOCK:
            store = _REGISTRY.get(key)
            if store is None:
                store = cls(str(index_path), index_string=index_string, embedding_dim=embedding_dim)
                _REGISTRY[key] = store
            elif store.embedding_dim != embedding_dim:
                raise DocumentStoreError(f"FAISS index {index_path} has embedding_dim {store.embedding_dim}, "
                                         f"not {embedding_dim}")
            return store

    @classmethod
    def resolve(cls, store: Any) -> Any:
        """Turn a plain persisted ``FAISSDocumentStore`` (or its dict) into the shared persistent one;
        the dict of another document store (``PgvectorDocumentStore``) is built by its own class."""
        if store is None or isinstance(store, PersistentFAISSDocumentStore):
            return store
        if isinstance(store, dict) and store.get("type") not in (_BASE_TYPE, f"{__name__}.{cls.__name__}"):
            from haystack.core.serialization import import_class_by_name

            other: Any = import_class_by_name(str(store.get("type")))  # a Haystack document store class
            return other.from_dict(store)
        if isinstance(store, dict):
            params = store.get("init_parameters", {})
            if not params.get("index_path"):
                return FAISSDocumentStore.from_dict(store)
            return cls.open(params["index_path"], params.get("index_string", "Flat"),
                            int(params.get("embedding_dim", EMBEDDING_DIM)))
        if isinstance(store, FAISSDocumentStore) and store.index_path:
            return cls.open(store.index_path, store.index_string, store.embedding_dim)
        return store

    def to_dict(self) -> dict[str, Any]:
        """Serialize as a plain ``FAISSDocumentStore`` (accepted by ``FAISSEmbeddingRetriever``)."""
        return {"type": _BASE_TYPE, "init_parameters": {"index_path": self.index_path,
                                                         "index_string": self.index_string,
                                                         "embedding_dim": self.embedding_dim}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersistentFAISSDocumentStore:
        params = data.get("init_parameters", {})
        if params.get("index_path"):
            return cls.open(params["index_path"], params.get("index_string", "Flat"),
                            int(params.get("embedding_dim", EMBEDDING_DIM)))
        return cls(**params)

    # -- locking and persistence ----------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock:
            if self._lock is None:
                yield
                return
            with self._lock:
                yield

    @contextmanager
    def batch(self) -> Iterator[PersistentFAISSDocumentStore]:
        """Group changes: one lock, one reload check, one save at the end.

        If the block raises, the outermost batch rolls the in-memory store back to the last
        saved state (nothing of the failed batch is saved).
        """
        with self._locked():
            if self._depth == 0:
                self._refresh()
            self._depth += 1
            ok = False
            try:
                yield self
                ok = True
            finally:
                self._depth -= 1
                if self._depth == 0 and self._dirty:
                    self._dirty = False
                    if not self.index_path:
                        pass
                    elif ok:
                        self.save(self.index_path)
                    elif file_signature(self._json_path()) is not None:
                        self.load(self.index_path)
                    else:
                        super().delete_all_documents()

    def _json_path(self) -> Path:
        return Path(self.index_path).with_suffix(".json") if self.index_path else Path(os.devnull)

    def _refresh(self) -> None:
        """Reload if another process (or instance) saved since we last read or wrote."""
        if not self.index_path:
            return
        sig = file_signature(self._json_path())
        if sig == self._signature:
            return
        if sig is None:  # removed from disk behind our back: start empty
            super().delete_all_documents()
            self._signature = None
        else:
            self.load(self.index_path)

    def save(self, index_path: str | Path) -> None:
        """Write the ``.faiss`` and ``.json`` files atomically (``.json`` last: the commit point)."""
        import faiss

        path = Path(index_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            faiss_path = path.with_suffix(".faiss")
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.faiss")
            try:
                faiss.write_index(self._get_index_or_raise(), str(tmp))
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                digest = sha256_file(tmp)
                os.replace(tmp, faiss_path)
            finally:
                tmp.unlink(missing_ok=True)
            data = {
                "documents": [doc.to_dict() for doc in self.documents.values()],
                "id_map": self.id_map, "inverse_id_map": self.inverse_id_map, "next_id": self._next_id,
                "faiss_sha256": digest, "embedding_dim": self.embedding_dim,
            }
            atomic_write_bytes(path.with_suffix(".json"), json.dumps(data).encode("utf-8"))
            if self.index_path and Path(self.index_path) == path:
                self._signature = file_signature(path.with_suffix(".json"))

    def load(self, index_path: str | Path) -> None:
        """Load the pair; rebuild the FAISS index from the ``.json`` when they do not match.

        :raises DocumentStoreError: the ``.json`` file is missing or damaged.
        """
        import faiss

        path = Path(index_path)
        json_path, faiss_path = path.with_suffix(".json"), path.with_suffix(".faiss")
        with self._locked():
            sig = file_signature(json_path)
            try:
                data = json.loads(json_path.read_text(encoding="utf-8"))
                documents = {d["id"]: Document.from_dict(d) for d in data["documents"]}
                id_map = {int(k): v for k, v in data["id_map"].items()}
                inverse = {k: int(v) for k, v in data["inverse_id_map"].items()}
                next_id = int(data["next_id"])
            except FileNotFoundError as exc:
                raise DamagedIndexError(f"FAISS index {faiss_path} has no document file {json_path}") from exc
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DamagedIndexError(f"damaged FAISS document file {json_path}: {_one_line(exc)}") from exc
            index = None
            expected = data.get("faiss_sha256")
            if faiss_path.is_file() and (expected is None or sha256_file(faiss_path) == expected):
                try:
                    index = faiss.read_index(str(faiss_path))
                except RuntimeError:
                    index = None
                if index is not None and (index.ntotal != len(id_map) or index.d != self.embedding_dim):
                    index = None
            self.documents, self.id_map, self.inverse_id_map, self._next_id = documents, id_map, inverse, next_id
            self._signature = sig  # before a write-back, which sets it to the file it writes
            if index is None:
                self._rebuild_index()
                if writable(faiss_path.parent):  # written back once, so the warning does not repeat
                    logger.warning("FAISS index %s is missing or does not match %s; rebuilt it from the documents",
                                   faiss_path, json_path)
                    self._save_index(faiss_path, expected or "")
                else:
                    logger.warning("FAISS index %s is missing or does not match %s; rebuilt it in memory "
                                   "(read-only folder)", faiss_path, json_path)
            else:
                self.index = index

    def _save_index(self, faiss_path: Path, expected: str) -> None:
        """Write the rebuilt ``.faiss`` file; the ``.json`` too when it names another checksum."""
        import faiss

        tmp = faiss_path.with_name(f".{faiss_path.name}.{os.getpid()}.tmp.faiss")
        try:
            faiss.write_index(self._get_index_or_raise(), str(tmp))
            if sha256_file(tmp) == expected:
                os.replace(tmp, faiss_path)
                return
        finally:
            tmp.unlink(missing_ok=True)
        if self.index_path:
            self.save(self.index_path)

    def _rebuild_index(self) -> None:
        self._create_new_index()
        ids, vectors = [], []
        for int_id, doc_id in sorted(self.id_map.items()):
            doc = self.documents.get(doc_id)
            if doc is not None and doc.embedding is not None:
                ids.append(int_id)
                vectors.append(doc.embedding)
        if vectors:
            self._get_index_or_raise().add_with_ids(np.array(vectors, dtype="float32"), np.array(ids, dtype="int64"))

    # -- writes (auto-saved) --------------------------------------------------------------
    def write_documents(self, documents: list[Document], policy: DuplicatePolicy = DuplicatePolicy.FAIL) -> int:
        with self.batch():
            written = super().write_documents(documents, policy)
            self._dirty = self._dirty or written > 0
            return written

    def delete_documents(self, document_ids: list[str]) -> None:
        with self.batch():
            before = len(self.documents)
            super().delete_documents(document_ids)
            self._dirty = self._dirty or len(self.documents) != before

    def delete_all_documents(self) -> None:
        with self.batch():
            super().delete_all_documents()
            self._dirty = True

    def delete_by_filter(self, filters: dict[str, Any]) -> int:
        with self.batch():
            return super().delete_by_filter(filters)

    def update_by_filter(self, filters: dict[str, Any], meta: dict[str, Any]) -> int:
        with self.batch():
            updated = super().update_by_filter(filters, meta)
            self._dirty = self._dirty or updated > 0
            return updated

    # -- reads (fresh) --------------------------------------------------------------------
    def count_documents(self) -> int:
        with self._locked():
            self._refresh()
            return super().count_documents()

    def filter_documents(self, filters: dict[str, Any] | None = None) -> list[Document]:
        with self._locked():
            self._refresh()
            return super().filter_documents(filters)

    def search(self, query_embedding: list[float], top_k: int = 10,
               filters: dict[str, Any] | None = None) -> list[Document]:
        with self._locked():
            self._refresh()
            return super().search(query_embedding, top_k=top_k, filters=filters)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
