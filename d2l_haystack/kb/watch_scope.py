"""What a :class:`~d2l_haystack.kb.watcher.DocumentWatcher` watches: folders, single files,
include and exclude globs, and which files can be indexed at all.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> scope = WatchScope([folder], workspace_root=os.path.join(folder, "kb"))
    >>> scope.wanted(os.path.join(folder, "notes.md")), scope.wanted(os.path.join(folder, ".notes.md.swp"))
    (True, False)
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from d2l_haystack.core.errors import InputError
from d2l_haystack.kb.settings import DEFAULT_SETTINGS
from d2l_haystack.kb.sources import size_problem
from d2l_haystack.kb.workspace import Workspace

logger = logging.getLogger("d2l_haystack.kb.watcher")

DEFAULT_EXCLUDE: tuple[str, ...] = (".*", "*~", "*.swp", "*.swx", "*.tmp", "*.part", "*.crdownload", "#*#",
                                    "__pycache__", "node_modules")
"""Always excluded: hidden files and folders, editor and download temporaries."""
DEFAULT_MAX_FILE_BYTES: int = DEFAULT_SETTINGS["max_file_bytes"]
"""The workspace setting's default (:data:`~d2l_haystack.kb.settings.DEFAULT_SETTINGS`)."""

_FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device"}


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it (plain string paths, already resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class WatchScope:
    """The watched folders and files, and the rules deciding which paths are handled.

    :param paths: folders to watch recursively (a file: its folder, only that file).
    :param include: globs a file must match (relative path or name; default: every readable type).
    :param exclude: globs excluding files or folders, added to :data:`DEFAULT_EXCLUDE`.
    :param workspace_root: the workspace folder (always excluded).
    :param max_file_bytes: larger files cannot be indexed (:meth:`inspect` says why).
    :raises InputError: a path does not exist.
    """

    def __init__(self, paths: Sequence[str | Path] | str | Path, *, include: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, workspace_root: str | Path = "",
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        folders: list[str] = []
        files: list[str] = []
        for raw in paths:
            p = Path(raw).expanduser()
            if not p.exists():
                raise InputError(f"{p}: no such file or folder to watch")
            full = str(p.resolve())
            (folders if p.is_dir() else files).append(full)
        # nested folders are covered by their parent's recursive watch, files by their folder's
        folders = [f for f in dict.fromkeys(folders) if not any(o != f and inside(f, o) for o in folders)]
        self.only: dict[str, set[str]] = {}
        """Folders watched for single files only (a file was given): folder -> those files."""
        for f in files:
            if not any(inside(f, d) for d in folders):
                self.only.setdefault(os.path.dirname(f), set()).add(f)
        self.roots = folders + [d for d in self.only if d not in folders]
        self.include = list(include or [])
        self.exclude = list(DEFAULT_EXCLUDE) + [e for e in (exclude or []) if e not in DEFAULT_EXCLUDE]
        self.workspace_root = str(workspace_root)
        self.max_file_bytes = int(max_file_bytes)

    def root_of(self, path: str) -> str | None:
        """The innermost watched root holding ``path``."""
        best = None
        for root in self.roots:
            if inside(path, root) and (best is None or len(root) > len(best)):
                best = root
        return best

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        for pattern in self.exclude:
            if fnmatch(rel, pattern) or any(fnmatch(part, pattern) for part in parts):
                return True
        return False

    def in_workspace(self, path: str) -> bool:
        return bool(self.workspace_root) and inside(path, self.workspace_root)

    def wanted(self, path: str | Path, is_dir: bool = False) -> bool:
        """Whether the watcher handles this path (inside a watched folder, not excluded, a readable type)."""
        path = str(path)
        root = self.root_of(path)
        if root is None or path == root or self.in_workspace(path):
            return False
        if root in self.only and path not in self.only[root]:
            return False
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if self.excluded(rel):
            return False
        if is_dir:
            return True
        if not Workspace.supports(path):
            return False
        if self.include:
            name = rel.rsplit("/", 1)[-1]
            return any(fnmatch(rel, p) or fnmatch(name, p) for p in self.include)
        return True

    def inspect(self, path: str) -> str | None:
        """Why ``path`` cannot be indexed (``None``: a regular file within the size limit)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "vanished before it could be read"
        except OSError as exc:
            return f"cannot read ({exc.strerror})"
        if stat.S_ISLNK(st.st_mode):
            try:
                os.stat(path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return "symbolic link loop (links are not followed)"
                return "broken symbolic link"
            return "symbolic link (links are not followed; watch its target instead)"
        if stat.S_ISDIR(st.st_mode):
            return "is a folder"
        if not stat.S_ISREG(st.st_mode):
            return f"not a regular file: {_FILE_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')}"
        problem = size_problem(st.st_size, self.max_file_bytes)
        return f"too large: {problem}" if problem else None

    def changes(self, event: Any) -> list[tuple[Any, ...]]:
        """What a watchdog event means for the watcher's queue: ``("upsert", path)``, ``("delete",
        path)``, ``("move", src, dst)``, ``("scan", folder)`` or ``("delete_tree", folder)`` items
        (none for the workspace's own files, excluded paths and unreadable types)."""
        kind = event.event_type
        src = os.path.abspath(os.fsdecode(event.src_path))
        dst = os.path.abspath(os.fsdecode(event.dest_path)) if getattr(event, "dest_path", "") else ""
        if self.in_workspace(src) and (not dst or self.in_workspace(dst)):
            return []  # the workspace's own files
        item: tuple[Any, ...] | None = None
        items: list[tuple[Any, ...]] = []
        if event.is_directory:
            if kind == "created" and self.wanted(src, is_dir=True):
                item = ("scan", src)
            elif kind == "deleted" and self.root_of(src) is not None:
                item = ("delete_tree", src)
            elif kind == "moved":
                # watchdog reports the files inside as moved too, but only those still there when it
                # walks the new folder: a file moved on at once would keep its old record. So every
                # record under the old folder is marked deleted (a file's own move event, arriving
                # next, turns its mark into the move), and the new folder is scanned.
                if self.root_of(src) is not None:
                    items.append(("delete_tree", src))
                if self.wanted(dst, is_dir=True):
                    items.append(("scan", dst))
        elif kind in ("created", "modified", "closed"):
            if self.wanted(src):
                item = ("upsert", src)
        elif kind == "deleted":
            if self.root_of(src) is not None and Workspace.supports(src):
                item = ("delete", src)
        elif kind == "moved":
            src_ok, dst_ok = self.wanted(src), self.wanted(dst)
            if src_ok and dst_ok:
                item = ("move", src, dst)
            elif dst_ok:  # e.g. an editor's temporary file saved over the document
                item = ("upsert", dst)
            elif src_ok or (self.root_of(src) is not None and Workspace.supports(src)):
                item = ("delete", src)
        if item is not None:
            items.append(item)
        return items

    def walk(self, folder: str) -> list[str]:
        """Every wanted regular file under ``folder`` (symbolic links are not followed)."""
        out: list[str] = []
        if os.path.islink(folder):
            logger.warning("skipped %s: symbolic link to a folder (links are not followed)", folder)
            return out
        for base, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if self.wanted(os.path.join(base, d), is_dir=True))
            for name in sorted(files):
                path = os.path.join(base, name)
                if self.wanted(path):
                    out.append(path)
        return out
