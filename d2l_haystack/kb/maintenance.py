"""Checking and fixing a workspace: :func:`recover` (the journal's interrupted update, on every
opening), :func:`verify` (read-only) and :func:`repair` (``d2l verify``, ``d2l repair``;
:meth:`Workspace.verify` and :meth:`Workspace.repair` call these).

They work on anything that has what :class:`MaintainedWorkspace` lists (the workspace does), so
this module stands below :mod:`d2l_haystack.kb.workspace` and never imports it.

    >>> import tempfile
    >>> from d2l_haystack.kb.workspace import Workspace
    >>> ws = Workspace(tempfile.mkdtemp())
    >>> verify(ws), repair(ws)
    ([], [])
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from d2l_haystack.components._utils import source_filter, source_key
from d2l_haystack.core.errors import D2LError, InputError
from d2l_haystack.kb.settings import WorkspaceError
from d2l_haystack.stores import AdapterStore


class MaintainedWorkspace(Protocol):
    """What :func:`verify` and :func:`repair` use of a workspace: its stores, its records and
    journal, its lock, and the steps that remove and re-index one document."""

    path: Path
    adapters: AdapterStore
    document_store: Any
    rag_index_problem: str | None
    _files: dict[str, dict[str, Any]]
    _journal: Any

    @property
    def read_only(self) -> bool: ...

    def _locked(self) -> AbstractContextManager[None]: ...

    def _reopen_document_store(self) -> None: ...

    def _recover(self, heavy: bool = True) -> None: ...

    def _journal_op(self, op: dict[str, Any] | None) -> None: ...

    def _index(self, text: str, meta: dict[str, Any], route: str | None, force: bool) -> Any: ...

    def _rename(self, old_id: str, new_id: str) -> None: ...

    def _materialized(self, doc_id: str, rec: dict[str, Any]) -> bool: ...

    def _remove(self, doc_id: str) -> bool: ...

    def index_file(self, path: str | Path, *, route: str | None = None, force: bool = False,
                   prepared: Any = None) -> Any: ...


logger = logging.getLogger("d2l_haystack.kb.workspace")


def recover(ws: MaintainedWorkspace, heavy: bool = True) -> None:
    """Finish or roll back the operation an interrupted run left in the journal.

    An index interrupted before its commit (``phase: prepare``, the long part: internalizing,
    embedding) had changed nothing: it is rolled back, never replayed. Renames and removals
    are redone (cheap). An index interrupted during its commit (the stores half written) is
    redone when ``heavy`` (writing commands and queries; ``status`` and ``verify`` leave it
    for the next one and say so). Every workspace runs this when it opens and before a query
    answers from an update that died mid-way.
    """
    with ws._locked():
        try:
            op = ws._journal.read()
        except WorkspaceError as exc:
            logger.warning("%s; discarding it", exc)
            ws._journal_op(None)
            return
        if op is None:
            return
        if op.get("op") == "index" and op.get("phase") == "prepare":
            logger.warning("workspace %s: the interrupted index of %s had changed nothing; rolled back "
                           "(index it again)", ws.path, op.get("doc_id"))
            ws._journal_op(None)
            ws.adapters.gc()
            return
        if op.get("op") == "index" and not heavy:
            logger.warning("workspace %s: the interrupted index of %s is redone by the next writing command",
                           ws.path, op.get("doc_id"))
            return
        logger.warning("workspace %s: redoing the interrupted operation %s %s", ws.path, op.get("op"),
                       op.get("doc_id"))
        try:
            kind, doc_id = op.get("op"), str(op.get("doc_id", ""))
            if kind == "index" and op.get("text") is not None:
                ws._index(op["text"], op["meta"], op.get("route"), force=True)
            elif kind == "index" and Path(doc_id).is_file():
                ws.index_file(doc_id, route=op.get("route"), force=True)
            elif kind == "rename" and op.get("new_id"):
                ws._rename(doc_id, op["new_id"])
            else:  # a removal, or an index of a file that no longer exists
                ws._remove(doc_id)
            ws._journal_op(None)
            ws.adapters.gc()  # adapter files written by the interrupted run and never referenced
        except InputError as exc:  # the file became unusable meanwhile: forget it
            logger.warning("workspace %s: %s; removing it", ws.path, exc)
            ws._remove(doc_id)
            ws._journal_op(None)
        except D2LError as exc:
            logger.error("workspace %s: could not redo %s of %s: %s", ws.path, op.get("op"), doc_id, exc)


def verify(ws: MaintainedWorkspace) -> list[str]:
    """Every integrity problem, one line each (empty: healthy): adapter files against their
    checksums, orphan files, records without their adapter or chunks, chunks without a record,
    records of vanished files, a damaged RAG index, an interrupted update. Reads everything;
    changes nothing (:meth:`repair` fixes what it finds)."""
    problems = [f"RAG index: {ws.rag_index_problem}"] if ws.rag_index_problem else []
    problems += ws.adapters.verify()
    with ws._locked():
        if ws._journal.pending():
            problems.append("an interrupted update is waiting to be redone")
        with_chunks = chunk_sources(ws)
        for doc_id, rec in sorted(ws._files.items()):
            if Path(doc_id).is_absolute() and not Path(doc_id).is_file():
                problems.append(f"{doc_id}: the file is gone (its record, adapter or chunks are stale)")
            if rec.get("route") == "d2l" and doc_id not in ws.adapters:
                problems.append(f"{doc_id}: routed to D2L but has no adapter")
            if rec.get("route") == "rag" and doc_id not in with_chunks and not ws.rag_index_problem:
                problems.append(f"{doc_id}: routed to RAG but has no chunks")
        for source in sorted(with_chunks - set(ws._files)):
            problems.append(f"{source}: chunks in the RAG index without a record")
        for entry in ws.adapters.list():
            if entry["id"] not in ws._files and not is_instructions(entry):
                problems.append(f"{entry['id']}: an adapter without a record")
    return problems


def is_instructions(entry: dict[str, Any]) -> bool:
    """An instructions adapter (:class:`~d2l_haystack.components.InstructionsToLoRA`): stored
    beside the documents' adapters on purpose, with no file record of its own (entries written
    before the store recorded ``kind`` are documents)."""
    return entry.get("kind", "document") == "instructions"


def chunk_sources(ws: MaintainedWorkspace) -> set[str]:
    """The document ids that have chunks in the RAG index."""
    return {source_key(d.meta, d.id) for d in ws.document_store.filter_documents()}


def repair(ws: MaintainedWorkspace, on_action: Callable[[str], None] | None = None) -> list[str]:
    """Fix what :func:`verify` finds, from the records and the source files: finish an
    interrupted update; move a damaged RAG index aside (``faiss.damaged-<time>``, kept) and
    rebuild it; re-index documents whose adapter or chunks are damaged or missing; forget
    files that are gone; drop chunks, adapters and files nothing refers to.

    :param on_action: called with each line of what was done, as it is done.
    :returns: what was done, one line each (empty: nothing needed doing).
    :raises WorkspaceError: the workspace is read-only.
    """
    if ws.read_only:
        raise WorkspaceError(f"workspace {ws.path} is read-only: cannot repair it")
    done: list[str] = []

    def did(line: str) -> None:
        done.append(line)
        logger.info("repair %s: %s", ws.path, line)
        if on_action is not None:
            on_action(line)

    with ws._locked():
        if ws.rag_index_problem:
            folder = ws.path / "faiss"
            aside = folder.with_name(f"faiss.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(folder, aside)
            problem = ws.rag_index_problem
            ws._reopen_document_store()  # the components and pipelines held the old store
            did(f"RAG index damaged ({problem}): moved aside to {aside.name}, rebuilt from the sources")
        if ws._journal.pending():
            ws._recover(heavy=True)
            did("finished the interrupted update")
        for doc_id, rec in sorted(ws._files.items()):
            source = Path(doc_id)
            if source.is_absolute() and not source.is_file():
                ws._remove(doc_id)
                did(f"forgot {doc_id}: the file is gone")
            elif not ws._materialized(doc_id, rec):
                if not source.is_absolute():
                    did(f"cannot rebuild {doc_id}: it was indexed from text, not a file (index it again)")
                    continue
                try:
                    result = ws.index_file(doc_id, force=True)
                except InputError as exc:
                    ws._remove(doc_id)
                    did(f"forgot {doc_id}: {exc}")
                    continue
                did(f"re-indexed {doc_id} ({result.route}: its adapter or chunks were damaged or missing)")
        for source_id in sorted(chunk_sources(ws) - set(ws._files)):
            ws.document_store.delete_by_filter(source_filter(source_id))
            did(f"dropped the chunks of {source_id} (no record)")
        for entry in ws.adapters.list():
            if entry["id"] not in ws._files and not is_instructions(entry):
                ws.adapters.delete(entry["id"])
                did(f"dropped the adapter of {entry['id']} (no record)")
        removed = ws.adapters.gc()
        if removed:
            did(f"deleted {removed} adapter file(s) nothing refers to")
    return done
