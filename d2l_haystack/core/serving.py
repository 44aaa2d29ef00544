"""Adapters as a multi-LoRA server loads them as they are (vLLM's ``--enable-lora``).

vLLM serves LoRA ranks in :data:`~d2l_haystack.core.adapter.VLLM_RANKS` (``--max-lora-rank``) and
scales by ``lora_alpha / r``. A D2L adapter has rank ``8 x (chunks + 1)``, so
:func:`export_for_serving` writes:

* a document whose adapter fits (rank <= ``max_rank``, 512 by default): one PEFT folder whose
  rank is padded with zero components to the next servable rank, with ``lora_alpha`` equal to
  that rank (scaling exactly 1: the update is the same, see :meth:`Adapter.to_peft`);
* a longer document: one padded PEFT folder per group of consecutive chunks (each with the bias
  block), plus the chunk keys, so a router picks the group a question is about
  (:func:`pick_group`).

Every export writes ``d2l_serving.json``: the LoRA names (what goes into an OpenAI request's
``model`` field), their folders, ranks and chunks. Serve them with, for example::

    vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --max-lora-rank 64 --max-loras 8 \\
        --lora-modules manual=exports/manual

Usage::

    from d2l_haystack.core import Adapter
    from d2l_haystack.core.serving import export_for_serving

    manifest = export_for_serving(Adapter.load("adapters/manual"), "exports/manual", name="manual")
    [g["name"] for g in manifest["groups"]], manifest["max_rank"]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .adapter import VLLM_RANKS, Adapter, serving_rank
from .errors import AdapterError

MANIFEST = "d2l_serving.json"
KEYS_FILE = "d2l_keys.safetensors"


def lora_name(text: str) -> str:
    """A LoRA name safe in a URL, a request's ``model`` field and vLLM's ``--lora-modules``.

    >>> lora_name("/srv/docs/Kettle Manual.md")
    'srv-docs-Kettle-Manual.md'
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return name or "adapter"


def export_for_serving(adapter: Adapter, folder: str | Path, *, name: str, base_model: str | None = None,
                       max_rank: int = max(VLLM_RANKS), ranks: tuple[int, ...] = VLLM_RANKS,
                       memory: bool = True) -> dict[str, Any]:
    """Write ``adapter`` as servable PEFT folders under ``folder`` (see the module docstring).

    :param name: the LoRA name (groups are ``<name>-g000``, ``<name>-g001``, ...).
    :param max_rank: the server's ``--max-lora-rank``.
    :param memory: export the reading-memory rows (applied to every question by the server, see
        :meth:`Adapter.to_peft`) where a LoRA can hold them (:meth:`Adapter.peft_memory_note`: rows
        matched on another layer are left out, and the manifest's ``memory_left_out`` says why);
        ``False``: the hypernetwork's update alone, at a lower rank.
    :returns: the manifest written to ``folder/d2l_serving.json``.
    :raises AdapterError: ``max_rank`` is not a servable rank, or holds not even one chunk.
    """
    if max_rank not in ranks:
        raise AdapterError(f"max rank {max_rank} is not one of the servable ranks {list(ranks)}")
    adapter, left_out = adapter.for_peft(memory)
    name = lora_name(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = base_model or adapter.base_model
    if adapter.serving_rank_needed <= max_rank:
        groups = [list(range(adapter.num_chunks))]
    else:
        groups = adapter.chunk_groups(max_rank)
    entries: list[dict[str, Any]] = []
    for i, chunks in enumerate(groups):
        part = adapter if len(groups) == 1 else adapter.select_chunks(chunks)
        group_name = name if len(groups) == 1 else f"{name}-g{i:03d}"
        sub = folder if len(groups) == 1 else folder / group_name
        rank = serving_rank(part.serving_rank_needed, tuple(r for r in ranks if r <= max_rank))
        part.to_peft(sub, base_model_name_or_path=base, rank=rank)
        entries.append({"name": group_name, "path": "." if len(groups) == 1 else group_name, "chunks": chunks,
                        "rank": rank, "own_rank": part.serving_rank_needed})
    manifest: dict[str, Any] = {"format": "d2l-serving/1", "base_model": base, "source": adapter.content_hash,
                                "num_chunks": adapter.num_chunks, "max_rank": max(e["rank"] for e in entries),
                                "memory_rows": adapter.memory_rows,
                                **({"memory_left_out": left_out} if left_out else {}),
                                "key_model": adapter.key_model, "groups": entries}
    if len(groups) > 1 and adapter.keys is not None and adapter.key_chunks is not None:
        from safetensors.torch import save_file

        group_of = torch.tensor([g for g, chunks in enumerate(groups) for _ in chunks], dtype=torch.int32)
        save_file({"vectors": adapter.keys.to(torch.float16).contiguous(),
                   "groups": group_of[adapter.key_chunks.long()].contiguous()}, str(folder / KEYS_FILE))
        manifest["keys"] = KEYS_FILE
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def lora_modules(manifest: dict[str, Any], folder: str | Path) -> list[str]:
    """``NAME=PATH`` of every LoRA of an export written to ``folder`` (vLLM's ``--lora-modules``)."""
    return [f"{g['name']}={(Path(folder) / g['path']).resolve()}" for g in manifest["groups"]]


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``d2l_serving.json`` of an export, with its keys loaded (``vectors``, ``groups``) if any.

    :raises AdapterError: missing or damaged.
    """
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"no serving export at {folder} ({exc})") from None
    if manifest.get("keys"):
        from safetensors.torch import load_file

        keys = load_file(str(Path(folder) / manifest["keys"]))
        manifest["vectors"], manifest["key_groups"] = keys["vectors"].float(), keys["groups"].long()
    return manifest


def pick_group(manifest: dict[str, Any], query_embedding: list[float] | torch.Tensor | None) -> str:
    """The LoRA name of the group a question is about: the group of the chunk whose key is
    nearest the question (the first group when the export has one group or no keys)."""
    groups = manifest["groups"]
    if len(groups) == 1 or query_embedding is None or "vectors" not in manifest:
        return str(groups[0]["name"])
    query = torch.as_tensor(query_embedding, dtype=torch.float32)
    best = int((manifest["vectors"] @ query).argmax())
    return str(groups[int(manifest["key_groups"][best])]["name"])
