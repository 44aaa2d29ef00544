"""The reading memory: rows per document position on one layer, carried by the adapter, applied by
the hooks, exported to PEFT, fitted on cached states (tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from d2l_haystack.core import Adapter, D2LEngine
from d2l_haystack.core.errors import AdapterError, CheckpointError
from d2l_haystack.core.hypernet import save_checkpoint
from d2l_haystack.core.memory import (
    DEFAULT_FIRM_CARRY,
    DEFAULT_FOLLOW_ON_YIELD,
    DEFAULT_LONG_DOCUMENTS,
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_OVERRIDE,
    DEFAULT_ROW_USE,
    MEMORY_FILE,
    UNNAMED_FIRM_CARRY,
    UNNAMED_LONG_DOCUMENTS,
    UNNAMED_ROW_USE,
    OverrideRule,
    ReadingMemory,
    memory_digest,
)


def _random_memory(layer: int = 3, seed: int = 0) -> ReadingMemory:
    torch.manual_seed(seed)
    memory = ReadingMemory(128, 64, rank=4, layer=layer, scale_x=0.5)
    with torch.no_grad():
        memory.q.normal_(0, 0.3)
        memory.p.normal_(0, 0.3)
    return memory


@pytest.fixture(scope="module")
def memory_checkpoints(tmp_path_factory: pytest.TempPathFactory, nonzero_engine: D2LEngine) -> tuple[Path, Path]:
    """A hypernetwork checkpoint without and with a reading memory on the tiny Llama's last layer."""
    root = tmp_path_factory.mktemp("memory-ckpt")
    plain, with_memory = root / "plain", root / "with-memory"
    for folder in (plain, with_memory):
        save_checkpoint(nonzero_engine.hypernet, folder, dtype=torch.float32)
    _random_memory().save(with_memory)
    return plain, with_memory


@pytest.fixture(scope="module")
def memory_engine(tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path]) -> D2LEngine:
    return D2LEngine(str(tiny_llama_dir), checkpoint=str(memory_checkpoints[1]), device="cpu", chunk_tokens=64)


@pytest.fixture(scope="module")
def memory_adapter(memory_engine: D2LEngine, long_text) -> Adapter:
    return memory_engine.internalize(long_text(120))


def test_memory_round_trips_and_damage_is_named(tmp_path: Path) -> None:
    memory = _random_memory()
    memory.save(tmp_path)
    loaded = ReadingMemory.load(tmp_path)
    assert loaded is not None and (loaded.layer, loaded.module, loaded.key) == (3, "down_proj", "down_proj@3")
    torch.testing.assert_close(loaded.q, memory.q.half().float())
    assert ReadingMemory.load(tmp_path / "elsewhere") is None and memory_digest(tmp_path / "elsewhere") is None
    # the checkpoint id's part: the same memory saved again has the same digest (whatever order
    # safetensors writes the header in), another header value another
    digest = memory_digest(tmp_path)
    for _ in range(3):
        memory.save(tmp_path)
        assert memory_digest(tmp_path) == digest
    memory.max_rows += 1
    assert memory_digest(memory.save(tmp_path).parent) != digest
    (tmp_path / MEMORY_FILE).write_bytes(b"not a safetensors file")
    assert memory_digest(tmp_path) is not None
    with pytest.raises(CheckpointError, match="damaged reading memory"):
        ReadingMemory.load(tmp_path)


def test_an_engine_with_a_memory_adds_one_row_per_document_token(
        memory_engine: D2LEngine, memory_adapter: Adapter, memory_checkpoints: tuple[Path, Path],
        tiny_llama_dir: Path) -> None:
    plain = D2LEngine(str(tiny_llama_dir), checkpoint=str(memory_checkpoints[0]), device="cpu", chunk_tokens=64)
    assert plain.memory is None and memory_engine.memory is not None
    assert memory_engine.checkpoint_id != plain.checkpoint_id  # adapters of the two are not interchangeable
    described = memory_engine.describe()
    assert described["reading_memory"] == "down_proj@3" and described["memory_override"] == DEFAULT_OVERRIDE.to_text()
    assert (described["memory_yield_above"], described["memory_max_tokens"], described["memory_max_rows"],
            described["memory_row_use"], described["memory_follow_on_yield"], described["memory_long_documents"]) == (
        0.95, DEFAULT_MAX_TOKENS, DEFAULT_MAX_ROWS, DEFAULT_ROW_USE, DEFAULT_FOLLOW_ON_YIELD, DEFAULT_LONG_DOCUMENTS)
    assert "memory_override" not in plain.describe()
    a = memory_adapter
    assert a.memory is not None and a.memory_chunks is not None and a.memory_key == "down_proj@3"
    assert a.memory_rows == a.num_tokens and a.memory[0].shape == (a.num_tokens, 128)
    assert a.memory[1].shape == (a.num_tokens, 64)
    assert a.num_chunks > 1 and torch.equal(a.memory_chunks.unique(), torch.arange(a.num_chunks))
    assert a.serving_rank_needed == a.total_rank + a.num_tokens
    without = plain.internalize("A short note. It has two sentences.")
    assert without.memory is None and without.memory_rows == 0
    switched_off = D2LEngine(str(tiny_llama_dir), checkpoint=str(memory_checkpoints[1]), device="cpu",
                             chunk_tokens=64, reading_memory=False)
    assert switched_off.memory is None and switched_off.checkpoint_id == plain.checkpoint_id


def test_memory_rows_change_the_answer_only_through_their_layer(memory_engine: D2LEngine,
                                                                memory_adapter: Adapter) -> None:
    from dataclasses import replace

    ids = memory_engine.format.question_ids("How many barrels were noted?")
    with_rows = memory_engine.logits(ids, memory_adapter)
    no_rows = memory_engine.logits(ids, replace(memory_adapter, memory=None, memory_chunks=None, memory_key=""))
    assert not torch.allclose(with_rows, no_rows, atol=1e-4)
    assert memory_adapter.memory is not None
    silent = (memory_adapter.memory[0], torch.zeros_like(memory_adapter.memory[1]))
    torch.testing.assert_close(memory_engine.logits(ids, replace(memory_adapter, memory=silent)), no_rows)


def test_memory_rows_persist_and_follow_their_chunks(tmp_path: Path, memory_adapter: Adapter) -> None:
    from safetensors.torch import load_file, save_file

    loaded = Adapter.load(memory_adapter.save(tmp_path / "a"))
    assert loaded.memory is not None and memory_adapter.memory is not None and loaded.memory_chunks is not None
    torch.testing.assert_close(loaded.memory[0], memory_adapter.memory[0], atol=2e-3, rtol=2e-3)
    assert torch.equal(loaded.memory[1], memory_adapter.memory[1].half().float())  # B: exact (fp16)
    assert torch.equal(loaded.memory_chunks, memory_adapter.memory_chunks)
    assert loaded.memory_key == memory_adapter.memory_key and "memory" not in loaded.factors
    assert loaded.nbytes > memory_adapter.total_rank  # rows are counted
    last = loaded.num_chunks - 1
    picked = loaded.select_chunks([last])
    assert picked.memory_chunks is not None and picked.memory is not None
    assert picked.memory_rows == int((loaded.memory_chunks == last).sum()) > 0
    assert torch.equal(picked.memory_chunks, torch.zeros(picked.memory_rows, dtype=torch.long))
    torch.testing.assert_close(picked.memory[0], loaded.memory[0][loaded.memory_chunks == last])
    # a file whose rows lost their chunk numbers is refused, naming the problem
    target = tmp_path / "a" / "adapter.safetensors"
    from safetensors import safe_open

    with safe_open(str(target), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(target))
    del tensors["memory.chunks"], meta["data_sha256"]
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match="incomplete reading-memory rows"):
        Adapter.load(tmp_path / "broken.safetensors")


def test_memory_rows_are_stored_once_per_distinct_token_and_old_files_still_load(
        tmp_path: Path, memory_adapter: Adapter) -> None:
    """``B`` rows depend only on the token, so a file keeps one per distinct token and an index;
    files written before (``memory.B`` whole, format 1) load the same rows; a bad index is refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from d2l_haystack.core.adapter import MEMORY_FORMAT_VERSION

    assert memory_adapter.memory is not None
    target = memory_adapter.save(tmp_path / "a")
    with safe_open(str(target), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(target))
    distinct = len(torch.unique(memory_adapter.memory[1], dim=0))
    assert meta["d2l_format"] == MEMORY_FORMAT_VERSION and "memory.B" not in tensors
    assert tensors["memory.B_unique"].shape[0] == distinct < memory_adapter.memory_rows  # a document repeats tokens
    assert memory_adapter.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())
    new = Adapter.load(target)
    old = {k: v for k, v in tensors.items() if not k.startswith("memory.B_")}
    old["memory.B"] = memory_adapter.memory[1].half()
    del meta["data_sha256"]
    save_file(old, str(tmp_path / "old.safetensors"), metadata={**meta, "d2l_format": "1"})
    before = Adapter.load(tmp_path / "old.safetensors")
    assert new.memory is not None and before.memory is not None
    assert all(torch.equal(x, y) for x, y in zip(new.memory, before.memory))
    tensors["memory.B_index"][0] = distinct  # past the distinct rows
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match="incomplete reading-memory rows"):
        Adapter.load(tmp_path / "bad.safetensors")
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={**meta, "d2l_format": "9"})
    with pytest.raises(AdapterError, match="format '9'; reads 1, 2"):
        Adapter.load(tmp_path / "future.safetensors")


def test_memory_rows_keep_their_sentence_and_a_question_applies_at_most_max_rows(
        tmp_path: Path, memory_engine: D2LEngine, memory_adapter: Adapter, long_text) -> None:
    """Each row knows its sentence (segment) and each sentence its key embedding; where the chosen
    chunks hold more rows than the memory's max_rows, the rows of the sentences most like the
    question apply, up to the budget; rows that cannot be ranked (no segment keys) do not apply."""
    from dataclasses import replace

    from d2l_haystack.core.engine import SEGMENT_TOKENS

    a = memory_adapter
    assert a.memory_segments is not None and a.memory_segment_keys is not None and a.memory_chunks is not None
    segs = a.memory_segments
    assert len(segs) == a.memory_rows and bool((segs[1:] >= segs[:-1]).all())
    assert int(segs.bincount().max()) <= SEGMENT_TOKENS and len(a.memory_segment_keys) == int(segs.max()) + 1
    for seg in segs.unique():  # a sentence never spans two chunks
        assert len(a.memory_chunks[segs == seg].unique()) == 1
    torch.testing.assert_close(a.memory_segment_keys.norm(dim=-1), torch.ones(len(a.memory_segment_keys)))
    loaded = Adapter.load(a.save(tmp_path / "a"))
    assert loaded.memory_segments is not None and torch.equal(loaded.memory_segments, segs)
    assert loaded.memory_segment_keys is not None and loaded.memory_segment_keys.shape == a.memory_segment_keys.shape
    # the budget: the question is one sentence of the document, word for word
    assert memory_engine.memory is not None
    tokens = [t for c in memory_engine.chunk_ids(long_text(120)) for t in c]
    texts = {int(k): memory_engine.tokenizer.decode([t for t, s in zip(tokens, segs.tolist(), strict=True) if s == k])
             for k in segs.unique()}
    target, sentence = next((k, t) for k, t in texts.items() if "Entry number 3 " in t)  # a sentence said once
    saved = memory_engine.memory.max_rows
    try:
        memory_engine.memory.max_rows = int((segs == target).sum()) + 2
        prompt = memory_engine.prompt_ids(sentence)
        chosen, _, meta = memory_engine.select_chunks(prompt, a, max_chunks=0, query=sentence)
        kept = chosen[0]
        assert meta["memory_rows"] == kept.memory_rows <= memory_engine.memory.max_rows
        assert meta["memory_rows_total"] == a.memory_rows and kept.memory_segments is not None
        assert target in kept.memory_segments.tolist()
        unranked = replace(a, memory_segment_keys=None, memory_segments=None)
        chosen, _, meta = memory_engine.select_chunks(prompt, unranked, max_chunks=0, query=sentence)
        assert chosen[0].memory_rows == 0 == meta["memory_rows"]
        assert memory_engine.generate(sentence, unranked, max_chunks=0, max_new_tokens=2).meta.get("memory") is None
    finally:
        memory_engine.memory.max_rows = saved


def test_peft_export_of_memory_rows_gives_the_same_logits(tmp_path: Path, memory_engine: D2LEngine,
                                                          memory_adapter: Adapter, tiny_llama_dir: Path) -> None:
    """The rows go to their one layer: a larger rank there (rank_pattern), or every layer padded."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    saved = Adapter.load(memory_adapter.save(tmp_path / "a"))  # fp16 on disk: what an export reads
    ids = memory_engine.format.question_ids("How many barrels were noted?")
    ours = memory_engine.logits(ids, saved)
    for name, rank in (("pattern", None), ("padded", saved.serving_rank_needed + 3)):
        folder = saved.to_peft(tmp_path / name, base_model_name_or_path=str(tiny_llama_dir), rank=rank)
        config = json.loads((folder / "adapter_config.json").read_text())
        if rank is None:
            assert config["rank_pattern"] == {"model.layers.3.mlp.down_proj": saved.serving_rank_needed}
        fresh = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = PeftModel.from_pretrained(fresh, str(folder)).eval()(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    with pytest.raises(AdapterError, match="padding only adds"):
        saved.to_peft(tmp_path / "small", rank=saved.total_rank)


def test_an_export_without_memory_carries_the_hypernetworks_update_alone(
        tmp_path: Path, memory_engine: D2LEngine, memory_adapter: Adapter, tiny_llama_dir: Path) -> None:
    """``--no-memory``: the LoRA a server would apply to every question is the adapter without its
    rows (what the engine answers with when the memory yields), at the layout's own rank; the
    stored adapter keeps its rows."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from d2l_haystack.cli import main

    stored = memory_adapter.save(tmp_path / "a")
    saved = Adapter.load(stored)
    assert saved.memory_rows and saved.without_memory().memory_rows == 0
    assert main(["export-peft", str(stored), str(tmp_path / "plain"), "--no-memory",
                 "--base-model", str(tiny_llama_dir)]) == 0
    config = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert (config["r"], config["rank_pattern"]) == (saved.total_rank, {})
    ids = memory_engine.format.question_ids("How many barrels were noted?")
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "plain")).eval()
        theirs = peft_model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(theirs, memory_engine.logits(ids, saved.without_memory()), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(theirs, memory_engine.logits(ids, saved), atol=1e-4)
    assert main(["export-peft", str(stored), str(tmp_path / "vllm"), "--serving", "vllm", "--no-memory"]) == 0
    manifest = json.loads((tmp_path / "vllm" / "d2l_serving.json").read_text())
    assert manifest["memory_rows"] == 0 and Adapter.load(stored).memory_rows == saved.memory_rows


def test_a_workspace_export_without_memory_drops_the_rows_and_keeps_the_stored_ones(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path], long_text, capsys) -> None:
    """``d2l workspace export-lora --no-memory``: every export carries no rows and says none; the
    workspace's adapters keep theirs; the default exports them and says how many."""
    from d2l_haystack.cli import main
    from d2l_haystack.kb.workspace import Workspace

    doc = tmp_path / "notes.md"
    doc.write_text(long_text(120), encoding="utf-8")
    ws = Workspace(tmp_path / "ws", device="cpu", model=str(tiny_llama_dir), checkpoint=str(memory_checkpoints[1]),
                   chunk_tokens=64, max_new_tokens=4)
    ws.index_file(doc)
    (entry,) = ws.adapters.list()
    rows = ws.adapters.get(entry["id"]).memory_rows
    ws.close()
    assert rows > 0
    for flag, out, expected in ((["--no-memory"], "plain", 0), ([], "full", rows)):
        capsys.readouterr()
        assert main(["workspace", "export-lora", str(tmp_path / out), "-w", str(tmp_path / "ws"), *flag]) == 0
        (manifest_path,) = (tmp_path / out).glob("*/d2l_serving.json")
        assert json.loads(manifest_path.read_text())["memory_rows"] == expected
        assert ("reading-memory rows" in capsys.readouterr().out) == bool(expected)
    reopened = Workspace.open(tmp_path / "ws")
    assert reopened.adapters.get(entry["id"]).memory_rows == rows
    reopened.close()


def test_chunk_groups_count_the_memory_rows(memory_adapter: Adapter) -> None:
    assert memory_adapter.memory_chunks is not None
    rows = torch.bincount(memory_adapter.memory_chunks, minlength=memory_adapter.num_chunks)
    widest = memory_adapter.bias_rank + memory_adapter.rank + int(rows.max())
    groups = memory_adapter.chunk_groups(widest + memory_adapter.rank)
    assert [c for g in groups for c in g] == list(range(memory_adapter.num_chunks))
    for g in groups:
        assert memory_adapter.select_chunks(g).serving_rank_needed <= widest + memory_adapter.rank
    with pytest.raises(AdapterError, match="cannot hold one"):
        memory_adapter.chunk_groups(widest - 1)


def test_a_memory_for_a_layer_the_adapters_lack_is_refused(tmp_path: Path, nonzero_engine: D2LEngine,
                                                           tiny_llama_dir: Path) -> None:
    save_checkpoint(nonzero_engine.hypernet, tmp_path, dtype=torch.float32)
    _random_memory(layer=9).save(tmp_path)
    with pytest.raises(CheckpointError, match="down_proj@9"):
        D2LEngine(str(tiny_llama_dir), checkpoint=str(tmp_path), device="cpu")


def test_collect_and_fit_write_a_checkpoint_that_reads_with_a_memory(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path],
        monkeypatch) -> None:
    """End to end on the tiny model: cache states of generated training-part documents, fit a
    memory (held kinds choose the step), write a checkpoint, internalize with it."""
    from d2l_haystack.training.memory import collect, fit, write_checkpoint

    engine = D2LEngine(str(tiny_llama_dir), checkpoint=str(memory_checkpoints[0]), device="cpu", chunk_tokens=64,
                       keys=None, chunking="auto")
    cache = collect(engine, docs=8, seed=3, out=tmp_path / "c.pt", layer=3, squad_share=0.0, needle_share=0.5)
    kinds = [it["kind"] for it in torch.load(cache, weights_only=False)["items"]]
    assert "needle" in kinds and len(set(kinds)) > 2
    # a checkpoint that already has a memory caches the same states: the network's adapter alone
    again = D2LEngine(str(tiny_llama_dir), checkpoint=str(memory_checkpoints[1]), device="cpu", chunk_tokens=64,
                      keys=None, chunking="auto")
    assert again.memory is not None
    first, second = (torch.load(collect(e, docs=2, seed=3, out=tmp_path / f"{i}.pt", layer=3, squad_share=0.0,
                                        needle_share=0.5), weights_only=False)["items"]
                     for i, e in enumerate((engine, again)))
    assert torch.load(tmp_path / "1.pt", weights_only=False)["checkpoint"] == engine.checkpoint_id == again.network_id
    for a, b in zip(first, second, strict=True):
        for qa, qb in zip(a["qs"], b["qs"], strict=True):
            assert torch.equal(qa["h"], qb["h"]) and torch.equal(qa["x"], qb["x"])
    # the realistic documents' template set is recorded where it is not the default, and checked
    more = collect(engine, docs=2, seed=3, out=tmp_path / "m.pt", layer=3, squad_share=0.0, phrasings="more")
    assert torch.load(more, weights_only=False)["phrasings"] == "more"
    assert "phrasings" not in torch.load(cache, weights_only=False)
    with pytest.raises(ValueError, match="phrasings must be one of base, more"):
        collect(engine, docs=1, seed=3, out=tmp_path / "x.pt", layer=3, phrasings="many")
    hold = next(k for k in kinds if k != "needle")
    memory, report = fit([cache], engine.model, hold_kinds=(hold,), rank=4, steps=4, batch=4, eval_every=2,
                         val_every=2)
    assert report["phrasings"] == ["base"]
    assert report["questions"]["held"] >= 1 and report["questions"]["train"] >= 1
    assert report["questions"]["validation"] == sum(v["questions"] for v in report["validation"].values()) > 0
    assert hold not in report["validation"]
    assert [row["step"] for row in report["curve"]] == [0, 2, 4] and report["best_step"] in (0, 2, 4)
    assert memory.layer == 3 and memory.scale_x > 0
    # the command line: the decode-time switches go into the written header
    from d2l_haystack.cli import main
    from d2l_haystack.core import models

    monkeypatch.setattr(models, "get_model", lambda name, device="cpu": engine.loaded)  # the tiny model by name
    assert main(["memory", "fit", str(cache), "--checkpoint", str(memory_checkpoints[0]), "--hold-kinds", hold,
                 "--rank", "4", "--steps", "2", "--batch", "4", "--eval-every", "2", "--threads", "1",
                 "--row-use", "once", "--follow-on-yield", "on", "--long-documents", "follow",
                 "--out", str(tmp_path / "cli")]) == 0
    written = ReadingMemory.load(tmp_path / "cli")
    assert written is not None
    assert (written.row_use, written.follow_on_yield, written.long_documents) == ("once", True, "follow")
    out = write_checkpoint(memory, memory_checkpoints[0], tmp_path / "ckpt", report)
    assert (out / MEMORY_FILE).is_file() and (out / "memory_fit.json").is_file()
    reader = D2LEngine(str(tiny_llama_dir), checkpoint=str(out), device="cpu", chunk_tokens=64, keys=None)
    assert reader.internalize("The gate opens at nine.").memory_rows > 0
    with pytest.raises(ValueError, match="not over its base"):
        write_checkpoint(memory, out, out)
    with pytest.raises(ValueError, match="held kinds"):
        fit([cache], engine.model, hold_kinds=("no-such-kind",), steps=1)
    with pytest.raises(ValueError, match="collected with checkpoint"):  # another network's states
        fit([cache], engine.model, hold_kinds=(hold,), steps=1, checkpoint_id="0123456789ab")
    # a fit continued from the memory starts where the first one chose to stop
    memory.yield_above, memory.max_tokens, memory.override = 0.5, 99, OverrideRule(-0.5, -0.5, -0.5)
    memory.row_use, memory.follow_on_yield, memory.long_documents = "once", False, "read"
    continued, again = fit([cache], engine.model, hold_kinds=(hold,), steps=2, batch=4, eval_every=2, val_every=2,
                           init=memory)
    assert (continued.yield_above, continued.max_tokens, continued.override, continued.row_use,
            continued.follow_on_yield, continued.long_documents) == (0.5, 99, memory.override, "once", False, "read")
    chosen = next(row for row in report["curve"] if row["step"] == report["best_step"])
    assert again["init"] and again["curve"][0]["chosen_on"] == chosen["chosen_on"]
    with pytest.raises(ValueError, match="down_proj@1"):
        fit([cache], engine.model, hold_kinds=(hold,), steps=1, init=_random_memory(layer=1))
    # a cosine schedule goes from lr down to a tenth of it at the last step
    for name, last in (("constant", 1e-3), ("cosine", 1e-4)):
        _, run = fit([cache], engine.model, hold_kinds=(hold,), steps=4, batch=4, eval_every=2, val_every=2,
                     lr=1e-3, schedule=name)
        assert run["schedule"] == name and [row["lr"] for row in run["curve"]] == pytest.approx(
            [1e-3, (1e-3 + last) / 2, last])
    with pytest.raises(ValueError, match="schedule 'linear'"):
        fit([cache], engine.model, hold_kinds=(hold,), steps=1, schedule="linear")


def test_memory_fit_names_a_missing_checkpoint_in_one_line(tmp_path: Path, capsys) -> None:
    from d2l_haystack.cli import main

    assert main(["memory", "fit", str(tmp_path / "c.pt"), "--checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d2l memory fit: error:") and "nowhere" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["memory", "fit", str(tmp_path / "c.pt"), "--yield-above", "2"])
    assert "expected a probability in (0, 1] or 'none', got '2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["memory", "fit", str(tmp_path / "c.pt"), "--override=-0.1,1,-2"])
    assert "not three log-probabilities" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["memory", "fit", str(tmp_path / "c.pt"), "--row-use", "twice"])
    assert "invalid choice: 'twice'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["memory", "fit", str(tmp_path / "c.pt"), "--follow-on-yield", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err


def test_a_memory_below_the_last_layer_is_fitted_through_the_layers_above(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path]) -> None:
    """Rows on layer 1 of 4: the cache keeps the whole sequence and the adapter of layers 2-3; the
    fitter's pass through those layers gives the logits the engine's own forward gives with the
    rows applied (so what is fitted is what is served), and without the rows the cached answer."""
    from d2l_haystack.core.adapter import compose
    from d2l_haystack.training.memory import _Fitter, _questions, collect, write_checkpoint

    engine = D2LEngine(str(tiny_llama_dir), checkpoint=str(memory_checkpoints[0]), device="cpu", chunk_tokens=64,
                       keys=None, chunking="tokens")
    cache = collect(engine, docs=3, seed=5, out=tmp_path / "c.pt", layer=1, squad_share=0.0, needle_share=1.0)
    item = torch.load(cache, weights_only=False)["items"][0]
    assert {m: tuple(a.shape[:1]) for m, (a, _) in item["upper"].items()} == {"down_proj": (2,)}
    memory = _random_memory(layer=1, seed=4)
    fitter = _Fitter(memory, engine.model.requires_grad_(False))
    qs = _questions(item)
    first = qs[0]
    assert first.x_all is not None and len(first.x_all) == len(first.h_layer) > len(first.targets)
    finals, _ = fitter._above(qs, use=False)
    for q, final in zip(qs, finals):
        torch.testing.assert_close(final, q.h, atol=0.02, rtol=0.01)

    out = write_checkpoint(memory, memory_checkpoints[0], tmp_path / "ckpt")
    reader = D2LEngine(str(tiny_llama_dir), checkpoint=str(out), device="cpu", chunk_tokens=64, keys=None,
                       chunking="tokens")
    adapter = reader.internalize(item["text"], progress=False)
    assert adapter.memory_key == "down_proj@1" and adapter.memory_rows == sum(len(ids) for _, ids in item["passes"])
    factors = compose([adapter])
    for q, raw, (logits, scores) in zip(qs, item["qs"], fitter.forward(qs)):
        with torch.no_grad(), reader.hooks.apply(factors):
            served = reader.model(input_ids=torch.tensor([raw["ids"]])).logits[0, q.start:q.start + len(q.targets)]
        torch.testing.assert_close(logits, served, atol=0.05, rtol=0.01)
        assert scores is not None and scores.shape == (len(q.targets), adapter.memory_rows)
    plain = fitter.forward(qs, use=False)
    assert any(not torch.allclose(a, b, atol=0.05) for (a, _), (b, _) in zip(plain, fitter.forward(qs)))


def test_the_memory_yields_when_the_adapter_alone_is_sure(memory_engine: D2LEngine, memory_adapter: Adapter,
                                                           tmp_path: Path) -> None:
    """generate() answers without the rows when the adapter alone gives the first token at least
    yield_above, with them otherwise, and says which in meta; the threshold survives the file."""
    from dataclasses import replace

    assert memory_engine.memory is not None
    plain = replace(memory_adapter, memory=None, memory_chunks=None, memory_key="")
    question = "What is the third fact?"
    without = memory_engine.generate(question, plain, max_new_tokens=6, max_chunks=0).text
    applied = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0, gate=False)
    saved = memory_engine.memory.yield_above
    try:
        memory_engine.memory.follow_on_yield = False  # a yielded answer is the adapter's alone (follow: below)
        memory_engine.memory.yield_above = None
        always = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        memory_engine.memory.yield_above, memory_engine.memory.override = 1e-6, None  # any first token is "sure"
        yielded = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
    finally:
        memory_engine.memory.yield_above, memory_engine.memory.override = saved, DEFAULT_OVERRIDE
        memory_engine.memory.follow_on_yield = DEFAULT_FOLLOW_ON_YIELD
    assert always.meta["memory"] == "applied" and "adapter_confidence" not in always.meta
    assert yielded.meta["memory"] == "yielded" and yielded.text == without
    assert applied.meta["memory"] == "applied" and applied.meta["adapter_confidence"] < saved  # type: ignore[operator]
    assert applied.text == always.text != without  # the random rows change the answer
    assert "memory" not in memory_engine.generate(question, plain, max_new_tokens=2, max_chunks=0).meta

    memory = _random_memory()
    memory.yield_above, memory.max_tokens, memory.max_rows = 0.5, 77, 33
    memory.save(tmp_path)
    loaded = ReadingMemory.load(tmp_path)
    assert loaded is not None and (loaded.yield_above, loaded.max_tokens, loaded.max_rows) == (0.5, 77, 33)
    memory.max_rows = 0
    memory.save(tmp_path)
    with pytest.raises(CheckpointError, match="max_rows 0"):
        ReadingMemory.load(tmp_path)
    memory.max_rows = 33
    memory.yield_above = None
    memory.save(tmp_path)
    assert ReadingMemory.load(tmp_path).yield_above is None  # type: ignore[union-attr]
    memory.yield_above = 3.0
    memory.save(tmp_path)
    with pytest.raises(CheckpointError, match="yield_above 3.0"):
        ReadingMemory.load(tmp_path)


def test_a_yielded_answer_follows_the_document_where_the_memory_says_so(
        memory_engine: D2LEngine, memory_adapter: Adapter, tmp_path: Path, monkeypatch) -> None:
    """With ``follow_on_yield`` a yielded answer is generated with the rows in
    :class:`~d2l_haystack.core.lora.RowUse` ``follow`` (silent for the first token, then only the
    document's next position; its arithmetic is tested above), through the plain path and the two
    readers alike; the switch survives the file and a file without it is off."""
    from dataclasses import replace

    from d2l_haystack.core import engine as engine_module
    from d2l_haystack.core.lora import RowUse

    made: list[RowUse] = []

    class Recorded(RowUse):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(engine_module, "RowUse", Recorded)
    memory = memory_engine.memory
    assert memory is not None
    plain = replace(memory_adapter, memory=None, memory_chunks=None, memory_key="")
    monkeypatch.setattr(memory, "yield_above", 1e-6)  # any first token is "sure"
    for question in ("What is the third fact?", "What is the access code?"):
        alone = memory_engine.generate(question, plain, max_new_tokens=6, max_chunks=0)
        monkeypatch.setattr(memory, "follow_on_yield", False)
        monkeypatch.setattr(memory, "override", None)
        made.clear()
        yielded = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        assert yielded.meta["memory"] == "yielded" and yielded.text == alone.text
        assert not any(use.follow for use in made)
        monkeypatch.setattr(memory, "follow_on_yield", True)
        follows = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        assert follows.meta["memory"] == "followed" and made[-1].follow and made[-1].spent is not None
        first = memory_engine.tokenizer(alone.text, add_special_tokens=False)["input_ids"][:1]
        assert memory_engine.tokenizer(follows.text, add_special_tokens=False)["input_ids"][:1] == first
        monkeypatch.setattr(memory, "override", DEFAULT_OVERRIDE)  # the two readers' path
        both = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        assert both.meta["memory"] in ("followed", "overrode")
        if both.meta["memory"] == "followed":
            assert both.text == follows.text
    stored = _random_memory()
    assert stored.follow_on_yield == DEFAULT_FOLLOW_ON_YIELD  # a new memory's
    for switch in (False, True):
        stored.follow_on_yield = switch
        stored.save(tmp_path)
        assert ReadingMemory.load(tmp_path).follow_on_yield == switch  # type: ignore[union-attr]
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / MEMORY_FILE))
    save_file(tensors, str(tmp_path / MEMORY_FILE), metadata={"format": "pt", "layer": "3", "scale_x": "0.5",
                                                              "follow_on_yield": "maybe"})
    with pytest.raises(CheckpointError, match="follow_on_yield 'maybe' is not true or false"):
        ReadingMemory.load(tmp_path)


def test_documents_longer_than_max_tokens_get_no_rows(memory_engine: D2LEngine, long_text) -> None:
    """The memory reads documents up to its max_tokens; a longer one's adapter is the network's alone."""
    assert memory_engine.memory is not None
    text = long_text(120)
    tokens = sum(map(len, memory_engine.chunk_ids(text)))
    saved = memory_engine.memory.max_tokens
    try:
        memory_engine.memory.max_tokens = tokens
        assert memory_engine.internalize(text, progress=False).memory_rows == tokens
        memory_engine.memory.max_tokens = tokens - 1
        plain = memory_engine.internalize(text, progress=False)
    finally:
        memory_engine.memory.max_tokens = saved
    assert plain.memory is None and plain.memory_rows == 0
    assert "memory" not in memory_engine.generate("What is the third fact?", plain, max_new_tokens=2).meta



def test_a_long_documents_chosen_chunks_get_their_rows_when_a_question_is_answered(
        memory_engine: D2LEngine, long_text, tmp_path: Path, monkeypatch, tiny_llama_dir: Path,
        memory_checkpoints: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """With ``long_documents`` ``follow`` or ``read``, a document over ``max_tokens`` keeps its token
    ids instead of rows; a question's chosen chunks then get exactly the rows a short document's
    chunks get (``follow``: they only follow); all chunks at once stay over the limit (no rows)."""
    from dataclasses import replace

    memory = memory_engine.memory
    assert memory is not None and memory.long_documents == DEFAULT_LONG_DOCUMENTS == "follow"  # a new memory's
    text = long_text(120)
    chunks = memory_engine.chunk_ids(text)
    assert len(chunks) > 2
    full = memory_engine.internalize(text, progress=False)  # under the fixture's max_tokens: every row
    monkeypatch.setattr(memory, "max_tokens", sum(map(len, chunks)) - 1)
    monkeypatch.setattr(memory, "long_documents", "none")
    assert memory_engine.internalize(text, progress=False).token_ids is None  # "none": no tokens kept
    question = "What is the third fact?"
    for mode in ("follow", "read"):
        monkeypatch.setattr(memory, "long_documents", mode)
        long = memory_engine.internalize(text, progress=False)
        assert long.memory is None and long.token_ids is not None and long.token_chunks is not None
        assert long.token_ids.tolist() == [t for c in chunks for t in c]
        assert long.token_chunks.tolist() == [i for i, c in enumerate(chunks) for _ in c]
        loaded = Adapter.load(long.save(tmp_path / mode))
        assert loaded.token_ids is not None and torch.equal(loaded.token_ids, long.token_ids)
        prompt = memory_engine.prompt_ids(question)
        chosen, _, meta = memory_engine.select_chunks(prompt, loaded, max_chunks=1, query=question, gate=False)
        picked = chosen[0].meta["selected_chunks"]
        expected = full.select_chunks(picked)
        assert meta["memory_rows_made"] == chosen[0].memory_rows == expected.memory_rows == len(chunks[picked[0]])
        assert chosen[0].memory is not None and expected.memory is not None
        torch.testing.assert_close(chosen[0].memory[0], expected.memory[0])
        torch.testing.assert_close(chosen[0].memory[1], expected.memory[1])
        _, _, every = memory_engine.select_chunks(prompt, loaded, max_chunks=0)
        assert "memory_rows_made" not in every  # every chunk: over max_tokens
        # chunks holding more than max_rows: only those with the sentences the budget keeps are passed,
        # and the rows that apply are the ones a short document's chunks would give
        monkeypatch.setattr(memory, "max_rows", 20)
        sentence = "Entry number 3 "
        few, _, few_meta = memory_engine.select_chunks(prompt, loaded, max_chunks=2, query=sentence, gate=False)
        whole, _, whole_meta = memory_engine.select_chunks(prompt, full, max_chunks=2, query=sentence, gate=False)
        assert few[0].meta["selected_chunks"] == whole[0].meta["selected_chunks"]
        assert few_meta["memory_rows_made"] < sum(len(chunks[c]) for c in few[0].meta["selected_chunks"])
        assert few_meta["memory_rows"] == whole_meta["memory_rows"] == few[0].memory_rows > 0
        assert few[0].memory is not None and whole[0].memory is not None
        torch.testing.assert_close(few[0].memory[0], whole[0].memory[0])
        for picked_rows in (few[0], whole[0]):  # each kept row's sentence key, as a short document's
            assert picked_rows.memory_segments is not None and picked_rows.memory_segment_keys is not None
        torch.testing.assert_close(few[0].memory_segment_keys[few[0].memory_segments],  # type: ignore[index]
                                   whole[0].memory_segment_keys[whole[0].memory_segments],  # type: ignore[index]
                                   atol=1e-5, rtol=1e-4)
        monkeypatch.setattr(memory, "max_rows", DEFAULT_MAX_ROWS)
        answer = memory_engine.generate(question, loaded, max_new_tokens=3, max_chunks=1, gate=False)
        assert answer.meta["memory_rows_made"] == len(chunks[picked[0]])
        if mode == "follow":
            assert answer.meta["memory"] == "followed" and "adapter_confidence" not in answer.meta
        else:
            assert answer.meta["memory"] in ("applied", "yielded", "followed", "overrode")
            assert "adapter_confidence" in answer.meta
    damaged = replace(long, token_chunks=long.token_chunks[:-1])  # type: ignore[index]
    with pytest.raises(AdapterError, match="incomplete document tokens"):
        Adapter.load(damaged.save(tmp_path / "damaged"))
    stored = _random_memory()
    for mode in ("none", "follow", "read"):
        stored.long_documents = mode
        stored.save(tmp_path)
        assert ReadingMemory.load(tmp_path).long_documents == mode  # type: ignore[union-attr]
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(tmp_path / MEMORY_FILE)), str(tmp_path / MEMORY_FILE),
              metadata={"format": "pt", "layer": "3", "scale_x": "0.5"})  # a file from before the header
    assert ReadingMemory.load(tmp_path).long_documents == UNNAMED_LONG_DOCUMENTS == "none"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="long_documents 'some' is not one of none, follow, read"):
        ReadingMemory(128, 64, rank=4, layer=3, long_documents="some")
    from d2l_haystack.cli import main

    assert main(["info", "--model", str(tiny_llama_dir), "--checkpoint", str(memory_checkpoints[1]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["memory_long_documents"], info["memory_row_use"]) == (DEFAULT_LONG_DOCUMENTS, DEFAULT_ROW_USE)


def test_the_switch_reaches_workspaces_components_pipelines_and_the_cli(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path], monkeypatch, capsys) -> None:
    """``reading_memory`` is a workspace setting (saved, re-read, checked), a parameter of the
    converter and the generator (to_dict round trip, part of the shared-engine key), a YAML
    placeholder and the CLI's --no-reading-memory; switched off, adapters carry no rows."""
    from d2l_haystack.cli import main
    from d2l_haystack.components import AdapterGenerator, DocToLoRAConverter
    from d2l_haystack.kb.pipelines import load_pipeline
    from d2l_haystack.kb.settings import WorkspaceError
    from d2l_haystack.kb.workspace import Workspace

    model, ckpt = str(tiny_llama_dir), str(memory_checkpoints[1])
    text = "The boat house opens at nine. The key is kept by the warden. Visitors sign the book."
    rows = {}
    for name, switch in (("on", {}), ("off", {"reading_memory": False})):
        ws = Workspace(tmp_path / name, device="cpu", model=model, checkpoint=ckpt, chunk_tokens=64, **switch)
        ws.index_text(text, "note:boats", route="d2l")
        adapter = ws.adapters.get("note:boats")
        assert adapter is not None
        rows[name] = adapter.memory_rows
        assert Workspace.open(ws.path).settings["reading_memory"] is (name == "on")
        assert ws.components.get("converter").engine.reading_memory is (name == "on")
        pipe = load_pipeline("d2l_only", workspace=ws)
        assert pipe.get_component("generator").reading_memory is (name == "on")
        ws.close()
    assert rows["on"] > 0 and rows["off"] == 0
    switched = Workspace(tmp_path / "on", device="cpu", reading_memory=False)  # the setting changes: the
    assert switched.index_text(text, "note:boats", route="d2l").action != "unchanged"  # adapter is remade
    assert switched.adapters.get("note:boats").memory_rows == 0  # type: ignore[union-attr]
    switched.close()
    with pytest.raises(WorkspaceError, match="reading_memory must be true or false"):
        Workspace(tmp_path / "bad", device="cpu", model=model, reading_memory="yes")

    monkeypatch.setenv("D2L_READING_MEMORY", "false")  # an environment string becomes the boolean
    pipe = load_pipeline("d2l_only", variables={"D2L_WORKSPACE": str(tmp_path / "env"), "D2L_MODEL": model,
                                                "D2L_CHECKPOINT": ckpt})
    assert pipe.get_component("generator").reading_memory is False

    for cls in (DocToLoRAConverter, AdapterGenerator):
        comp = cls(store=str(tmp_path / "s"), model=model, checkpoint=ckpt, device="cpu", reading_memory=False)
        again = cls.from_dict(comp.to_dict())
        assert again.reading_memory is False and again.engine.memory is None

    doc = tmp_path / "note.txt"
    doc.write_text(text)
    for flag, has_rows in (([], True), (["--no-reading-memory"], False)):
        out = tmp_path / f"cli{len(flag)}"
        argv = ["internalize", str(doc), "-o", str(out), "--model", model, "--checkpoint", ckpt, "--device", "cpu"]
        assert main(argv + flag) == 0
        assert (Adapter.load(out).memory_rows > 0) is has_rows
        capsys.readouterr()
        assert main(["info", "--model", model, "--checkpoint", ckpt, "--device", "cpu", "--json", *flag]) == 0
        info = json.loads(capsys.readouterr().out)
        assert (info["reading_memory"] == "down_proj@3") is has_rows and ("memory_override" in info) is has_rows


def test_a_sure_adapter_gives_way_to_the_memory_where_the_override_rule_says(
        memory_engine: D2LEngine, memory_adapter: Adapter, tmp_path: Path) -> None:
    """Where the adapter alone is sure, greedy generate() makes both answers and sends the memory's
    only where the rule prefers it (meta "overrode" and the three log-probabilities); the rule
    survives the file, "None" switches it off, and a bad one is a CheckpointError."""
    memory = memory_engine.memory
    assert memory is not None
    question = "What is the third fact?"
    saved = memory.yield_above, memory.override, memory.follow_on_yield
    chunks: list[str] = []
    try:
        memory.follow_on_yield = False  # a yielded answer is the adapter's alone
        memory.yield_above = None
        with_rows = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        memory.yield_above, memory.override = 1e-6, None
        alone = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        assert with_rows.text != alone.text  # the random rows change the answer (else this test proves nothing)
        memory.override = OverrideRule(own=-1e9, rejects=0.0, form=-1e9)  # always the memory's
        taken = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0,
                                       streaming_callback=chunks.append)
        memory.override = OverrideRule(own=0.0, rejects=-1e9, form=0.0)  # never
        kept = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0)
        sampled = memory_engine.generate(question, memory_adapter, max_new_tokens=6, max_chunks=0, do_sample=True)
    finally:
        memory.yield_above, memory.override, memory.follow_on_yield = saved
    assert taken.text == with_rows.text and taken.meta["memory"] == "overrode" and "".join(chunks).strip() == taken.text
    check = taken.meta["memory_check"]
    assert set(check) == {"own", "memory_on_adapter", "adapter_on_memory"} and all(v <= 0 for v in check.values())
    assert taken.num_tokens == with_rows.num_tokens and taken.time_to_first_token > 0
    assert kept.text == alone.text and kept.meta["memory"] == "yielded" and "memory_check" in kept.meta
    assert sampled.meta["memory"] == "yielded" and "memory_check" not in sampled.meta  # no comparison when sampling

    rule = OverrideRule(-0.2, -1.5, -3.0)
    assert rule.prefers_memory(-0.1, -2.0, -1.0) and not rule.prefers_memory(-0.1, -1.0, -1.0)
    stored = _random_memory()
    for given in (rule, None):
        stored.override = given
        stored.save(tmp_path)
        assert ReadingMemory.load(tmp_path).override == given  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="three log-probabilities"):
        OverrideRule.from_text("-0.1,0.5,-1")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / MEMORY_FILE))
    save_file(tensors, str(tmp_path / MEMORY_FILE), metadata={"format": "pt", "layer": "3", "scale_x": "0.5",
                                                              "override": "-0.1,oops"})
    with pytest.raises(CheckpointError, match="damaged reading memory"):
        ReadingMemory.load(tmp_path)
    save_file(tensors, str(tmp_path / MEMORY_FILE), metadata={"format": "pt", "layer": "3", "scale_x": "0.5"})
    older = ReadingMemory.load(tmp_path)
    assert older is not None and older.override == DEFAULT_OVERRIDE
    assert older.row_use == UNNAMED_ROW_USE == "all"  # measured that way, before the header existed
    assert not older.follow_on_yield  # off, as it was measured
    assert _random_memory().row_use == DEFAULT_ROW_USE == "value"  # a new memory's


def test_both_readers_gives_the_two_answers_generate_chooses_between(
        memory_engine: D2LEngine, memory_adapter: Adapter, nonzero_engine: D2LEngine) -> None:
    """The public two readers: both greedy answers and the rule's inputs, whatever the yield test
    says; generate()'s answer is one of the two; no rows (or nothing relevant) is said plainly."""
    from d2l_haystack.core.errors import InputError

    question = "What is the access code?"
    both = memory_engine.both_readers(question, memory_adapter, max_new_tokens=6, gate=False)
    assert both is not None and 0 < both.adapter_confidence <= 1 and "chunks_applied" in both.meta
    alone = memory_engine.generate(question, memory_adapter, max_new_tokens=6, gate=False)
    assert alone.text in (both.adapter, both.memory)
    if both.same:
        assert both.own is None and both.adapter_on_memory is None
    else:
        assert both.own is not None and both.own <= 0 and both.memory_on_adapter is not None
    plain = nonzero_engine.internalize("The access code is 4417.", progress=False)  # no memory: one reader
    with pytest.raises(InputError, match="no reading-memory rows"):
        nonzero_engine.both_readers(question, plain, max_new_tokens=4, gate=False)


@pytest.mark.parametrize("row_use", ["all", "next", "value"])
def test_the_two_readers_in_one_batch_answer_and_score_as_two_separate_runs(
        memory_engine: D2LEngine, memory_adapter: Adapter, row_use: str, monkeypatch) -> None:
    """The batched readers (the rows masked off for one sequence) give the answers and the three
    log-probabilities that separate greedy runs and separate scoring passes give. With a
    ``row_use`` that spends rows, the memory's own score is that of its generation (rows spent as
    it went), so only the answers and the two cross-scores (single passes) are compared. With
    ``next`` or ``value``, the followed answer (``follow_on_yield``) is a third sequence of the batch and equals
    a separate followed run."""
    from d2l_haystack.core.engine import _CallbackStreamer, _without_rows

    engine = memory_engine
    assert engine.memory is not None
    monkeypatch.setattr(engine.memory, "row_use", row_use)
    with_rows = engine._compose([memory_adapter], None)
    assert with_rows is not None
    plain = _without_rows(with_rows)

    def answer(factors) -> list[int]:
        return engine._run_generate(ids, factors, _CallbackStreamer(engine.tokenizer, None, 0.0), 8)

    def mean_logprob(factors, tokens: list[int]) -> float:
        with torch.no_grad(), engine.hooks.apply(factors):
            logits = engine.model(input_ids=torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1].float()
        return float(logits.log_softmax(-1).gather(1, torch.tensor(tokens)[:, None]).mean())

    compared = 0
    for question in ("What is the third fact?", "What is the access code?", "Who wrote the report?"):
        ids = engine.prompt_ids(question)
        adapter, memory, check, followed = engine._read_both(ids, with_rows, 8, follow=True)
        assert (adapter, memory) == (answer(plain), answer(with_rows))
        if row_use != "all":  # the followed answer rides in the same batch, as a separate run makes it
            assert followed == engine._run_generate(ids, with_rows, _CallbackStreamer(engine.tokenizer, None, 0.0),
                                                    8, follow=True)
        else:
            assert followed is None  # made by the caller
        if check is None:
            assert adapter == memory
            continue
        compared += 1
        expected = (mean_logprob(with_rows, memory), mean_logprob(with_rows, adapter), mean_logprob(plain, memory))
        first = 0 if row_use == "all" else 1
        assert check[first:] == pytest.approx(expected[first:], abs=1e-4)
    assert compared  # the random rows change at least one answer (else the scores went untested)


def test_the_two_readers_benchmark_records_both_answers_and_replays_the_rules(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path], capsys) -> None:
    """benchmarks/two_readers.py (the data behind the yield and override defaults): per question
    both readers' answers and the rule's inputs; ``table`` replays the rules with the core's defaults."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "two_readers.py"
    spec = importlib.util.spec_from_file_location("two_readers", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps({"id": f"q{i}", "document": "The gate opens at nine. The key is blue.",
                                         "question": q, "answers": ["nine"], "doc_id": "d"}) + "\n"
                             for i, q in enumerate(["When does the gate open?", "What colour is the key?"])))
    records = tmp_path / "out.rec"
    assert bench.main(["answer", str(cases), "-o", str(records), "--model", str(tiny_llama_dir), "--checkpoint",
                       str(memory_checkpoints[1]), "--max-new-tokens", "4", "--no-progress"]) == 0
    recs = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["id"] for r in recs] == ["q0", "q1"]
    for r in recs:
        assert not r["gated"] and 0 < r["adapter_first"] <= 1
        if r["same"]:  # nothing to choose: nothing scored
            assert r["adapter"]["text"] == r["memory"]["text"] and r["own"] is None
        else:
            assert r["own"] <= 0 and r["memory_on_adapter"] <= 0 and r["adapter_on_memory"] <= 0
    sure = {**recs[0], "adapter_first": 1.0, "same": False, "own": -0.01, "memory_on_adapter": -3.0,
            "adapter_on_memory": -0.5}
    assert bench.choose(sure, "yield", 0.95, DEFAULT_OVERRIDE) == "adapter"
    assert bench.choose(sure, "override", 0.95, DEFAULT_OVERRIDE) == "memory"
    assert bench.choose({**sure, "memory_on_adapter": -0.2}, "override", 0.95, DEFAULT_OVERRIDE) == "adapter"
    assert bench.choose({**sure, "adapter_first": 0.5}, "yield", 0.95, DEFAULT_OVERRIDE) == "memory"
    assert bench.main(["table", str(records), "--json", str(tmp_path / "t.json")]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["override"] == DEFAULT_OVERRIDE.to_text() and report["rows"][0]["questions"] == 2
    assert "yield + override" in capsys.readouterr().out


def test_a_workspace_remakes_adapters_of_an_older_checkpoint(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path]) -> None:
    """The checkpoint a workspace names is upgraded in place (here: a reading memory added, as the
    shipped one was): a new process re-internalizes the documents on the next index, a running
    engine does not remake them on every sweep, and checkpoint_id_of reads the id from the files."""
    import shutil

    from d2l_haystack.core import engine as engine_module
    from d2l_haystack.core.engine import checkpoint_id_of
    from d2l_haystack.kb.workspace import Workspace

    ckpt = tmp_path / "ckpt"
    shutil.copytree(memory_checkpoints[0], ckpt)
    model, text = str(tiny_llama_dir), "The boat house opens at nine. The key is kept by the warden."
    ws = Workspace(tmp_path / "ws", device="cpu", model=model, checkpoint=str(ckpt), chunk_tokens=64)
    ws.index_text(text, "note:boats", route="d2l")
    old = ws.adapters.info("note:boats")["checkpoint_id"]  # type: ignore[index]
    assert old == checkpoint_id_of(model, str(ckpt)) == ws.components.loaded_checkpoint_id()
    shutil.copy(memory_checkpoints[1] / MEMORY_FILE, ckpt / MEMORY_FILE)  # the upgrade
    assert checkpoint_id_of(model, str(ckpt)) not in (old, None)
    assert checkpoint_id_of(model, str(ckpt), reading_memory=False) == old
    assert ws.index_text(text, "note:boats").action == "unchanged"  # the running engine is the old one
    ws.close()
    engine_module._ENGINES.clear()  # a new process
    try:
        again = Workspace(tmp_path / "ws", device="cpu")
        assert again.index_text(text, "note:boats").action != "unchanged"
        entry = again.adapters.info("note:boats")
        assert entry is not None and entry["checkpoint_id"] == checkpoint_id_of(model, str(ckpt))
        assert again.adapters.get("note:boats").memory_rows > 0  # type: ignore[union-attr]
        assert again.index_text(text, "note:boats").action == "unchanged"
        again.close()
    finally:
        engine_module._ENGINES.clear()
    assert checkpoint_id_of(model, None) is None


def test_row_use_spends_the_row_that_gave_each_token_and_no_other() -> None:
    from d2l_haystack.core.lora import RowUse

    emb = torch.eye(5, 4)  # token t's output embedding: unit vector t (token 4: zero, nothing pushes it)
    values = torch.stack([emb[2], emb[2], emb[3]])  # rows 0 and 1 give token 2, row 2 gives token 3
    use = RowUse(emb)
    prompt = torch.tensor([[[0.1, 0.2, 0.3], [0.9, 0.5, 0.8]]])  # (sequence, positions, rows)
    torch.testing.assert_close(use(prompt, values, torch.tensor([[7, 8]])), prompt)  # a prompt spends nothing
    step = torch.tensor([[[0.7, 0.6, 0.4]]])
    # token 2 was chosen after the prompt's last position: row 0 (0.9) pushed it hardest, row 2 not at all
    torch.testing.assert_close(use(step, values, torch.tensor([[2]])), torch.tensor([[[0.0, 0.6, 0.4]]]))
    # token 2 again: row 0 is spent, so row 1 gave it; the same token at another position comes back once
    torch.testing.assert_close(use(step, values, torch.tensor([[2]])), torch.tensor([[[0.0, 0.0, 0.4]]]))
    torch.testing.assert_close(use(step, values, torch.tensor([[4]])), torch.tensor([[[0.0, 0.0, 0.4]]]))
    # token 3 after row 2 fired 0.4 (the step before): row 2 is spent too
    torch.testing.assert_close(use(step, values, torch.tensor([[3]])), torch.tensor([[[0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(use(prompt[0], values, torch.tensor([[7, 8]])), prompt[0])  # a new answer: all back
    # a row that fired negatively did not give the token: nothing is spent
    use(-prompt, values, torch.tensor([[7, 8]]))
    torch.testing.assert_close(use(step, values, torch.tensor([[3]])), step)


def test_row_use_once_answers_as_full_passes_with_the_spent_rows_removed(
        tmp_path: Path, tiny_llama_dir: Path, memory_checkpoints: tuple[Path, Path], memory_engine: D2LEngine,
        long_text, monkeypatch) -> None:
    """A memory with ``row_use="once"`` generates (key-value cache, one step at a time) what full passes
    give when, after each token, the row that pushed hardest towards it is removed."""
    import shutil

    from d2l_haystack.core.engine import _CallbackStreamer

    folder = tmp_path / "once"
    shutil.copytree(memory_checkpoints[1], folder)
    memory = ReadingMemory.load(folder)
    assert memory is not None and memory.row_use == DEFAULT_ROW_USE  # a new memory's
    memory.row_use = "once"
    memory.save(folder)
    engine = D2LEngine(str(tiny_llama_dir), checkpoint=str(folder), device="cpu", chunk_tokens=64)
    assert engine.memory is not None and engine.describe()["memory_row_use"] == "once"
    adapter = engine.internalize(long_text(120))
    factors = engine._compose([adapter], None)
    assert factors is not None
    a, b = factors[adapter.memory_key]
    emb = engine.model.get_output_embeddings().weight.detach()
    changed = 0
    assert memory_engine.memory is not None
    monkeypatch.setattr(memory_engine.memory, "row_use", "all")  # the comparison: every row at every step
    for question in ("What is the third fact?", "What is the access code?", "Who wrote the report?"):
        ids = engine.prompt_ids(question)
        got = engine._run_generate(ids, factors, _CallbackStreamer(engine.tokenizer, None, 0.0), 8)
        again = memory_engine._run_generate(ids, factors, _CallbackStreamer(engine.tokenizer, None, 0.0), 8)
        changed += got != again  # the engine with every row at every step
        spent: list[int] = []
        expected: list[int] = []
        for _ in range(8):
            a_now = a.clone()
            a_now[spent] = 0
            with torch.no_grad(), engine.hooks.apply({**factors, adapter.memory_key: (a_now, b)}), \
                    engine.hooks.capture() as record:
                logits = engine.model(input_ids=torch.tensor([ids + expected])).logits[0, -1]
            token = int(logits.argmax())
            expected.append(token)
            if token in engine.format.stop_ids:
                break
            push = (record["down_proj"][3][-1] @ a_now.T) * (emb[token] @ b.T)
            if float(push.max()) > 0:
                spent.append(int(push.argmax()))
        assert got == expected
    assert changed  # spending rows changed at least one answer (else the test shows nothing)
    use = engine._row_use(factors)
    assert use is not None and not use.carry
    engine.memory.row_use = "all"
    assert engine._row_use(factors) is None  # every row fires: nothing to spend
    engine.memory.row_use = "next"
    use = engine._row_use(factors)
    assert use is not None and use.carry and use.ends is None
    engine.memory.row_use = "value"  # next's carry, stopped where the value ends
    use = engine._row_use(factors)
    assert use is not None and use.carry and use.ends is not None
    assert engine._new_row_use(follow=True).ends is use.ends  # the follow stops too; the classes made once
    assert use.firm == 1.0
    engine.memory.firm_carry = 1.5  # the memory's firming reaches the carry (value only: it needs the ends)
    assert engine._row_use(factors).firm == 1.5 and engine._new_row_use(follow=True).firm == 1.5  # type: ignore[union-attr]
    engine.memory.row_use = "next"
    assert engine._row_use(factors).firm == 1.0  # type: ignore[union-attr]
    engine.memory.row_use, engine.memory.firm_carry = "value", 1.0
    ids = engine.prompt_ids("What is the access code?")
    assert engine._run_generate(ids, factors, _CallbackStreamer(engine.tokenizer, None, 0.0), 8)
    assert engine._row_use({m: f for m, f in factors.items() if "@" not in m}) is None  # no rows: nothing to spend


def test_row_use_next_carries_the_spent_rows_firing_to_the_following_position() -> None:
    from d2l_haystack.core.lora import RowUse

    emb = torch.eye(5, 4)
    values = torch.stack([emb[1], emb[2], emb[3]])  # the document's positions 0, 1, 2 give tokens 1, 2, 3
    use = RowUse(emb, carry=True)
    use(torch.tensor([[[0.0, 0.0, 0.0], [0.8, 0.1, 0.3]]]), values, torch.tensor([[7, 8]]))
    # token 1 came from row 0 (0.8): row 0 is spent and row 1 fires with at least 0.8
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.1, 0.3]]]), values, torch.tensor([[1]])),
                               torch.tensor([[[0.0, 0.8, 0.3]]]))
    # token 2 from row 1 (0.8): row 2 goes on with 0.8 although it fires 0.3 on its own; the last row carries nothing
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.9, 0.3]]]), values, torch.tensor([[2]])),
                               torch.tensor([[[0.0, 0.0, 0.8]]]))
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.9, 0.3]]]), values, torch.tensor([[3]])),
                               torch.tensor([[[0.0, 0.0, 0.0]]]))
    # a next row that does not fire on its own is not lifted: the giver may sit at another position
    use = RowUse(emb, carry=True)
    use(torch.tensor([[[0.8, 0.1, 0.3]]]), values, torch.tensor([[7]]))
    torch.testing.assert_close(use(torch.tensor([[[0.5, -0.2, 0.3]]]), values, torch.tensor([[1]])),
                               torch.tensor([[[0.0, -0.2, 0.3]]]))
    with pytest.raises(ValueError, match="row_use 'twice' is not one of all, once, next"):
        ReadingMemory(8, 4, rank=2, layer=0, row_use="twice")


class _Pieces:
    """A tokenizer of a few pieces (``batch_decode`` of single ids)."""

    pieces = ["1", "9", ",", " Amara", " received", "\n", " Elm", ".", "6", " weeks", "ara", " "]

    def __len__(self) -> int:
        return len(self.pieces)

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        return ["".join(self.pieces[i] for i in one) for one in ids]


def test_value_ends_stop_before_lower_case_words_line_breaks_and_words_after_a_clause() -> None:
    from d2l_haystack.core.lora import ValueEnds

    emb = torch.eye(14, 16)  # two ids past the tokenizer's pieces (padded vocabularies): never a stop
    ends = ValueEnds(_Pieces(), emb)
    ids = {p: i for i, p in enumerate(_Pieces.pieces)}

    def stops(given: str, following: str) -> bool:
        return bool(ends.stops(torch.tensor([ids[given]]), torch.tensor([ids[following]]))[0])

    assert not stops("1", "9") and not stops("9", ",") and not stops("9", " Elm") and not stops(".", "6")
    assert not stops(" Amara", "ara") and not stops("6", " weeks")  # inside a word; a number's unit
    assert stops(" Amara", " received") and stops("ara", " weeks")  # a lower-case word ends a value
    assert stops(",", " Amara") and stops(".", " Elm")  # a word after a clause's signs
    assert stops("9", "\n")  # a line break
    assert not stops("9", " ") and not stops(" ", "6")  # "059 790": a lone space before a number's digits
    assert stops(",", " ")  # after a clause's signs
    assert not ends.stops(torch.tensor([12]), torch.tensor([13])).any()
    values = torch.stack([emb[3] * 2.0, emb[8] * 0.5, emb[0]])
    values[:, 0] += 0.1  # scaled and not quite a token's direction: the nearest in angle
    assert ends.next_tokens(values, emb).tolist() == [3, 8, 0]


def test_row_use_value_stops_the_carry_where_the_copied_value_ends() -> None:
    """``ends``: the carry of ``next`` goes on inside "19," and stops before the word after the comma."""
    from d2l_haystack.core.lora import RowUse, ValueEnds

    emb = torch.eye(12, 16)
    values = torch.stack([emb[1], emb[2], emb[3], emb[4]])  # the document "1" | "9" "," " Amara" " received"
    use = RowUse(emb, carry=True, ends=ValueEnds(_Pieces(), emb))
    use(torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.8, 0.1, 0.3, 0.2]]]), values, torch.tensor([[7, 0]]))
    # "9" from row 0: row 1 (",") goes on with 0.8
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.1, 0.3, 0.2]]]), values, torch.tensor([[1]])),
                               torch.tensor([[[0.0, 0.8, 0.3, 0.2]]]))
    # "," from row 1: row 2 would give " Amara", a word after a comma: not lifted (0.3 on its own)
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.9, 0.3, 0.2]]]), values, torch.tensor([[2]])),
                               torch.tensor([[[0.0, 0.0, 0.3, 0.2]]]))
    plain = RowUse(emb, carry=True)  # without ends the comma carries on into " Amara"
    plain(torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.8, 0.1, 0.3, 0.2]]]), values, torch.tensor([[7, 0]]))
    plain(torch.tensor([[[0.5, 0.1, 0.3, 0.2]]]), values, torch.tensor([[1]]))
    torch.testing.assert_close(plain(torch.tensor([[[0.5, 0.9, 0.3, 0.2]]]), values, torch.tensor([[2]])),
                               torch.tensor([[[0.0, 0.0, 0.8, 0.2]]]))


def test_a_firm_carry_grows_inside_a_number_and_starts_again_at_a_new_word(tmp_path: Path) -> None:
    """``firm``: inside "19 6" each carried step fires twice as strongly as the one before (through the
    lone space between the digits); the unit " weeks" is carried from the spent row's own firing."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from d2l_haystack.core.lora import RowUse, ValueEnds

    emb = torch.eye(12, 16)
    ids = {p: i for i, p in enumerate(_Pieces.pieces)}
    values = torch.stack([emb[ids[p]] for p in ("1", "9", " ", "6", " weeks")])  # the document "19 6 weeks"
    use = RowUse(emb, carry=True, ends=ValueEnds(_Pieces(), emb), firm=2.0)
    use(torch.tensor([[[0.0] * 5, [0.8, 0.1, 0.1, 0.1, 0.1]]]), values, torch.tensor([[7, 0]]))
    step = torch.tensor([[[0.5, 0.1, 0.1, 0.1, 0.1]]])
    expected = [("1", [0.0, 1.6, 0.1, 0.1, 0.1]), ("9", [0.0, 0.0, 3.2, 0.1, 0.1]),
                (" ", [0.0, 0.0, 0.0, 6.4, 0.1]), ("6", [0.0, 0.0, 0.0, 0.0, 0.8])]
    for token, fired in expected:
        torch.testing.assert_close(use(step, values, torch.tensor([[ids[token]]])), torch.tensor([[fired]]))
    plain = RowUse(emb, carry=True, ends=ValueEnds(_Pieces(), emb))  # firm 1: every step carries 0.8
    plain(torch.tensor([[[0.0] * 5, [0.8, 0.1, 0.1, 0.1, 0.1]]]), values, torch.tensor([[7, 0]]))
    torch.testing.assert_close(plain(step, values, torch.tensor([[ids["1"]]])),
                               torch.tensor([[[0.0, 0.8, 0.1, 0.1, 0.1]]]))
    # the memory's header carries it; a file without it has none, as measured
    memory = _random_memory()
    assert memory.firm_carry == DEFAULT_FIRM_CARRY
    memory.save(tmp_path / "none")  # none: no header, the file (and its id) as before the option
    digest = memory_digest(tmp_path / "none")
    with safe_open(str(tmp_path / "none" / MEMORY_FILE), framework="pt") as fh:
        assert "firm_carry" not in (fh.metadata() or {})
    memory.firm_carry = 2.5
    memory.save(tmp_path / "firm")
    loaded = ReadingMemory.load(tmp_path / "firm")
    assert loaded is not None and loaded.firm_carry == 2.5
    assert memory_digest(tmp_path / "firm") != digest
    with safe_open(str(tmp_path / "firm" / MEMORY_FILE), framework="pt") as fh:
        meta = {k: v for k, v in (fh.metadata() or {}).items() if k != "firm_carry"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(tmp_path / "firm" / MEMORY_FILE), metadata=meta)
    old = ReadingMemory.load(tmp_path / "firm")
    assert old is not None and old.firm_carry == UNNAMED_FIRM_CARRY == 1.0
    with pytest.raises(ValueError, match="firm_carry 0.5 is not a factor from 1 to 10"):
        ReadingMemory(8, 4, rank=2, layer=0, firm_carry=0.5)


def test_row_use_follow_fires_only_the_document_position_after_a_copied_token() -> None:
    """Where the memory yields, the adapters answer alone, but after a token that a row gives (the
    document has it), that row's next position fires: nothing else does."""
    from d2l_haystack.core.lora import RowUse

    emb = torch.eye(5, 4)
    values = torch.stack([emb[1], emb[2], emb[3]])  # the document's positions 0, 1, 2 give tokens 1, 2, 3
    use = RowUse(emb, follow=True)
    assert use.carry
    prompt = torch.tensor([[[0.2, 0.1, 0.3], [0.8, 0.1, 0.3]]])
    torch.testing.assert_close(use(prompt, values, torch.tensor([[7, 8]])), torch.zeros(1, 2, 3))  # silent
    # token 1 (the adapters' choice) is row 0's value, which fired 0.8: row 1 goes on with 0.8, alone
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.1, 0.3]]]), values, torch.tensor([[1]])),
                               torch.tensor([[[0.0, 0.8, 0.0]]]))
    # token 2 from row 1: row 2 goes on; then token 3 from row 2, and the last row carries nothing
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.9, 0.3]]]), values, torch.tensor([[2]])),
                               torch.tensor([[[0.0, 0.0, 0.8]]]))
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.9, 0.3]]]), values, torch.tensor([[3]])),
                               torch.zeros(1, 1, 3))
    # a token no row gave (4) carries nothing; nor does a next row that does not fire on its own
    use(prompt, values, torch.tensor([[7, 8]]))
    torch.testing.assert_close(use(torch.tensor([[[0.5, 0.4, 0.3]]]), values, torch.tensor([[4]])),
                               torch.zeros(1, 1, 3))
    use(prompt, values, torch.tensor([[7, 8]]))
    torch.testing.assert_close(use(torch.tensor([[[0.5, -0.2, 0.3]]]), values, torch.tensor([[1]])),
                               torch.zeros(1, 1, 3))
    # per sequence of a batch: the first carries (row_use next), the second follows
    mixed = RowUse(emb, follow=torch.tensor([False, True]))
    assert mixed.carry
    both = torch.cat([prompt, prompt])
    torch.testing.assert_close(mixed(both, values, torch.tensor([[7, 8], [7, 8]])),
                               torch.cat([prompt, torch.zeros(1, 2, 3)]))
    step = torch.tensor([[[0.5, 0.1, 0.3]], [[0.5, 0.1, 0.3]]])
    torch.testing.assert_close(mixed(step, values, torch.tensor([[1], [1]])),
                               torch.tensor([[[0.0, 0.8, 0.3]], [[0.0, 0.8, 0.0]]]))


def test_a_long_documents_rows_are_made_once_for_repeated_questions(memory_engine: D2LEngine, long_text,
                                                                    monkeypatch) -> None:
    """The rows and sentence keys made for one question's chunks are kept (:attr:`D2LEngine.made_rows`):
    asked again, the answer is the same and no pass makes them again."""
    memory = memory_engine.memory
    assert memory is not None
    text = long_text(120)
    chunks = memory_engine.chunk_ids(text)
    monkeypatch.setattr(memory, "max_tokens", sum(map(len, chunks)) - 1)
    monkeypatch.setattr(memory, "long_documents", "follow")
    monkeypatch.setattr(memory, "max_rows", 20)  # the chosen chunks hold more: their sentences are ranked
    long = memory_engine.internalize(text, progress=False)
    memory_engine.made_rows.clear()
    question = "What is the third fact?"
    first = memory_engine.generate(question, long, max_new_tokens=4, max_chunks=2, gate=False)
    assert first.meta["memory_rows_made"] > 0 and memory_engine.made_rows.nbytes > 0
    made = len(memory_engine.made_rows)

    def no_pass(*args, **kwargs):
        raise AssertionError("rows made again")

    monkeypatch.setattr(memory_engine, "_memory_rows", no_pass)
    monkeypatch.setattr(memory_engine, "_memory_segments", no_pass)
    again = memory_engine.generate(question, long, max_new_tokens=4, max_chunks=2, gate=False)
    assert (again.text, again.meta) == (first.text, first.meta) and len(memory_engine.made_rows) == made
    monkeypatch.setattr(memory_engine.made_rows, "max_bytes", 0)
    memory_engine.made_rows.clear()  # nothing kept: the next question makes its rows again
    with pytest.raises(AssertionError, match="rows made again"):
        memory_engine.generate(question, long, max_new_tokens=4, max_chunks=2, gate=False)
