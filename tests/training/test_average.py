"""Checkpoint averaging (``d2l average``): the weighted mean, its record, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from d2l_haystack.cli import main
from d2l_haystack.core import Hypernetwork, load_checkpoint, save_checkpoint
from d2l_haystack.core.errors import CheckpointError
from d2l_haystack.core.hypernet import HypernetConfig
from d2l_haystack.training.average import average_checkpoints


def _saved(config: HypernetConfig, folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    net = Hypernetwork(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return save_checkpoint(net, folder)


def test_the_average_is_the_weighted_mean_and_records_its_inputs(tmp_path: Path, tiny_engine) -> None:
    ids = [_saved(tiny_engine.config, tmp_path / n, s) for n, s in (("a", 1), ("b", 2))]
    new_id = average_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "soup", weights=[3, 1])
    soup, payload = load_checkpoint(tmp_path / "soup")
    a, _ = load_checkpoint(tmp_path / "a")
    b, _ = load_checkpoint(tmp_path / "b")
    sa, sb = a.state_dict(), b.state_dict()
    for key, value in soup.state_dict().items():
        torch.testing.assert_close(value, (0.75 * sa[key] + 0.25 * sb[key]).half().float(), rtol=0, atol=1e-3)
    assert payload["checkpoint_id"] == new_id and new_id not in ids
    assert [(s["checkpoint_id"], s["weight"]) for s in payload["info"]["averaged_from"]] == \
        [(ids[0], 0.75), (ids[1], 0.25)]


def test_averaging_refuses_mismatched_or_too_few_checkpoints(tmp_path: Path, tiny_engine) -> None:
    _saved(tiny_engine.config, tmp_path / "a", 1)
    other = HypernetConfig.from_dict({**tiny_engine.config.to_dict(), "latent_dim": 64})
    _saved(other, tmp_path / "wide", 2)
    with pytest.raises(CheckpointError, match="another hypernetwork configuration"):
        average_checkpoints([tmp_path / "a", tmp_path / "wide"], tmp_path / "soup")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([tmp_path / "a"], tmp_path / "soup")
    with pytest.raises(ValueError, match="one weight >= 0 per checkpoint"):
        average_checkpoints([tmp_path / "a", tmp_path / "a"], tmp_path / "soup", weights=[1.0])
    with pytest.raises(CheckpointError, match="is not a hypernetwork checkpoint"):
        average_checkpoints([tmp_path / "a", tmp_path / "missing"], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_average_command(tmp_path: Path, tiny_engine, capsys: pytest.CaptureFixture[str]) -> None:
    for name, seed in (("a", 1), ("b", 2)):
        _saved(tiny_engine.config, tmp_path / name, seed)
    out = tmp_path / "soup"
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    payload = json.loads((out / "config.json").read_text())
    assert payload["checkpoint_id"] in capsys.readouterr().out
    assert [s["weight"] for s in payload["info"]["averaged_from"]] == [0.5, 0.5]
    assert main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--weights", "1,x"]) == 2
    assert "--weights must be comma-separated numbers" in capsys.readouterr().err
