"""Internalization precision: bf16 autocast where it is fast, float32 elsewhere, answers untouched."""

from __future__ import annotations

import pytest
import torch

from d2l_haystack.core import D2LEngine
from d2l_haystack.core.engine import resolve_autocast
from tests.conftest import randomize_outputs

TEXT = ("The harbor office opens at 7 am on weekdays. Ferries to Lindholm leave every forty minutes. "
        "Tickets cost 12 euros for adults and 6 euros for children. The last ferry returns at 11 pm.")


def test_resolve_autocast_modes(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("D2L_AUTOCAST", raising=False)
    assert resolve_autocast("off", "cpu") is False
    assert resolve_autocast("bf16", "cpu") is True
    assert resolve_autocast("bf16", "cpu", dtype="bfloat16") is False  # a bf16 model needs no autocast
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    assert resolve_autocast("auto", "cpu") is amx
    assert resolve_autocast(None, "cpu") is amx  # the default is auto
    assert resolve_autocast("auto", "mps") is False
    monkeypatch.setenv("D2L_AUTOCAST", "bf16")
    assert resolve_autocast(None, "cpu") is True  # the environment overrides the default
    assert resolve_autocast("off", "cpu") is False  # an explicit argument overrides the environment
    with pytest.raises(ValueError, match="autocast must be one of auto, bf16, off, got 'half'"):
        resolve_autocast("half", "cpu")


@pytest.fixture(scope="module")
def engines(tiny_llama_dir) -> dict[str, D2LEngine]:
    out = {}
    for mode in ("off", "bf16"):
        engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", autocast=mode, chunk_tokens=24)
        randomize_outputs(engine)
        out[mode] = engine
    return out


def test_bf16_internalization_is_close_to_float32(engines: dict[str, D2LEngine]):
    fp32, bf16 = engines["off"], engines["bf16"]
    assert not fp32.autocast and bf16.autocast
    assert fp32.describe()["autocast"] == "off" and bf16.describe()["autocast"] == "bf16"
    timings: dict[str, float] = {}
    a, b = fp32.internalize(TEXT), bf16.internalize(TEXT, timings=timings)
    assert a.num_chunks == b.num_chunks > 1
    assert set(timings) == {"chunking", "encoder", "hypernetwork", "keys", "assembly"}
    assert all(v >= 0 for v in timings.values())
    for m, (fa, fb) in a.factors.items():
        ba, bb = b.factors[m]
        assert ba.dtype == torch.float32 and ba.shape == fa.shape and bb.shape == fb.shape
        assert not torch.equal(ba, fa)  # the bf16 path did run
        assert float((ba - fa).norm() / fa.norm()) < 0.03
        assert float((bb - fb).norm() / fb.norm()) < 0.03
    assert a.keys is not None and b.keys is not None
    assert float((a.keys * b.keys).sum(-1).min()) > 0.999


def test_answering_is_not_autocast(engines: dict[str, D2LEngine]):
    """The precision applies to internalization only: one adapter gives the same logits in both engines."""
    fp32, bf16 = engines["off"], engines["bf16"]
    adapter = fp32.internalize(TEXT)
    bf16.hypernet.load_state_dict(fp32.hypernet.state_dict())
    ids = fp32.prompt_ids("When does the last ferry return?")
    assert torch.equal(fp32.logits(ids, adapter), bf16.logits(ids, adapter))
