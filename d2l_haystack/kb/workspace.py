"""The on-disk state of a knowledge base: adapters, FAISS index, file records, statistics.

Layout of a workspace folder::

    workspace.json      settings (base model, checkpoint, embedding model, router thresholds...)
    files.json          a record of every source: path, hash, route and why, change history,
                        query count; plus query statistics (replaced atomically)
    journal.json        the operation in progress, if any (replayed when the workspace is reopened)
    adapters/           the AdapterStore (safetensors + manifest)
    faiss/index.faiss   the FAISS index and its documents (index.json), saved atomically
    .lock               inter-process lock
    .gate               readers-writer lock: queries share it, committing an update holds it alone

Public operations (thread-safe; two processes may use one workspace, e.g. a watcher and the
CLI): :meth:`Workspace.index_file`, :meth:`~Workspace.index_text`, :meth:`~Workspace.index_paths`,
:meth:`~Workspace.remove_file`, :meth:`~Workspace.rename_file`, :meth:`~Workspace.reroute`,
:meth:`~Workspace.query`, :meth:`~Workspace.status`, :meth:`~Workspace.verify`, :meth:`~Workspace.repair`.

Consistency: a query runs its pipeline under the shared side of the commit gate and an update
applies its changes to the stores (adapter, chunks, record) under the exclusive side, so a
query sees a document's old state or its new one, never a mix. The heavy work of an update
(the hypernetwork pass, or splitting and embedding) happens before the gate, so a query waits
at most for the store writes of one update.

Crash safety: every file is written atomically, and a mutating operation is recorded in
``journal.json`` before it starts and cleared when it is done. An index interrupted before its
commit (while internalizing or embedding) changed nothing and is rolled back on reopening; one
interrupted while writing the stores, a rename or a removal is redone (all are idempotent), so an
interrupted run leaves the old state or the new one. :meth:`~Workspace.verify` and
:meth:`~Workspace.repair` (:mod:`d2l_haystack.kb.maintenance`) check and fix the rest.

Parts (each its own module): :mod:`~d2l_haystack.kb.indexing` (decide, prepare, commit one
source), :mod:`~d2l_haystack.kb.sources` (which files, how they are read),
:mod:`~d2l_haystack.kb.component_set` (the indexing components), :mod:`~d2l_haystack.kb.records`
(file records), :mod:`~d2l_haystack.kb.answers` (query inputs and results),
:mod:`~d2l_haystack.kb.maintenance` (journal recovery, verify, repair), :mod:`~d2l_haystack.kb.state`
(where records, journal and locks live). This class orchestrates them under its locks.

Usage example::

    from d2l_haystack.kb.workspace import Workspace

    ws = Workspace("kb")                         # created on first use
    ws.index_paths(["docs/"])                    # routes each file to D2L or RAG
    answer = ws.query("What is the warranty period?", explain=True)
    print(answer.route, answer.answer)
    for doc in ws.status()["documents"]:
        print(doc["path"], doc["route"], doc["reason"])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from d2l_haystack.components._utils import source_filter
from d2l_haystack.components.source_file_converter import read_source, title_of
from d2l_haystack.core.errors import D2LError, InputError
from d2l_haystack.core.keys import EMBEDDING_DIM
from d2l_haystack.core.textio import content_hash, validate_text
from d2l_haystack.kb import indexing
from d2l_haystack.kb.answers import QueryResult, pipeline_inputs, query_result
from d2l_haystack.kb.answers import explain as explain_answer
from d2l_haystack.kb.component_set import WorkspaceComponents
from d2l_haystack.kb.indexing import IndexResult
from d2l_haystack.kb.maintenance import recover, repair, verify
from d2l_haystack.kb.records import (
    recent_route_changes,
    renamed_record,
    status_row,
    totals,
)
from d2l_haystack.kb.settings import WorkspaceError, open_config, settings_of
from d2l_haystack.kb.sources import INTERNAL_FOLDERS, SourceFiles
from d2l_haystack.kb.sources import supports as _supports
from d2l_haystack.kb.state import FolderState, StateBackend
from d2l_haystack.stores import AdapterStore, PersistentFAISSDocumentStore
from d2l_haystack.stores.faiss_document_store import DamagedIndexError
from d2l_haystack.stores.files import writable

logger = logging.getLogger(__name__)


class Workspace:
    """A knowledge base folder: index files, route them, answer questions, report status.

    :param path: the workspace folder.
    :param create: create the workspace if the folder does not exist or is empty (otherwise a
        missing workspace raises :class:`WorkspaceError`).
    :param device: ``cpu``/``cuda`` for the models (not saved).
    :param settings: any of :data:`~d2l_haystack.kb.settings.DEFAULT_SETTINGS`; given values are
        saved in ``workspace.json``.
    :raises WorkspaceError: missing (with ``create=False``), not a workspace, or damaged.
    """

    def __init__(self, path: str | Path, *, create: bool = True, device: str | None = None,
                 recover: bool = True, **settings: Any) -> None:
        self.path = Path(path).expanduser().resolve()
        self.device = device
        self._query_lock = threading.Lock()
        self._files: dict[str, dict[str, Any]] = {}
        self._stats: dict[str, Any] = {}
        self._query_pipeline: Any = None
        config = open_config(self.path, create=create, **settings)
        self.config = config
        self.settings: dict[str, Any] = settings_of(config)
        self.source_files = SourceFiles(self.path, self.settings["max_file_bytes"])
        """Which files are indexed and how they are read (:mod:`d2l_haystack.kb.sources`)."""
        self._state: StateBackend = open_state(self.path, self.settings)
        self._lock, self._gate, self._journal = self._state.lock, self._state.gate, self._state.journal
        self.adapters = AdapterStore.open(self.path / "adapters")
        self.rag_index_problem: str | None = None
        """Why the RAG index could not be read (``None``: healthy); :meth:`repair` rebuilds it."""
        self.document_store: Any = self._open_document_store()
        """The RAG chunks: a :class:`PersistentFAISSDocumentStore` in the folder, or a
        ``PgvectorDocumentStore`` when the ``store`` setting names a PostgreSQL database."""
        self.components = WorkspaceComponents(self.settings, adapters=self.adapters,
                                              document_store=self.document_store, device=device)
        """The indexing components, built on first use (:mod:`d2l_haystack.kb.component_set`)."""
        with self._locked():
            pass  # loads files.json (damage is reported here)
        if self.read_only:
            if self._journal.pending():
                logger.warning("workspace %s is read-only: an interrupted update is waiting; it is redone "
                               "by the next writing command where the workspace can be written", self.path)
        else:
            self._recover(heavy=recover)

    def _open_document_store(self) -> Any:
        """The RAG index; a damaged one is kept on disk as it is (for :meth:`repair`) and replaced in
        memory by an empty one, so status and adapter answers keep working."""
        if self.settings["store"]:
            from d2l_haystack.kb.postgres import chunk_store

            return chunk_store(self.settings)
        try:
            store = PersistentFAISSDocumentStore.open(self.path / "faiss" / "index", embedding_dim=EMBEDDING_DIM)
            store.count_documents()  # a store this process already holds re-reads the files if they changed
            self.rag_index_problem = None
            return store
        except DamagedIndexError as exc:
            self.rag_index_problem = str(exc)
            logger.warning("workspace %s: %s; RAG chunks cannot be retrieved until `d2l repair -w %s` rebuilds "
                           "the index", self.path, exc, self.path)
            return PersistentFAISSDocumentStore(None, embedding_dim=EMBEDDING_DIM)

    def _reopen_document_store(self) -> None:
        """Open the RAG index again (after :meth:`repair` moved a damaged one aside): the components
        and the query pipeline that held the old one are built anew on next use."""
        self.document_store = self._open_document_store()
        self.components = WorkspaceComponents(self.settings, adapters=self.adapters,
                                              document_store=self.document_store, device=self.device)
        self._query_pipeline = None

    @property
    def read_only(self) -> bool:
        """Whether this process cannot write the workspace (a read-only mount or no permission):
        :meth:`query` and :meth:`status` work, without counting queries; updates raise
        :class:`WorkspaceError`."""
        return not writable(self.path)

    @property
    def pending_update(self) -> bool:
        """Whether an interrupted update waits in the journal (redone by the next writing command)."""
        return self._journal.pending()

    @property
    def store(self) -> str:
        """Where the records and RAG chunks live: the folder, or the database (password hidden)."""
        return self._state.describe()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r}, documents={len(self._files)})"

    @classmethod
    def open(cls, path: str | Path, **kwargs: Any) -> Workspace:
        """Open an existing workspace (never creates one)."""
        return cls(path, create=False, **kwargs)

    @staticmethod
    def supports(path: str | Path) -> bool:
        """Whether ``path`` has a file type the workspace can index (for watchers)."""
        return _supports(path)

    # -- state ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The updates' lock (threads, processes, hosts); reloads the records if another process
        changed them."""
        with self._lock:
            loaded = self._state.load()
            if loaded is not None:
                self._files, self._stats = loaded
            yield

    def _save_files(self) -> None:
        self._state.save(self._files, self._stats)

    def close(self) -> None:
        """Release the database connections of a PostgreSQL workspace (a folder one holds none)."""
        self._state.close()
        closer = getattr(self.document_store, "close", None)
        if self.settings["store"] and closer is not None:
            closer()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _journal_op(self, op: dict[str, Any] | None) -> None:
        """Record the update about to start (every update passes here first), or clear it.

        :raises WorkspaceError: the workspace is read-only (nothing has been changed).
        """
        if op is None:
            self._journal.clear()
            return
        if self.read_only:
            raise WorkspaceError(f"workspace {self.path} is read-only: cannot {op.get('op', 'update')} "
                                 f"{op.get('doc_id', '')}".rstrip())
        if self.rag_index_problem:
            raise WorkspaceError(f"the RAG index of workspace {self.path} is damaged ({self.rag_index_problem}); "
                                 f"run `d2l repair -w {self.path}` first")
        self._journal.write(op)

    def _recover(self, heavy: bool = True) -> None:
        """Finish or roll back what an interrupted run left in the journal
        (:func:`~d2l_haystack.kb.maintenance.recover`)."""
        recover(self, heavy)

    def _repair_if_abandoned(self) -> None:
        """Redo an update whose process died mid-way (journal left, lock free) before answering from it."""
        if not self.read_only and self._state.abandoned():
            # an update that died while writing the stores (a moment's window) is finished first, so
            # the answer comes from the old or the new document, never a mix; one that died while
            # internalizing had changed nothing and is only rolled back
            self._recover(heavy=True)

    # -- components (loaded on first use) -------------------------------------------------
    def query_pipeline(self) -> Any:
        """The workspace's query pipeline (built once; shares the workspace's stores)."""
        if self._query_pipeline is None:
            from d2l_haystack.kb.pipelines import build_query_pipeline

            pipe = build_query_pipeline(self)
            pipe.warm_up()
            self._query_pipeline = pipe
        return self._query_pipeline

    # -- indexing -------------------------------------------------------------------------
    def record(self, path: str | Path) -> dict[str, Any] | None:
        """The record of a source (a copy), by path or document id."""
        with self._locked():
            rec = self._files.get(self._doc_id(path))
            return copy.deepcopy(rec) if rec else None

    def _doc_id(self, path: str | Path) -> str:
        """A known record id as given (texts indexed with :meth:`index_text`), else the absolute path."""
        text = str(path)
        if text in self._files:
            return text
        return str(Path(text).expanduser().resolve())

    def index_file(self, path: str | Path, *, route: str | None = None, force: bool = False,
                   prepared: Any = None) -> IndexResult:
        """Index one file (create or modify): hash check -> route -> internalize or chunk/embed/write.

        Unchanged content (same hash, same override, adapter or chunks present) does nothing.
        When a document changes route it is removed from the other side.

        :param route: ``"d2l"`` or ``"rag"`` to force a route (remembered), ``"auto"`` to clear a
            remembered override, ``None`` to keep it.
        :param force: redo the work even if nothing changed.
        :param prepared: a :class:`~d2l_haystack.components.doc_to_lora_converter.PreparedAdapter`
            made elsewhere (a Ray worker, :mod:`d2l_haystack.kb.ray_index`) for this content; used
            instead of running the hypernetwork here when the file still has that content and is
            routed to D2L.
        :raises InputError: missing, empty, binary, non-UTF-8 or unsupported file (workspace untouched).
        """
        with self._locked():  # read under the updates' lock: another process's newer version is never overwritten
            text, meta, stat = self._read(path)
            return self._index(text, meta, route, force, file_stat=stat, prepared=prepared)

    def _read(self, path: str | Path) -> tuple[str, dict[str, Any], list[int] | None]:
        return self.source_files.read(path)

    def check_size(self, path: str | Path, size: int) -> None:
        """:raises InputError: ``size`` bytes (of the file or upload ``path``) is over the
        ``max_file_bytes`` setting, the one limit of ``d2l index``, the watcher and uploads."""
        self.source_files.check_size(path, size)

    def index_text(self, text: str, doc_id: str, *, meta: dict[str, Any] | None = None,
                   route: str | None = None, force: bool = False) -> IndexResult:
        """Index a text that is not a file, under the id ``doc_id`` (same policy as :meth:`index_file`)."""
        validate_text(text, doc_id)
        full = {"file_path": doc_id, "d2l_doc_id": doc_id, "file_name": doc_id, "file_type": "text/plain",
                "title": title_of(text, doc_id), **(meta or {})}
        return self._index(text, full, route, force, keep_text=True)

    def index_paths(self, paths: Iterable[str | Path], *, recursive: bool = True, route: str | None = None,
                    force: bool = False, skip_errors: bool = False,
                    on_result: Callable[[IndexResult | InputError], None] | None = None) -> list[IndexResult]:
        """Index files and folders (folders: every supported file inside; hidden ones and the
        workspace's own files skipped; a file that vanishes before it is read is reported through
        ``on_result`` and skipped).

        :param route: force a route for every file (see :meth:`index_file`).
        :param force: redo the work even for unchanged files.
        :param skip_errors: report unreadable files through ``on_result`` and go on, instead of raising.
        :raises InputError: a missing path, or (without ``skip_errors``) an unreadable file.
        """
        files = self.collect_files(paths, recursive=recursive)
        given = {Path(raw).expanduser() for raw in paths}
        results = []
        for f in files:
            try:
                result = self.index_file(f, route=route, force=force)
            except InputError as exc:
                # a file found in a folder that vanished before it was read is reported, never fatal
                if not skip_errors and (f in given or f.exists()):
                    raise
                if on_result:
                    on_result(exc)
                continue
            results.append(result)
            if on_result:
                on_result(result)
        return results

    def collect_files(self, paths: Iterable[str | Path], *, recursive: bool = True) -> list[Path]:
        """The files :meth:`index_paths` indexes: files as given, and every supported file inside
        folders (hidden ones and the workspace's own files skipped), in a stable order.

        :raises InputError: a missing path.
        """
        return self.source_files.collect(paths, recursive=recursive)

    def plan(self, path: str | Path, route: str | None = None,
             force: bool = False) -> tuple[str, str, dict[str, Any]] | None:
        """What :meth:`index_file` would do with a file, without doing it: ``None`` when it is
        unchanged, else ``(route, text, meta)`` with the route the internalization router gives it
        now (``d2l`` or ``rag``). For a batch runner that does the heavy work elsewhere.

        :raises InputError: the file cannot be indexed (as :meth:`index_file`).
        """
        with self._locked():
            text, meta, _ = self._read(path)
            decision = indexing.decide(self, meta["d2l_doc_id"], text, content_hash(text), meta, route, force,
                                       time.time())
            return None if decision is None else ("d2l" if decision.to_d2l else "rag", text, meta)

    def _materialized(self, doc_id: str, rec: dict[str, Any]) -> bool:
        """Whether a record's adapter or chunks are present and current
        (:func:`~d2l_haystack.kb.indexing.materialized`)."""
        return indexing.materialized(self, doc_id, rec)

    def _index(self, text: str, meta: dict[str, Any], route: str | None, force: bool,
               keep_text: bool = False, file_stat: list[int] | None = None, prepared: Any = None) -> IndexResult:
        """Index one read document (:func:`~d2l_haystack.kb.indexing.index_document`)."""
        return indexing.index_document(self, text, meta, route, force, keep_text=keep_text, file_stat=file_stat,
                                       prepared=prepared)

    def reroute(self, paths: Iterable[str | Path] | None = None) -> list[IndexResult]:
        """Re-evaluate the route of unchanged documents (query counts grow) and move those that changed.

        Only files that still exist are re-read; others are left as they are.
        """
        return indexing.reroute(self, paths)

    # -- removal and renames --------------------------------------------------------------
    def remove_file(self, path: str | Path) -> bool:
        """Forget a source (deleted file): its adapter, its chunks and its record. ``False`` if unknown."""
        return self._remove(self._doc_id(path))

    def _remove(self, doc_id: str) -> bool:
        with self._locked():
            known = doc_id in self._files or doc_id in self.adapters
            chunks = self.document_store.count_documents_by_filter(source_filter(doc_id))
            if not known and not chunks:
                return False
            self._journal_op({"op": "remove", "doc_id": doc_id})
            with self._gate.exclusive():
                self.adapters.delete(doc_id)
                if chunks:
                    self.document_store.delete_by_filter(source_filter(doc_id))
                self._files.pop(doc_id, None)
                self._save_files()
                self._journal_op(None)
            return True

    def rename_file(self, old: str | Path, new: str | Path) -> IndexResult | None:
        """Follow a rename/move: the adapter, chunks and history move with the file (no re-internalization).

        If the new name is not a supported type the source is removed; if the content also
        changed it is re-indexed; an unknown old path indexes the new one.

        :returns: what happened to the new path (``None`` if it was removed).
        """
        old_id, new_id = self._doc_id(old), self._doc_id(new)
        if not self.supports(new):
            self._remove(old_id)
            return None
        with self._locked():
            if old_id not in self._files:
                return self.index_file(new) if Path(new_id).is_file() else None
            self._journal_op({"op": "rename", "doc_id": old_id, "new_id": new_id})
            self._rename(old_id, new_id)
            self._journal_op(None)
            rec = self._files[new_id]
        if Path(new_id).is_file():
            text, _ = read_source(new_id)
            if content_hash(text) != rec.get("hash"):
                return self.index_file(new_id)
        return IndexResult(path=new_id, action="renamed", route=rec.get("route"), reason=rec.get("reason", ""),
                           previous_route=rec.get("route"), chunks=int(rec.get("chunks", 0)),
                           adapter_id=rec.get("adapter_id"), num_tokens=int(rec.get("num_tokens", 0)))

    def _rename(self, old_id: str, new_id: str) -> None:
        """Move adapter, chunks and record; replaces what ``new_id`` had. Idempotent (redone after a crash)."""
        if old_id == new_id:
            return
        with self._locked(), self._gate.exclusive():
            old_rec = self._files.get(old_id)
            if old_id in self.adapters:
                self.adapters.rename(old_id, new_id, source=new_id)  # replaces an adapter of new_id
            elif old_rec is not None and old_rec.get("route") != "d2l":
                self.adapters.delete(new_id)  # a file moved over an internalized one
            name = Path(new_id).name
            chunks = self.document_store
            batch = chunks.batch() if hasattr(chunks, "batch") else contextlib.nullcontext()
            with batch:  # one save of a FAISS folder: the chunks of new_id are replaced by the moved ones
                if chunks.count_documents_by_filter(source_filter(old_id)):
                    chunks.delete_by_filter(source_filter(new_id))
                    chunks.update_by_filter(source_filter(old_id), {"file_path": new_id, "d2l_doc_id": new_id,
                                                                    "file_name": name})
                elif old_rec is not None and old_rec.get("route") == "d2l":  # moved over an indexed file
                    chunks.delete_by_filter(source_filter(new_id))
            rec = self._files.pop(old_id, None)
            if rec is None:
                rec = self._files.get(new_id)
            if rec is not None:
                self._files[new_id] = renamed_record(rec, old_id, new_id, time.time())
            self._save_files()

    # -- querying -------------------------------------------------------------------------
    def query(self, question: str, explain: bool = False, *, max_new_tokens: int | None = None,
              mode: str | None = None, streaming_callback: Callable[[Any], None] | None = None) -> QueryResult:
        """Answer a question: the query router picks adapter, RAG or hybrid.

        :param explain: include the router's scores for every candidate and the retrieved chunks.
        :param mode: force ``d2l``, ``rag`` or ``hybrid`` for this query (default: the router's).
        :param streaming_callback: receives Haystack ``StreamingChunk`` objects while generating.
        """
        start = time.perf_counter()
        data = pipeline_inputs(question, mode=mode, streaming_callback=streaming_callback,
                               max_new_tokens=self.settings["max_new_tokens"] if max_new_tokens is None
                               else max_new_tokens)
        self._repair_if_abandoned()
        with self._query_lock:
            pipe = self.query_pipeline()
            try:
                with self._gate.shared():  # an update in progress commits before or after this, never during
                    outputs = pipe.run(data, include_outputs_from={"query_router", "retriever"})
            except Exception as exc:  # Haystack wraps component errors: surface ours as they are
                cause = exc.__cause__
                if isinstance(cause, D2LError):
                    raise cause from None
                raise
        seconds = time.perf_counter() - start
        # titles from the records as last loaded (no lock: an update elsewhere may run long)
        result = query_result(question, outputs, self._files, seconds)
        if not self.read_only:  # a read-only workspace answers without counting
            self._state.count_query(self._files, self._stats, result.used_sources, result.route, seconds)
        if explain:
            result.explanation = explain_answer(
                outputs, pipe.get_component("query_embedder").run(text=question)["embedding"])
        return result

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Every document (route, why, adapter size, chunks, query count, last change) and totals.

        Cheap: loads no model.
        """
        with self._locked():
            entries = {e["id"]: e for e in self.adapters.list()}
            docs = [status_row(doc_id, rec, entries.get(doc_id),
                               self.adapters.quick_check(doc_id) if rec.get("route") == "d2l" else None)
                    for doc_id, rec in sorted(self._files.items())]
            pending = self._journal.pending()
            return {
                "workspace": str(self.path), "store": self.store, "model": self.settings["model"],
                "checkpoint": self.settings["checkpoint"], "documents": docs,
                "totals": totals(docs, self.document_store.count_documents()),
                "queries": dict(self._stats.get("queries", {})), "query_seconds": dict(self._stats.get("seconds", {})),
                "pending_recovery": pending, "rag_index_problem": self.rag_index_problem,
                "route_changes": recent_route_changes(docs),
            }

    # -- for watchers ---------------------------------------------------------------------
    def sources(self, under: Iterable[str | Path] | None = None) -> dict[str, dict[str, Any]]:
        """The files the workspace knows: ``{absolute path: record copy}`` (texts from :meth:`index_text` excluded).

        :param under: only files inside these folders (resolved like document ids).
        """
        roots = [str(Path(r).expanduser().resolve()) for r in under] if under is not None else None
        with self._locked():
            out = {}
            for doc_id, rec in self._files.items():
                if not Path(doc_id).is_absolute():
                    continue
                if roots is not None and not any(doc_id == r or doc_id.startswith(r.rstrip(os.sep) + os.sep)
                                                 for r in roots):
                    continue
                out[doc_id] = copy.deepcopy(rec)
            return out

    def query_count(self) -> int:
        """Queries answered so far (all processes; grows when :meth:`reroute` may have work to do)."""
        with self._locked():
            return sum(int(v) for v in self._stats.get("queries", {}).values())

    def verify(self) -> list[str]:
        """Every integrity problem, one line each (empty: healthy); changes nothing
        (:func:`~d2l_haystack.kb.maintenance.verify`)."""
        return verify(self)

    def repair(self, on_action: Callable[[str], None] | None = None) -> list[str]:
        """Fix what :meth:`verify` finds from the records and the source files; returns what was
        done (:func:`~d2l_haystack.kb.maintenance.repair`).

        :raises WorkspaceError: the workspace is read-only.
        """
        return repair(self, on_action)


def open_state(path: str | Path, settings: dict[str, Any]) -> StateBackend:
    """The state backend a workspace's settings name: the folder, or the database of ``store``."""
    if settings.get("store"):
        from d2l_haystack.kb.postgres import PostgresState

        return PostgresState(settings)
    return FolderState(path)


__all__ = ["INTERNAL_FOLDERS", "IndexResult", "QueryResult", "Workspace", "WorkspaceError", "open_state"]
