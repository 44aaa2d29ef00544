"""Adapters: persistence, composition, PEFT export, and the functional LoRA application."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch

from d2l_haystack.core import Adapter, D2LEngine, compose
from d2l_haystack.core.adapter import ADAPTER_FILE
from d2l_haystack.core.errors import AdapterError


@pytest.fixture(scope="module")
def doc_adapter(nonzero_engine: D2LEngine, long_text) -> Adapter:
    return nonzero_engine.internalize(long_text(120), meta={"source": "river.txt"})


def _assert_same_adapter(a: Adapter, b: Adapter, exact: bool = True) -> None:
    assert a.factors.keys() == b.factors.keys()
    for m in a.factors:
        for x, y in zip(a.factors[m], b.factors[m], strict=True):
            if exact:
                assert torch.equal(x, y), m
            else:
                torch.testing.assert_close(x, y, atol=2e-3, rtol=2e-3)
    for attr in ("scale", "rank", "bias_rank", "num_chunks", "base_model", "checkpoint_id", "content_hash",
                 "num_tokens", "module_paths", "meta"):
        assert getattr(a, attr) == getattr(b, attr), attr


def test_save_load_round_trip(tmp_path: Path, doc_adapter: Adapter) -> None:
    assert doc_adapter.num_chunks >= 2
    written = doc_adapter.save(tmp_path / "adapter")
    assert written == tmp_path / "adapter" / ADAPTER_FILE
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == [ADAPTER_FILE]  # no temp files left
    loaded = Adapter.load(tmp_path / "adapter")
    _assert_same_adapter(doc_adapter, loaded, exact=False)
    # values are stored as fp16: loading gives exactly the fp16-rounded tensors
    for m, (a, b) in doc_adapter.factors.items():
        assert torch.equal(loaded.factors[m][0], a.half().float())
        assert torch.equal(loaded.factors[m][1], b.half().float())
    assert abs(written.stat().st_size - loaded.nbytes) < 4096  # header only on top of fp16 tensors
    # a path ending in .safetensors is used as the file itself; a second save round-trips exactly
    again = loaded.save(tmp_path / "flat.safetensors")
    _assert_same_adapter(loaded, Adapter.load(again))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_file_raises_adapter_error_naming_the_file(tmp_path: Path, doc_adapter: Adapter,
                                                           damage: str) -> None:
    path = doc_adapter.save(tmp_path / "adapter")
    data = path.read_bytes()
    broken = {"truncate": data[: len(data) // 3], "garbage": b"\x07not an adapter" * 10, "empty": b""}[damage]
    path.write_bytes(broken)
    with pytest.raises(AdapterError) as err:
        Adapter.load(tmp_path / "adapter")
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == broken, "loading must never rewrite the file"


def test_damaged_tensor_data_is_caught_by_the_checksum(tmp_path: Path, doc_adapter: Adapter) -> None:
    """Bytes overwritten inside the tensor data (the header still parses) fail the load with a
    one-line error; a file written before checksums existed still loads."""
    import json
    import struct

    from safetensors.torch import save_file

    path = doc_adapter.save(tmp_path / "adapter")
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", bytes(data[:8]))[0]
    start = 8 + header_len + (len(data) - 8 - header_len) // 2
    data[start:start + 64] = bytes(range(64))
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="does not match its checksum") as err:
        Adapter.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)

    from safetensors import safe_open

    good = doc_adapter.save(tmp_path / "good")
    with safe_open(str(good), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert json.loads(meta["num_chunks"]) == doc_adapter.num_chunks and "data_sha256" in meta
    del meta["data_sha256"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    _assert_same_adapter(Adapter.load(good), Adapter.load(tmp_path / "old.safetensors"))


def test_foreign_safetensors_file_is_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(AdapterError, match="not a d2l-haystack adapter"):
        Adapter.load(tmp_path / "x.safetensors")
    with pytest.raises(AdapterError, match="no adapter at"):
        Adapter.load(tmp_path / "missing")


def test_failed_save_keeps_the_previous_adapter(tmp_path: Path, doc_adapter: Adapter,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    path = doc_adapter.save(tmp_path / "adapter")
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="no space"):
        doc_adapter.save(tmp_path / "adapter")
    assert path.read_bytes() == before
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == [ADAPTER_FILE]
    monkeypatch.undo()
    Adapter.load(path)


def test_compose_concatenates_along_rank(nonzero_engine: D2LEngine, long_text, sample_text: str) -> None:
    first = nonzero_engine.internalize(long_text(120))
    second = nonzero_engine.internalize(sample_text)
    r, rb, s = first.rank, first.bias_rank, first.scale
    n1, n2 = first.num_chunks * r, second.num_chunks * r
    composed = compose([first, second], weights=[0.5, 2.0])
    a, b = composed["down_proj"]
    a1, b1 = first.factors["down_proj"]
    a2, b2 = second.factors["down_proj"]
    assert a.shape[1] == n1 + n2 + rb  # the bias block appears once (same checkpoint)
    # document blocks, each with its own weight, scale folded into B
    assert torch.equal(a[:, :n1], a1[:, :n1])
    torch.testing.assert_close(b[:, :n1], b1[:, :n1] * s * 0.5)
    assert torch.equal(a[:, n1:n1 + rb], a1[:, n1:])
    torch.testing.assert_close(b[:, n1:n1 + rb], b1[:, n1:] * s)  # the bias block is not weighted
    assert torch.equal(a[:, n1 + rb:], a2[:, :n2])
    torch.testing.assert_close(b[:, n1 + rb:], b2[:, :n2] * s * 2.0)

    # the composed update is the weighted sum of the document updates plus one bias update
    x = torch.randn(3, a.shape[-1])
    layer = 1

    def update(aa: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
        return (x @ aa[layer].T) @ bb[layer]

    expected = (0.5 * s * update(a1[:, :n1], b1[:, :n1]) + 2.0 * s * update(a2[:, :n2], b2[:, :n2])
                + s * update(a1[:, n1:], b1[:, n1:]))
    torch.testing.assert_close(update(a, b), expected, atol=1e-5, rtol=1e-4)

    # adapters from different checkpoints each bring their own bias block
    other = Adapter(**{**second.__dict__, "checkpoint_id": "another"})
    assert compose([first, other])["down_proj"][0].shape[1] == n1 + n2 + 2 * rb


def test_compose_rejects_bad_input(doc_adapter: Adapter) -> None:
    with pytest.raises(ValueError):
        compose([])
    with pytest.raises(ValueError, match="one weight per adapter"):
        compose([doc_adapter], weights=[1.0, 2.0])
    foreign = Adapter(**{**doc_adapter.__dict__, "base_model": "other-model"})
    with pytest.raises(AdapterError, match="different base models"):
        compose([doc_adapter, foreign])


def test_engine_rejects_adapter_of_another_model(nonzero_engine: D2LEngine, doc_adapter: Adapter) -> None:
    foreign = Adapter(**{**doc_adapter.__dict__, "base_model": "other-model"})
    with pytest.raises(AdapterError, match="other-model"):
        nonzero_engine.generate("Hello?", foreign, max_new_tokens=2)


def test_to_peft_gives_the_same_logits(tmp_path: Path, nonzero_engine: D2LEngine, doc_adapter: Adapter,
                                       tiny_llama_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = nonzero_engine.format.question_ids("How many barrels were noted?")
    base_logits = nonzero_engine.logits(ids)
    ours = nonzero_engine.logits(ids, doc_adapter)
    assert (ours - base_logits).abs().max() > 1e-2, "the adapter must change the logits for this test to mean anything"

    out = doc_adapter.to_peft(tmp_path / "peft", base_model_name_or_path=str(tiny_llama_dir))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    peft_model = PeftModel.from_pretrained(fresh, str(out)).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_adapter_never_changes_base_weights(nonzero_engine: D2LEngine, doc_adapter: Adapter) -> None:
    model = nonzero_engine.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = nonzero_engine.format.question_ids("What did the council read?")
    plain = nonzero_engine.logits(ids)
    with_adapter = nonzero_engine.logits(ids, doc_adapter)
    nonzero_engine.generate("What did the council read?", doc_adapter, max_new_tokens=4)
    assert not torch.equal(plain, with_adapter)
    assert torch.equal(nonzero_engine.logits(ids), plain)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_exceptions_inside_generation_do_not_leak_the_adapter(nonzero_engine: D2LEngine,
                                                              doc_adapter: Adapter) -> None:
    ids = nonzero_engine.format.question_ids("Anything?")
    plain = nonzero_engine.logits(ids)

    def boom(_: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        nonzero_engine.generate("Anything?", doc_adapter, max_new_tokens=3, streaming_callback=boom)
    assert torch.equal(nonzero_engine.logits(ids), plain)


def test_concurrent_calls_with_different_adapters_do_not_mix(nonzero_engine: D2LEngine, long_text) -> None:
    engine = nonzero_engine
    adapters = [None] + [engine.internalize(long_text(30 + 25 * i), source=f"doc{i}") for i in range(3)]
    question = "Which entry noted the most carts?"
    ids = engine.format.question_ids(question)
    ref_logits = [engine.logits(ids, a) for a in adapters]
    ref_text = [engine.generate(question, a, max_new_tokens=8).text for a in adapters]
    assert len({tuple(t.flatten()[:50].tolist()) for t in ref_logits}) == len(adapters)

    results: dict[tuple[int, int], tuple[torch.Tensor, str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(adapters) * 2)

    def worker(i: int, rep: int) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                logits = engine.logits(ids, adapters[i])
                text = engine.generate(question, adapters[i], max_new_tokens=8).text
                results[(i, rep)] = (logits, text)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, rep)) for i in range(len(adapters)) for rep in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == len(threads)
    for (i, _), (logits, text) in results.items():
        torch.testing.assert_close(logits, ref_logits[i], atol=1e-5, rtol=1e-5)
        assert text == ref_text[i], (i, text, ref_text[i])


def test_adapter_size_accounting(doc_adapter: Adapter) -> None:
    a, b = doc_adapter.factors["down_proj"]
    assert doc_adapter.total_rank == doc_adapter.num_chunks * doc_adapter.rank + doc_adapter.bias_rank
    assert doc_adapter.num_layers == a.shape[0]
    assert doc_adapter.keys is not None and doc_adapter.key_chunks is not None
    keys = 2 * doc_adapter.keys.numel() + 4 * doc_adapter.key_chunks.numel()  # fp16 vectors, int32 owners
    assert doc_adapter.nbytes == 2 * (a.numel() + b.numel()) + keys
    assert re.fullmatch(r"[0-9a-f]{64}", doc_adapter.content_hash)


def test_document_factors_lay_chunks_out_chunk_after_chunk_then_padding_then_bias():
    import torch

    from d2l_haystack.core.lora import document_factors

    layers, r, rb, d_in, d_out = 3, 2, 1, 5, 4
    a = torch.arange(2 * layers * r * d_in, dtype=torch.float32).reshape(2, layers, r, d_in)
    b = torch.arange(2 * layers * r * d_out, dtype=torch.float32).reshape(2, layers, r, d_out)
    bias = (torch.full((layers, rb, d_in), -1.0), torch.full((layers, rb, d_out), -2.0))
    da, db = document_factors(a, b, bias, pad_chunks=1)
    assert da.shape == (layers, 3 * r + rb, d_in) and db.shape == (layers, 3 * r + rb, d_out)
    for layer in range(layers):
        assert torch.equal(da[layer, :r], a[0, layer]) and torch.equal(da[layer, r:2 * r], a[1, layer])
        assert torch.equal(db[layer, r:2 * r], b[1, layer])
    assert not da[:, 2 * r:3 * r].any() and not db[:, 2 * r:3 * r].any()  # the padding chunk is zero
    assert (da[:, -rb:] == -1).all() and (db[:, -rb:] == -2).all()


def _peft_logits(folder: Path, tiny_llama_dir: Path, ids: list[int]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return PeftModel.from_pretrained(fresh, str(folder)).eval()(input_ids=torch.tensor([ids])).logits[0]


def test_a_rank_padded_export_gives_the_same_logits(tmp_path: Path, nonzero_engine: D2LEngine, doc_adapter: Adapter,
                                                     tiny_llama_dir: Path) -> None:
    """Zero components and lora_alpha = the padded rank: PEFT computes exactly the same update."""
    import json

    from d2l_haystack.core.adapter import VLLM_RANKS, serving_rank

    ids = nonzero_engine.format.question_ids("How many barrels were noted?")
    ours = nonzero_engine.logits(ids, doc_adapter)
    own = doc_adapter.total_rank
    padded = doc_adapter.to_peft(tmp_path / "padded", base_model_name_or_path=str(tiny_llama_dir), rank=own + 13)
    config = json.loads((padded / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == own + 13
    torch.testing.assert_close(_peft_logits(padded, tiny_llama_dir, ids), ours, atol=1e-4, rtol=1e-4)
    assert serving_rank(own) in VLLM_RANKS and serving_rank(own) >= own
    with pytest.raises(AdapterError, match="padding only adds"):
        doc_adapter.to_peft(tmp_path / "smaller", rank=own - 1)
    with pytest.raises(AdapterError, match="chunk groups"):
        serving_rank(513)


def test_a_long_document_is_served_as_chunk_groups(tmp_path: Path, nonzero_engine: D2LEngine, doc_adapter: Adapter,
                                                   tiny_llama_dir: Path, capsys) -> None:
    """Over the server's largest rank: one padded adapter per group of chunks (each equal to the
    adapter of those chunks), the keys pick the group of the chunk a question is about."""
    from d2l_haystack.cli import main
    from d2l_haystack.core.serving import pick_group, read_manifest

    assert doc_adapter.num_chunks >= 3 and doc_adapter.has_keys and doc_adapter.total_rank > 16
    doc_adapter.save(tmp_path / "manual")
    assert main(["export-peft", str(tmp_path / "manual"), str(tmp_path / "vllm"), "--serving", "vllm",
                 "--max-rank", "16", "--base-model", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "--enable-lora --max-lora-rank 16 --lora-modules manual-g000=" in out
    manifest = read_manifest(tmp_path / "vllm")
    groups = manifest["groups"]
    per_group = (16 - doc_adapter.bias_rank) // doc_adapter.rank
    assert len(groups) == -(-doc_adapter.num_chunks // per_group) > 1
    assert [c for g in groups for c in g["chunks"]] == list(range(doc_adapter.num_chunks))
    assert all(g["rank"] <= 16 and g["rank"] >= g["own_rank"] for g in groups)
    ids = nonzero_engine.format.question_ids("How many carts were noted?")
    last = groups[-1]
    saved = Adapter.load(tmp_path / "manual")  # fp16 on disk: what the export read
    ours = nonzero_engine.logits(ids, saved.select_chunks(last["chunks"]))
    theirs = _peft_logits(tmp_path / "vllm" / last["path"], tiny_llama_dir, ids)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    # a question embedded like a key of a chunk in the last group is sent to that group
    window = int((doc_adapter.key_chunks == last["chunks"][0]).nonzero()[0])
    assert pick_group(manifest, doc_adapter.keys[window]) == last["name"]
    assert pick_group(manifest, None) == groups[0]["name"]
