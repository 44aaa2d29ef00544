"""The watcher's table of changes waiting for their quiet period: one entry per path, bursts collapsed.

A file event becomes ``upsert``, ``delete`` or ``move`` (from ``src``) of one path. Events for a
path that already waits are folded into its entry (a save after a move stays a move, so the
record follows the file and is re-indexed only if the content changed; a delete after a move
deletes the old path's record too; a chain ``A -> B -> C`` becomes ``A -> C`` plus the deletion of
whatever record ``B`` had before ``A`` was moved over it). Each entry is due
``debounce`` seconds after its last event, and at the latest ``max_delay`` after its first.
Pure bookkeeping: nothing here touches the file system or the workspace.

    >>> pending = PendingChanges(debounce=1.0, max_delay=5.0)
    >>> pending.add("move", "/d/b.md", "/d/a.md", now=0.0)
    >>> pending.add("move", "/d/c.md", "/d/b.md", now=0.5)
    >>> pending.add("upsert", "/d/c.md", None, now=0.6)
    >>> sorted((p, e.kind, e.src) for p, e in pending.items())
    [('/d/b.md', 'delete', None), ('/d/c.md', 'move', '/d/a.md')]
    >>> pending.take(pending.next_due(now=2.0, force=False))
    ('/d/b.md', Pending(kind='delete', src=None, first=0.5, due=1.5))
"""

from __future__ import annotations

from collections.abc import ItemsView
from dataclasses import dataclass

from d2l_haystack.kb.watch_scope import inside

KINDS = ("upsert", "delete", "move")


@dataclass
class Pending:
    kind: str
    """``upsert``, ``delete`` or ``move`` (from :attr:`src`)."""
    src: str | None
    first: float
    """When the first event of this burst came (``time.monotonic()``)."""
    due: float
    """When it is processed: ``debounce`` after the last event, ``max_delay`` after the first at most."""


class PendingChanges:
    """Debounced file changes by path (see the module docstring).

    :param debounce: seconds without events before a path is due.
    :param max_delay: a path that keeps changing is due at least this long after its first event.
    """

    def __init__(self, debounce: float, max_delay: float) -> None:
        self.debounce = debounce
        self.max_delay = max_delay
        self._entries: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def items(self) -> ItemsView[str, Pending]:
        return self._entries.items()

    def _set(self, path: str, kind: str, src: str | None, now: float) -> None:
        old = self._entries.get(path)
        first = old.first if old else now
        self._entries[path] = Pending(kind, src, first, min(first + self.max_delay, now + self.debounce))

    def add(self, kind: str, path: str, src: str | None, now: float) -> None:
        """Fold one file event into the table (``src``: the old path of a ``move``)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        old = self._entries.get(path)
        if kind == "upsert":
            if old and old.kind == "move":
                self._set(path, "move", old.src, now)  # rename_file re-indexes if the content changed
            else:
                self._set(path, "upsert", None, now)
        elif kind == "delete":
            if old and old.kind == "move" and old.src:
                self._set(old.src, "delete", None, now)  # the moved file is gone: its old record too
            self._set(path, "delete", None, now)
        else:  # move src -> path
            if src is None:
                raise ValueError("a move needs its old path (src)")
            prior = self._entries.pop(src, None)
            origin = prior.src if prior and prior.kind == "move" and prior.src else src
            if origin != src:  # src held a file moved over it (A -> src -> path): src's own record is gone
                self._set(src, "delete", None, now)
            if old and old.kind == "move" and old.src and old.src not in (origin, path):
                self._set(old.src, "delete", None, now)  # a file moved here earlier is overwritten
            if origin == path:
                self._set(path, "upsert", None, now)
            else:
                self._set(path, "move", origin, now)

    def waiting_under(self, folder: str) -> list[str]:
        """Paths below ``folder`` that wait for anything but a deletion."""
        return [p for p, e in self._entries.items() if inside(p, folder) and e.kind != "delete"]

    def earliest(self) -> float | None:
        """When the next path is due (``None``: nothing waits)."""
        return min((e.due for e in self._entries.values()), default=None)

    def next_due(self, now: float, force: bool) -> str | None:
        """The path to process next (every path is due with ``force``; ``None``: none is due): the
        earliest due, except that a waiting move OUT of it goes first (its record must move
        before the path is reused)."""
        due = [(e.due, p) for p, e in self._entries.items() if force or e.due <= now]
        if not due:
            return None
        path = min(due)[1]
        for other, entry in self._entries.items():
            if entry.kind == "move" and entry.src == path:
                return other
        return path

    def take(self, path: str | None) -> tuple[str, Pending]:
        """Remove ``path``'s entry and return it with its path.

        :raises KeyError: ``path`` does not wait.
        """
        if path is None or path not in self._entries:
            raise KeyError(path)
        return path, self._entries.pop(path)
