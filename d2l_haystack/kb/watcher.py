"""Keep a workspace in step with folders: a watchdog service that indexes, re-indexes, renames and removes.

:class:`DocumentWatcher` watches one or more folders (recursively) and applies every change to a
:class:`~d2l_haystack.kb.workspace.Workspace`:

* **create / modify**: after a quiet period per file (``debounce``, default 1 s; a file that keeps
  changing is processed at least every ``max_delay``), :meth:`Workspace.index_file` runs: content
  hash check (unchanged content does nothing), route decision with the file's change history,
  then re-internalization (D2L) or re-indexing (RAG, old chunks replaced);
* **delete**: the file's adapter, chunks and record are removed (:meth:`Workspace.remove_file`);
* **rename / move**: the record, adapter and chunks follow the file (:meth:`Workspace.rename_file`),
  nothing is recomputed unless the content changed too; a move onto an indexed file replaces it;
  a folder moved or deleted moves or removes everything inside it;
* **routes follow behaviour**: each content change is one entry of the file's change history (a
  burst of saves within the debounce is one change), so a file that keeps changing moves from
  its adapter to RAG. When queries were answered (in any process) or every ``reroute_interval``,
  the idle watcher calls :meth:`Workspace.reroute`, so a RAG file that stays unchanged and keeps
  being asked about gets internalized. Every route change is logged with its reason and kept in
  the file's record (``d2l status`` shows it).

On :meth:`~DocumentWatcher.start` it reconciles the workspace with the folders: files added,
changed, renamed (same content under a new name) or deleted while it was not running. All work
runs in one worker thread fed by a queue (the watchdog observer thread only enqueues), so
updates are applied one at a time; the workspace's commit gate lets queries from other threads
or processes see each file's old or new state, never a mix.

Bad files never stop the service: binary, non-UTF-8, empty, unreadable, vanished, oversized
(``max_file_bytes``), FIFOs and other special files, symbolic links (not followed, loops
included) each give one log line and are skipped; a file that was indexed and became unusable is
removed from the workspace (its indexed content no longer exists).

Usage example::

    from d2l_haystack.kb.watcher import DocumentWatcher
    from d2l_haystack.kb.workspace import Workspace

    ws = Workspace("kb")
    with DocumentWatcher(ws, ["docs/"], exclude=["drafts/*"], debounce=1.0) as watcher:
        ...                                   # edit files; query from any thread
        watcher.wait_idle(timeout=30)
        print(ws.query("What is the warranty period?").answer)
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from d2l_haystack.core.errors import InputError
from d2l_haystack.kb.settings import WorkspaceError
from d2l_haystack.kb.watch_apply import ChangeApplier, WatchEvent, strip_path
from d2l_haystack.kb.watch_pending import PendingChanges
from d2l_haystack.kb.watch_reconcile import missed_changes, reconcile
from d2l_haystack.kb.watch_scope import WatchScope
from d2l_haystack.kb.workspace import Workspace

logger = logging.getLogger(__name__)

class _Handler:
    """watchdog event handler: filters and enqueues, nothing else (runs in the observer thread)."""

    def __init__(self, watcher: DocumentWatcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: Any) -> None:
        try:
            self._watcher._on_fs_event(event)
        except Exception:  # pragma: no cover - never let the observer thread die
            logger.exception("watcher: could not handle %r", event)


class DocumentWatcher:
    """A watchdog service keeping a :class:`Workspace` in step with folders (see the module docstring).

    :param workspace: a :class:`Workspace` or its folder (opened, never created).
    :param paths: folders to watch recursively (a file: its folder, only that file).
    :param include: globs a file must match (on its path relative to the watched folder or its
        name; default: every type the workspace reads).
    :param exclude: globs excluding files or whole folders (matched on the relative path and on
        each path component), added to :data:`~.watch_scope.DEFAULT_EXCLUDE`. The workspace folder is always
        excluded.
    :param debounce: seconds without events before a file is processed.
    :param max_delay: a file that keeps changing is processed at least this often (default
        ``max(5, 10 * debounce)`` seconds).
    :param reconcile: bring the workspace in step with the folders on :meth:`start`.
    :param reroute_interval: seconds between full :meth:`Workspace.reroute` passes while idle
        (``None``: never, except after queries).
    :param reroute_check: how often (seconds, while idle) to look for new queries, which trigger
        a reroute pass (``None``: never).
    :param max_file_bytes: larger files are skipped with a log line (default: the workspace's
        ``max_file_bytes`` setting, the same limit ``d2l index`` applies).
    :param on_event: called (in the worker thread) with a :class:`WatchEvent` for every file handled.
    :param polling: use watchdog's polling observer (network file systems) instead of OS events.
    :raises InputError: a watched path does not exist.
    """

    def __init__(self, workspace: Workspace | str | Path, paths: Sequence[str | Path] | str | Path, *,
                 include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                 debounce: float = 1.0, max_delay: float | None = None, reconcile: bool = True,
                 reroute_interval: float | None = 300.0, reroute_check: float | None = 5.0,
                 max_file_bytes: int | None = None, on_event: Callable[[WatchEvent], None] | None = None,
                 polling: bool = False) -> None:
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.scope = WatchScope(paths, include=include, exclude=exclude, workspace_root=self.workspace.path,
                                max_file_bytes=max_file_bytes or int(self.workspace.settings["max_file_bytes"]))
        self.debounce = max(0.0, float(debounce))
        self.max_delay = float(max_delay) if max_delay is not None else max(5.0, 10 * self.debounce)
        self.reconcile_on_start = reconcile
        self.reroute_interval = reroute_interval
        self.reroute_check = reroute_check
        self.polling = polling
        self._scans: dict[str, float] = {}
        self._apply = ChangeApplier(self.workspace, self.scope, on_event=on_event,
                                    on_folder=lambda folder: self._scans.__setitem__(folder, time.monotonic()))
        """What each change does to the workspace (:mod:`d2l_haystack.kb.watch_apply`)."""
        self.events: deque[WatchEvent] = self._apply.events
        """The last events handled (newest last)."""
        self.stats: dict[str, Any] = self._apply.stats
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._pending = PendingChanges(self.debounce, self.max_delay)
        self._reroute_paths: set[str] = set()
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._busy = False
        self._stop_requested: str | None = None  # "drain" or "now", set by the worker
        self._halt = threading.Event()  # set by stop(drain=False): long passes end early
        self._stopped = False
        self._last_event = 0.0
        self._sweep_due: float | None = None
        self._last_reroute = time.monotonic()
        self._last_check = 0.0
        self._last_queries: int | None = None
        self._state_lock = self._apply.lock

    @property
    def on_event(self) -> Callable[[WatchEvent], None] | None:
        """Called (in the worker thread) with a :class:`WatchEvent` for every file handled."""
        return self._apply.on_event

    @on_event.setter
    def on_event(self, callback: Callable[[WatchEvent], None] | None) -> None:
        self._apply.on_event = callback

    @property
    def roots(self) -> list[str]:
        """The watched folders (:attr:`WatchScope.roots`)."""
        return self.scope.roots

    def __repr__(self) -> str:
        return f"DocumentWatcher({self.roots!r} -> {str(self.workspace.path)!r})"

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> DocumentWatcher:
        """Start the worker and the observer; reconcile first (when enabled). Returns ``self``."""
        if self._thread is not None:
            raise RuntimeError("this DocumentWatcher was already started")
        if self.workspace.read_only:
            raise WorkspaceError(f"workspace {self.workspace.path} is read-only: a watcher cannot update it")
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
        )

        observer_class: Any
        if self.polling:
            from watchdog.observers.polling import PollingObserver as observer_class
        else:
            from watchdog.observers import Observer as observer_class
        self._last_queries = self.workspace.query_count()  # queries from now on trigger a reroute pass
        kinds = [FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileDeletedEvent, FileMovedEvent,
                 DirCreatedEvent, DirDeletedEvent, DirMovedEvent]
        observer = observer_class()
        handler = _Handler(self)
        for root in self.roots:
            observer.schedule(handler, root, recursive=root not in self.scope.only, event_filter=kinds)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._run, name="d2l-watcher", daemon=True)
        self._thread.start()
        observer.start()  # watches are in place before the folders are scanned: nothing is missed
        self._observer = observer
        if self.reconcile_on_start:
            self._queue.put(("call", self._reconcile, None))
        logger.info("watching %s -> workspace %s", ", ".join(self.roots), self.workspace.path)
        return self

    def stop(self, timeout: float | None = None, drain: bool = True) -> bool:
        """Stop watching; the update in progress is finished (each one is atomic and journaled).

        :param drain: also process the debounced events still waiting (otherwise the next start's
            reconciliation picks them up).
        :returns: ``True`` when the worker ended within ``timeout``.
        """
        if self._thread is None or self._stopped:
            return True
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if not drain:
            self._halt.set()
        self._queue.put(("stop", drain))
        self._thread.join(timeout)
        ended = not self._thread.is_alive()
        if ended:
            self._stopped = True
            logger.info("watcher stopped (%d updates, %d skipped, %d errors)", self.stats["updates"],
                        self.stats["skipped"], self.stats["errors"])
        return ended

    def __enter__(self) -> DocumentWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def idle(self) -> bool:
        """No event waiting, debounced or being processed."""
        with self._state_lock:
            return (self._queue.empty() and not self._pending and not self._scans and not self._busy
                    and not self._reroute_paths and self._sweep_due is None)

    def wait_idle(self, timeout: float = 60.0, settle: float | None = None) -> bool:
        """Wait until the watcher has been idle, with no file-system event, for ``settle`` seconds
        counted from this call at the earliest (default: the larger of 0.7 s, which covers watchdog
        pairing move events, and ``debounce``); ``False`` on timeout.

        Counting from the call matters: a change the caller has just made may not have reached the
        watcher yet (inotify delivers it a moment later, longer on a loaded machine)."""
        settle = max(0.7, self.debounce) if settle is None else settle
        start = time.monotonic()
        end = start + timeout
        quiet_since: float | None = None
        while time.monotonic() < end:
            if not self.running:
                return self.idle()
            now = time.monotonic()
            if self.idle() and now - max(self._last_event, start) >= settle:
                quiet_since = quiet_since or now
                if now - quiet_since >= min(settle, 0.2):
                    return True
            else:
                quiet_since = None
            time.sleep(0.05)
        return False

    def reconcile(self, timeout: float | None = None) -> list[WatchEvent]:
        """Bring the workspace in step with the folders now (in the worker); returns what was done."""
        return self._call(self._reconcile, timeout)

    def reroute(self, timeout: float | None = None) -> list[WatchEvent]:
        """Re-evaluate every watched file's route now (in the worker); returns the route changes."""
        return self._call(lambda: self._reroute_pass(interruptible=False), timeout)

    def query(self, question: str, **kwargs: Any) -> Any:
        """:meth:`Workspace.query`, then let the worker re-evaluate the routes of the files it used."""
        answer = self.workspace.query(question, **kwargs)
        used = [a["path"] for a in answer.adapters] + [c["path"] for c in answer.chunks]
        if used:
            self._queue.put(("reroute", used))
        return answer

    def _call(self, fn: Callable[[], list[WatchEvent]], timeout: float | None) -> list[WatchEvent]:
        if not self.running:
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}
        self._queue.put(("call", fn, (done, box)))
        if not done.wait(timeout):
            raise TimeoutError("the watcher did not finish in time")
        if "error" in box:
            raise box["error"]
        return box["result"]

    # -- filtering (observer thread) ------------------------------------------------------
    def wanted(self, path: str | Path, is_dir: bool = False) -> bool:
        """Whether the watcher handles this path (inside a watched folder, not excluded, a readable type)."""
        return self.scope.wanted(path, is_dir)

    def _on_fs_event(self, event: Any) -> None:
        items = self.scope.changes(event)
        if items:
            self._last_event = time.monotonic()
            with self._state_lock:
                self.stats["fs_events"] += 1
                for one in items:
                    self._queue.put(one)

    # -- the worker -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            timeout = self._next_timeout()
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    with self._state_lock:
                        self._busy = True
                    self._absorb(item)
                    while True:  # take in everything already queued before doing any work
                        try:
                            self._absorb(self._queue.get_nowait())
                        except queue.Empty:
                            break
                    if self._stop_requested:
                        break
                    continue
                self._work()
            except Exception:  # never let the worker die: log, and go on with the next event
                logger.exception("watcher: unexpected error")
                with self._state_lock:
                    self.stats["errors"] += 1
            finally:
                with self._state_lock:
                    self._busy = False
        if self._stop_requested == "drain":
            while self._pending or self._scans:
                try:
                    self._work(force=True)
                except Exception:  # pragma: no cover - as above
                    logger.exception("watcher: unexpected error")
        with self._state_lock:
            self._busy = False

    def _next_timeout(self) -> float:
        now = time.monotonic()
        earliest = self._pending.earliest()
        dues = ([] if earliest is None else [earliest]) + list(self._scans.values())
        if dues:
            return max(0.0, min(dues) - now)
        if self._sweep_due is not None:
            return max(0.0, self._sweep_due - now)
        if self._reroute_paths:
            return 0.0
        return min(0.5, self.reroute_check) if self.reroute_check else 0.5

    def _absorb(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        now = time.monotonic()
        if kind in ("upsert", "delete", "move", "scan", "delete_tree"):  # a file-system event
            self._sweep_due = now + max(self.debounce, 0.2)  # once it has all been applied
        if kind == "stop":
            self._stop_requested = "drain" if item[1] else "now"
        elif kind == "call":
            self._run_call(item[1], item[2])
        elif kind == "reroute":
            self._reroute_paths.update(str(p) for p in item[1])
        elif kind == "scan":
            self._scans[item[1]] = now + self.debounce
        elif kind == "delete_tree":
            self._delete_tree(item[1], now)
        else:
            self._pending.add(kind, item[-1], item[1] if kind == "move" else None, now)

    def _delete_tree(self, folder: str, now: float) -> None:
        for path in self.workspace.sources(under=[folder]):
            if not os.path.lexists(path):
                self._pending.add("delete", path, None, now)
        for path in self._pending.waiting_under(folder):
            if not os.path.lexists(path):
                self._pending.add("delete", path, None, now)

    def _run_call(self, fn: Callable[[], Any], reply: tuple[threading.Event, dict[str, Any]] | None) -> None:
        try:
            result = fn()
            if reply is not None:
                reply[1]["result"] = result
        except Exception as exc:
            logger.exception("watcher: %s failed", getattr(fn, "__name__", "a request"))
            if reply is not None:
                reply[1]["error"] = exc
        finally:
            if reply is not None:
                reply[0].set()

    def _work(self, force: bool = False) -> None:
        """Process one due item (everything is due with ``force``), or do idle work."""
        now = time.monotonic()
        due = self._pending.next_due(now, force)
        scans = [d for d, t in self._scans.items() if force or t <= now]
        if due is None and not scans:
            if self._sweep_due is not None and not self._pending and not self._scans and (
                    force or self._sweep_due <= now):
                self._sweep()
            elif not force:
                self._idle_work(now)
            return
        with self._state_lock:
            self._busy = True
        try:
            earliest = self._pending.earliest()
            if scans and (due is None or earliest is None or self._scans[scans[0]] <= earliest):
                folder = scans[0]
                del self._scans[folder]
                for path in self.scope.walk(folder):
                    if path not in self._pending:
                        self._apply.guard(path, self._apply.upsert, path)
                return
            path, entry = self._pending.take(due)
            if entry.kind == "upsert":
                self._apply.guard(path, self._apply.upsert, path)
            elif entry.kind == "delete":
                self._apply.guard(path, self._apply.delete, path)
            else:
                assert entry.src is not None
                self._apply.guard(path, self._apply.move, entry.src, path)
        finally:
            with self._state_lock:
                self._busy = False

    def _sweep(self) -> None:
        """After a burst of events is applied, queue what the events missed
        (:func:`~d2l_haystack.kb.watch_reconcile.missed_changes`)."""
        self._sweep_due = None
        now = time.monotonic()
        missed = missed_changes(self.scope, self.workspace, self._apply)
        for kind, path in missed:
            self._pending.add(kind, path, None, now)
        if missed:
            with self._state_lock:
                self.stats["swept"] += len(missed)
            logger.info("sweep: %d change(s) the file events did not report: %s", len(missed),
                        ", ".join(f"{k} {p}" for k, p in missed[:5]) + (" ..." if len(missed) > 5 else ""))

    # -- reconciliation and rerouting -----------------------------------------------------
    def _reconcile(self) -> list[WatchEvent]:
        """Apply what changed while the watcher was not running (:func:`~d2l_haystack.kb.watch_reconcile.reconcile`)."""
        return reconcile(self.scope, self.workspace, self._apply, self._halt)

    def _idle_work(self, now: float) -> None:
        """Re-evaluate routes while idle: files just queried, new queries anywhere, or periodically."""
        if self._reroute_paths:
            paths, self._reroute_paths = sorted(self._reroute_paths), set()
            self._reroute_pass(paths)
            return
        full = self.reroute_interval is not None and now - self._last_reroute >= self.reroute_interval
        if not full and self.reroute_check is not None and now - self._last_check >= self.reroute_check:
            self._last_check = now
            count = self.workspace.query_count()
            full = self._last_queries is not None and count != self._last_queries
            self._last_queries = count
        if full:
            self._reroute_pass()

    def _reroute_pass(self, paths: Iterable[str] | None = None, interruptible: bool = True) -> list[WatchEvent]:
        with self._state_lock:
            busy, self._busy = self._busy, True
            self.stats["reroute_passes"] += 1
        mark = len(self.events)
        try:
            todo = sorted(self.workspace.sources(under=self.roots)) if paths is None else list(paths)
            for path in todo:
                if self._halt.is_set() or (interruptible and not self._queue.empty()):
                    return self._apply.since(mark)  # new events first; the next idle moment starts over
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                try:
                    results = self.workspace.reroute([path])
                except InputError as exc:
                    self._apply.skip(path, strip_path(str(exc), path))
                    continue
                for r in results:
                    self._apply.emit_result(r, rerouted=True)
            if paths is None:
                self._last_reroute = time.monotonic()
                self._last_queries = self.workspace.query_count()
            return [e for e in self._apply.since(mark) if e.action == "rerouted"]
        finally:
            with self._state_lock:
                self._busy = busy


__all__ = ["DocumentWatcher", "WatchEvent"]
