"""Where a workspace keeps its own state: the folder (``files.json``, ``journal.json``, ``flock``),
or a PostgreSQL database (:mod:`d2l_haystack.kb.postgres`) that several hosts share.

A state backend gives the :class:`~d2l_haystack.kb.workspace.Workspace` five things, and the
workspace uses nothing else of it:

* ``lock``: the updates' lock, re-entrant per thread, exclusive across processes (and hosts);
* ``gate``: the :class:`~d2l_haystack.kb.commit.CommitGate` between queries and commits;
* ``journal``: the operation in progress (``write``/``clear``/``pending``/``read``);
* :meth:`load` / :meth:`save`: the source records and statistics (``load`` returns ``None``
  when nothing changed since this process last loaded or saved them);
* :meth:`count_query`: add one answered question to the counters of the sources it used (in
  the given records and where they are kept; the database does it without the updates' lock, so
  a query never waits for another host's internalization).

    >>> import tempfile
    >>> state = FolderState(tempfile.mkdtemp())
    >>> files, stats = {"a.md": {"route": "d2l", "queries": 0}}, {}
    >>> with state.lock:
    ...     state.save(files, stats)
    >>> state.count_query(files, stats, ["a.md"], "d2l", 0.5)
    >>> state.load() is None, FolderState(state.path).load()[0]["a.md"]["queries"]
    (True, 1)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from d2l_haystack.kb.commit import CommitGate, Journal, commit_gate
from d2l_haystack.kb.settings import WORKSPACE_FORMAT, read_json
from d2l_haystack.stores.files import atomic_write_json, file_signature, shared_lock, writable

FILES_FILE, JOURNAL_FILE = "files.json", "journal.json"

Records = dict[str, dict[str, Any]]


class StateBackend(Protocol):
    """What a workspace needs of the place that keeps its records (see the module docstring)."""

    lock: Any
    gate: CommitGate
    journal: Any

    def load(self) -> tuple[Records, dict[str, Any]] | None: ...
    def save(self, files: Records, stats: dict[str, Any]) -> None: ...
    def count_query(self, files: Records, stats: dict[str, Any], doc_ids: Iterable[str], route: str,
                    seconds: float) -> None: ...
    def abandoned(self) -> bool: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


def add_query(files: Records, stats: dict[str, Any], doc_ids: Iterable[str], route: str, seconds: float,
              now: float | None = None) -> None:
    """Count one answered question in ``files`` and ``stats`` (in place)."""
    now = time.time() if now is None else now
    for doc_id in doc_ids:
        if doc_id in files:
            files[doc_id]["queries"] = int(files[doc_id].get("queries", 0)) + 1
            files[doc_id]["last_query"] = now
    q = stats.setdefault("queries", {})
    q[route] = int(q.get(route, 0)) + 1
    secs = stats.setdefault("seconds", {})
    secs[route] = round(float(secs.get(route, 0.0)) + seconds, 4)


class FolderState:
    """The embedded default: ``files.json`` and ``journal.json`` in the workspace folder, ``flock``
    on ``.lock`` and ``.gate`` (several processes on one machine)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = shared_lock(self.path / ".lock")
        self.gate: CommitGate = commit_gate(self.path / ".gate")
        self.journal = Journal(self.path / JOURNAL_FILE)
        self._sig: tuple[int, int, int] | None = None
        self._loaded = False

    def load(self) -> tuple[Records, dict[str, Any]] | None:
        path = self.path / FILES_FILE
        sig = file_signature(path)
        if self._loaded and sig == self._sig and sig is not None:
            return None
        self._sig, self._loaded = sig, True
        if sig is None:
            return {}, {}
        data = read_json(path, "file records")
        return dict(data.get("files", {})), dict(data.get("stats", {}))

    def save(self, files: Records, stats: dict[str, Any]) -> None:
        path = self.path / FILES_FILE
        atomic_write_json(path, {"format": WORKSPACE_FORMAT, "files": files, "stats": stats})
        self._sig, self._loaded = file_signature(path), True

    def count_query(self, files: Records, stats: dict[str, Any], doc_ids: Iterable[str], route: str,
                    seconds: float) -> None:
        if not writable(self.path):
            return  # a read-only workspace answers without counting
        with self.lock:  # read-modify-write of files.json
            loaded = self.load()
            if loaded is not None:  # another process saved meanwhile: count on its records
                files.clear()
                files.update(loaded[0])
                stats.clear()
                stats.update(loaded[1])
            add_query(files, stats, doc_ids, route, seconds)
            self.save(files, stats)

    def abandoned(self) -> bool:
        return self.journal.abandoned(self.path / ".lock")

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        pass

