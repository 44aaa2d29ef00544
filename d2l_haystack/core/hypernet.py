"""The Doc-to-LoRA hypernetwork: document activations in, LoRA factors out.

Architecture (after Sakana AI's D2L, sized for small CPU models; every width is configurable):

* **Context encoder**: the frozen base model itself (see :mod:`d2l_haystack.core.encoder`),
  either ``early_exit`` (hidden state after the first ``exit_layer`` layers, one map decodes every
  layer's LoRA) or ``per_layer`` (the input hidden state of layer ``l`` feeds layer ``l``'s LoRA).
* **Aggregator**: a Perceiver-style resampler. An input projection (RMSNorm, SwiGLU MLP
  ``D -> proj_hidden -> latent_dim``, RMSNorm); ``num_blocks`` pre-norm cross-attention blocks in
  which learned latent queries attend to the document tokens only (keys and values are the
  document tokens, no latent self-attention), each followed by an MLP. The last block is the
  decoder: its queries are one per (layer, module, rank) output.
* **Head**: a per-layer residual MLP, L2 normalisation of each latent, then a per-layer linear
  map to ``d_in + d_out``: each latent becomes ONE rank-1 component, a row of ``A`` (``d_in``)
  and a row of ``B`` (``d_out``).
* Learned per-layer, per-rank scalars multiply ``A`` (init 1) and ``B`` (init 0), so an untrained
  hypernetwork produces an exactly-zero adapter.
* A learned, document-independent **bias LoRA** block (``A`` small random, ``B`` zero).

LoRA convention (shared by :mod:`~d2l_haystack.core.lora`, :mod:`~d2l_haystack.core.adapter`
and the PEFT export): for a target linear layer ``y = W x``, ``A`` has shape ``(R, d_in)``,
``B`` has shape ``(R, d_out)`` (one row per rank component) and the update is
``y = W x + alpha * (x A^T) B`` with ``alpha = 2 * r ** 1.5`` applied directly (not
``alpha / r``). PEFT's ``lora_B.weight`` is ``alpha * B^T``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .fileio import temp_beside

CHECKPOINT_WEIGHTS = "hypernet.safetensors"
CHECKPOINT_CONFIG = "config.json"


@dataclass
class HypernetConfig:
    """Shapes and widths of a hypernetwork; read from the base model by :func:`config_for_model`."""

    base_model: str
    num_layers: int
    hidden_size: int
    target_modules: list[str]
    module_in: list[int]
    module_out: list[int]
    module_paths: list[str]
    rank: int = 8
    latent_dim: int = 128
    proj_hidden: int = 1024
    num_blocks: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    encoder_mode: str = "early_exit"
    exit_layer: int = 7
    bias_rank: int = 8
    alpha: float = 0.0
    chunk_tokens: int = 512
    copy_path: bool = False
    """Give every rank component a second, direct way to write its output row ``B``: a pointer
    attention from the component's latent over the document's tokens picks tokens, and their
    (normalised) encoder states, through one linear map shared by all layers, are added to ``B``
    under a learned per-component gate that starts at 0 (so an older checkpoint extended with it
    answers exactly as before). A latent of ``latent_dim`` widths otherwise writes a value only
    through a few shared directions (``docs/training.md``, "Where the values get lost")."""
    copy_sharpness: float = 1.0
    """Multiplier of the copy pointer's scores. At 1 a fresh pointer is nearly uniform (entropy 0.99 of
    the maximum on a 65-token document with the shipped network), so it reads the document's mean
    state; ``sqrt(latent_dim)`` removes the attention scaling and starts it sharp."""
    copy_centered: bool = False
    """Subtract the document's mean (normalised) state from what the pointer reads, so the copy path
    carries only what tells a token from the rest of its document (the mean state holds 0.7 of a
    state's norm) and a uniform pointer writes nothing."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.alpha:
            self.alpha = 2.0 * self.rank ** 1.5
        if self.encoder_mode not in ("early_exit", "per_layer"):
            raise ValueError(f"encoder_mode must be 'early_exit' or 'per_layer', got {self.encoder_mode!r}")
        if not 1 <= self.exit_layer <= self.num_layers:
            raise ValueError(f"exit_layer must be within 1..{self.num_layers}, got {self.exit_layer}")
        if self.copy_path and self.encoder_mode != "early_exit":
            raise ValueError("copy_path needs encoder_mode 'early_exit' (one set of token states to point at)")
        if self.copy_sharpness <= 0:
            raise ValueError(f"copy_sharpness must be > 0, got {self.copy_sharpness}")

    @property
    def num_modules(self) -> int:
        return len(self.target_modules)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HypernetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


_LAYER_RE = re.compile(r"^(.*\.layers)\.(\d+)\.(.+)$")


def find_target_modules(model: nn.Module, targets: list[str]) -> dict[tuple[int, str], tuple[str, nn.Linear]]:
    """Locate the target linear layers: ``{(layer, target): (full_name, module)}``."""
    found: dict[tuple[int, str], tuple[str, nn.Linear]] = {}
    for name, module in model.named_modules():
        m = _LAYER_RE.match(name)
        if not m or not isinstance(module, nn.Linear):
            continue
        leaf = m.group(3).split(".")[-1]
        if leaf in targets:
            found[(int(m.group(2)), leaf)] = (name, module)
    return found


def config_for_model(model: nn.Module, base_model: str, target_modules: list[str] | None = None,
                     **widths: Any) -> HypernetConfig:
    """Build a :class:`HypernetConfig` whose shapes are read from ``model``."""
    targets = list(target_modules or ["down_proj"])
    cfg: Any = getattr(model, "config")  # noqa: B009  (a transformers config, not a tensor or module)
    num_layers = int(cfg.num_hidden_layers)
    found = find_target_modules(model, targets)
    module_in, module_out, paths = [], [], []
    for t in targets:
        if (0, t) not in found:
            raise ValueError(f"base model '{base_model}' has no module named '{t}' in its layers")
        name, lin = found[(0, t)]
        module_in.append(lin.in_features)
        module_out.append(lin.out_features)
        paths.append(re.sub(r"\.layers\.0\.", ".layers.{layer}.", name, count=1))
    widths.setdefault("exit_layer", max(1, num_layers // 4))
    return HypernetConfig(base_model=base_model, num_layers=num_layers,
                          hidden_size=int(cfg.hidden_size), target_modules=targets,
                          module_in=module_in, module_out=module_out, module_paths=paths, **widths)


class _SwiGLU(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_in, hidden, bias=False)
        self.up = nn.Linear(d_in, hidden, bias=False)
        self.down = nn.Linear(hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries: latents; keys/values: document tokens) plus an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"latent_dim {dim} is not divisible by num_heads {heads}")
        self.heads = heads
        self.norm_q = nn.RMSNorm(dim)
        self.norm_kv = nn.RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.norm_mlp = nn.RMSNorm(dim)
        self.mlp = _SwiGLU(dim, dim * mlp_ratio, dim)

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, q_len, dim = latents.shape
        t_len = tokens.shape[1]
        h = self.heads
        q = self.q(self.norm_q(latents)).view(b, q_len, h, dim // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(tokens)).chunk(2, dim=-1)
        k = k.view(b, t_len, h, dim // h).transpose(1, 2)
        v = v.view(b, t_len, h, dim // h).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        latents = latents + self.o(out.transpose(1, 2).reshape(b, q_len, dim))
        return latents + self.mlp(self.norm_mlp(latents))


class Hypernetwork(nn.Module):
    """Maps encoder activations of one document chunk to LoRA factors for every target layer.

    Usage example::

        cfg = config_for_model(model, "smollm2-135m-instruct")
        hyper = Hypernetwork(cfg)
        factors = hyper(features, mask)   # {"down_proj": (A, B)}, A: (batch, L, r, d_in)
    """

    def __init__(self, config: HypernetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.in_norm = nn.RMSNorm(c.hidden_size)
        self.in_proj = _SwiGLU(c.hidden_size, c.proj_hidden, c.latent_dim)
        self.in_out_norm = nn.RMSNorm(c.latent_dim)
        per_layer_queries = c.num_modules * c.rank
        n_queries = per_layer_queries if c.encoder_mode == "per_layer" else c.num_layers * per_layer_queries
        self.latents = nn.Parameter(torch.randn(n_queries, c.latent_dim) * 0.02)
        if c.encoder_mode == "per_layer":
            self.layer_embed = nn.Parameter(torch.randn(c.num_layers, c.latent_dim) * 0.02)
        self.blocks = nn.ModuleList(
            _CrossAttentionBlock(c.latent_dim, c.num_heads, c.mlp_ratio) for _ in range(c.num_blocks)
        )
        L, d = c.num_layers, c.latent_dim
        bound = 1.0 / math.sqrt(d)
        self.head_mlp_in = nn.Parameter(torch.empty(L, d, d).uniform_(-bound, bound))
        self.head_mlp_out = nn.Parameter(torch.zeros(L, d, d))
        self.heads = nn.ParameterList(
            nn.Parameter(torch.empty(L, d, din + dout).uniform_(-bound, bound))
            for din, dout in zip(c.module_in, c.module_out)
        )
        self.scale_A = nn.Parameter(torch.ones(L, c.num_modules, c.rank))
        self.scale_B = nn.Parameter(torch.zeros(L, c.num_modules, c.rank))
        self.bias_A = nn.ParameterList(
            nn.Parameter(torch.randn(L, c.bias_rank, din) * (1.0 / math.sqrt(din)))
            for din in c.module_in
        )
        self.bias_B = nn.ParameterList(
            nn.Parameter(torch.zeros(L, c.bias_rank, dout)) for dout in c.module_out
        )
        if c.copy_path:
            self.copy_query = nn.Linear(d, d, bias=False)
            self.copy_key = nn.Linear(d, d, bias=False)
            self.copy_out = nn.ParameterList(  # identity where the widths allow: a token state as it is
                nn.Parameter(torch.eye(c.hidden_size, dout)) for dout in c.module_out
            )
            self.copy_gate = nn.Parameter(torch.zeros(L, c.num_modules, c.rank))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, features: torch.Tensor,
                mask: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Generate LoRA factors.

        :param features: ``(batch, tokens, hidden)`` in early-exit mode, or
            ``(batch, layers, tokens, hidden)`` in per-layer mode.
        :param mask: ``(batch, tokens)``, 1 for real tokens, 0 for padding.
        :returns: ``{module: (A, B)}`` with ``A: (batch, layers, rank, d_in)`` and
            ``B: (batch, layers, rank, d_out)``, scalars applied, bias block not included.
        """
        c = self.config
        x = self.in_out_norm(self.in_proj(self.in_norm(features)))
        if c.encoder_mode == "per_layer":
            if x.dim() != 4:
                raise ValueError("per_layer mode expects features of shape (batch, layers, tokens, hidden)")
            b, L, t, d = x.shape
            tokens = x.reshape(b * L, t, d)
            tmask = None if mask is None else mask.repeat_interleave(L, dim=0)
            queries = (self.latents[None, :, :] + self.layer_embed[:, None, :])  # (L, M*r, d)
            lat = queries[None].expand(b, -1, -1, -1).reshape(b * L, -1, d)
        else:
            if x.dim() != 3:
                raise ValueError("early_exit mode expects features of shape (batch, tokens, hidden)")
            b, t, d = x.shape
            tokens, tmask = x, mask
            lat = self.latents[None].expand(b, -1, -1)
        for block in self.blocks:
            lat = block(lat, tokens, tmask)
        lat = lat.reshape(b, c.num_layers, c.num_modules * c.rank, c.latent_dim)
        hidden = torch.einsum("blqd,lde->blqe", lat, self.head_mlp_in)
        lat = lat + torch.einsum("blqe,led->blqd", F.silu(hidden), self.head_mlp_out)
        copied = self._copied(lat, tokens, features, tmask) if c.copy_path else None
        lat = F.normalize(lat, dim=-1)
        lat = lat.view(b, c.num_layers, c.num_modules, c.rank, c.latent_dim)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m, name in enumerate(c.target_modules):
            proj = torch.einsum("blrd,lde->blre", lat[:, :, m], self.heads[m])
            din = c.module_in[m]
            a = proj[..., :din] * self.scale_A[None, :, m, :, None]
            bb = proj[..., din:] * self.scale_B[None, :, m, :, None]
            if copied is not None:
                direct = torch.einsum("blrh,he->blre", copied[:, :, m], self.copy_out[m])
                bb = bb + direct * self.copy_gate[None, :, m, :, None]
            out[name] = (a, bb)
        return out

    def _copied(self, lat: torch.Tensor, tokens: torch.Tensor, features: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """The copy path's pointer read: per rank component, an attention-weighted mean of the
        document's RMS-normalised encoder states, ``(batch, layers, modules, rank, hidden)``."""
        c = self.config
        b = lat.shape[0]
        q = self.copy_query(lat.reshape(b, -1, c.latent_dim))
        k = self.copy_key(tokens)
        scores = torch.einsum("bqd,btd->bqt", q, k) * (c.copy_sharpness / math.sqrt(c.latent_dim))
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :].to(torch.bool), float("-inf"))
        states = features * torch.rsqrt(features.pow(2).mean(-1, keepdim=True) + 1e-6)
        if c.copy_centered:
            if mask is None:
                states = states - states.mean(1, keepdim=True)
            else:
                w = mask.to(states.dtype)[..., None]
                states = states - (states * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
        read = torch.einsum("bqt,bth->bqh", scores.softmax(-1).to(states.dtype), states)
        return read.view(b, c.num_layers, c.num_modules, c.rank, c.hidden_size)

    def bias_block(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The document-independent bias LoRA: ``{module: (A (L, rb, d_in), B (L, rb, d_out))}``."""
        return {name: (self.bias_A[m], self.bias_B[m]) for m, name in enumerate(self.config.target_modules)}


NEUTRAL_EXTENSIONS = ("copy_path", "copy_sharpness", "copy_centered")
"""Config switches whose new parts start neutral (the copy pointer's settings change nothing while its
gates are 0): :func:`extended` adds them to a trained network."""


def extended(hypernet: Hypernetwork, **changes: Any) -> Hypernetwork:
    """A copy of ``hypernet`` with the parts of :data:`NEUTRAL_EXTENSIONS` switched on, its trained
    weights kept: it generates the same factors until the new parts are trained.

    Usage example::

        net, _ = load_checkpoint("d2l_haystack/checkpoints/smollm2-135m-instruct")
        net = extended(net, copy_path=True)   # a warm start for a run that trains the copy path

    :raises ValueError: a change that is not a neutral extension (it would change the outputs).
    """
    other = sorted(set(changes) - set(NEUTRAL_EXTENSIONS))
    if other:
        raise ValueError(f"cannot change {other} of a trained hypernetwork (only {list(NEUTRAL_EXTENSIONS)} "
                         f"can be added to one)")
    grown = Hypernetwork(dataclasses.replace(hypernet.config, **changes))
    missing, unexpected = grown.load_state_dict(hypernet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("copy_") for k in missing):  # pragma: no cover - a coding error
        raise RuntimeError(f"extension mismatch: missing {missing}, unexpected {unexpected}")
    return grown.to(next(hypernet.parameters()).device)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(hypernet: Hypernetwork, folder: str | Path, info: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float16) -> str:
    """Write ``hypernet.safetensors`` (``dtype``) and ``config.json`` atomically.

    :returns: the checkpoint id (first 12 hex digits of the weights' SHA-256).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in hypernet.state_dict().items()}
    fd, tmp = temp_beside(folder / "hypernet", prefix=".hypernet-")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, folder / CHECKPOINT_WEIGHTS)
    ckpt_id = file_sha256(folder / CHECKPOINT_WEIGHTS)[:12]
    payload = {"hypernet": hypernet.config.to_dict(), "checkpoint_id": ckpt_id, "info": info or {}}
    fd, tmp = temp_beside(folder / "config", prefix=".config-")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, folder / CHECKPOINT_CONFIG)
    return ckpt_id


def _checkpoint_id(payload: dict[str, Any], weights: Path) -> str:
    """A checkpoint's id: its config's ``checkpoint_id``, else the first 12 hex digits of the
    weights' SHA-256 (checkpoints saved before the config carried it)."""
    return str(payload["checkpoint_id"]) if "checkpoint_id" in payload else file_sha256(weights)[:12]


def read_checkpoint_id(folder: str | Path) -> str:
    """The id of the checkpoint in ``folder`` from its files alone (as :func:`load_checkpoint`
    gives it: the config's ``checkpoint_id``, else the weights' SHA-256).

    :raises CheckpointError: missing or damaged files.
    """
    folder = Path(folder)
    cfg_path, w_path = folder / CHECKPOINT_CONFIG, folder / CHECKPOINT_WEIGHTS
    try:
        return _checkpoint_id(json.loads(cfg_path.read_text()), w_path)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder} is not a readable hypernetwork checkpoint: {exc}") from exc


def load_checkpoint(folder: str | Path, expected_base_model: str | None = None,
                    map_location: str = "cpu") -> tuple[Hypernetwork, dict[str, Any]]:
    """Load a checkpoint folder; the weights come back as float32.

    :raises CheckpointError: missing or damaged files, or a checkpoint made for another base model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / CHECKPOINT_CONFIG, folder / CHECKPOINT_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{folder} is not a hypernetwork checkpoint "
                              f"(needs {CHECKPOINT_CONFIG} and {CHECKPOINT_WEIGHTS})")
    try:
        payload = json.loads(cfg_path.read_text())
        config = HypernetConfig.from_dict(payload["hypernet"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"damaged checkpoint config {cfg_path}: {exc}") from exc
    if expected_base_model is not None and config.base_model != expected_base_model:
        raise CheckpointError(
            f"checkpoint {folder} was trained for base model '{config.base_model}', "
            f"but the loaded base model is '{expected_base_model}'"
        )
    try:
        state = load_file(str(w_path), device=map_location)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"damaged checkpoint weights {w_path}: {exc}") from exc
    hypernet = Hypernetwork(config)
    try:
        hypernet.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {w_path} does not match its config: {str(exc).splitlines()[0]}") from exc
    payload["checkpoint_id"] = _checkpoint_id(payload, w_path)
    return hypernet.to(map_location), payload
