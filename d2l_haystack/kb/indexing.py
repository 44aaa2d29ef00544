"""Indexing one source: decide (is it unchanged? which route?), do the heavy work outside the commit
gate, then commit the stores and the record under it.

These functions are the workspace's indexing half; :class:`~d2l_haystack.kb.workspace.Workspace`
calls them under its locks (:meth:`~d2l_haystack.kb.workspace.Workspace.index_file`,
:meth:`~d2l_haystack.kb.workspace.Workspace.plan`, :meth:`~d2l_haystack.kb.workspace.Workspace.reroute`)
and :mod:`~d2l_haystack.kb.maintenance` redoes an interrupted index through :func:`index_document`.
They run the same components as the indexing pipeline (router, converter's prepare and commit,
splitter, embedder, writer), never a copy of their logic.

Usage example::

    from d2l_haystack.kb.indexing import decide
    from d2l_haystack.core.textio import content_hash

    decision = decide(ws, doc_id, text, content_hash(text), meta, None, False, time.time())
    print("unchanged" if decision is None else ("d2l" if decision.to_d2l else "rag"))
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from haystack import Document

from d2l_haystack.components._utils import source_filter
from d2l_haystack.components.internalization_router import parse_route
from d2l_haystack.components.source_file_converter import read_source
from d2l_haystack.core.errors import CheckpointError, InputError
from d2l_haystack.core.textio import content_hash
from d2l_haystack.kb.component_set import WorkspaceComponents
from d2l_haystack.kb.records import changed_record, commit_record, routing_history
from d2l_haystack.stores import AdapterStore


class IndexedWorkspace(Protocol):
    """What indexing uses of a workspace (so this module never imports it): its settings, stores
    and components, its records, its locks and journal."""

    settings: dict[str, Any]
    adapters: AdapterStore
    document_store: Any
    components: WorkspaceComponents
    _files: dict[str, dict[str, Any]]
    _gate: Any

    @property
    def read_only(self) -> bool: ...

    def _locked(self) -> AbstractContextManager[None]: ...

    def _save_files(self) -> None: ...

    def _journal_op(self, op: dict[str, Any] | None) -> None: ...

    def _doc_id(self, path: str | Path) -> str: ...


logger = logging.getLogger(__name__)


@dataclass
class IndexResult:
    """What :meth:`Workspace.index_file` did with one source."""

    path: str
    action: str
    """``internalized``, ``indexed``, ``unchanged``, ``copied`` (adapter reused), ``renamed``, ``removed``."""
    route: str | None = None
    reason: str = ""
    previous_route: str | None = None
    seconds: float = 0.0
    chunks: int = 0
    adapter_id: str | None = None
    num_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """What :func:`decide` found for a changed document."""

    record: dict[str, Any]
    """Its new record so far (change counted, route override set)."""
    document: Document
    """The document as the internalization router returned it (route and reason in its meta)."""
    to_d2l: bool


def _history(ws: IndexedWorkspace, doc_id: str, rec: dict[str, Any]) -> dict[str, Any]:
    """What the internalization router knows of a document's past routes."""
    return routing_history(doc_id, rec, ws.adapters.info(doc_id))


@functools.lru_cache(maxsize=16)
def _checkpoint_id(model: str, checkpoint: str | None, reading_memory: bool, stamp: tuple[int, ...]) -> str | None:
    from d2l_haystack.core.engine import checkpoint_id_of

    return checkpoint_id_of(model, checkpoint, reading_memory)


def current_checkpoint_id(settings: dict[str, Any]) -> str | None:
    """The checkpoint id that adapters made under ``settings`` carry now, from the checkpoint's files
    (cached while they are unchanged); ``None`` when it cannot be told (untrained, or files the
    engine will report itself)."""
    from d2l_haystack.core.engine import checkpoint_folder
    from d2l_haystack.core.hypernet import CHECKPOINT_CONFIG

    model, checkpoint, memory = settings["model"], settings["checkpoint"], bool(settings.get("reading_memory", True))
    folder = checkpoint_folder(model, checkpoint)
    if folder is None:
        return None
    try:
        stamp = tuple(p.stat().st_mtime_ns for p in sorted(folder.glob("*.safetensors")) + [folder / CHECKPOINT_CONFIG])
        return _checkpoint_id(model, checkpoint, memory, stamp)
    except (OSError, CheckpointError):
        return None


def materialized(ws: IndexedWorkspace, doc_id: str, rec: dict[str, Any]) -> bool:
    if rec.get("model") != ws.settings["model"] or rec.get("checkpoint") != ws.settings["checkpoint"]:
        return False
    if rec.get("route") == "d2l":  # present, of this content, settings and checkpoint, and not damaged
        entry = ws.adapters.info(doc_id)
        if not entry or entry["content_hash"] != rec.get("hash"):
            return False
        made = entry.get("meta") or {}
        same = all(made.get(k, ws.settings[k]) == ws.settings[k] for k in ("chunking", "reading_memory"))
        # an upgraded checkpoint (a new package's shipped one) remakes the adapters; a running engine's
        # own id counts first, so files replaced under it do not remake them on every sweep
        now = ws.components.loaded_checkpoint_id() or current_checkpoint_id(ws.settings)
        return same and now in (None, entry["checkpoint_id"]) and ws.adapters.check(doc_id) is None
    if rec.get("route") == "rag":
        return ws.document_store.count_documents_by_filter(source_filter(doc_id)) > 0
    return False


def decide(ws: IndexedWorkspace, doc_id: str, text: str, digest: str, meta: dict[str, Any], route: str | None,
           force: bool, now: float) -> Decision | None:
    """The first step of an index (under the updates' lock; changes nothing): ``None`` when the
    document is unchanged (same content and route override, its adapter or chunks present, no
    ``force``); else its records and the internalization router's decision.

    :param digest: ``content_hash(text)``.
    :raises InputError: ``route`` is not ``d2l``, ``rag``, ``auto`` or ``None``.
    """
    old = ws._files.get(doc_id)
    if route is None:
        override = old.get("route_override") if old else None
    else:
        override = parse_route(route)
        if override is None and str(route).lower() != "auto":
            raise InputError(f"route must be 'd2l', 'rag' or 'auto', got {route!r}")
    if (old and not force and old.get("hash") == digest and old.get("route_override") == override
            and materialized(ws, doc_id, old)):
        return None
    rec = changed_record(old, digest, override, now)
    doc_meta = {k: v for k, v in meta.items() if not k.startswith("d2l_route")}
    if override:
        doc_meta["d2l_route_override"] = override
    routed = ws.components.get("router").run(documents=[Document(content=text, meta=doc_meta)],
                                           history=_history(ws, doc_id, rec))
    return Decision(record=rec, document=(routed["internalize"] or routed["index"])[0],
                     to_d2l=bool(routed["internalize"]))


def index_document(ws: IndexedWorkspace, text: str, meta: dict[str, Any], route: str | None, force: bool,
                   keep_text: bool = False, file_stat: list[int] | None = None, prepared: Any = None) -> IndexResult:
    """Index one document that has been read: :func:`decide`, then (journaled) the heavy work
    outside the commit gate (the converter's ``prepare``, or split and embed), then the stores and
    the record under it. An unchanged document only has its file stat remembered.

    :param keep_text: keep the text in the journal (a text with no file to re-read after a crash).
    :param file_stat: the source file's stat, remembered for sweeps.
    :param prepared: an adapter made elsewhere (:meth:`~d2l_haystack.kb.workspace.Workspace.index_file`).
    """
    doc_id = meta["d2l_doc_id"]
    digest = content_hash(text)
    start = time.perf_counter()
    with ws._locked():
        now = time.time()
        decision = decide(ws, doc_id, text, digest, meta, route, force, now)
        if decision is None:  # unchanged
            old = ws._files[doc_id]
            if file_stat is not None and old.get("file_stat") != file_stat and not ws.read_only:
                old["file_stat"] = file_stat  # touched or replaced, same content: remembered for sweeps
                ws._save_files()
            return IndexResult(path=doc_id, action="unchanged", route=old["route"], reason=old.get("reason", ""),
                               previous_route=old["route"], chunks=int(old.get("chunks", 0)),
                               adapter_id=old.get("adapter_id"), num_tokens=int(old.get("num_tokens", 0)))
        rec, doc, to_d2l = decision.record, decision.document, decision.to_d2l
        op: dict[str, Any] = {"op": "index", "doc_id": doc_id, "route": route, "phase": "prepare"}
        if keep_text:
            op.update(text=text, meta=meta)
        ws._journal_op(op)
        chunks, action = 0, ""
        embedded: list[Document] = []
        made_elsewhere = prepared is not None and prepared.adapter is not None and \
            prepared.adapter.content_hash == digest and prepared.key == doc_id
        # the heavy work runs before the commit gate: queries only wait for the store changes
        if to_d2l and made_elsewhere:
            prepared.start = time.perf_counter() - prepared.seconds
        elif to_d2l:
            prepared = ws.components.get("converter").prepare(doc, force=force)
        else:
            split = ws.components.get("splitter").run(documents=[doc])["documents"]
            for i, chunk in enumerate(split):
                chunk.meta["d2l_chunk"] = i
            embedded = ws.components.get("embedder").run(documents=split)["documents"]
        ws._journal_op({**op, "phase": "commit"})  # from here on the stores change
        with ws._gate.exclusive():  # queries see the old state or the new one, never a mix
            if to_d2l:  # the converter stores the adapter and removes the document's chunks
                assert prepared is not None
                ws.components.get("converter").commit(doc, prepared)
                action = prepared.action
            else:
                chunks = ws.components.get("writer").run(documents=embedded)["documents_written"]
                action = "indexed"
            previous = commit_record(
                rec, doc_id=doc_id, meta=meta, text=text, digest=digest, to_d2l=to_d2l, routed_meta=doc.meta,
                chunks=chunks, now=now, seconds=time.perf_counter() - start, model=ws.settings["model"],
                checkpoint=ws.settings["checkpoint"], file_stat=file_stat)
            if previous and previous != rec["route"]:  # kept with its reason (``status()``) and logged
                logger.info("route change: %s: %s -> %s: %s", doc_id, previous, rec["route"], rec["reason"])
            ws._files[doc_id] = rec
            ws._save_files()
            ws._journal_op(None)
        return IndexResult(path=doc_id, action=action, route=rec["route"], reason=rec["reason"],
                           previous_route=previous, seconds=rec["index_seconds"], chunks=chunks,
                           adapter_id=rec["adapter_id"], num_tokens=rec["num_tokens"])


def reroute(ws: IndexedWorkspace, paths: Iterable[str | Path] | None = None) -> list[IndexResult]:
    """Re-evaluate the route of unchanged documents (query counts grow) and move those that changed.

    Only files that still exist are re-read; others are left as they are.
    """
    with ws._locked():
        ids = [ws._doc_id(p) for p in paths] if paths is not None else list(ws._files)
    results = []
    for doc_id in ids:
        with ws._locked():
            rec = ws._files.get(doc_id)
            if rec is None or not Path(doc_id).is_file():
                continue
            text, meta = read_source(doc_id)
            if content_hash(text) != rec.get("hash"):
                results.append(index_document(ws, text, meta, None, False))
                continue
            doc = Document(content=text, meta={**meta, **({"d2l_route_override": rec["route_override"]}
                                                         if rec.get("route_override") else {})})
            routed = ws.components.get("router").run(documents=[doc], history=_history(ws, doc_id, rec))
            new_route = "d2l" if routed["internalize"] else "rag"
            if new_route != rec.get("route"):
                results.append(index_document(ws, text, meta, None, True))
    return results
