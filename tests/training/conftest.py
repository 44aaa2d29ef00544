"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def data_trainer(tiny_llama_dir: Path, tmp_path: Path):
    """A trainer on the tiny model with a small hypernetwork and no unrelated questions, for
    tests of the documents it draws (``make_docs``); it reads the evaluation data, so the tests
    that use it are marked ``requires_squad``."""
    from d2l_haystack.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(model=str(tiny_llama_dir), out_dir=str(tmp_path / "s"), device="cpu", batch_docs=2,
                      questions_per_doc=3, unrelated_prob=0.0, max_steps=1,
                      hypernet={"latent_dim": 32, "proj_hidden": 64, "num_heads": 2})
    return Trainer(cfg, log=lambda _: None)
