"""Reading-memory rows matched on a lower layer (``ReadingMemory.match_layer``): the rows stay on
the last layer's ``down_proj``, their match reads an earlier layer's ``down_proj`` input (tiny
random Llama of 4 layers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from d2l_haystack.core import Adapter, D2LEngine
from d2l_haystack.core.errors import AdapterError
from d2l_haystack.core.hypernet import save_checkpoint
from d2l_haystack.core.lora import get_hooks, parse_row_key, row_key
from d2l_haystack.core.memory import ReadingMemory, memory_digest


def _memory(match_layer: int | None) -> ReadingMemory:
    torch.manual_seed(0)
    memory = ReadingMemory(128, 64, rank=4, layer=3, scale_x=0.5, match_layer=match_layer)
    with torch.no_grad():
        memory.q.normal_(0, 0.3)
        memory.p.normal_(0, 0.3)
    return memory


def test_row_keys_name_the_rows_layer_and_the_layer_they_match_on() -> None:
    assert row_key("down_proj", 29) == "down_proj@29" == row_key("down_proj", 29, 29)
    assert row_key("down_proj", 29, 22) == "down_proj@29<22"
    assert parse_row_key("down_proj@29") == ("down_proj", 29, None)
    assert parse_row_key("down_proj@29<22") == ("down_proj", 29, 22)
    for bad in ("down_proj", "down_proj@", "down_proj@x", "down_proj@29<", "@3", "down_proj@29<a"):
        with pytest.raises(ValueError, match="not a reading-memory rows key"):
            parse_row_key(bad)


def test_a_matched_memory_round_trips_and_an_unmatched_one_keeps_its_header(tmp_path: Path) -> None:
    plain = _memory(None)
    plain.save(tmp_path / "plain")
    digest = memory_digest(tmp_path / "plain")
    assert (plain.key, plain.reads, plain.match_layer) == ("down_proj@3", 3, None)
    same = _memory(3)  # matching on the rows' own layer is no match layer: the same file, the same id
    same.save(tmp_path / "same")
    assert same.match_layer is None and memory_digest(tmp_path / "same") == digest
    matched = _memory(1)
    matched.save(tmp_path / "matched")
    loaded = ReadingMemory.load(tmp_path / "matched")
    assert loaded is not None and (loaded.key, loaded.reads, loaded.match_layer) == ("down_proj@3<1", 1, 1)
    assert memory_digest(tmp_path / "matched") != digest
    for bad in (3 + 1, -1):
        with pytest.raises(ValueError, match="below the rows' layer 3"):
            ReadingMemory(8, 4, rank=2, layer=3, match_layer=bad)


def test_memory_states_of_an_engine_without_a_memory_need_only_the_layer(tiny_engine: D2LEngine) -> None:
    """The trainer collects from an engine with no memory yet: a layer is enough (the module defaults)."""

    assert tiny_engine.memory is None
    chunks = tiny_engine.chunk_ids("The gate opens at nine. The boat leaves at ten.")
    states, ids, _ = tiny_engine.memory_states(chunks, 1)[0]
    torch.testing.assert_close(states, tiny_engine.memory_states(chunks, 1, "down_proj")[0][0])
    assert states.shape == (len(ids), 128)
    with pytest.raises(AdapterError, match="has no reading memory: name the layer to read"):
        tiny_engine.memory_states(chunks)


def test_matched_rows_fire_from_the_lower_layers_input(tiny_engine: D2LEngine) -> None:
    """At layer 3, rows under ``down_proj@3<1`` add ``(x_1 A^T) B``, ``x_1`` being the input of
    layer 1's ``down_proj`` in the same pass; rows under ``down_proj@3`` read ``x_3``."""
    model = tiny_engine.model
    hooks = get_hooks(model, ["down_proj"])
    torch.manual_seed(1)
    a, b = torch.randn(5, 128) * 0.1, torch.randn(5, 64) * 0.1
    ids = torch.tensor([[5, 17, 300, 42, 9, 77]])
    outputs: dict[str, torch.Tensor] = {}
    down = model.model.layers[3].mlp.down_proj
    handle = down.register_forward_hook(lambda m, i, o: outputs.__setitem__("now", o.detach().clone()))
    try:
        with torch.no_grad(), hooks.capture() as record:
            model(input_ids=ids)
        plain = outputs["now"]
        x1, x3 = record["down_proj"][1], record["down_proj"][3]
        for key, x in (("down_proj@3<1", x1), ("down_proj@3", x3)):
            with torch.no_grad(), hooks.apply({key: (a, b)}):
                model(input_ids=ids)
            torch.testing.assert_close(outputs["now"][0] - plain[0], (x @ a.T) @ b, atol=1e-5, rtol=1e-4)
        with torch.no_grad(), hooks.apply({"down_proj@3<1": (a, b)}):  # the same in a batch of two
            model(input_ids=torch.cat([ids, ids]))
        torch.testing.assert_close(outputs["now"][1] - plain[0], (x1 @ a.T) @ b, atol=1e-5, rtol=1e-4)
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def matched_engine(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path,
                   nonzero_engine: D2LEngine) -> D2LEngine:
    folder = tmp_path_factory.mktemp("matched")
    save_checkpoint(nonzero_engine.hypernet, folder, dtype=torch.float32)
    _memory(1).save(folder)
    return D2LEngine(str(tiny_llama_dir), checkpoint=str(folder), device="cpu", chunk_tokens=64)


def test_an_engine_with_a_matched_memory_builds_rows_from_the_match_layer(
        matched_engine: D2LEngine, long_text, tmp_path: Path, capsys) -> None:
    engine = matched_engine
    assert engine.memory is not None and engine.describe()["reading_memory"] == "down_proj@3<1"
    text = long_text(40)
    adapter = engine.internalize(text, progress=False)
    assert adapter.memory is not None and adapter.memory_key == "down_proj@3<1"
    # the rows of the first pass are made from layer 1's inputs (keys are centred per pass)
    states, ids, _ = engine.memory_states(engine.chunk_ids(text))[0]
    assert len(states) < adapter.memory_rows
    expected = engine.memory.rows(states, torch.tensor(ids), engine.model.get_output_embeddings().weight)
    torch.testing.assert_close(adapter.memory[0][:len(ids)], expected[0], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(engine.memory_states(engine.chunk_ids(text), 1)[0][0], states)
    assert not torch.allclose(engine.memory_states(engine.chunk_ids(text), 3)[0][0], states)
    result = engine.generate("What is the third fact?", adapter, max_new_tokens=4, gate=False)
    assert result.meta["memory"] in ("applied", "yielded", "followed", "overrode")
    saved = adapter.save(tmp_path / "a")
    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as fh:
        assert fh.metadata()["d2l_format"] == "3"
    loaded = Adapter.load(saved)
    assert loaded.memory_key == "down_proj@3<1" and torch.equal(loaded.memory[0], adapter.memory[0].half().float())
    with pytest.warns(UserWarning, match="fire from another layer's input.*the hypernetwork's update alone"):
        written = adapter.to_peft(tmp_path / "peft")
    from safetensors.torch import load_file

    exported = load_file(str(written / "adapter_model.safetensors"))
    plain = adapter.without_memory().to_peft(tmp_path / "plain")
    assert exported.keys() == load_file(str(plain / "adapter_model.safetensors")).keys()  # no rows travel
    # the exporters leave such rows out and say so: the serving manifest, and d2l export-peft on stderr
    from d2l_haystack.cli import main
    from d2l_haystack.core.serving import export_for_serving

    note = adapter.peft_memory_note()
    assert note is not None and "down_proj@3<1" in note and engine.internalize("x y z").peft_memory_note() is not None
    assert adapter.without_memory().peft_memory_note() is None
    exported, said = adapter.for_peft()
    assert exported.memory is None and said == note
    exported, said = adapter.for_peft(memory=False)  # left out on request: nothing to say
    assert exported.memory is None and said is None
    plain = adapter.without_memory()
    assert plain.for_peft() == (plain, None)
    manifest = export_for_serving(adapter, tmp_path / "served", name="doc")
    assert manifest["memory_rows"] == 0 and manifest["memory_left_out"] == note
    capsys.readouterr()
    assert main(["export-peft", str(saved), str(tmp_path / "peft2")]) == 0
    assert (tmp_path / "peft2" / "adapter_config.json").is_file()
    assert f"d2l export-peft: note: {note}" in capsys.readouterr().err


def test_collect_and_fit_a_memory_matched_on_a_lower_layer(tmp_path: Path, tiny_llama_dir: Path,
                                                           matched_engine: D2LEngine, capsys, monkeypatch) -> None:
    from d2l_haystack.cli import main
    from d2l_haystack.training.memory import collect, fit, write_checkpoint

    engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, keys=None,
                       chunking="auto", seed=3)
    cache = collect(engine, docs=6, seed=3, out=tmp_path / "m.pt", layer=3, match_layer=1, squad_share=0.0)
    data = torch.load(cache, weights_only=False)
    assert data["match_layer"] == 1
    item = data["items"][0]
    chunks = engine.chunk_ids(item["text"])
    read = engine.memory_states(chunks, 1, "down_proj")[0][0]  # layer 1's inputs, as fp16 in the cache
    torch.testing.assert_close(item["passes"][0][0].float(), read, atol=1e-2, rtol=1e-2)
    kinds = sorted({it["kind"] for it in data["items"]})
    memory, report = fit([cache], engine.model, hold_kinds=(kinds[0],), rank=4, steps=2, batch=4, eval_every=2,
                         val_every=3)
    assert (memory.layer, memory.match_layer, memory.key, report["match_layer"]) == (3, 1, "down_proj@3<1", 1)
    plain = collect(engine, docs=2, seed=3, out=tmp_path / "p.pt", layer=3, squad_share=0.0)
    with pytest.raises(ValueError, match="different layers"):
        fit([cache, plain], engine.model, hold_kinds=(kinds[0],), steps=1)
    with pytest.raises(ValueError, match="down_proj@3<1"):
        fit([plain], engine.model, hold_kinds=(kinds[0],), steps=1, init=memory)
    with pytest.raises(ValueError, match="one of 0..2"):
        collect(engine, docs=1, seed=3, out=tmp_path / "x.pt", layer=3, match_layer=5)
    with pytest.raises(ValueError, match="rows on the last layer"):
        collect(engine, docs=1, seed=3, out=tmp_path / "x.pt", layer=2, match_layer=1)
    written = write_checkpoint(memory, Path(str(matched_engine.checkpoint_path)), tmp_path / "ckpt", report)
    reader = D2LEngine(str(tiny_llama_dir), checkpoint=str(written), device="cpu", chunk_tokens=64, keys=None)
    assert reader.memory is not None and reader.memory.match_layer == 1
    assert reader.internalize("The gate opens at nine.").memory_key == "down_proj@3<1"
    from d2l_haystack.core import engine as engine_module

    monkeypatch.setattr(engine_module, "get_model", lambda name, device=None, dtype=None: engine.loaded)
    assert main(["memory", "collect", "--docs", "1", "--layer", "3", "--match-layer", "7", "--threads", "1",
                 "--squad-share", "0",
                 "--checkpoint", str(written), "-o", str(tmp_path / "y.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "d2l memory collect: error: the match layer must be one of 0..2 (below the rows' layer 3), got 7"
