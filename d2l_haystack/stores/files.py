"""File helpers of the stores and the knowledge base: atomic writes, checksums, locks.

* atomic file writes (temporary file in the same folder, ``fsync``, ``os.replace``): readers
  see the old file or the new one, never half of either;
* :func:`sha256_file` and :func:`file_signature` (has a file been replaced?);
* :class:`FileLock`: a re-entrant lock that serializes threads of one process *and* processes
  (``fcntl.flock`` on a lock file, where the platform has it), one per real path
  (:data:`shared_lock`, built with :class:`PerPath`).

    >>> import tempfile, pathlib
    >>> from d2l_haystack.stores.files import atomic_write_json, shared_lock
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with shared_lock(folder / ".lock"):
    ...     atomic_write_json(folder / "state.json", {"ok": True})
    >>> (folder / "state.json").read_text().split()
    ['{', '"ok":', 'true', '}']
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: thread locking only
    fcntl = None  # type: ignore[assignment]

from d2l_haystack.core.fileio import temp_beside

T = TypeVar("T")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_signature(path: str | Path) -> tuple[int, int, int] | None:
    """``(inode, size, mtime_ns)`` of a file, or ``None``: changes whenever the file is replaced."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


_READ_ONLY_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)


def open_lock_file(path: str | Path) -> int | None:
    """A file descriptor to ``flock`` on ``path`` (created if missing); on a read-only folder the
    existing file opened for reading (``flock`` needs no write access), or ``None`` when there is
    no lock file and none can be made (nobody can write there, so there is nothing to order)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in _READ_ONLY_ERRORS:
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in _READ_ONLY_ERRORS or exc.errno == errno.ENOENT:
            return None
        raise


def writable(folder: str | Path) -> bool:
    """Whether this process can create and replace files in ``folder`` (False on a read-only
    mount or without write permission)."""
    return os.access(folder, os.W_OK | os.X_OK)


def stat_signature(path: str | Path) -> list[int] | None:
    """:func:`file_signature` as a list (as kept in JSON records), ``None`` for any path that
    cannot be statted (gone, a symbolic link loop, no permission)."""
    try:
        sig = file_signature(path)
    except (OSError, ValueError):
        return None
    return list(sig) if sig is not None else None


class FileLock:
    """A re-entrant lock for threads of this process and for other processes.

    Threads are serialized by an :class:`threading.RLock`; the first acquisition of the owning
    thread also takes an exclusive ``flock`` on ``path`` (released with the last), so two
    processes opening the same store never interleave their read-modify-write cycles.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rlock = threading.RLock()
        self._depth = 0
        self._fh: int | None = None

    def acquire(self) -> None:
        self._rlock.acquire()
        if self._depth == 0 and fcntl is not None:
            try:
                if not self.path.parent.is_dir():
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open_lock_file(self.path)
                if self._fh is not None:
                    fcntl.flock(self._fh, fcntl.LOCK_EX)
            except BaseException:
                if self._fh is not None:
                    os.close(self._fh)
                    self._fh = None
                self._rlock.release()
                raise
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fh is not None:
            try:
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            finally:
                os.close(self._fh)
                self._fh = None
        self._rlock.release()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self:
            yield


class PerPath(Generic[T]):
    """One process-wide object per real path, built on first use by ``factory(real_path)``."""

    def __init__(self, factory: Callable[[str], T]) -> None:
        self._factory = factory
        self._objects: dict[str, T] = {}
        self._guard = threading.Lock()

    def __call__(self, path: str | Path) -> T:
        key = os.path.realpath(os.path.expanduser(str(path)))
        with self._guard:
            obj = self._objects.get(key)
            if obj is None:
                obj = self._objects[key] = self._factory(key)
            return obj


shared_lock: PerPath[FileLock] = PerPath(FileLock)
"""The process-wide :class:`FileLock` of a path.

Every object guarding the same file uses one lock object, so nested use from one thread
(two store instances of one folder) re-enters instead of deadlocking on ``flock``.
"""
