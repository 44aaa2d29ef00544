"""A workspace's file records, as plain dicts: what an index, a rename and ``status()`` write
into them and read out of them. Pure functions (no locks, no stores): the workspace calls them
under its updates' lock.

A record holds a source's path, content hash, route and why, change and query history, route
override and its adapter or chunk count (``files.json``, or the ``records`` table of a
PostgreSQL workspace).

Usage example::

    from d2l_haystack.kb.records import changed_record, status_row

    rec = changed_record(None, digest="ab12", override=None, now=1.7e9)
    assert rec["num_changes"] == 1 and rec["changes"] == [1.7e9]
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

MAX_HISTORY = 50
"""Change, rename and route-change timestamps kept per record."""


def _capped(items: Any, new: Any) -> list[Any]:
    return (list(items or []) + [new])[-MAX_HISTORY:]


def changed_record(old: dict[str, Any] | None, digest: str, override: str | None, now: float) -> dict[str, Any]:
    """The record an index starts from: a copy of ``old`` (a new one for an unknown source) with a
    change counted when the content hash differs, and the route override set."""
    rec = copy.deepcopy(old) if old else {"first_seen": now, "changes": [], "queries": 0, "last_query": None}
    if rec.get("hash") != digest:
        rec["changes"] = _capped(rec.get("changes"), now)
        rec["num_changes"] = int(rec.get("num_changes", 0)) + 1
        rec["last_change"] = now
    rec["route_override"] = override
    return rec


def queries_of(rec: dict[str, Any], adapter_entry: dict[str, Any] | None) -> int:
    """A document's query count: the record's or its adapter store entry's, whichever is higher
    (the generator counts on the adapter, the workspace on the record)."""
    return max(int(rec.get("queries", 0)), int(adapter_entry["queries"]) if adapter_entry else 0)


def routing_history(doc_id: str, rec: dict[str, Any], adapter_entry: dict[str, Any] | None) -> dict[str, Any]:
    """What the internalization router weighs for one document (``history`` input): first seen,
    changes, queries (:func:`queries_of`), override."""
    return {doc_id: {"first_seen": rec["first_seen"], "changes": list(rec["changes"]),
                     "queries": queries_of(rec, adapter_entry), "route_override": rec.get("route_override")}}


def commit_record(rec: dict[str, Any], *, doc_id: str, meta: dict[str, Any], text: str, digest: str,
                  to_d2l: bool, routed_meta: dict[str, Any], chunks: int, now: float, seconds: float,
                  model: str, checkpoint: str, file_stat: list[int] | None) -> str | None:
    """Fill ``rec`` (in place) with what an index committed; a route change is appended to its
    ``route_history`` with its reason. Returns the previous route (``None``: a new source)."""
    previous = rec.get("route")
    rec.update(
        path=meta.get("file_path", doc_id), doc_id=doc_id, hash=digest,
        route="d2l" if to_d2l else "rag", reason=routed_meta["d2l_route_reason"],
        num_tokens=int(routed_meta["d2l_num_tokens"]), chars=len(text), chunks=chunks,
        adapter_id=doc_id if to_d2l else None, title=meta.get("title", ""),
        file_type=meta.get("file_type", ""), indexed_at=now, index_seconds=round(seconds, 4), model=model,
        checkpoint=checkpoint, file_stat=file_stat,
    )
    if previous and previous != rec["route"]:
        rec["route_history"] = _capped(rec.get("route_history"),
                                       {"at": now, "from": previous, "to": rec["route"], "reason": rec["reason"]})
    return previous


def renamed_record(rec: dict[str, Any], old_id: str, new_id: str, now: float) -> dict[str, Any]:
    """``rec`` (in place) after its source moved from ``old_id`` to ``new_id``."""
    rec.update(path=new_id, doc_id=new_id, adapter_id=new_id if rec.get("route") == "d2l" else None)
    rec["renames"] = _capped(rec.get("renames"), {"at": now, "from": old_id})
    return rec


def status_row(doc_id: str, rec: dict[str, Any], entry: dict[str, Any] | None,
               problem: str | None) -> dict[str, Any]:
    """One document of ``Workspace.status()``: route, why, adapter size, chunks, queries, changes.

    :param entry: its adapter store entry (``None``: not internalized).
    :param problem: the adapter's quick check (``None``: healthy or not internalized).
    """
    return {
        "path": rec.get("path", doc_id), "route": rec.get("route"), "reason": rec.get("reason", ""),
        "override": rec.get("route_override"), "title": rec.get("title", ""),
        "adapter_bytes": int(entry["nbytes"]) if entry else 0,
        "chunks": int(rec.get("chunks", 0)), "tokens": int(rec.get("num_tokens", 0)),
        "queries": queries_of(rec, entry),
        "changes": int(rec.get("num_changes", 0)), "last_change": rec.get("last_change"),
        "first_seen": rec.get("first_seen"), "last_query": rec.get("last_query"),
        "checkpoint_id": entry["checkpoint_id"] if entry else None,
        "exists": Path(doc_id).is_file() if Path(doc_id).is_absolute() else None,
        "problem": problem,
        "route_changes": list(rec.get("route_history", []))[-5:],
    }


def totals(rows: list[dict[str, Any]], chunks: int) -> dict[str, int]:
    """The totals of ``status()`` over its rows; ``chunks``: the RAG index's chunk count."""
    return {"documents": len(rows), "d2l": sum(d["route"] == "d2l" for d in rows),
            "rag": sum(d["route"] == "rag" for d in rows),
            "adapter_bytes": sum(d["adapter_bytes"] for d in rows), "chunks": chunks}


def recent_route_changes(rows: list[dict[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """The latest route changes over all documents of ``status()``, oldest first."""
    return sorted(({"path": d["path"], **c} for d in rows for c in d["route_changes"]),
                  key=lambda c: c.get("at") or 0.0)[-limit:]
