"""Which files a workspace indexes and how it reads them: supported types, the size limit, the
workspace's own files (never indexed), folder walks.

One part of :class:`~d2l_haystack.kb.workspace.Workspace`; it holds no state beyond the
workspace's folder and its ``max_file_bytes`` setting, so the watcher, the HTTP upload check and
the Ray driver apply the same rules.

Usage example::

    from d2l_haystack.kb.sources import SourceFiles

    files = SourceFiles("kb", max_file_bytes=10_000_000)
    for path in files.collect(["docs/"]):
        text, meta, stat = files.read(path)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from d2l_haystack.components.source_file_converter import read_source, supported_suffixes
from d2l_haystack.core.errors import InputError
from d2l_haystack.stores.files import stat_signature

INTERNAL_FOLDERS = ("adapters", "faiss")
"""The workspace's own folders (and ``faiss.damaged-*``, kept by ``Workspace.repair``)."""


def supports(path: str | Path) -> bool:
    """Whether ``path`` has a file type a workspace can index."""
    return Path(path).suffix.lower() in supported_suffixes()


def size_problem(size: int, limit: int) -> str | None:
    """Why a file of ``size`` bytes cannot be indexed under the ``max_file_bytes`` setting ``limit``
    (``None``: it can): the one wording of ``d2l index``, the watcher and uploads."""
    if size <= limit:
        return None
    return f"{size:,} bytes is over the workspace's {limit:,}-byte limit (setting max_file_bytes; " \
           f"raise it with `--max-file-size BYTES`)"


class SourceFiles:
    """The source-file rules of one workspace folder.

    :param root: the workspace folder (its own files are never collected).
    :param max_file_bytes: the one size limit of ``d2l index``, the watcher and uploads.
    """

    def __init__(self, root: str | Path, max_file_bytes: int) -> None:
        self.root = Path(root).expanduser().resolve()
        self.max_file_bytes = int(max_file_bytes)

    def check_size(self, path: str | Path, size: int) -> None:
        """:raises InputError: ``size`` bytes (of the file or upload ``path``) is over the limit."""
        problem = size_problem(size, self.max_file_bytes)
        if problem:
            raise InputError(f"{path}: {problem}")

    def read(self, path: str | Path) -> tuple[str, dict[str, Any], list[int] | None]:
        """A file's text, its document meta and its stat signature (taken before reading: a later
        edit makes it differ).

        :raises InputError: missing, too large, empty, binary, non-UTF-8 or unsupported.
        """
        stat = stat_signature(Path(path).expanduser())
        if stat is not None:  # else read_source names the problem
            self.check_size(path, stat[1])
        text, meta = read_source(path)
        return text, meta, stat

    def is_internal(self, path: Path) -> bool:
        """Whether ``path`` is one of the workspace's own files (its top-level files, adapters, RAG
        index). Documents kept inside it (``uploads/``, the demo's ``sources/``) are not."""
        try:
            rel = path.resolve().relative_to(self.root).parts
        except ValueError:
            return False
        return len(rel) <= 1 or rel[0] in INTERNAL_FOLDERS or rel[0].startswith("faiss.damaged-")

    def collect(self, paths: Iterable[str | Path], *, recursive: bool = True) -> list[Path]:
        """Files as given, and every supported file inside folders (hidden ones and the workspace's
        own files skipped), in a stable order.

        :raises InputError: a missing path.
        """
        files: list[Path] = []
        for raw in paths:
            p = Path(raw).expanduser()
            if not p.exists():
                raise InputError(f"{p}: no such file or folder")
            if p.is_dir():
                pattern = "**/*" if recursive else "*"
                for f in sorted(p.glob(pattern)):
                    rel = f.relative_to(p).parts
                    if (f.is_file() and supports(f) and not any(part.startswith(".") for part in rel)
                            and not self.is_internal(f)):
                        files.append(f)
            else:
                files.append(p)
        return files
