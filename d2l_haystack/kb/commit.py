"""The commit machinery of a workspace: the journal of the operation in progress, and the
readers-writer gate between queries and the commit of updates.

* :class:`Journal`: ``journal.json`` holds the one mutating operation in progress (written
  atomically before it starts, removed when it is done), so a reopened workspace redoes what an
  interrupted run left (every operation is idempotent).
* :class:`CommitGate`: queries hold it shared, the store writes of an update hold it exclusive,
  so a query sees a document's old state or its new one, never a mix.

    >>> import tempfile, pathlib
    >>> journal = Journal(pathlib.Path(tempfile.mkdtemp()) / "journal.json")
    >>> journal.write({"op": "index", "doc_id": "a.md"}); journal.pending()
    True
    >>> journal.read()["op"], journal.clear(), journal.pending()
    ('index', None, False)
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from d2l_haystack.kb.settings import read_json
from d2l_haystack.stores.files import PerPath, atomic_write_json, open_lock_file

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: the gate serializes threads only
    fcntl = None  # type: ignore[assignment]


class Journal:
    """The operation in progress of a workspace (``journal.json``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, op: dict[str, Any]) -> None:
        """Record ``op`` (a JSON object) before it starts, atomically."""
        atomic_write_json(self.path, {**op, "started": time.time()})

    def clear(self) -> None:
        """The operation is done."""
        self.path.unlink(missing_ok=True)

    def pending(self) -> bool:
        return self.path.exists()

    def read(self) -> dict[str, Any] | None:
        """The pending operation, or ``None``.

        :raises WorkspaceError: the journal is damaged (the caller discards it).
        """
        try:
            return read_json(self.path, "journal")
        except FileNotFoundError:
            return None

    def abandoned(self, lock_path: str | Path) -> bool:
        """Whether an operation is pending and its process is gone (the workspace lock is free)."""
        if fcntl is None or not self.pending():
            return False
        fd = open_lock_file(lock_path)
        if fd is None:
            return False  # a read-only workspace without a lock file: nothing can be redone here
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # an update is running (here or in another process): the commit gate orders us
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)


class CommitGate:
    """A readers-writer lock between queries (shared) and the commit of updates (exclusive).

    Within a process a condition variable with writer preference (a waiting update is not
    starved by a stream of queries); across processes ``flock`` on ``path`` with ``LOCK_SH`` /
    ``LOCK_EX``, one file descriptor per holder. Re-entrant per thread (a nested acquisition is
    a no-op; an update nested in a query's shared hold is a programming error).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0
        self._local = threading.local()

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        local = self._local
        if getattr(local, "depth", 0):
            if exclusive and not local.exclusive:
                raise RuntimeError("cannot update a workspace while this thread holds a query's shared lock")
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        with self._cond:
            if exclusive:
                self._waiting += 1
                try:
                    while self._writer or self._readers:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                self._writer = True
            else:
                while self._writer or self._waiting:
                    self._cond.wait()
                self._readers += 1
        token = None
        try:
            token = self._acquire_across(exclusive)
            local.depth, local.exclusive = 1, exclusive
            yield
        finally:
            local.depth = 0
            if token is not None:
                self._release_across(token)
            with self._cond:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1
                self._cond.notify_all()

    def _acquire_across(self, exclusive: bool) -> Any:
        """Take the cross-process side (``flock`` on :attr:`path`); returns what :meth:`_release_across`
        needs. A subclass shares the gate another way (the PostgreSQL workspace: advisory locks)."""
        if fcntl is None:
            return None
        fd = open_lock_file(self.path)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        return fd

    def _release_across(self, token: Any) -> None:
        os.close(token)  # releases the flock

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self.hold(False)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self.hold(True)


commit_gate: PerPath[CommitGate] = PerPath(CommitGate)
"""The process-wide :class:`CommitGate` of a gate file."""
