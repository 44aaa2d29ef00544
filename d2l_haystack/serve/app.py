"""The HTTP service: Hayhooks serving a workspace's query and indexing wrappers.

Endpoints (all JSON; with a token, every request needs ``Authorization: Bearer TOKEN``):

* ``POST /d2l/run`` ``{"question": ..., "mode": null, "max_new_tokens": null, "explain": false}``:
  the answer with its route, adapters, chunks and timings;
* ``POST /v1/chat/completions`` with ``model="d2l"``: OpenAI-compatible (streaming too); the
  route, adapters and chunks are in the completion's ``d2l`` field;
* ``POST /d2l_index/run`` ``{"name": "notes.md", "content": "..."}``: index an uploaded document;
* ``GET /kb/status``: documents, routes and query counts (:meth:`Workspace.status`);
* Hayhooks' own: ``GET /status``, ``GET /docs`` (OpenAPI), ``GET /v1/models``.

Usage example::

    from d2l_haystack.serve import create_app
    import uvicorn

    uvicorn.run(create_app("kb", token="s3cret"), host="127.0.0.1", port=1416)
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

from d2l_haystack.serve import state

WRAPPERS_DIR = Path(__file__).resolve().parent / "wrappers"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
"""Requests with a larger body are refused (413) before they are read."""


def create_app(workspace: str | Path, *, token: str | None = None, index_root: str | Path | None = None,
               device: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """A FastAPI app (Hayhooks) serving ``workspace``.

    :param token: require ``Authorization: Bearer <token>`` on every request.
    :param index_root: clients may ask to index server-side files under this folder (default: none;
        uploads are always accepted).
    :param device: ``cpu`` or ``cuda`` for the models.
    :raises WorkspaceError: ``workspace`` is not a workspace (checked before anything starts).
    """
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from hayhooks.server.app import create_app as hayhooks_app
    from hayhooks.settings import settings

    from d2l_haystack.kb.workspace import Workspace

    path = Workspace.open(workspace, recover=False).path  # a clear error now, not at the first request
    os.environ[state.ENV_WORKSPACE] = str(path)
    os.environ[state.ENV_DEVICE] = device or ""
    os.environ[state.ENV_INDEX_ROOT] = str(Path(index_root).resolve()) if index_root else ""
    state.forget()
    settings.pipelines_dir = str(WRAPPERS_DIR)
    app = hayhooks_app()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if token is not None:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return JSONResponse({"detail": f"request body over the {max_body_bytes:,}-byte limit"}, status_code=413)
        return await call_next(request)

    @app.get("/kb/status", tags=["d2l"])
    def kb_status() -> dict[str, Any]:
        """The served workspace: documents (route, why, size, queries), totals, queries by route."""
        return state.workspace().status()

    return app


def serve(workspace: str | Path, *, host: str = "127.0.0.1", port: int = 1416, **kwargs: Any) -> None:
    """Run :func:`create_app` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(workspace, **kwargs), host=host, port=port, log_level="warning")
