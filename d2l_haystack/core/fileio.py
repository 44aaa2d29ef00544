"""Temporary files beside their target, with the permissions an ordinary new file gets.

``tempfile.mkstemp`` creates files readable by their owner only (mode 0600); a file written
through it and renamed into place keeps that mode, so a team sharing a workspace, an adapter
folder or a checkpoint could not read each other's files. :func:`temp_beside` gives the
temporary file the mode ``open()`` would (``0666`` less the process umask).

    >>> import os, tempfile
    >>> fd, tmp = temp_beside(os.path.join(tempfile.mkdtemp(), "x.json"))
    >>> os.close(fd); oct(os.stat(tmp).st_mode & 0o777) == oct(0o666 & ~current_umask())
    True
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def current_umask() -> int:
    """The process umask (read from ``/proc`` where it can be, without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def temp_beside(target: str | Path, prefix: str | None = None) -> tuple[int, str]:
    """``(fd, path)`` of a new temporary file in ``target``'s folder, mode ``0666 & ~umask``."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except (AttributeError, OSError):  # pragma: no cover - Windows
        pass
    return fd, tmp


def write_safetensors(target: str | Path, tensors: dict[str, Any], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` to the safetensors file ``target`` atomically: a temporary file beside it,
    renamed over it only when complete (a failed write leaves the previous file as it was), with the
    mode of an ordinary new file.

        >>> import os, tempfile, torch
        >>> path = write_safetensors(os.path.join(tempfile.mkdtemp(), "t.safetensors"), {"t": torch.zeros(1)}, {})
        >>> oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~current_umask())
        True
    """
    from safetensors.torch import save_file

    target = Path(target)
    fd, tmp = temp_beside(target)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)  # creates its file anew, mode 0600: set it again
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): the checksum an
    adapter file carries in its header (``data_sha256``), so damage to the tensor data is caught
    on load, not served as a silently wrong adapter."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
