"""The reading memory: a document's "what comes next" as LoRA rows of one layer.

The hypernetwork's adapter gives an answer its form (a date, a price, a name) but does not find the
value in the document. The reading memory does the finding. While the base model reads a document,
position ``i`` has an input ``k_i`` of the target module (``down_proj`` of layer :attr:`layer`) and
a next token ``y_i``. The memory writes one rank-1 LoRA component per position::

    A_i = (a * k_i + Q^T P k_i) / s        (d_in)    the match: a learned bilinear form
    B_i = g * w * E[y_i] / |E[y_i]|        (d_out)   the value: y_i's output embedding

so that, while the model answers a question, its own state ``x`` at that layer fires row ``i`` by
``x . A_i`` and adds the direction of token ``y_i``. ``k_i`` are centered over the positions of
one pass and L2-normalised. ``Q``, ``P`` (``rank x d_in``), ``a``, ``g`` and ``w`` are learned
(:mod:`d2l_haystack.training.memory`) on cached states; ``s`` is fixed at fitting time. On the last
layer, ``B`` goes straight into the final norm, so the memory is fitted with the model's exact
logits and no pass through it; on a layer below, the fit runs the layers above (the rows' vote
then meets the adapter's inside the model, not as added logits).

Files: ``memory.safetensors`` in a hypernetwork checkpoint folder (tensors ``q``, ``p``, ``a``,
``log_gain``, ``w``; the layer, module, ``s``, ``yield_above``, ``override``, ``max_tokens``,
``max_rows``, ``row_use``, ``follow_on_yield``, ``long_documents`` and, where they are not the
default, ``match_layer`` (the match reads another layer) and ``firm_carry`` in its header).
The engine loads it with the checkpoint and adds the rows to every adapter it internalizes from a
document of at most ``max_tokens`` tokens (:attr:`Adapter.memory`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .fileio import tensor_digest, write_safetensors
from .lora import row_key

MEMORY_FILE = "memory.safetensors"

DEFAULT_MAX_TOKENS = 4096
"""The memory makes rows at internalization for documents up to this many tokens; a longer
document's rows, if any, are those of a question's chosen chunks, made when it is answered
(:data:`LONG_DOCUMENTS`). Rows cost 3.5-3.7 KB (with their sentence keys) and a pass ~3 ms per
token on the 2-core CPU, and on 41k-token held-out needles all rows read worse than none, even
with :data:`DEFAULT_MAX_ROWS` (0.300 against 0.400; docs/training.md, "Long documents")."""

DEFAULT_MAX_ROWS = 64
"""At most this many rows apply to one question: where the chosen chunks hold more (a chunk of 512
tokens holds 512), the rows of the document's sentences most like the question (the chunk-key
model's similarity, :attr:`Adapter.memory_segment_keys`), best first, up to this many. The memory
sums one row per token, and it was fitted on documents of 70 rows (median; ``d2l memory collect``):
a whole 512-token chunk of rows drowned the answer in noise ("antioxid ourroughts"). 128 (the fit's
90th percentile) was the first budget; 64, chosen on training-part data, read more held out: SQuAD
F1 0.170 -> 0.228 (+0.058 [+0.022, +0.094]), the 650 questions of the reading rules pooled contains
+0.045 [+0.022, +0.068] (docs/training.md, "A row budget of 64")."""

DEFAULT_YIELD_ABOVE = 0.95
"""The memory yields to the hypernetwork's adapter when the adapter alone gives the answer's
first token at least this probability (:meth:`D2LEngine.generate`). On training-part needles in
the trained phrasings, where the adapter alone is right 37 times in 40 and the memory breaks digits,
the adapter's first-token probability was >= 0.993 for all 40; on generated training-part
documents, where the memory reads better, it was below 0.95 for 73 % of the questions
(docs/training.md, "The memory yields")."""


DEFAULT_MODULE = "down_proj"
"""The module whose input a memory reads and whose output its rows change (the shipped memory's,
and a memory file's that names none)."""


def check_match_layer(layer: int, match_layer: int | None) -> int | None:
    """``match_layer`` for rows on ``layer``: ``None`` where the match reads the rows' own layer.

    :raises ValueError: a match layer that is not below the rows' layer.
    """
    if match_layer is None or int(match_layer) == layer:
        return None
    if not 0 <= int(match_layer) < layer:
        raise ValueError(f"the match layer must be one of 0..{layer - 1} (below the rows' layer {layer}), "
                         f"got {match_layer}")
    return int(match_layer)


def check_firm_carry(firm_carry: float) -> float:
    """``firm_carry`` as a float. :raises ValueError: not a factor from 1 to 10."""
    if not (math.isfinite(firm_carry) and 1.0 <= firm_carry <= 10.0):
        raise ValueError(f"firm_carry {firm_carry!r} is not a factor from 1 to 10")
    return float(firm_carry)


ROW_USES = ("all", "once", "next", "value")
"""How the rows fire while an answer is generated (:class:`~d2l_haystack.core.lora.RowUse`): ``all``
as fitted, every row at every step; ``once``: the row that gave a token is spent for the rest of
the answer (rows fitted without it fired again at the next step, and some answers looped on one
token, "War War War"); ``next``: spent, and the row of the document's following position, where
it fires on its own, fires at least as strongly at the next step, so a copied value goes on as the
document goes on (a number and then its unit, as the document wrote it); ``value``: as ``next``, but
the carry stops where the copied value ends (:class:`~d2l_haystack.core.lora.ValueEnds`: before a
lower-case word that is not a number's unit, a line break, or a word after a clause's punctuation),
so the answer is not the rest of the document's sentence."""

DEFAULT_ROW_USE = "value"
"""The :data:`ROW_USES` mode of a new memory (``d2l memory fit``) and of the shipped one. ``next``
against ``all`` on the held-out sets: contains +0.022 [+0.006, +0.038] pooled, F1 unchanged
(docs/training.md, "Each row once"); ``value`` against ``next``, chosen on training-part and
study-only data with the 22-match pilot: F1 +0.04 to +0.06 on all three dev sets, contains equal on
needles and documents (docs/training.md, "A carry that stops where the value ends"), then shipped
with the 22-match memory (M15)."""

DEFAULT_FIRM_CARRY = 1.0
"""The firming of a new memory's carry (:attr:`ReadingMemory.firm_carry`, with ``row_use`` ``value``):
none. 1.5 (inside one word or number each carried step fires 1.5 times as strongly as the one
before, :class:`~d2l_haystack.core.lora.RowUse` ``firm``) read the phone numbers and codes that a
trained format had regrouped on study-only needles (dev contains 0.550 -> 0.650, +0.100 [+0.033,
+0.183]) but not held out: pooled (650) contains -0.003 [-0.011, +0.005], held-out needle
phrasings equal; a sentence's full stop after a number was firmed too ("11.Serve") (docs/training.md,
"A firm carry inside a value: not shipped")."""

UNNAMED_FIRM_CARRY = 1.0
"""The firming of a memory file that names none: none, as it was measured."""

DEFAULT_FOLLOW_ON_YIELD = True
"""Whether a new memory (and the shipped one) lets a yielded answer go on as the document goes on
(:attr:`ReadingMemory.follow_on_yield`): against off on the held-out sets, held-out needle phrasings
0.425 -> 0.575, contains +0.023 [+0.011, +0.035] pooled, F1 unchanged (docs/training.md, "A yielded
answer follows the document"). A file without the header has it off, as it was measured."""

LONG_DOCUMENTS = ("none", "follow", "read")
"""What the memory does for a document over its ``max_tokens`` (:attr:`ReadingMemory.long_documents`):
``none``: no rows, the hypernetwork's adapter alone; ``follow``: the adapter keeps the document's
token ids, and when a question is answered the chunks it chooses get their rows, made then as at
internalization (passes of up to ``chunk_tokens`` consecutive chosen chunks: a 512-token chunk's
rows are the ones it would have had), which only
follow (:class:`~d2l_haystack.core.lora.RowUse` ``follow``: the answer is the adapters', and after
a token the document has, its next position pushes); ``read``: those rows read as a short
document's do (the yield test, the two readers)."""

DEFAULT_LONG_DOCUMENTS = "follow"
"""The :data:`LONG_DOCUMENTS` mode of a new memory (``d2l memory fit``) and of the shipped one:
against ``none`` on held-out needle phrasings at 41k tokens, contains 0.400 -> 0.700 (the three
misses that were the right number with a trained unit); ``read`` garbled answers at 41k on
study-only needles (docs/training.md, "Long documents: the chosen chunks' rows")."""

UNNAMED_LONG_DOCUMENTS = "none"
"""The :data:`LONG_DOCUMENTS` mode of a memory file that names none: as it was measured."""

UNNAMED_ROW_USE = "all"
"""The :data:`ROW_USES` mode of a memory file that names none (written before the header existed):
the behaviour it was measured with."""


@dataclass(frozen=True)
class OverrideRule:
    """When the memory's answer replaces a sure adapter's (:meth:`D2LEngine.generate`, greedy).

    Where the adapter alone is sure of the first token (:attr:`ReadingMemory.yield_above`), the
    engine lets both readers answer: the adapter alone and the adapter with the rows. Where the two
    answers differ, the memory's is taken when it is sure of it, rejects the adapter's, and gives
    an answer the adapter finds plausible: the adapter knows the form of the answer (a name, a time,
    a weight with its unit), the memory finds the value. Each threshold is a mean token
    log-probability of a whole answer (its end-of-turn token included).

    Read off training-part and study-only data (docs/training.md, "Two readers"): sure adapters
    were wrong where the memory read a value they missed (a name, a unit after a number) and right
    where the memory's rows fired at a neighbouring digit ("29417" -> "29411": the memory itself
    finds the adapter's answer likely) or glued filler to a number (the adapter finds that unlikely).

    :param own: the memory's log-probability of its own answer, at least (it is sure).
    :param rejects: the memory's log-probability of the adapter's answer, at most (it disagrees).
    :param form: the adapter's log-probability of the memory's answer, at least (a plausible form).
    """

    own: float = -0.15
    rejects: float = -1.0
    form: float = -2.0

    def prefers_memory(self, own: float, memory_on_adapter: float, adapter_on_memory: float) -> bool:
        """Whether the memory's answer is taken, from the three mean log-probabilities."""
        return own >= self.own and memory_on_adapter <= self.rejects and adapter_on_memory >= self.form

    def to_text(self) -> str:
        return f"{self.own!r},{self.rejects!r},{self.form!r}"

    @classmethod
    def from_text(cls, text: str) -> OverrideRule:
        """``"own,rejects,form"``. :raises ValueError: not three finite non-positive numbers."""
        values = [float(v) for v in text.split(",")]
        if len(values) != 3 or not all(math.isfinite(v) and v <= 0 for v in values):
            raise ValueError(f"override {text!r} is not three log-probabilities own,rejects,form (each <= 0)")
        return cls(*values)


DEFAULT_OVERRIDE = OverrideRule()
"""The memory's override of a sure adapter (:class:`OverrideRule`)."""


class ReadingMemory(nn.Module):
    """The learned parts of the memory rows (see the module docstring).

    :param d_in: the target module's input width (``down_proj``: the MLP's intermediate size).
    :param d_out: its output width (the hidden size).
    :param rank: rank of the learned part of the match.
    :param layer: the layer whose ``module`` gets the rows.
    :param scale_x: ``s``, the typical norm of that module's inputs while answering.
    :param yield_above: the engine answers without the rows when the adapter alone gives the
        answer's first token at least this probability (``None``: the rows always apply).
        A PEFT export cannot carry this switch: there the rows always apply.
    :param max_tokens: documents longer than this get no rows at internalization
        (:data:`DEFAULT_MAX_TOKENS`; then :data:`LONG_DOCUMENTS`).
    :param max_rows: at most this many rows apply to one question (:data:`DEFAULT_MAX_ROWS`).
    :param row_use: how the rows fire while an answer is generated (:data:`ROW_USES`,
        :data:`DEFAULT_ROW_USE`; a PEFT export cannot carry it: there every row fires).
    :param override: when the memory's answer still replaces a sure adapter's (greedy answers;
        :class:`OverrideRule`; ``None``: a sure adapter always answers alone).
    :param follow_on_yield: where the memory yields, the adapters' answer still goes on as the
        document goes on after a token the document has (:class:`~d2l_haystack.core.lora.RowUse`
        ``follow``: only the next position's row fires; :data:`DEFAULT_FOLLOW_ON_YIELD`).
    :param firm_carry: with ``row_use`` ``value``, inside one word or number each carried step fires
        this many times as strongly as the one before (:data:`DEFAULT_FIRM_CARRY`; 1: none). A PEFT
        export cannot carry it.
    :param long_documents: what the memory does for documents over ``max_tokens``
        (:data:`LONG_DOCUMENTS`, :data:`DEFAULT_LONG_DOCUMENTS`).
    :param match_layer: the layer whose ``module`` input the match reads, the document's keys ``k_i``
        and the answering state ``x`` alike (``None``: ``layer``, the rows' own). The values still go
        into ``layer``: the match can read a layer where positions are told apart better than at the
        last one, and the values keep the last layer's exact path to the logits. Rows matched on
        another layer are not a LoRA of one module: a PEFT export refuses them.
    """

    def __init__(self, d_in: int, d_out: int, rank: int, layer: int, module: str = DEFAULT_MODULE,
                 scale_x: float = 1.0, yield_above: float | None = DEFAULT_YIELD_ABOVE,
                 max_tokens: int = DEFAULT_MAX_TOKENS, override: OverrideRule | None = DEFAULT_OVERRIDE,
                 max_rows: int = DEFAULT_MAX_ROWS, row_use: str = DEFAULT_ROW_USE,
                 follow_on_yield: bool = DEFAULT_FOLLOW_ON_YIELD,
                 long_documents: str = DEFAULT_LONG_DOCUMENTS, match_layer: int | None = None,
                 firm_carry: float = DEFAULT_FIRM_CARRY) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.randn(rank, d_in) * 0.01)
        self.p = nn.Parameter(torch.randn(rank, d_in) * 0.01)
        self.a = nn.Parameter(torch.tensor(1.0))
        self.log_gain = nn.Parameter(torch.tensor(1.5))
        self.w = nn.Parameter(torch.ones(d_out))
        self.layer, self.module, self.scale_x = int(layer), str(module), float(scale_x)
        self.yield_above = None if yield_above is None else float(yield_above)
        self.max_tokens = int(max_tokens)
        self.override = override
        self.max_rows = int(max_rows)
        if row_use not in ROW_USES:
            raise ValueError(f"row_use {row_use!r} is not one of {', '.join(ROW_USES)}")
        self.row_use = row_use
        self.follow_on_yield = bool(follow_on_yield)
        if long_documents not in LONG_DOCUMENTS:
            raise ValueError(f"long_documents {long_documents!r} is not one of {', '.join(LONG_DOCUMENTS)}")
        self.long_documents = long_documents
        self.match_layer = check_match_layer(self.layer, match_layer)
        self.firm_carry = check_firm_carry(firm_carry)

    @property
    def key(self) -> str:
        """The factors key the rows travel under (:class:`~d2l_haystack.core.lora.LoraHooks`,
        :func:`~d2l_haystack.core.lora.row_key`): ``"down_proj@29"``, or ``"down_proj@29<22"``
        matched on layer 22."""
        return row_key(self.module, self.layer, self.match_layer)

    @property
    def reads(self) -> int:
        """The layer whose ``module`` inputs make the match (:attr:`match_layer`, else :attr:`layer`)."""
        return self.layer if self.match_layer is None else self.match_layer

    @staticmethod
    def normalise_keys(keys: torch.Tensor) -> torch.Tensor:
        """Center ``(positions, d_in)`` states over the positions and scale each to unit length."""
        k = keys.float()
        k = k - k.mean(0, keepdim=True)
        return k / k.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def match_rows(self, keys: torch.Tensor) -> torch.Tensor:
        """``A``: ``(positions, d_in)`` from normalised keys."""
        return (self.a * keys + (keys @ self.p.T) @ self.q) / self.scale_x

    def scores(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """How strongly states ``x`` ``(tokens, d_in)`` fire each row: ``(tokens, positions)``."""
        return (self.a * (x @ keys.T) + (x @ self.q.T) @ (keys @ self.p.T).T) / self.scale_x

    def value_rows(self, unit_next: torch.Tensor) -> torch.Tensor:
        """``B``: ``(positions, d_out)`` from the unit-length output embeddings of the next tokens."""
        return self.log_gain.exp() * unit_next * self.w

    @torch.no_grad()
    def rows(self, states: torch.Tensor, next_ids: torch.Tensor,
             output_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory of one pass: ``A (positions, d_in)``, ``B (positions, d_out)``, float32.

        :param states: the module's inputs at the positions that predict ``next_ids``.
        :param output_embeddings: the model's output embedding matrix ``(vocab, d_out)``.
        """
        emb = output_embeddings[next_ids.to(output_embeddings.device).long()].float()
        unit = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return self.match_rows(self.normalise_keys(states.to(self.q.device))), self.value_rows(unit.to(self.w.device))

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``memory.safetensors`` (fp16) into ``folder``, atomically."""
        target = Path(folder) / MEMORY_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.state_dict().items()}
        return write_safetensors(target, tensors, {"format": "pt", "layer": str(self.layer), "module": self.module,
                                                   "scale_x": repr(self.scale_x),
                                                   "yield_above": repr(self.yield_above),
                                                   "max_tokens": str(self.max_tokens),
                                                   "max_rows": str(self.max_rows),
                                                   "row_use": self.row_use,
                                                   "follow_on_yield": str(self.follow_on_yield).lower(),
                                                   "long_documents": self.long_documents,
                                                   **({} if self.firm_carry == UNNAMED_FIRM_CARRY
                                                      else {"firm_carry": repr(self.firm_carry)}),
                                                   **({} if self.match_layer is None
                                                      else {"match_layer": str(self.match_layer)}),
                                                   "override": self.override.to_text() if self.override else "None"})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ReadingMemory | None:
        """The memory of a checkpoint folder, or ``None`` when it has none.

        :raises CheckpointError: a damaged memory file.
        """
        from safetensors import SafetensorError, safe_open

        target = Path(folder) / MEMORY_FILE
        if not target.is_file():
            return None
        try:
            with safe_open(str(target), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k).float() for k in fh.keys()}
            follow = meta.get("follow_on_yield", "false")
            if follow not in ("true", "false"):
                raise ValueError(f"follow_on_yield {follow!r} is not true or false")
            given = meta.get("yield_above", repr(DEFAULT_YIELD_ABOVE))
            rule = meta.get("override", DEFAULT_OVERRIDE.to_text())  # files from before the rule get it
            memory = cls(tensors["q"].shape[1], tensors["w"].shape[0], tensors["q"].shape[0], int(meta["layer"]),
                         meta.get("module", DEFAULT_MODULE), float(meta["scale_x"]),
                         None if given == "None" else float(given),
                         int(meta.get("max_tokens", DEFAULT_MAX_TOKENS)),
                         None if rule == "None" else OverrideRule.from_text(rule),
                         int(meta.get("max_rows", DEFAULT_MAX_ROWS)),
                         meta.get("row_use", UNNAMED_ROW_USE),
                         follow == "true",
                         meta.get("long_documents", UNNAMED_LONG_DOCUMENTS),
                         int(meta["match_layer"]) if "match_layer" in meta else None,
                         float(meta.get("firm_carry", UNNAMED_FIRM_CARRY)))
            memory.load_state_dict(tensors)
        except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"damaged reading memory {target}: {exc}") from exc
        if not math.isfinite(memory.scale_x) or memory.scale_x <= 0:
            raise CheckpointError(f"damaged reading memory {target}: scale {memory.scale_x}")
        if memory.max_rows < 1 or memory.max_tokens < 1:
            raise CheckpointError(f"damaged reading memory {target}: max_rows {memory.max_rows}, "
                                  f"max_tokens {memory.max_tokens}")
        if memory.yield_above is not None and not 0.0 < memory.yield_above <= 1.0:
            raise CheckpointError(f"damaged reading memory {target}: yield_above {memory.yield_above} "
                                  "is not a probability in (0, 1]")
        return memory.to(device).eval().requires_grad_(False)


def memory_digest(folder: str | Path) -> str | None:
    """SHA-256 of a checkpoint's memory (first 12 hex digits), or ``None`` without one: of its
    header, key by key, and its tensors (:func:`~d2l_haystack.core.fileio.tensor_digest`), so the
    same memory saved twice has one digest (safetensors writes the header's keys in any order).
    A file that cannot be read is digested by its bytes (loading it then names the damage)."""
    from safetensors import SafetensorError, safe_open

    target = Path(folder) / MEMORY_FILE
    if not target.is_file():
        return None
    try:
        with safe_open(str(target), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError):
        return hashlib.sha256(target.read_bytes()).hexdigest()[:12]
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(tensor_digest(tensors).encode())
    return h.hexdigest()[:12]
