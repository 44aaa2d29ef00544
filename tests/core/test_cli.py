"""The core sub-commands of ``d2l``, run in-process on the tiny model with an untrained hypernetwork."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from d2l_haystack.cli import main
from d2l_haystack.core import Adapter
from d2l_haystack.core.adapter import ADAPTER_FILE


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path) -> list[str]:
    """Engine options selecting the tiny model and an untrained hypernetwork."""
    return ["--model", str(tiny_llama_dir), "--checkpoint", "none", "--device", "cpu"]


@pytest.fixture
def doc(tmp_path: Path, long_text) -> Path:
    path = tmp_path / "river.txt"
    path.write_text(long_text(200), encoding="utf-8")
    return path


def test_internalize_writes_an_adapter(tmp_path: Path, doc: Path, tiny: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adapters" / "river"
    assert main(["internalize", str(doc), "-o", str(out), *tiny, "--chunk-tokens", "64"]) == 0
    captured = capsys.readouterr()
    assert str(out / ADAPTER_FILE) in captured.out
    notes = [line for line in captured.err.splitlines() if "untrained hypernetwork" in line]
    assert len(notes) == 1 and notes[0].startswith("d2l internalize: note:")
    adapter = Adapter.load(out)
    assert adapter.base_model == "tiny-llama"
    assert adapter.num_chunks == -(-adapter.num_tokens // 64) > 1
    assert adapter.meta["source"] == str(doc.resolve())
    assert f"{adapter.num_chunks} chunk(s)" in captured.out


def test_internalize_with_one_chunk_per_sentence(tmp_path: Path, doc: Path, tiny: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from d2l_haystack.core.textio import split_text_sentences

    out = tmp_path / "adapters" / "river"
    assert main(["internalize", str(doc), "-o", str(out), *tiny, "--chunking", "sentences"]) == 0
    sentences = split_text_sentences(doc.read_text(encoding="utf-8"))
    assert Adapter.load(out).num_chunks == len(sentences) > 1
    capsys.readouterr()
    assert main(["info", *tiny, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunking"] == "tokens"


def test_internalize_instructions_and_ask_with_them(tmp_path: Path, doc: Path, tiny: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("Answer in at most five words.\n", encoding="utf-8")
    out = tmp_path / "adapters" / "rules"
    argv = ["internalize", "--instructions", str(rules), "-o", str(out), *tiny, "--instructions-checkpoint", "none"]
    assert main(argv) == 0
    adapter = Adapter.load(out)
    assert adapter.kind == "instructions" and adapter.keys is None and adapter.meta["source"] == str(rules.resolve())
    capsys.readouterr()
    assert main(["ask", "What is the capital of France?", "--adapter", str(out), *tiny, "--max-new-tokens", "2"]) == 0
    assert main(["internalize", str(doc), "--instructions", str(rules), "-o", str(out), *tiny]) == 2
    assert "one of the two" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"\x00\x01binary\x00", "binary"),
    ("caf\xe9".encode("latin-1"), "not UTF-8"),
    (b"   \n  ", "empty"),
])
def test_bad_input_files_give_one_line_errors_and_keep_the_adapter(
        tmp_path: Path, doc: Path, tiny: list[str], capsys: pytest.CaptureFixture[str],
        content: bytes | None, message: str) -> None:
    out = tmp_path / "adapter"
    assert main(["internalize", str(doc), "-o", str(out), *tiny]) == 0
    before = (out / ADAPTER_FILE).read_bytes()
    bad = tmp_path / "bad.txt"
    if content is not None:
        bad.write_bytes(content)
    capsys.readouterr()
    assert main(["internalize", str(bad), "-o", str(out), *tiny]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d2l internalize: error:") and message in err and str(bad) in err
    assert len(err.splitlines()) == 1
    assert (out / ADAPTER_FILE).read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_FILE]


def test_ask_with_adapter_doc_or_neither(tmp_path: Path, doc: Path, tiny: list[str], tiny_engine,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    question = "How many barrels were noted?"
    expected = tiny_engine.generate(question, max_new_tokens=6).text  # zero adapter == plain model
    out = tmp_path / "adapter"
    assert main(["internalize", str(doc), "-o", str(out), *tiny]) == 0
    capsys.readouterr()

    assert main(["ask", question, "--adapter", str(out), *tiny, "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected
    assert "untrained hypernetwork" in captured.err

    assert main(["ask", question, "--doc", str(doc), *tiny, "--max-new-tokens", "6", "--no-stream"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected
    assert "untrained hypernetwork" in captured.err

    assert main(["-v", "ask", question, *tiny, "--max-new-tokens", "6"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == expected
    assert "untrained" not in captured.err and "tokens in" in captured.err


def test_ask_with_doc_does_not_put_the_document_in_the_prompt(doc: Path, tiny: list[str], tiny_engine,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from d2l_haystack.core.engine import D2LEngine

    calls: list[dict] = []
    original = D2LEngine.generate

    def spy(self, question, adapters=None, **kwargs):
        calls.append({"question": question, "adapters": adapters, **kwargs})
        return original(self, question, adapters, **kwargs)

    monkeypatch.setattr(D2LEngine, "generate", spy)
    assert main(["ask", "Which entry?", "--doc", str(doc), *tiny, "--max-new-tokens", "3"]) == 0
    (call,) = calls
    assert call["question"] == "Which entry?"
    assert call.get("context") is None
    assert isinstance(call["adapters"], Adapter) and call["adapters"].num_tokens > 100
    assert call["max_chunks"] is None  # the engine's default
    assert main(["ask", "Which entry?", "--doc", str(doc), *tiny, "--max-new-tokens", "3", "--max-chunks", "0"]) == 0
    assert calls[-1]["max_chunks"] == 0


def test_ask_rejects_a_negative_max_chunks(doc: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "Q?", "--doc", str(doc), *tiny, "--max-chunks", "-1"]) == 2
    assert "--max-chunks must be >= 0" in capsys.readouterr().err


def test_ask_rejects_both_sources(doc: Path, tiny: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ask", "Q?", "--doc", str(doc), "--adapter", "x", *tiny])
    assert exc.value.code == 2


def test_ask_with_adapter_of_a_local_model_needs_model(tmp_path: Path, doc: Path, tiny: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adapter"
    assert main(["internalize", str(doc), "-o", str(out), *tiny]) == 0
    capsys.readouterr()
    assert main(["ask", "Q?", "--adapter", str(out), "--checkpoint", "none"]) == 2
    assert "pass --model" in capsys.readouterr().err


def test_damaged_adapter_is_a_one_line_error(tmp_path: Path, tiny: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / ADAPTER_FILE).write_bytes(b"junk")
    assert main(["ask", "Q?", "--adapter", str(tmp_path / "adapter"), *tiny]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d2l ask: error:") and str(tmp_path / "adapter" / ADAPTER_FILE) in err
    assert main(["export-peft", str(tmp_path / "nothing"), str(tmp_path / "peft")]) == 2
    assert "no adapter at" in capsys.readouterr().err


def test_export_peft(tmp_path: Path, doc: Path, tiny: list[str], tiny_llama_dir: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adapter"
    assert main(["internalize", str(doc), "-o", str(out), *tiny]) == 0
    peft_dir = tmp_path / "peft"
    assert main(["export-peft", str(out), str(peft_dir), "--base-model", str(tiny_llama_dir)]) == 0
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    adapter = Adapter.load(out)
    assert config["r"] == adapter.total_rank and config["target_modules"] == ["down_proj"]
    assert config["base_model_name_or_path"] == str(tiny_llama_dir)
    from safetensors.torch import load_file

    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    assert len(tensors) == 2 * adapter.num_layers
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (adapter.total_rank, 128)
    capsys.readouterr()
    # refuses to write into a non-empty folder unless forced
    assert main(["export-peft", str(out), str(peft_dir)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export-peft", str(out), str(peft_dir), "--force"]) == 0
    assert torch.equal(load_file(str(peft_dir / "adapter_model.safetensors"))[
        "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"],
        tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"])


def test_info(tiny: list[str], tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", *tiny, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "tiny-llama" and info["model_folder"] == str(tiny_llama_dir)
    assert info["trained"] is False and info["checkpoint"] == "untrained"
    assert info["hypernet_parameters"] > 0
    assert info["key_model"] == "all-minilm-l6-v2" and info["min_relevance"] == 0.35 and info["max_chunks"] == 8
    from d2l_haystack.core.models import cache_dir

    assert info["cache_folder"] == str(cache_dir())
    assert main(["info", *tiny]) == 0
    text = capsys.readouterr().out
    assert "trained:" in text and "no (" in text and str(tiny_llama_dir) in text


def test_missing_checkpoint_folder_is_a_one_line_error(tmp_path: Path, tiny_llama_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(tiny_llama_dir), "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a hypernetwork checkpoint" in err and len(err.splitlines()) == 1


def test_unknown_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", "no such model", "--checkpoint", "none"]) == 2
    assert "unknown model 'no such model'" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "internalize" in capsys.readouterr().out


def test_cli_chunking_choices_are_the_engines():
    from d2l_haystack.cli.options import CHUNKING_CHOICES
    from d2l_haystack.core.textio import CHUNKINGS, DEFAULT_CHUNKING

    assert CHUNKING_CHOICES == CHUNKINGS
    assert CHUNKING_CHOICES[0] == DEFAULT_CHUNKING  # the CLI's default is the engine's
    from d2l_haystack.cli.options import ROW_USE_CHOICES
    from d2l_haystack.core.memory import ROW_USES

    assert ROW_USE_CHOICES == ROW_USES
    from d2l_haystack.cli.options import LONG_DOCUMENTS_CHOICES
    from d2l_haystack.core.memory import LONG_DOCUMENTS

    assert LONG_DOCUMENTS_CHOICES == LONG_DOCUMENTS
    from d2l_haystack.cli.options import PHRASINGS_CHOICES
    from d2l_haystack.training.realistic import PHRASINGS

    assert PHRASINGS_CHOICES == PHRASINGS
