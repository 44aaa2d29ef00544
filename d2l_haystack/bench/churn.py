"""Random file-system churn in a watched folder, and the check that a workspace matches the folder.

Used by the watcher's property test (``tests/test_watcher.py``) and by the churn benchmark
(``benchmarks/bench_churn.py``): :class:`Churn` applies random operations (create, edit, delete,
rename, rename over an existing file, move between folders, create, rename and delete folders),
:func:`mismatches` lists every way the workspace differs from the folder (empty: in step).

    >>> import tempfile
    >>> from pathlib import Path
    >>> churn = Churn(Path(tempfile.mkdtemp()), seed=1)
    >>> ops = [churn.step() for _ in range(20)]
    >>> len(ops), len(churn.files()) > 0
    (20, True)
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

OPERATIONS: dict[str, float] = {
    "create": 0.22, "edit": 0.2, "delete": 0.12, "rename": 0.14, "rename_over": 0.08, "move": 0.1,
    "mkdir": 0.05, "rename_dir": 0.05, "delete_dir": 0.04,
}
"""Operation weights (files are kept between 3 and ``max_files``)."""

_WORDS = ("kettle", "garden", "invoice", "ladder", "violin", "harbour", "lantern", "meadow", "pepper", "quartz")


class Churn:
    """Random operations on the files of ``root`` (``.md`` and ``.txt``; every content unique).

    :param root: the folder (created if missing).
    :param seed: the random seed (the same seed gives the same operations on the same start).
    :param max_files: deletions are preferred once there are this many files.
    """

    def __init__(self, root: Path, seed: int = 0, max_files: int = 50) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.max_files = max_files
        self.counter = 0
        self.counts: dict[str, int] = {}

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix in (".md", ".txt"))

    def folders(self) -> list[Path]:
        return [self.root] + sorted(p for p in self.root.rglob("*") if p.is_dir())

    def _text(self) -> str:
        self.counter += 1
        word = self.rng.choice(_WORDS)
        return (f"# Note {self.counter}\nThe {word} of note {self.counter} has the code "
                f"{self.rng.randint(1000, 9999)}-{self.counter}. It is kept in room {self.rng.randint(1, 99)}.\n")

    def _new_name(self, folder: Path) -> Path:
        self.counter += 1
        return folder / f"f{self.counter}{self.rng.choice(('.md', '.txt'))}"

    def step(self) -> str:
        """Apply one random operation; returns what it did (one line)."""
        files = self.files()
        ops, weights = zip(*OPERATIONS.items(), strict=True)
        op = self.rng.choices(ops, weights=weights)[0]
        if len(files) < 3:
            op = "create"
        elif len(files) >= self.max_files and op in ("create", "mkdir"):
            op = "delete"
        subfolders = [f for f in self.folders() if f != self.root]
        if op in ("rename_dir", "delete_dir") and not subfolders:
            op = "mkdir"
        self.counts[op] = self.counts.get(op, 0) + 1
        if op == "create":
            path = self._new_name(self.rng.choice(self.folders()))
            path.write_text(self._text(), encoding="utf-8")
            return f"create {path}"
        if op == "edit":
            path = self.rng.choice(files)
            path.write_text(self._text(), encoding="utf-8")
            return f"edit {path}"
        if op == "delete":
            path = self.rng.choice(files)
            path.unlink()
            return f"delete {path}"
        if op == "rename":
            path = self.rng.choice(files)
            target = self._new_name(path.parent)
            os.replace(path, target)
            return f"rename {path} -> {target}"
        if op == "rename_over":
            path, target = self.rng.sample(files, 2)
            os.replace(path, target)
            return f"rename {path} over {target}"
        if op == "move":
            path = self.rng.choice(files)
            target = self._new_name(self.rng.choice(self.folders()))
            os.replace(path, target)
            return f"move {path} -> {target}"
        if op == "mkdir":
            self.counter += 1
            folder = self.rng.choice(self.folders()) / f"d{self.counter}"
            folder.mkdir()
            (folder / "first.md").write_text(self._text(), encoding="utf-8")
            return f"mkdir {folder}"
        folder = self.rng.choice(subfolders)
        if op == "rename_dir":
            self.counter += 1
            target = self.rng.choice([f for f in self.folders() if not _inside(f, folder)]) / f"d{self.counter}"
            os.replace(folder, target)
            return f"rename folder {folder} -> {target}"
        shutil.rmtree(folder)
        return f"delete folder {folder}"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def mismatches(workspace: Any, watcher: Any) -> list[str]:
    """Every way ``workspace`` differs from the folders ``watcher`` watches, one line each (empty:
    in step): a file without its record or with a stale one, a record without its file, an adapter
    or chunk of a file that is gone or of an old version, a pending journal entry."""
    from d2l_haystack.components.source_file_converter import read_source
    from d2l_haystack.core.textio import content_hash

    files: dict[str, str] = {}
    for root in watcher.roots:
        for base, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if watcher.wanted(os.path.join(base, d), is_dir=True)]
            for n in names:
                p = os.path.join(base, n)
                if watcher.wanted(p) and os.path.isfile(p) and not os.path.islink(p):
                    try:
                        files[p] = content_hash(read_source(p)[0])
                    except Exception:  # noqa: BLE001 - unreadable files are not indexed
                        pass
    problems: list[str] = []
    records = workspace.sources(under=watcher.roots)
    for p in sorted(set(files) | set(records)):
        if p not in records:
            problems.append(f"{p}: file without a record")
        elif p not in files:
            problems.append(f"{p}: record of a file that is gone")
        elif records[p]["hash"] != files[p]:
            problems.append(f"{p}: record of an old version")
    for entry in workspace.adapters.list():
        if entry["id"] not in files:
            problems.append(f"{entry['id']}: adapter of a file that is gone (a query could select it)")
        elif entry["content_hash"] != files[entry["id"]]:
            problems.append(f"{entry['id']}: adapter of an old version")
        elif records.get(entry["id"], {}).get("route") != "d2l":
            problems.append(f"{entry['id']}: adapter of a file routed to RAG")
    for chunk in workspace.document_store.filter_documents():
        path = chunk.meta.get("file_path")
        if path not in files:
            problems.append(f"{path}: chunk of a file that is gone")
        elif records.get(path, {}).get("route") != "rag":
            problems.append(f"{path}: chunk of a file routed to D2L")
        elif (chunk.content or "").strip() not in read_source(path)[0]:
            problems.append(f"{path}: chunk of an old version")
    if (Path(workspace.path) / "journal.json").exists():
        problems.append("an update is still pending in the journal")
    return problems
