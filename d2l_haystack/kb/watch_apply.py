"""How the watcher applies one file change to its workspace, and how it reports it.

:class:`ChangeApplier` is the part of :class:`~d2l_haystack.kb.watcher.DocumentWatcher` that
touches the workspace for one path: index a created or modified file, remove a deleted one,
follow a rename, skip (and forget) an unusable one; every outcome becomes a :class:`WatchEvent`
in :attr:`ChangeApplier.events`, counted in :attr:`ChangeApplier.stats`. Failures are logged
and counted, never raised (:meth:`ChangeApplier.guard`). The watcher decides *when* (debounce,
sweeps, reconciliation, reroute passes); this decides *what* a change does.

Usage example::

    from d2l_haystack.kb.watch_apply import ChangeApplier
    from d2l_haystack.kb.watch_scope import WatchScope

    apply = ChangeApplier(ws, WatchScope(["docs/"], workspace_root=ws.path), on_folder=print)
    apply.guard("docs/a.md", apply.upsert, "docs/a.md")
    print(apply.events[-1].action)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from d2l_haystack.core.errors import InputError
from d2l_haystack.kb.watch_scope import WatchScope
from d2l_haystack.kb.workspace import IndexResult, Workspace
from d2l_haystack.stores.files import stat_signature

logger = logging.getLogger("d2l_haystack.kb.watcher")


@dataclass
class WatchEvent:
    """What the watcher did with one file (passed to ``on_event`` and kept in :attr:`DocumentWatcher.events`)."""

    action: str
    """``internalized``, ``indexed``, ``copied``, ``unchanged``, ``renamed``, ``removed``, ``rerouted``,
    ``skipped`` or ``failed``."""
    path: str
    route: str | None = None
    previous_route: str | None = None
    reason: str = ""
    seconds: float = 0.0
    source: str | None = None
    """For ``renamed``: the old path."""
    at: float = field(default_factory=time.time)

    @property
    def route_changed(self) -> bool:
        return bool(self.previous_route and self.route and self.previous_route != self.route)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChangeApplier:
    """Applies file changes to ``workspace`` within ``scope`` and records what happened.

    :param on_folder: called with a path that turned out to be a folder (the watcher walks it later).
    :param on_event: called with every :class:`WatchEvent` (a failing callback is logged, never raised).
    """

    def __init__(self, workspace: Workspace, scope: WatchScope, *, on_folder: Callable[[str], None],
                 on_event: Callable[[WatchEvent], None] | None = None) -> None:
        self.workspace = workspace
        self.scope = scope
        self.on_folder = on_folder
        self.on_event = on_event
        self.events: deque[WatchEvent] = deque(maxlen=2000)
        """The last events handled (newest last)."""
        self.stats: dict[str, Any] = {"fs_events": 0, "updates": 0, "errors": 0, "skipped": 0,
                                      "route_changes": 0, "reroute_passes": 0, "swept": 0, "actions": {}}
        self.lock = threading.Lock()
        """Guards :attr:`stats` (and the watcher's own state flags)."""
        self.unindexable: dict[str, list[int] | None] = {}
        """Files skipped as unusable, with their stat signature then (sweeps leave them until they change)."""

    def since(self, mark: int) -> list[WatchEvent]:
        """The events after the first ``mark`` (``mark = len(events)`` taken before some work)."""
        events = list(self.events)
        return events[mark:] if mark <= len(events) else events

    def guard(self, path: str, fn: Callable[..., None], *args: Any) -> None:
        """Run one file operation; any failure is logged and counted, never raised."""
        try:
            fn(*args)
        except Exception as exc:
            with self.lock:
                self.stats["errors"] += 1
            logger.error("failed to update %s: %s: %s", path, type(exc).__name__, exc,
                         exc_info=logger.isEnabledFor(logging.DEBUG))
            self.emit(WatchEvent("failed", path, reason=f"{type(exc).__name__}: {exc}"))

    def known(self, path: str) -> bool:
        """Whether the workspace has a record for exactly this path (never through a symbolic link)."""
        try:
            rec = self.workspace.record(path)
        except (OSError, RuntimeError):  # resolving a symbolic link loop
            return False
        return rec is not None and rec.get("path", path) == path

    def skip(self, path: str, reason: str) -> None:
        """Log an unusable file; forget it if it was indexed (its indexed content no longer exists)."""
        self.unindexable[path] = stat_signature(path)  # sweeps leave it until it changes
        if self.known(path):
            self.workspace.remove_file(path)
            logger.warning("removed %s: %s (it was indexed; its old content is gone)", path, reason)
            self.emit(WatchEvent("removed", path, reason=reason))
            return
        with self.lock:
            self.stats["skipped"] += 1
        (logger.info if reason.startswith("vanished") else logger.warning)("skipped %s: %s", path, reason)
        self.emit(WatchEvent("skipped", path, reason=reason))

    def upsert(self, path: str) -> None:
        reason = self.scope.inspect(path)
        if reason == "is a folder":
            self.on_folder(path)
            return
        if reason:
            self.skip(path, reason)
            return
        try:
            result = self.workspace.index_file(path)
        except InputError as exc:
            self.skip(path, strip_path(str(exc), path))
            return
        self.emit_result(result)

    def delete(self, path: str) -> None:
        if os.path.lexists(path):  # re-created since: index what is there now
            self.upsert(path)
            return
        if self.known(path) and self.workspace.remove_file(path):
            logger.info("removed %s", path)
            self.emit(WatchEvent("removed", path, reason="file deleted"))

    def move(self, src: str, dst: str) -> None:
        if not os.path.lexists(dst):  # moved, then deleted
            self.delete(src)
            self.delete(dst)
            return
        reason = self.scope.inspect(dst)
        if reason:
            if self.known(src):
                self.workspace.remove_file(src)
                self.emit(WatchEvent("removed", src, reason=f"moved to {dst}"))
            if reason == "is a folder":
                self.on_folder(dst)
            else:
                self.skip(dst, reason)
            return
        if not self.known(src):
            self.upsert(dst)
            return
        try:
            result = self.workspace.rename_file(src, dst)
        except InputError as exc:
            self.skip(dst, strip_path(str(exc), dst))
            if self.known(src):
                self.workspace.remove_file(src)
            return
        if result is None:  # pragma: no cover - dst is a supported type (checked when the event came)
            self.emit(WatchEvent("removed", src, reason=f"renamed to unsupported {dst}"))
            return
        self.emit_result(result, source=src)

    def emit_result(self, result: IndexResult, source: str | None = None, rerouted: bool = False) -> None:
        action = "rerouted" if rerouted and result.route != result.previous_route else result.action
        event = WatchEvent(action, result.path, route=result.route, previous_route=result.previous_route,
                           reason=result.reason, seconds=result.seconds, source=source)
        if action != "unchanged":
            with self.lock:
                self.stats["updates"] += 1
        if event.route_changed:
            with self.lock:
                self.stats["route_changes"] += 1
            logger.info("route change: %s: %s -> %s: %s", result.path, result.previous_route, result.route,
                        result.reason)
        elif action not in ("unchanged",):
            logger.info("%s %s %s (%.2f s)", action, result.route, result.path, result.seconds)
        self.emit(event)

    def emit(self, event: WatchEvent) -> None:
        with self.lock:
            actions = self.stats["actions"]
            actions[event.action] = actions.get(event.action, 0) + 1
        self.events.append(event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # pragma: no cover - a broken callback must not stop the service
                logger.exception("watcher: on_event callback failed")


def strip_path(message: str, path: str) -> str:
    """``"/a/b.md: not UTF-8 text"`` -> ``"not UTF-8 text"`` (the log line names the file already)."""
    for prefix in (f"{path}: ", f"{Path(path)}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message
