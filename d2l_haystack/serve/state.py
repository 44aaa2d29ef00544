"""What the deployed pipeline wrappers share in one server process: the workspace, opened once.

The server (:func:`d2l_haystack.serve.app.create_app`) names the workspace in the environment
(``D2L_SERVE_WORKSPACE``, ``D2L_SERVE_DEVICE``, ``D2L_SERVE_INDEX_ROOT``) before Hayhooks loads
the wrappers, so a wrapper module needs nothing but :func:`workspace` and :func:`index_root`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

ENV_WORKSPACE, ENV_DEVICE, ENV_INDEX_ROOT = "D2L_SERVE_WORKSPACE", "D2L_SERVE_DEVICE", "D2L_SERVE_INDEX_ROOT"
_LOCK = threading.Lock()
_OPEN: dict[str, Any] = {}


def workspace() -> Any:
    """The served :class:`~d2l_haystack.kb.workspace.Workspace` (opened on first use)."""
    from d2l_haystack.kb.workspace import Workspace

    path = os.environ.get(ENV_WORKSPACE)
    if not path:
        raise RuntimeError(f"{ENV_WORKSPACE} is not set: start the server with `d2l serve --workspace KB`")
    with _LOCK:
        ws = _OPEN.get(path)
        if ws is None:
            ws = _OPEN[path] = Workspace.open(path, device=os.environ.get(ENV_DEVICE) or None)
        return ws


def index_root() -> Path | None:
    """The folder under which clients may name server-side files to index (``None``: none)."""
    root = os.environ.get(ENV_INDEX_ROOT)
    return Path(root).resolve() if root else None


def forget() -> None:
    """Drop the opened workspaces (tests start several servers in one process)."""
    with _LOCK:
        _OPEN.clear()
