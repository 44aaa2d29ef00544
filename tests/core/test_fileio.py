"""Files written through core.fileio: atomic, and with the mode an ordinary new file gets (a team
sharing adapters, memories and checkpoints can read each other's files)."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest
import torch

from d2l_haystack.core import fileio
from d2l_haystack.core.fileio import current_umask, write_safetensors


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(fileio).failed == 0


def test_safetensors_get_the_mode_of_a_new_file_and_a_failed_write_keeps_the_old_one(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_safetensors(tmp_path / "a.safetensors", {"t": torch.ones(2)}, {"k": "v"})
        assert os.stat(path).st_mode & 0o777 == 0o644 == 0o666 & ~current_umask()
        before = path.read_bytes()
        with pytest.raises(ValueError):
            write_safetensors(path, {"t": "not a tensor"}, {})  # type: ignore[dict-item]
        assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    finally:
        os.umask(old)
