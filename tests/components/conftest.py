"""Fixtures for the Haystack integration tests (components, workspace, pipelines).

The tiny random Llama (``tiny_llama_dir``) and the real SmolLM2 tokenizer come from the
shared ``tests/conftest.py``. Adapters for store/router tests are synthetic (no model).
"""

from __future__ import annotations

import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "d2l_haystack" / "samples" / "demo"


def make_adapter(seed: int = 0, content_hash: str = "h0", base_model: str = "tiny", checkpoint_id: str = "ck",
                 layers: int = 2, rank: int = 4, d_in: int = 8, d_out: int = 6):
    """A small synthetic :class:`Adapter` (no model needed)."""
    from d2l_haystack.core.adapter import Adapter

    gen = torch.Generator().manual_seed(seed)
    factors = {"down_proj": (torch.randn(layers, 2 * rank, d_in, generator=gen),
                             torch.randn(layers, 2 * rank, d_out, generator=gen))}
    return Adapter(factors=factors, scale=2.0, rank=rank, bias_rank=rank, num_chunks=1, base_model=base_model,
                   checkpoint_id=checkpoint_id, content_hash=content_hash, num_tokens=10,
                   module_paths=["model.layers.{layer}.mlp.down_proj"])


def unit(vec: list[float] | np.ndarray, dim: int = 384) -> np.ndarray:
    """A normalised vector of ``dim`` dimensions starting with ``vec``."""
    out = np.zeros(dim, dtype=np.float32)
    out[: len(vec)] = vec
    return out / np.linalg.norm(out)


@pytest.fixture
def adapter_factory():
    return make_adapter


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture
def tiny_model(tiny_llama_dir: Path) -> str:
    """The tiny random Llama folder as a model name for components (untrained checkpoint)."""
    return str(tiny_llama_dir)


@pytest.fixture
def engine_params(tiny_model: str) -> dict:
    """Engine parameters every tiny-model component uses (so they share one cached engine)."""
    return {"model": tiny_model, "checkpoint": None, "device": "cpu", "chunk_tokens": 64}


@pytest.fixture
def docs_dir(tmp_path: Path, samples_dir: Path) -> Path:
    """A folder with copies of the sample documents."""
    import shutil

    folder = tmp_path / "docs"
    folder.mkdir()
    for f in samples_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture
def workspace_factory(tmp_path: Path, tiny_model: str):
    """``workspace_factory(name="ws", **settings)``: a workspace over the tiny model."""
    from d2l_haystack.kb.workspace import Workspace

    def make(name: str = "ws", **settings):
        params = {"model": tiny_model, "checkpoint": None, "chunk_tokens": 64, "max_new_tokens": 4, **settings}
        return Workspace(tmp_path / name, device="cpu", **params)

    return make
