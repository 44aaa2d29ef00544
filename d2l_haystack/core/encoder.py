"""The context encoder: the frozen base model reading a document chunk.

``early_exit`` stops the forward pass after ``exit_layer`` decoder layers (by raising from a
forward hook, which works for any Hugging Face decoder without re-implementing its forward);
``per_layer`` runs the whole decoder and returns the input hidden state of every layer.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn


class _EarlyExit(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__("early exit")
        self.hidden = hidden


_STOP = threading.local()
"""Per thread: the decoder layer after which the running forward pass stops (``layer``), or none."""
_HOOK_ATTR = "_d2l_early_exit_hook"


def _exit_hook(module: nn.Module, inputs: Any, output: Any) -> None:
    if getattr(_STOP, "layer", None) is module:
        hidden = output[0] if isinstance(output, tuple) else output
        raise _EarlyExit(hidden)


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder (the model without its LM head) of a causal LM."""
    get_decoder = getattr(model, "get_decoder", None)  # transformers' PreTrainedModel has it
    return get_decoder() if callable(get_decoder) else getattr(model, "model", model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a causal LM (Llama, Qwen2, Mistral, Gemma...)."""
    layers = getattr(decoder_of(model), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers in {type(model).__name__}")
    return layers


def _stop_after(model: nn.Module, layer: int) -> nn.Module:
    """Decoder layer ``layer`` with the shared early-exit hook on it (registered once)."""
    target = decoder_layers(model)[layer]
    if getattr(target, _HOOK_ATTR, None) is None:
        setattr(target, _HOOK_ATTR, target.register_forward_hook(_exit_hook))
    return target


def run_until(model: nn.Module, layer: int, **inputs: Any) -> torch.Tensor:
    """Run ``model``'s decoder on ``inputs`` through decoder layer ``layer`` (0-based) and no
    further; returns that layer's output hidden states. Forward hooks inside (LoRA, capture) fire
    as in a full pass, up to that layer."""
    _STOP.layer = _stop_after(model, layer)
    try:
        decoder_of(model)(use_cache=False, **inputs)
    except _EarlyExit as stop:
        return stop.hidden
    finally:
        _STOP.layer = None
    raise RuntimeError("early exit hook did not fire")


class ContextEncoder:
    """Encodes padded batches of wrapped chunks into hypernetwork features (no gradient).

    The early exit is :func:`run_until`: one forward hook per decoder layer, registered by the
    first pass that stops there and shared by every later one (base models are shared by the
    process-level model cache, so engines created one after another do not pile hooks onto the
    same layer). It does nothing unless this thread's pass asked to stop after that layer.
    """

    def __init__(self, model: nn.Module, mode: str, exit_layer: int) -> None:
        self.model = model
        self.mode = mode
        self.exit_layer = exit_layer
        self._decoder = decoder_of(model)
        if mode == "early_exit":
            _stop_after(model, exit_layer - 1)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """:returns: ``(batch, tokens, hidden)`` (early exit) or ``(batch, layers, tokens, hidden)``."""
        if self.mode == "early_exit":
            return run_until(self.model, self.exit_layer - 1, input_ids=input_ids, attention_mask=attention_mask)
        out = self._decoder(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=True, use_cache=False)
        return torch.stack(out.hidden_states[:-1], dim=1)


def pad_batch(sequences: list[list[int]], pad_id: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(ids, mask)`` tensors."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def left_pad_batch(sequences: list[list[int]], pad_id: int,
                   device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(ids, mask)`` (for batched generation: every sequence ends
    at the last column, so generated tokens start at column ``ids.shape[1]``)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)
