"""The :class:`Adapter` value: generated LoRA factors plus where they came from.

Rank layout: ``num_chunks * rank`` document components (chunk after chunk), then the
``bias_rank`` components of the hypernetwork's bias block. Tensors are stacked over layers,
``A: (L, R, d_in)``, ``B: (L, R, d_out)``; the update of a target layer is
``y = W x + scale * (x A^T) B`` (see :mod:`d2l_haystack.core.hypernet`).

Reading-memory rows (:mod:`d2l_haystack.core.memory`), when the checkpoint has a memory: one rank-1
component per document position on ONE layer (``memory_key``, e.g. ``"down_proj@29"``),
``A: (n, d_in)``, ``B: (n, d_out)`` with the update scale already folded into ``B``, and the chunk
each row belongs to, so that selecting chunks selects their rows.

Files: one ``adapter.safetensors`` (fp16 tensors ``<module>.A`` / ``<module>.B``, optional chunk
keys ``keys.vectors`` / ``keys.chunks``, optional memory rows as :func:`pack_memory_rows` stores
them plus ``memory.chunks``, metadata in the safetensors header), written
atomically. :meth:`Adapter.to_peft` writes a standard PEFT LoRA folder that ``peft.PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import AdapterError
from .fileio import tensor_digest, write_safetensors
from .lora import Factors, parse_row_key

ADAPTER_FILE = "adapter.safetensors"
FORMAT_VERSION = "1"
"""The header's ``d2l_format`` of files without reading-memory rows (readable by every version)."""
MEMORY_FORMAT_VERSION = "2"
"""The ``d2l_format`` of files with reading-memory rows as :func:`pack_memory_rows` stores them
(older versions, which stored ``memory.B`` whole, refuse them by this number, in one line)."""
MATCHED_MEMORY_FORMAT_VERSION = "3"
"""The ``d2l_format`` of files whose reading-memory rows fire from another layer's input
(:attr:`~d2l_haystack.core.memory.ReadingMemory.match_layer`): versions that would apply them as
rows of their own layer refuse them by this number, in one line."""
READ_FORMATS = (FORMAT_VERSION, MEMORY_FORMAT_VERSION, MATCHED_MEMORY_FORMAT_VERSION)


ADAPTER_KINDS = ("document", "instructions")
"""What an adapter holds: a document's content or a system prompt's instructions."""


def pack_memory_rows(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reading-memory rows as an adapter file stores them: ``A`` ``(n, d_in)`` in fp16
    (``memory.A``), ``B`` ``(n, d_out)`` once per distinct row (``memory.B_unique``, fp16) and each
    row's index into those (``memory.B_index``, int32).

    ``B_i`` depends only on the token at position ``i`` (:mod:`~d2l_haystack.core.memory`), so a
    document has as many distinct ``B`` rows as distinct tokens (a third to a half of its tokens in
    the state-of-the-union filler): 3.4-3.6 KB per row instead of 4.2 KB for documents of 1,000-4,000
    tokens, and exactly the same rows. (``A`` in int8 would halve it again, but moved the logits by up to
    0.3 on a 1,700-token note against 0.01 for fp16: not taken.)
    """
    unique, index = torch.unique(b.detach().to("cpu", torch.float16), dim=0, return_inverse=True)
    return {"memory.A": a.detach().to("cpu", torch.float16).contiguous(), "memory.B_unique": unique.contiguous(),
            "memory.B_index": index.to(torch.int32).contiguous()}


def unpack_memory_rows(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, B)`` float32 from :func:`pack_memory_rows`' tensors (or the ``memory.A`` /
    ``memory.B`` of files written before it); ``None`` when they are incomplete or inconsistent."""
    a, b = tensors.get("memory.A"), tensors.get("memory.B")
    if a is None or a.dim() != 2:
        return None
    if b is None:
        unique, index = tensors.get("memory.B_unique"), tensors.get("memory.B_index")
        if unique is None or index is None or unique.dim() != 2 or index.dim() != 1 or (len(index) and not (
                0 <= int(index.min()) and int(index.max()) < len(unique))):
            return None
        b = unique[index.long()]
    return a.float(), b.float()


@dataclass
class Adapter:
    """LoRA factors generated from one document (or a composition of documents)."""

    factors: Factors
    scale: float
    rank: int
    bias_rank: int
    num_chunks: int
    base_model: str
    checkpoint_id: str
    content_hash: str = ""
    num_tokens: int = 0
    module_paths: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    #: Chunk keys (:mod:`d2l_haystack.core.keys`): normalised window embeddings ``(windows, dim)``,
    #: the chunk each window belongs to ``(windows,)``, and the embedding model's name.
    keys: torch.Tensor | None = None
    key_chunks: torch.Tensor | None = None
    key_model: str = ""
    #: Which texts the keys embed (:data:`d2l_haystack.core.keys.KEY_SCHEME`); "" in files written
    #: before sentences were keys (word windows only).
    key_scheme: str = ""
    #: Reading-memory rows ``(A (n, d_in), B (n, d_out))``, their chunks ``(n,)`` and the
    #: ``"<module>@<layer>"`` they apply to (:mod:`d2l_haystack.core.memory`); ``None`` without.
    memory: tuple[torch.Tensor, torch.Tensor] | None = None
    memory_chunks: torch.Tensor | None = None
    memory_key: str = ""
    #: The sentence (segment) of the document each memory row belongs to ``(n,)`` and each
    #: segment's chunk-key embedding ``(segments, dim)``, by which the engine keeps the rows of the
    #: sentences most like a question when the chosen chunks hold more than the memory's
    #: ``max_rows`` (:data:`~d2l_haystack.core.memory.DEFAULT_MAX_ROWS`); ``None`` in adapters
    #: made without chunk keys or before segments were kept.
    memory_segments: torch.Tensor | None = None
    memory_segment_keys: torch.Tensor | None = None
    #: The document's token ids ``(n,)`` and each token's chunk ``(n,)``, kept instead of rows where
    #: the document is longer than the memory's ``max_tokens`` and the memory reads long documents
    #: (:attr:`~d2l_haystack.core.memory.ReadingMemory.long_documents`): the engine makes the rows of
    #: the chunks a question chooses when it answers (``None`` otherwise).
    token_ids: torch.Tensor | None = None
    token_chunks: torch.Tensor | None = None

    @property
    def memory_rows(self) -> int:
        """How many reading-memory rows the adapter carries (0 without a memory)."""
        return 0 if self.memory is None else int(self.memory[0].shape[0])

    @property
    def serving_rank_needed(self) -> int:
        """The rank one PEFT/vLLM adapter needs for every layer to hold this adapter: the rank
        layout's components plus the reading-memory rows of their layer."""
        return self.total_rank + self.memory_rows

    @property
    def kind(self) -> str:
        """``"document"`` (chunk keys choose what applies) or ``"instructions"`` (applies to every
        question: a system prompt internalized, :data:`ADAPTER_KINDS`)."""
        return str(self.meta.get("kind", "document"))

    @property
    def total_rank(self) -> int:
        return next(iter(self.factors.values()))[0].shape[1]

    @property
    def num_layers(self) -> int:
        return next(iter(self.factors.values()))[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (fp16 factors and keys, int32 chunk indices, the memory rows
        as :func:`pack_memory_rows` stores them)."""
        keys = 0
        if self.keys is not None and self.key_chunks is not None:
            keys = self.keys.numel() * 2 + self.key_chunks.numel() * 4
        memory = 0
        if self.memory is not None:
            memory = sum(t.numel() * t.element_size() for t in pack_memory_rows(*self.memory).values())
            memory += self.memory_rows * 4  # memory.chunks
            if self.memory_segments is not None and self.memory_segment_keys is not None:
                memory += self.memory_segments.numel() * 4 + self.memory_segment_keys.numel() * 2
        if self.token_ids is not None:
            memory += self.token_ids.numel() * 8  # tokens.ids and tokens.chunks, int32
        return sum((a.numel() + b.numel()) * 2 for a, b in self.factors.values()) + keys + memory

    def document_factors(self) -> Factors:
        """The document components only (bias block removed)."""
        r = self.num_chunks * self.rank
        return {m: (a[:, :r], b[:, :r]) for m, (a, b) in self.factors.items()}

    def bias_factors(self) -> Factors:
        r = self.num_chunks * self.rank
        return {m: (a[:, r:], b[:, r:]) for m, (a, b) in self.factors.items()}

    def chunk_responses(self, inputs: dict[str, dict[int, torch.Tensor]]) -> torch.Tensor:
        """How strongly each chunk's adapter acts on the given layer inputs: ``(num_chunks,)``.

        ``inputs[module][layer]`` are ``(tokens, d_in)`` inputs of a target layer, e.g. recorded
        while the base model reads a question (:meth:`LoraHooks.capture`). The response of chunk
        ``c`` is ``scale * sum over layers of ||x A_c^T B_c||`` (Frobenius norm over tokens and
        output features): the size of the change that chunk alone would make to those activations.
        """
        k, r = self.num_chunks, self.rank
        score = torch.zeros(k)
        if k == 0:
            return score
        for m, (a, b) in self.document_factors().items():
            for layer, x in inputs.get(m, {}).items():
                x = x.to(a.device, torch.float32)
                h = (x @ a[layer].float().T).reshape(x.shape[0], k, r)
                y = torch.einsum("tkr,krd->tkd", h, b[layer].float().reshape(k, r, -1))
                score += y.pow(2).sum(dim=(0, 2)).sqrt().cpu()
        return score * self.scale

    @property
    def has_keys(self) -> bool:
        return self.keys is not None and self.key_chunks is not None and bool(self.key_model)

    def chunk_relevance(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of a question embedding to each chunk's best key: ``(num_chunks,)``.

        ``query`` is a normalised embedding from the adapter's ``key_model``; a chunk without
        keys (no words) scores -1.

        :raises AdapterError: the adapter has no chunk keys, or their width differs from ``query``.
        """
        if not self.has_keys:
            raise AdapterError("adapter has no chunk keys (internalized with keys disabled, or an older file)")
        assert self.keys is not None and self.key_chunks is not None
        if self.keys.shape[-1] != query.shape[-1]:
            raise AdapterError(f"chunk keys have {self.keys.shape[-1]} dimensions, the question embedding "
                               f"{query.shape[-1]}: embed questions with '{self.key_model}'")
        scores = torch.full((self.num_chunks,), -1.0)
        if len(self.keys):
            sims = self.keys.float() @ query.float().cpu()
            scores.scatter_reduce_(0, self.key_chunks.long(), sims, reduce="amax")
        return scores

    def select_chunks(self, indices: list[int]) -> Adapter:
        """A new adapter made of the given chunks (kept in document order) and the bias block."""
        chosen = sorted(set(int(i) for i in indices))
        if any(i < 0 or i >= self.num_chunks for i in chosen):
            raise ValueError(f"chunk indices must be in [0, {self.num_chunks}), got {indices}")
        cols = [c * self.rank + j for c in chosen for j in range(self.rank)]
        cols += list(range(self.num_chunks * self.rank, self.total_rank))
        idx = torch.tensor(cols, dtype=torch.long)
        factors = {m: (a.index_select(1, idx.to(a.device)), b.index_select(1, idx.to(b.device)))
                   for m, (a, b) in self.factors.items()}
        renumber = torch.full((self.num_chunks,), -1, dtype=torch.long)  # old chunk -> new chunk, or -1
        renumber[torch.tensor(chosen, dtype=torch.long)] = torch.arange(len(chosen))
        keys, key_chunks = self.keys, self.key_chunks
        if keys is not None and key_chunks is not None:
            mapped = renumber[key_chunks.long()]
            keys, key_chunks = keys[mapped >= 0], mapped[mapped >= 0]
        picked = self
        if self.memory is not None and self.memory_chunks is not None:
            mapped = renumber[self.memory_chunks.long()]
            picked = self.memory_subset(mapped >= 0)
            picked.memory_chunks = mapped[mapped >= 0]
        if self.token_ids is not None and self.token_chunks is not None:
            mapped = renumber[self.token_chunks.long()]
            picked = replace(picked, token_ids=self.token_ids[mapped >= 0], token_chunks=mapped[mapped >= 0])
        return replace(picked, factors=factors, num_chunks=len(chosen), keys=keys, key_chunks=key_chunks,
                       meta={**self.meta, "selected_chunks": chosen, "source_chunks": self.num_chunks})

    def memory_subset(self, keep: torch.Tensor) -> Adapter:
        """A new adapter with only the memory rows where the boolean ``keep`` ``(n,)`` is true
        (their chunks and segments with them; the segment keys stay whole)."""
        if self.memory is None or self.memory_chunks is None:
            return replace(self)
        segments = self.memory_segments[keep] if self.memory_segments is not None else None
        return replace(self, memory=(self.memory[0][keep], self.memory[1][keep]),
                       memory_chunks=self.memory_chunks[keep], memory_segments=segments)

    def peft_memory_note(self) -> str | None:
        """Why a PEFT export leaves this adapter's reading-memory rows out, or ``None`` where a LoRA
        can hold them (no rows, or rows that fire from their own layer's input). Rows matched on
        another layer (``"down_proj@29<22"``, the shipped memory's) need the engine's hooks."""
        if self.memory is None or parse_row_key(self.memory_key)[2] is None:
            return None
        return (f"the {self.memory_rows} reading-memory rows on {self.memory_key} fire from another layer's input, "
                "which a PEFT LoRA cannot hold: exported the hypernetwork's update alone")

    def for_peft(self, memory: bool = True) -> tuple[Adapter, str | None]:
        """What a PEFT export writes: this adapter, or :meth:`without_memory` where ``memory`` is
        off or the rows cannot be held by a LoRA; and :meth:`peft_memory_note` where rows were left
        out against ``memory`` (``None`` otherwise)."""
        note = self.peft_memory_note() if memory else None
        return (self if memory and note is None else self.without_memory()), note

    def without_memory(self) -> Adapter:
        """A new adapter without reading-memory rows: the hypernetwork's update alone (what the
        engine applies when the memory yields; an export that must not apply the rows always)."""
        return replace(self, memory=None, memory_chunks=None, memory_key="", memory_segments=None,
                       memory_segment_keys=None, token_ids=None, token_chunks=None)

    def chunk_groups(self, max_rank: int) -> list[list[int]]:
        """Consecutive chunks in groups whose adapters (the group's chunks plus the bias block)
        have at most ``max_rank`` components: how a document longer than a server's largest LoRA
        rank is served (one adapter per group, the chunk keys pick the group).

        :raises AdapterError: not even one chunk and the bias block fit in ``max_rank``.
        """
        rows = torch.zeros(self.num_chunks, dtype=torch.long)
        if self.memory_chunks is not None and len(self.memory_chunks):
            rows = torch.bincount(self.memory_chunks.long(), minlength=self.num_chunks)
        groups: list[list[int]] = []
        used = max_rank + 1
        for c in range(self.num_chunks):
            need = self.rank + int(rows[c])
            if self.bias_rank + need > max_rank:
                raise AdapterError(f"a rank-{max_rank} adapter cannot hold one rank-{need} chunk and the "
                                   f"rank-{self.bias_rank} bias block")
            if used + need > max_rank:
                groups.append([])
                used = self.bias_rank
            groups[-1].append(c)
            used += need
        return groups

    def effective_factors(self, weight: float = 1.0) -> Factors:
        """Factors with ``scale * weight`` folded into ``B`` (so the update scale is 1)."""
        out = {m: (a, b * (self.scale * weight)) for m, (a, b) in self.factors.items()}
        if self.memory is not None:
            out[self.memory_key] = (self.memory[0], self.memory[1] * weight)
        return out

    # -- persistence ----------------------------------------------------------------------
    def _format(self) -> str:
        """The file's ``d2l_format``: the oldest that holds what this adapter carries."""
        if self.memory is None:
            return FORMAT_VERSION
        return MEMORY_FORMAT_VERSION if parse_row_key(self.memory_key)[2] is None else MATCHED_MEMORY_FORMAT_VERSION

    def _metadata(self) -> dict[str, str]:
        return {
            "format": "pt", "d2l_format": self._format(),
            "scale": repr(self.scale),
            "rank": str(self.rank), "bias_rank": str(self.bias_rank),
            "num_chunks": str(self.num_chunks), "base_model": self.base_model,
            "checkpoint_id": self.checkpoint_id, "content_hash": self.content_hash,
            "num_tokens": str(self.num_tokens), "module_paths": json.dumps(self.module_paths),
            "meta": json.dumps(self.meta), "key_model": self.key_model if self.has_keys else "",
            "key_scheme": self.key_scheme if self.has_keys else "",
            "memory_key": self.memory_key if self.memory is not None else "",
        }

    def save(self, path: str | Path) -> Path:
        """Save to ``path`` (a folder gets ``adapter.safetensors`` inside); atomic.

        :returns: the file written.
        """
        path = Path(path)
        target = path if path.suffix == ".safetensors" else path / ADAPTER_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for m, (a, b) in self.factors.items():
            tensors[f"{m}.A"] = a.detach().to("cpu", torch.float16).contiguous()
            tensors[f"{m}.B"] = b.detach().to("cpu", torch.float16).contiguous()
        if self.has_keys:
            assert self.keys is not None and self.key_chunks is not None
            tensors["keys.vectors"] = self.keys.detach().to("cpu", torch.float16).contiguous()
            tensors["keys.chunks"] = self.key_chunks.detach().to("cpu", torch.int32).contiguous()
        if self.memory is not None and self.memory_chunks is not None:
            tensors.update(pack_memory_rows(*self.memory))
            tensors["memory.chunks"] = self.memory_chunks.detach().to("cpu", torch.int32).contiguous()
            if self.memory_segments is not None and self.memory_segment_keys is not None:
                tensors["memory.segments"] = self.memory_segments.detach().to("cpu", torch.int32).contiguous()
                tensors["memory.segment_keys"] = self.memory_segment_keys.detach().to("cpu", torch.float16).contiguous()
        if self.token_ids is not None and self.token_chunks is not None:
            tensors["tokens.ids"] = self.token_ids.detach().to("cpu", torch.int32).contiguous()
            tensors["tokens.chunks"] = self.token_chunks.detach().to("cpu", torch.int32).contiguous()
        return write_safetensors(target, tensors, {**self._metadata(), "data_sha256": tensor_digest(tensors)})

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Adapter:
        """Load an adapter file or folder.

        :raises AdapterError: missing or damaged file.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        target = path / ADAPTER_FILE if path.is_dir() else path
        if not target.is_file():
            raise AdapterError(f"no adapter at {path} (expected {ADAPTER_FILE})")
        try:
            with safe_open(str(target), framework="pt", device=device) as fh:
                meta = fh.metadata() or {}
                keys = list(fh.keys())
                tensors = {k: fh.get_tensor(k) for k in keys}
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise AdapterError(f"damaged adapter file {target}: {exc}") from exc
        if meta.get("d2l_format") not in READ_FORMATS:
            raise AdapterError(f"{target} is not a d2l-haystack adapter this version reads "
                               f"(format {meta.get('d2l_format')!r}; reads {', '.join(READ_FORMATS)})")
        digest = meta.get("data_sha256")  # files written before checksums were added have none
        if digest is not None and digest != tensor_digest(tensors):
            raise AdapterError(f"damaged adapter file {target}: its tensor data does not match its checksum")
        factors: Factors = {}
        for k in keys:
            if k.endswith(".A") and not k.startswith("memory."):
                m = k[:-2]
                if f"{m}.B" not in tensors:
                    raise AdapterError(f"damaged adapter file {target}: {m}.B missing")
                factors[m] = (tensors[k].float(), tensors[f"{m}.B"].float())
        if not factors:
            raise AdapterError(f"damaged adapter file {target}: no tensors")
        key_vectors, key_chunks = tensors.get("keys.vectors"), tensors.get("keys.chunks")
        if (key_vectors is None) != (key_chunks is None) or (
                key_vectors is not None and key_chunks is not None and len(key_vectors) != len(key_chunks)):
            raise AdapterError(f"damaged adapter file {target}: incomplete chunk keys")
        memory: tuple[torch.Tensor, torch.Tensor] | None = None
        memory_chunks: torch.Tensor | None = None
        segments: torch.Tensor | None = None
        segment_keys: torch.Tensor | None = None
        if any(k.startswith("memory.") for k in tensors):
            m_c = tensors.get("memory.chunks")
            memory = unpack_memory_rows(tensors)
            if memory is None or m_c is None or not meta.get("memory_key") or not (
                    len(memory[0]) == len(memory[1]) == len(m_c)):
                raise AdapterError(f"damaged adapter file {target}: incomplete reading-memory rows")
            memory_chunks = m_c.long()
            m_s, m_k = tensors.get("memory.segments"), tensors.get("memory.segment_keys")
            if (m_s is None) != (m_k is None) or (m_s is not None and m_k is not None and (
                    len(m_s) != len(m_c) or m_k.dim() != 2 or (len(m_s) and not (
                        0 <= int(m_s.min()) and int(m_s.max()) < len(m_k))))):
                raise AdapterError(f"damaged adapter file {target}: inconsistent reading-memory segments")
            segments = None if m_s is None else m_s.long()
            segment_keys = None if m_k is None else m_k.float()
        token_ids, token_chunks_t = tensors.get("tokens.ids"), tensors.get("tokens.chunks")
        if (token_ids is None) != (token_chunks_t is None) or (
                token_ids is not None and token_chunks_t is not None and len(token_ids) != len(token_chunks_t)):
            raise AdapterError(f"damaged adapter file {target}: incomplete document tokens (tokens.ids, tokens.chunks)")
        try:
            adapter = cls(factors=factors, scale=float(meta["scale"]), rank=int(meta["rank"]),
                       bias_rank=int(meta["bias_rank"]), num_chunks=int(meta["num_chunks"]),
                       base_model=meta["base_model"], checkpoint_id=meta["checkpoint_id"],
                       content_hash=meta.get("content_hash", ""), num_tokens=int(meta.get("num_tokens", 0)),
                       module_paths=json.loads(meta.get("module_paths", "[]")),
                       meta=json.loads(meta.get("meta", "{}")),
                       keys=None if key_vectors is None else key_vectors.float(),
                       key_chunks=None if key_chunks is None else key_chunks.long(),
                       key_model=meta.get("key_model", "") if key_vectors is not None else "",
                       key_scheme=meta.get("key_scheme", "") if key_vectors is not None else "",
                       memory=memory, memory_chunks=memory_chunks,
                       memory_key=meta.get("memory_key", "") if memory is not None else "",
                       memory_segments=segments, memory_segment_keys=segment_keys,
                       token_ids=None if token_ids is None else token_ids.long(),
                       token_chunks=None if token_chunks_t is None else token_chunks_t.long())
        except (KeyError, ValueError) as exc:
            raise AdapterError(f"damaged adapter metadata in {target}: {exc}") from exc
        for owners, what in ((adapter.key_chunks, "chunk keys"), (adapter.memory_chunks, "memory rows"),
                             (adapter.token_chunks, "document tokens")):
            if owners is not None and len(owners) and not (
                    0 <= int(owners.min()) and int(owners.max()) < adapter.num_chunks):
                raise AdapterError(f"damaged adapter file {target}: {what} name chunks the adapter does not have")
        return adapter

    def to_peft(self, folder: str | Path, base_model_name_or_path: str | None = None,
                rank: int | None = None) -> Path:
        """Write a standard PEFT LoRA folder (``adapter_config.json``, ``adapter_model.safetensors``).

        ``lora_A.weight = A`` and ``lora_B.weight = scale * B^T`` with ``lora_alpha = r``, so PEFT's
        scaling is exactly 1 and the PEFT model computes the same update as this project.

        Reading-memory rows go to their one layer: without ``rank``, that layer's rank is larger
        (``rank_pattern``/``alpha_pattern``); with ``rank`` (one rank for every layer, as servers
        need), every layer is padded to it. A static LoRA cannot carry what the engine decides per
        question: the exported rows apply to every question, never yielding to a sure adapter and
        never cut to the memory's ``max_rows`` (export :meth:`without_memory` for the hypernetwork's
        update alone; docs/vllm.md). Rows that fire from another layer's input (the shipped memory's,
        ``"down_proj@29<22"``) cannot be held by a LoRA: they are left out with a ``UserWarning``
        (:meth:`peft_memory_note`), and the folder holds the hypernetwork's update alone.

        :param rank: pad the rank with zero components up to this value (servers such as vLLM
            accept only some ranks: :func:`serving_rank`); ``lora_alpha`` is the padded rank, so
            the scaling stays 1 and the update is exactly the same.
        :raises AdapterError: no module paths, or ``rank`` below the adapter's own.
        """
        from safetensors.torch import save_file

        if not self.module_paths:
            raise AdapterError("adapter has no module paths; cannot export to PEFT")
        exported, note = self.for_peft()
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
            return exported.to_peft(folder, base_model_name_or_path, rank)
        own = self.total_rank
        widest = self.serving_rank_needed
        r = own if rank is None else int(rank)
        if rank is not None and r < widest:
            raise AdapterError(f"cannot export a rank-{widest} adapter at rank {r} (padding only adds components)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state: dict[str, torch.Tensor] = {}
        targets = []
        patterns: dict[str, int] = {}
        for (module, (a, b)), template in zip(self.factors.items(), self.module_paths):
            targets.append(module)
            for layer in range(a.shape[0]):
                path = template.format(layer=layer)
                prefix = "base_model.model." + path
                lora_a, lora_b = a[layer].float(), (b[layer].T * self.scale).float()
                if self.memory is not None and self.memory_key == f"{module}@{layer}":
                    lora_a = torch.cat([lora_a, self.memory[0].float()])
                    lora_b = torch.cat([lora_b, self.memory[1].T.float()], dim=1)
                    if rank is None:
                        patterns[path] = lora_a.shape[0]
                if r > lora_a.shape[0]:  # zero components: A rows and B columns that add nothing
                    pad = r - lora_a.shape[0]
                    lora_a = torch.cat([lora_a, lora_a.new_zeros(pad, lora_a.shape[1])])
                    lora_b = torch.cat([lora_b, lora_b.new_zeros(lora_b.shape[0], pad)], dim=1)
                state[f"{prefix}.lora_A.weight"] = lora_a.contiguous()
                state[f"{prefix}.lora_B.weight"] = lora_b.contiguous()
        config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": r,
            "lora_dropout": 0.0, "bias": "none", "target_modules": targets, "use_rslora": False,
            "fan_in_fan_out": False, "inference_mode": True,
            "base_model_name_or_path": base_model_name_or_path or self.base_model,
            "rank_pattern": patterns, "alpha_pattern": dict(patterns),
        }
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
        return folder


VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The LoRA ranks vLLM serves (``--max-lora-rank`` choices)."""


def serving_rank(rank: int, allowed: tuple[int, ...] = VLLM_RANKS) -> int:
    """The smallest allowed rank at least ``rank``.

    :raises AdapterError: ``rank`` is above every allowed value (split the adapter into chunk
        groups: :meth:`Adapter.chunk_groups`).

    >>> serving_rank(24), serving_rank(8), serving_rank(300)
    (32, 8, 320)
    """
    for allowed_rank in sorted(allowed):
        if allowed_rank >= rank:
            return allowed_rank
    raise AdapterError(f"rank {rank} is above the largest servable rank {max(allowed)}; export the adapter in "
                       f"chunk groups")


def compose(adapters: list[Adapter], weights: list[float] | None = None) -> Factors:
    """Concatenate adapters along the rank dimension (scales folded into ``B``).

    Each adapter contributes its document components times its weight; the bias block of each
    distinct hypernetwork checkpoint is added once. Reading-memory rows travel under their
    ``"<module>@<layer>"`` key as ``(rows, d)`` tensors (:class:`~d2l_haystack.core.lora.LoraHooks`).
    """
    if not adapters:
        raise ValueError("compose() needs at least one adapter")
    weights = list(weights) if weights is not None else [1.0] * len(adapters)
    if len(weights) != len(adapters):
        raise ValueError("one weight per adapter is needed")
    base = {a.base_model for a in adapters}
    if len(base) > 1:
        raise AdapterError(f"cannot compose adapters made for different base models: {sorted(base)}")
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    seen_bias: set[str] = set()
    for adapter, w in zip(adapters, weights):
        if adapter.memory is not None and adapter.memory_rows:  # rows of one layer, scale folded in
            parts.setdefault(adapter.memory_key, []).append((adapter.memory[0], adapter.memory[1] * w))
        doc = adapter.document_factors()
        for m, (a, b) in doc.items():
            parts.setdefault(m, []).append((a, b * (adapter.scale * w)))
        if adapter.checkpoint_id not in seen_bias and adapter.bias_rank:
            seen_bias.add(adapter.checkpoint_id)
            for m, (a, b) in adapter.bias_factors().items():
                parts.setdefault(m, []).append((a, b * adapter.scale))
    return {m: (torch.cat([a for a, _ in p], dim=-2), torch.cat([b for _, b in p], dim=-2))
            for m, p in parts.items()}
