"""The hypernetwork: size, shapes in both encoder modes, zero init, checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from d2l_haystack.core import D2LEngine, Hypernetwork, config_for_model, load_checkpoint, save_checkpoint
from d2l_haystack.core.errors import CheckpointError
from d2l_haystack.core.hypernet import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS, HypernetConfig

TINY = {"num_layers": 4, "hidden": 64, "intermediate": 128}


def test_default_config_for_embedded_shapes_is_small(embedded_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only, no weights
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(embedded_model_dir))
    for mode in ("early_exit", "per_layer"):
        cfg = config_for_model(model, "smollm2-135m-instruct", encoder_mode=mode)
        assert (cfg.num_layers, cfg.hidden_size, cfg.module_in, cfg.module_out) == (30, 576, [1536], [576])
        assert cfg.exit_layer == 7  # L / 4
        assert cfg.module_paths == ["model.layers.{layer}.mlp.down_proj"]
        assert cfg.alpha == pytest.approx(2 * 8 ** 1.5)
        with torch.device("meta"):
            count = Hypernetwork(cfg).num_parameters()
        assert 1_000_000 < count < 15_000_000, count


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("mode", ["early_exit", "per_layer"])
def test_shapes_in_both_encoder_modes(request: pytest.FixtureRequest, model_fixture: str, mode: str,
                                      long_text) -> None:
    folder = request.getfixturevalue(model_fixture)
    engine = D2LEngine(str(folder), checkpoint=None, device="cpu", chunk_tokens=48,
                       hypernet_widths={"encoder_mode": mode, "latent_dim": 32, "proj_hidden": 64})
    cfg = engine.config
    assert cfg.encoder_mode == mode and cfg.num_layers == TINY["num_layers"]
    wrapped = [engine.format.wrap_chunk(list(range(100, 100 + n))) for n in (20, 30, 25)]
    from d2l_haystack.core.encoder import pad_batch

    ids, mask = pad_batch(wrapped, engine.tokenizer.pad_token_id, "cpu")
    features = engine.encoder(ids, mask)
    width = ids.shape[1]
    if mode == "early_exit":
        assert features.shape == (3, width, TINY["hidden"])
    else:
        assert features.shape == (3, TINY["num_layers"], width, TINY["hidden"])
    out = engine.hypernet(features, mask)
    a, b = out["down_proj"]
    assert a.shape == (3, TINY["num_layers"], cfg.rank, TINY["intermediate"])
    assert b.shape == (3, TINY["num_layers"], cfg.rank, TINY["hidden"])
    assert torch.count_nonzero(b) == 0  # B scalars start at zero
    assert torch.count_nonzero(a) > 0

    adapter = engine.internalize(long_text(200))
    chunks = adapter.num_chunks
    assert chunks == -(-adapter.num_tokens // 48)
    assert adapter.factors["down_proj"][0].shape == (4, chunks * cfg.rank + cfg.bias_rank, TINY["intermediate"])
    assert adapter.factors["down_proj"][1].shape == (4, chunks * cfg.rank + cfg.bias_rank, TINY["hidden"])


def test_padding_does_not_change_a_chunks_factors(tiny_engine: D2LEngine) -> None:
    """A chunk's factors do not depend on what else is in its batch (mask is honoured)."""
    short = tiny_engine.format.wrap_chunk(list(range(200, 220)))
    long = tiny_engine.format.wrap_chunk(list(range(300, 360)))
    alone = tiny_engine.chunk_factors([short])["down_proj"][0][0]
    batched = tiny_engine.chunk_factors([short, long])["down_proj"][0][0]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-4)


def test_untrained_adapter_leaves_logits_exactly_unchanged(tiny_engine: D2LEngine, sample_text: str) -> None:
    assert tiny_engine.trained is False
    adapter = tiny_engine.internalize(sample_text)
    for _, b in adapter.factors.values():
        assert torch.count_nonzero(b) == 0
    ids = tiny_engine.format.question_ids("Who built the lighthouse?")
    base = tiny_engine.logits(ids)
    assert torch.equal(tiny_engine.logits(ids, adapter), base)


def _nonzero_hypernet(engine: D2LEngine) -> Hypernetwork:
    hyper = Hypernetwork(engine.config)
    with torch.no_grad():
        hyper.scale_B.normal_(0, 0.1)
    return hyper


def test_checkpoint_round_trip(tmp_path: Path, tiny_engine: D2LEngine, sample_text: str) -> None:
    hyper = _nonzero_hypernet(tiny_engine)
    ckpt_id = save_checkpoint(hyper, tmp_path / "ckpt", info={"steps": 3})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted([CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS])
    loaded, payload = load_checkpoint(tmp_path / "ckpt", expected_base_model="tiny-llama")
    assert payload["checkpoint_id"] == ckpt_id and len(ckpt_id) == 12
    assert payload["info"] == {"steps": 3}
    assert loaded.config == hyper.config
    original = hyper.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, original[key].half().float()), key  # stored as fp16

    engine = D2LEngine(tiny_engine.loaded.path, checkpoint=str(tmp_path / "ckpt"), device="cpu")
    assert engine.trained is True and engine.checkpoint_id == ckpt_id
    adapter = engine.internalize(sample_text)
    assert adapter.checkpoint_id == ckpt_id
    assert torch.count_nonzero(adapter.document_factors()["down_proj"][1]) > 0


def test_checkpoint_for_another_base_model_names_both(tmp_path: Path, tiny_engine: D2LEngine,
                                                      tiny_qwen2_dir: Path) -> None:
    save_checkpoint(tiny_engine.hypernet, tmp_path / "ckpt")
    with pytest.raises(CheckpointError) as err:
        D2LEngine(str(tiny_qwen2_dir), checkpoint=str(tmp_path / "ckpt"), device="cpu")
    assert "tiny-llama" in str(err.value) and "tiny-qwen2" in str(err.value)


def test_corrupted_checkpoint_weights_name_the_file(tmp_path: Path, tiny_engine: D2LEngine) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(tiny_engine.hypernet, folder)
    weights = folder / CHECKPOINT_WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(folder)
    assert str(weights) in str(err.value)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=re.escape(str(weights))):
        load_checkpoint(folder)


def test_damaged_or_missing_checkpoint_config(tmp_path: Path, tiny_engine: D2LEngine) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(tiny_engine.hypernet, folder)
    (folder / CHECKPOINT_CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape(str(folder / CHECKPOINT_CONFIG))):
        load_checkpoint(folder)
    (folder / CHECKPOINT_CONFIG).unlink()
    with pytest.raises(CheckpointError, match="is not a hypernetwork checkpoint"):
        load_checkpoint(folder)


def test_checkpoint_weights_not_matching_config(tmp_path: Path, tiny_engine: D2LEngine) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(tiny_engine.hypernet, folder)
    other = HypernetConfig.from_dict({**tiny_engine.config.to_dict(), "latent_dim": 64})
    save_checkpoint(Hypernetwork(other), tmp_path / "other")
    (tmp_path / "other" / CHECKPOINT_WEIGHTS).replace(folder / CHECKPOINT_WEIGHTS)
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(folder)


def test_config_validation() -> None:
    base = dict(base_model="m", num_layers=8, hidden_size=8, target_modules=["down_proj"],
                module_in=[16], module_out=[8], module_paths=["model.layers.{layer}.mlp.down_proj"])
    with pytest.raises(ValueError, match="encoder_mode"):
        HypernetConfig(**base, encoder_mode="sideways")
    with pytest.raises(ValueError, match="exit_layer"):
        HypernetConfig(**base, exit_layer=9)
    cfg = HypernetConfig(**base, rank=4)
    assert cfg.alpha == pytest.approx(16.0)
    assert HypernetConfig.from_dict({**cfg.to_dict(), "unknown_key": 1}) == cfg


def test_the_copy_path_starts_neutral_then_writes_what_it_points_at(tmp_path: Path, tiny_engine: D2LEngine,
                                                                     sample_text: str) -> None:
    from d2l_haystack.core.hypernet import extended

    hyper = _nonzero_hypernet(tiny_engine)
    grown = extended(hyper, copy_path=True)
    assert grown.config.copy_path and not hyper.config.copy_path
    features = torch.randn(2, 9, tiny_engine.config.hidden_size)
    mask = torch.ones(2, 9)
    mask[1, 6:] = 0
    before, after = hyper(features, mask)["down_proj"], grown(features, mask)["down_proj"]
    assert all(torch.equal(x, y) for x, y in zip(before, after))  # the gate starts at 0
    with torch.no_grad():
        grown.copy_gate.fill_(1.0)
    a, b = grown(features, mask)["down_proj"]
    assert torch.equal(a, before[0]) and not torch.allclose(b, before[1])  # only B gets the copied states
    # padding is never pointed at: the padded chunk's factors do not depend on its padding
    padded = features.clone()
    padded[1, 6:] = 100.0
    assert torch.allclose(grown(padded, mask)["down_proj"][1][1], b[1], atol=1e-5)
    b.sum().backward()
    assert grown.copy_gate.grad is not None and grown.copy_query.weight.grad.abs().sum() > 0
    # saved and loaded like any checkpoint, then used by the engine
    save_checkpoint(grown, tmp_path / "copy")
    loaded, _ = load_checkpoint(tmp_path / "copy")
    assert loaded.config.copy_path and torch.allclose(loaded.copy_gate, grown.copy_gate.half().float())
    engine = D2LEngine(tiny_engine.loaded.path, checkpoint=str(tmp_path / "copy"), device="cpu")
    assert engine.internalize(sample_text).num_chunks >= 1
    with pytest.raises(ValueError, match="cannot change"):
        extended(hyper, latent_dim=64)
    cfg = {**hyper.config.to_dict(), "encoder_mode": "per_layer", "copy_path": True}
    with pytest.raises(ValueError, match="copy_path needs encoder_mode"):
        HypernetConfig.from_dict(cfg)


def test_a_centred_pointer_reads_what_sets_a_token_apart_and_sharpness_focuses_it(tiny_engine: D2LEngine) -> None:
    from d2l_haystack.core.hypernet import extended

    hyper = _nonzero_hypernet(tiny_engine)
    features = torch.randn(1, 7, tiny_engine.config.hidden_size) + 3.0  # a large state all tokens share
    mask = torch.ones(1, 7)

    def pointer_read(net: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            net.copy_gate.fill_(1.0)
            return net(features, mask)["down_proj"][1] - hyper(features, mask)["down_proj"][1]

    plain = extended(hyper, copy_path=True)
    centred = extended(hyper, copy_path=True, copy_centered=True)
    torch.nn.init.zeros_(plain.copy_query.weight)  # a uniform pointer: the mean of the states
    torch.nn.init.zeros_(centred.copy_query.weight)
    assert pointer_read(plain).abs().max() > 1.0
    assert pointer_read(centred).abs().max() < 1e-4  # the mean is taken away: nothing is written
    loose, sharp = (extended(hyper, copy_path=True, copy_centered=True, copy_sharpness=s) for s in (1.0, 50.0))
    sharp.load_state_dict(loose.state_dict())
    assert pointer_read(sharp).norm() > 2 * pointer_read(loose).norm()  # one token's state, not an average
    with pytest.raises(ValueError, match="copy_sharpness"):
        HypernetConfig.from_dict({**hyper.config.to_dict(), "copy_sharpness": 0.0})
