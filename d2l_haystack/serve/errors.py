"""The HTTP face of the project's errors, and the checks on what clients send."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from d2l_haystack.core.errors import AdapterError, D2LError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def status_of(exc: D2LError) -> int:
    """The HTTP status of a project error: 413 over a size limit, 409 a workspace that cannot be
    written now (read-only, damaged), 404 something unknown, 400 anything else the client sent."""
    from d2l_haystack.kb.settings import WorkspaceError

    text = str(exc)
    if "byte limit" in text:
        return 413
    if isinstance(exc, WorkspaceError):
        return 409
    if isinstance(exc, AdapterError) and text.startswith("no adapter"):
        return 404
    return 400


@contextlib.contextmanager
def as_http() -> Iterator[None]:
    """Turn a :class:`D2LError` into an ``HTTPException`` (a JSON ``{"detail": ...}`` with a 4xx status)."""
    try:
        yield
    except D2LError as exc:
        raise HTTPException(status_code=status_of(exc), detail=" ".join(str(exc).split())) from exc


def last_user_message(messages: list[dict[str, Any]]) -> str:
    """The text of the last message when it is the user's (OpenAI message dicts)."""
    if not messages or messages[-1].get("role") != "user":
        raise HTTPException(status_code=400, detail="the last message must be the user's question")
    content = messages[-1].get("content")
    if isinstance(content, list):  # content parts: the text ones
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str) or not content.strip():
        raise HTTPException(status_code=400, detail="the question is empty")
    return content


def upload_target(workspace: Any, name: str, content: str | None, path: str | None,
                  index_root: Path | None) -> Path:
    """The file to index for a request: an upload saved under ``<workspace>/uploads/`` (checked
    first: a safe name of a supported type, text, within the size limit), or a server-side
    ``path`` inside ``index_root``.

    :raises HTTPException: 400, 403, 404, 409, 413 or 415 naming the problem.
    """
    from d2l_haystack.core.textio import validate_text
    from d2l_haystack.kb.workspace import Workspace
    from d2l_haystack.stores.files import atomic_write_bytes

    if path is not None:
        if content is not None:
            raise HTTPException(status_code=400, detail="send either content or path, not both")
        if index_root is None:
            raise HTTPException(status_code=403, detail="this server does not index server-side paths; send the "
                                                        "file's content (or start it with --index-root DIR)")
        target = Path(path).expanduser()
        target = (index_root / target if not target.is_absolute() else target).resolve()
        if target != index_root and index_root not in target.parents:
            raise HTTPException(status_code=403, detail=f"{path} is outside the server's index root")
        if not target.is_file():
            raise HTTPException(status_code=404, detail=f"{path}: no such file under the index root")
        return target
    if content is None:
        raise HTTPException(status_code=400, detail="content is missing (the document's text)")
    clean = _SAFE_NAME.sub("_", Path(str(name).replace("\\", "/")).name).strip(" .")
    if not clean:
        raise HTTPException(status_code=400, detail="name is missing (a file name such as notes.md)")
    if not Workspace.supports(clean):
        raise HTTPException(status_code=415, detail=f"{clean}: unsupported file type (use .md, .txt or .html)")
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were never UTF-8
        raise HTTPException(status_code=400, detail=f"{clean}: content is not valid UTF-8 text") from exc
    with as_http():  # over the limit: 413, before anything is written
        workspace.check_size(clean, len(data))
        validate_text(content, clean)
    if workspace.read_only:
        raise HTTPException(status_code=409, detail=f"workspace {workspace.path} is read-only")
    target = workspace.path / "uploads" / clean
    atomic_write_bytes(target, data)
    return target
