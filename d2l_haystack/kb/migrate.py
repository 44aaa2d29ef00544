"""Copying a workspace into another place without re-internalizing: ``d2l workspace copy``.

The adapter files are copied as they are (their checksums with them), the records, counters and
change history are written into the target's state, and the RAG chunks are copied with their
embeddings, so nothing is internalized or embedded again. Two forms:

* ``copy_workspace(src, "postgresql://...", to="kb2")``: a new workspace folder ``kb2`` (its
  ``workspace.json`` and ``adapters/``) whose records and chunks live in the database;
* ``copy_workspace(src, "postgresql://...")`` (no ``to``): the folder workspace itself moves into
  the database. The database rows are written first, then ``workspace.json`` names the database
  (the commit point), then the folder's ``files.json`` and ``faiss/`` are moved into
  ``.folder-state/`` (kept, not deleted). Stop watchers and servers of the workspace first: a
  process that still has it open keeps writing the folder state.

An interrupted copy leaves the source as it was (the target is incomplete and unused; delete it).
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from d2l_haystack.kb.settings import CONFIG_FILE, STORE_SCHEMES, WorkspaceError, open_config, store_name_for
from d2l_haystack.kb.workspace import Workspace
from d2l_haystack.stores.files import atomic_write_json

BACKUP_FOLDER = ".folder-state"


def copy_workspace(src: Workspace, store: str | None, to: str | Path | None = None,
                   on_progress: Callable[[str], None] | None = None) -> Workspace:
    """Copy ``src`` into the database ``store`` (``None``: a folder workspace at ``to``).

    :param to: the new workspace folder; ``None`` moves ``src`` itself into ``store``.
    :returns: the target workspace (opened).
    :raises WorkspaceError: a bad target (an existing workspace folder, ``src`` already in a
        database when copying in place, no target at all), or the database refused.
    """
    say = on_progress or (lambda _msg: None)
    if store is not None and not store.startswith(STORE_SCHEMES + ("$",)):
        raise WorkspaceError(f"copy target must be a postgresql:// URL (or $VARIABLE), got {store!r}")
    if to is None and store is None:
        raise WorkspaceError("copy needs a database URL, a target folder (--to), or both")
    if to is None and src.settings["store"]:
        raise WorkspaceError(f"workspace {src.path} is already in {src._state.describe()}; "
                             f"copy it elsewhere with --to DIR")
    target = Path(to).expanduser().resolve() if to is not None else src.path
    if to is not None and (target / CONFIG_FILE).exists():
        raise WorkspaceError(f"{target} is already a workspace; copy into a new folder")
    if to is not None and target.exists() and any(target.iterdir()):
        raise WorkspaceError(f"{target} is not empty")
    with src._locked():
        src._recover(heavy=True)  # an interrupted update is finished (or rolled back) before copying
        settings = {k: copy.deepcopy(v) for k, v in src.settings.items() if k not in ("store", "store_name")}
        if store is not None:
            settings.update(store=store, store_name=store_name_for(target))
        files, stats = copy.deepcopy(src._files), copy.deepcopy(src._stats)
        chunks = src.document_store.filter_documents()
        say(f"copying {len(files)} records, {len(src.adapters.list())} adapters and {len(chunks)} chunks "
            f"to {target}{' in ' + store if store else ''}")
        if to is not None:
            open_config(target, create=True, **settings)  # workspace.json of the new folder
            shutil.copytree(src.path / "adapters", target / "adapters", dirs_exist_ok=True)
            dest = Workspace(target, create=False, device=src.device)
        else:
            from d2l_haystack.kb.postgres import PostgresState, chunk_store

            state = PostgresState(settings)  # the rows first: unused until workspace.json names them
            try:
                _write_state(state, files, stats)
                store_chunks = chunk_store(settings)
                try:
                    if chunks:
                        store_chunks.write_documents(chunks)
                finally:
                    store_chunks.close()
            finally:
                state.close()
            config = copy.deepcopy(src.config)
            config["settings"] = {**config.get("settings", {}), "store": settings["store"],
                                  "store_name": settings["store_name"]}
            config["moved_into_database"] = time.time()
            atomic_write_json(src.path / CONFIG_FILE, config)  # the commit point
            backup = src.path / BACKUP_FOLDER
            backup.mkdir(exist_ok=True)
            for name in ("files.json", "faiss"):
                if (src.path / name).exists():
                    (src.path / name).rename(backup / name)
            say(f"the folder's records and RAG index are kept in {backup}")
            return Workspace(src.path, create=False, device=src.device)
    _write_state(dest._state, files, stats)
    if chunks:
        dest.document_store.write_documents(chunks)
    dest.close()
    return Workspace(target, create=False, device=src.device)


def _write_state(state: Any, files: dict[str, dict[str, Any]], stats: dict[str, Any]) -> None:
    with state.lock:
        state.load()
        state.save(files, stats)
        importer = getattr(state, "import_stats", None)
        if importer is not None:
            importer(stats)
