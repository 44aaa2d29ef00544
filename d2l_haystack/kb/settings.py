"""A knowledge base's settings: the ONE set of defaults, and the settings file ``workspace.json``.

Every setting a workspace (and a pipeline built without one) uses has its default here, in
:data:`DEFAULT_SETTINGS`; the router thresholds are the routers' own signature defaults
(``router`` and ``query_router`` hold only what a workspace overrides).

    >>> import tempfile
    >>> from d2l_haystack.kb.settings import open_config, settings_of
    >>> folder = tempfile.mkdtemp()
    >>> settings_of(open_config(folder, create=True, top_k=2))["top_k"]
    2
    >>> settings_of(open_config(folder, create=False))["split_length"]    # saved, defaults filled in
    60
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

from d2l_haystack.core.errors import D2LError
from d2l_haystack.core.models import DEFAULT_DTYPE, DEFAULT_MODEL
from d2l_haystack.core.textio import CHUNKINGS
from d2l_haystack.stores.files import atomic_write_json

WORKSPACE_FORMAT = "d2l-workspace/1"
CONFIG_FILE = "workspace.json"
STORE_SCHEMES = ("postgresql://", "postgres://")

DEFAULT_SETTINGS: dict[str, Any] = {
    "model": DEFAULT_MODEL, "checkpoint": "default", "dtype": DEFAULT_DTYPE, "chunk_tokens": None,
    "chunking": "auto", "reading_memory": True,
    "embedding_model": None, "split_length": 60, "split_overlap": 10, "top_k": 4, "max_new_tokens": 64,
    "max_file_bytes": 8 * 1024 * 1024, "router": {}, "query_router": {},
    "store": None, "store_name": None,
}
"""Workspace settings (saved in ``workspace.json``): the base model, the hypernetwork checkpoint (``default``:
the shipped one), the chunking of adapters (``auto``: one chunk per sentence for a document that fits in one
chunk; measured in ``benchmarks/results/reading/``), whether document adapters carry the checkpoint's reading
memory (``reading_memory``: ``True`` reads documents better, ``False`` internalizes faster into smaller
adapters, without the rows of 4.2 KB per token; :mod:`d2l_haystack.core.memory`), the embedding model
(``None``: the packaged MiniLM), the RAG splitter and retriever, the answer length, the largest file indexed
(``d2l index`` and the watcher alike; ``--max-file-size`` raises it); ``store``: ``None`` keeps records and
RAG chunks in the folder (``files.json``, FAISS), a ``postgresql://`` URL (or ``$VARIABLE`` naming one) keeps
them in that database (:mod:`d2l_haystack.kb.postgres`), under the tables of ``store_name`` (chosen when the
workspace is created); ``router`` and ``query_router`` hold
:class:`~d2l_haystack.components.InternalizationRouter` and :class:`~d2l_haystack.components.QueryRouter` init
parameters that differ from their defaults."""


class WorkspaceError(D2LError):
    """A workspace folder is missing, not a workspace, or damaged."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A workspace JSON file as a mapping; damage is a :class:`WorkspaceError` naming ``what``.

    :raises FileNotFoundError: the file is missing (the caller decides what that means).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise WorkspaceError(f"damaged workspace {what} {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkspaceError(f"damaged workspace {what} {path}: not a JSON object")
    return data


def check_settings(settings: dict[str, Any]) -> None:
    """:raises WorkspaceError: an unknown setting or an unknown chunking."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise WorkspaceError(f"unknown workspace setting(s): {', '.join(sorted(unknown))}")
    size = settings.get("max_file_bytes", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise WorkspaceError(f"workspace setting max_file_bytes must be a positive number of bytes, got {size!r}")
    store = settings.get("store")
    if store is not None and not (isinstance(store, str) and store.startswith(STORE_SCHEMES + ("$",))):
        raise WorkspaceError(f"workspace setting store must be a postgresql:// URL or $VARIABLE naming one, "
                             f"got {store!r}")
    name = settings.get("store_name")
    if name is not None and not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name)):
        raise WorkspaceError(f"workspace setting store_name must be 1-40 lowercase letters, digits or _ "
                             f"starting with a letter, got {name!r}")
    if not isinstance(settings.get("reading_memory", True), bool):
        raise WorkspaceError(f"workspace setting reading_memory must be true or false, "
                             f"got {settings['reading_memory']!r}")
    if settings.get("chunking", DEFAULT_SETTINGS["chunking"]) not in CHUNKINGS:
        raise WorkspaceError(f"workspace setting chunking must be one of {', '.join(CHUNKINGS)}, "
                             f"got {settings['chunking']!r}")


def open_config(path: str | Path, *, create: bool = True, **settings: Any) -> dict[str, Any]:
    """Read (or, with ``create``, write a new) ``workspace.json``; ``settings`` given are saved.

    :raises WorkspaceError: missing (without ``create``), a file or a foreign non-empty folder,
        damaged, or a bad setting.
    """
    check_settings(settings)
    folder = Path(path).expanduser().resolve()
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        if not create:
            raise WorkspaceError(f"no workspace at {folder} (missing {CONFIG_FILE}); "
                                 f"create one with `d2l index FILES --workspace {folder}`")
        if folder.is_file():
            raise WorkspaceError(f"{folder} is a file, not a workspace folder")
        if folder.is_dir() and any(p.name not in (".lock", ".gate") for p in folder.iterdir()):
            raise WorkspaceError(f"{folder} is not empty and is not a d2l workspace (no {CONFIG_FILE})")
        folder.mkdir(parents=True, exist_ok=True)
        if settings.get("store") and not settings.get("store_name"):
            settings["store_name"] = store_name_for(folder)
        config: dict[str, Any] = {"format": WORKSPACE_FORMAT, "created": time.time(),
                                  "settings": {**copy.deepcopy(DEFAULT_SETTINGS), **settings}}
        atomic_write_json(config_path, config)
        return config
    config = read_json(config_path, "settings")
    if config.get("format") != WORKSPACE_FORMAT:
        raise WorkspaceError(f"damaged workspace settings {config_path}: unknown format {config.get('format')!r}")
    saved = config.get("settings", {})
    for key in ("store", "store_name"):
        if key in settings and settings[key] != saved.get(key, DEFAULT_SETTINGS[key]):
            raise WorkspaceError(f"workspace {folder} keeps its records in {saved.get('store') or 'its folder'}; "
                                 f"the {key} setting cannot change (copy it with `d2l workspace copy`)")
    if settings:
        config["settings"] = {**saved, **settings}
        atomic_write_json(config_path, config)
    return config


def store_name_for(folder: Path) -> str:
    """A new database name for a workspace: its folder's name, made an identifier, and 6 random
    hex digits (two workspaces called ``kb`` can share one database)."""
    base = re.sub(r"[^a-z0-9_]+", "_", folder.name.lower()).strip("_") or "kb"
    if not base[0].isalpha():
        base = f"kb_{base}"
    return f"{base[:30]}_{secrets.token_hex(3)}"


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """The effective settings of a workspace config: the defaults, then what it saved."""
    return {**copy.deepcopy(DEFAULT_SETTINGS), **config.get("settings", {})}
