"""What a :class:`~d2l_haystack.kb.watcher.DocumentWatcher` does when it compares the watched folders
with the workspace's records instead of following file-system events: the sweep after a burst of
events (a walk and a ``stat`` per file, no reading) and the reconciliation on start (what changed
while no watcher ran, renames found by content).

Both read the folders through the watcher's :class:`~d2l_haystack.kb.watch_scope.WatchScope` and
apply changes through its :class:`~d2l_haystack.kb.watch_apply.ChangeApplier`; neither keeps state
of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from d2l_haystack.components.source_file_converter import read_source
from d2l_haystack.core.errors import InputError
from d2l_haystack.core.textio import content_hash
from d2l_haystack.kb.watch_apply import ChangeApplier, WatchEvent
from d2l_haystack.kb.watch_scope import WatchScope
from d2l_haystack.kb.workspace import Workspace
from d2l_haystack.stores.files import stat_signature

logger = logging.getLogger("d2l_haystack.kb.watcher")


def missed_changes(scope: WatchScope, workspace: Workspace, apply: ChangeApplier) -> list[tuple[str, str]]:
    """The changes the file events did not report, as ``(kind, path)`` with kind ``upsert`` or
    ``delete``: watchdog loses events (a full inotify queue, files moved in and out of a folder
    just moved, paths reported under a moved folder's old name), so a missed rename comes back as a
    removal and an addition. A file already skipped as it is (binary, too large) is not reported
    again until it changes."""
    present = {p for root in scope.roots for p in scope.walk(root)}
    known = workspace.sources(under=scope.roots)
    missed: list[tuple[str, str]] = []
    for path, rec in known.items():
        if path not in present:
            if not os.path.lexists(path):
                missed.append(("delete", path))
        else:
            stat = stat_signature(path)
            if stat is None or rec.get("file_stat") != stat:
                missed.append(("upsert", path))
    missed += [("upsert", p) for p in sorted(present - set(known))
               if apply.unindexable.get(p, "?") != stat_signature(p)]
    return missed


def reconcile(scope: WatchScope, workspace: Workspace, apply: ChangeApplier,
              halt: threading.Event) -> list[WatchEvent]:
    """Apply what changed in the folders while no watcher ran: files renamed (the same content under
    a new name) follow their record, new and changed files are indexed, vanished ones removed.
    Stops early when ``halt`` is set; returns the events of what was done."""
    start = time.perf_counter()
    mark = len(apply.events)
    current = [p for root in scope.roots for p in scope.walk(root)]
    known = workspace.sources(under=scope.roots)
    present = set(current)
    missing = {p: rec for p, rec in known.items() if p not in present and not os.path.isfile(p)}
    new = [p for p in current if p not in known]
    by_hash: dict[str, list[str]] = {}
    for p, rec in missing.items():
        if rec.get("hash"):
            by_hash.setdefault(rec["hash"], []).append(p)
    if by_hash:
        for p in list(new):
            if halt.is_set():
                break
            if scope.inspect(p):
                continue
            try:
                digest = content_hash(read_source(p)[0])
            except InputError:
                continue
            olds = by_hash.get(digest)
            if olds:
                old = olds.pop()
                missing.pop(old, None)
                new.remove(p)
                apply.guard(p, apply.move, old, p)
    for p in new + [p for p in current if p in known]:
        if halt.is_set():
            return apply.since(mark)
        apply.guard(p, apply.upsert, p)
    for p in missing:
        if halt.is_set():
            return apply.since(mark)
        apply.guard(p, apply.delete, p)
    done = apply.since(mark)
    changed = [e for e in done if e.action != "unchanged"]
    logger.info("reconciled %d files with %s in %.1f s: %d updates", len(current), workspace.path,
                time.perf_counter() - start, len(changed))
    return done
