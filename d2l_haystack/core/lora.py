"""Functional LoRA application with per-call (and per-sample) adapters.

Forward hooks are installed once on every target linear layer of a model. Each hook reads the
LoRA factors active *in the calling thread* (a thread-local), so the base weights are never
modified and concurrent calls with different adapters on one loaded model cannot mix adapters.

Convention (see :mod:`d2l_haystack.core.hypernet`): ``A: (R, d_in)``, ``B: (R, d_out)``,
``y = W x + scale * (x A^T) B``. Factors are stacked over layers: ``A: (L, R, d_in)``, or
``(batch, L, R, d_in)`` to give every sample of a batch its own adapter (training). A key
``"<module>@<layer>"`` holds rows of that one layer only, ``A: (R, d_in)`` (the reading memory,
:mod:`d2l_haystack.core.memory`); ``"<module>@<layer><<match>"`` rows of that layer that fire from
the same module's input at layer ``match`` (earlier in the same pass), which a PEFT LoRA cannot hold.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .encoder import pad_batch
from .hypernet import find_target_modules

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def document_factors(a: torch.Tensor, b: torch.Tensor, bias: tuple[torch.Tensor, torch.Tensor],
                     pad_chunks: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One document's factors of one target module in the adapter rank layout
    (:mod:`d2l_haystack.core.adapter`): its chunks' components chunk after chunk, then
    ``pad_chunks`` chunks of zeros, then the bias block.

    The one place that lays a document out: the engine (:meth:`D2LEngine.internalize`) and the
    trainer (a batch of documents, padded to the one with most chunks) both call it.

    :param a: ``(chunks, L, r, d_in)`` generated rows of A, one set per chunk.
    :param b: ``(chunks, L, r, d_out)`` generated columns of B.
    :param bias: the bias block ``(L, rb, d_in)``, ``(L, rb, d_out)``.
    :returns: ``A: (L, (chunks + pad_chunks) * r + rb, d_in)`` and ``B`` likewise.
    """
    c, layers, r = a.shape[0], a.shape[1], a.shape[2]
    out = []
    for x, extra in ((a, bias[0]), (b, bias[1])):
        doc = x.permute(1, 0, 2, 3).reshape(layers, c * r, x.shape[-1])
        if pad_chunks:
            doc = torch.nn.functional.pad(doc, (0, 0, 0, pad_chunks * r))
        out.append(torch.cat([doc, extra.to(doc.dtype)], dim=1))
    return out[0], out[1]


def length_groups(lengths: list[int], overhead: int = 16) -> list[list[int]]:
    """Indices sorted by length, cut into one or two groups where padding each group to its own
    longest member costs least (``overhead`` tokens per extra group)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    lens = [lengths[i] for i in order]
    n = len(lens)
    cost = [lens[-1] * n] + [lens[c - 1] * c + lens[-1] * (n - c) + overhead for c in range(1, n)]
    cut = min(range(len(cost)), key=cost.__getitem__)
    return [order] if cut == 0 else [order[:cut], order[cut:]]


def encode_chunks(encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], hypernet: nn.Module,
                  wrapped: list[list[int]], pad_id: int, device: Any,
                  precision: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                  timings: dict[str, float] | None = None) -> Factors:
    """Chunk token ids (each wrapped in the chat template) -> encoder -> hypernetwork -> per-chunk
    factors ``A: (chunks, L, r, d_in)``, in the chunks' order: the one routine of the engine and the
    trainer (which runs it with gradients). Chunks of very different lengths (a 40-token note beside
    a 384-token document) run in two length groups, so the short ones are not padded to the longest.

    :param precision: a factory of the context both models run in (e.g. bf16 autocast).
    :param timings: if given, the seconds of each stage are added to ``"encoder"`` and ``"hypernetwork"``.
    """
    groups = length_groups([len(w) for w in wrapped])
    parts: list[Factors] = []
    for group in groups:
        ids, mask = pad_batch([wrapped[i] for i in group], pad_id, device)
        t0 = time.perf_counter()
        with precision():
            features = encoder(ids, mask)
            t1 = time.perf_counter()
            parts.append(hypernet(features.float(), mask))
        if timings is not None:
            timings["encoder"] = timings.get("encoder", 0.0) + t1 - t0
            timings["hypernetwork"] = timings.get("hypernetwork", 0.0) + time.perf_counter() - t1
    if len(parts) == 1 and groups[0] == sorted(groups[0]):
        return parts[0]
    inverse = torch.empty(len(wrapped), dtype=torch.long, device=device)
    inverse[torch.tensor([i for g in groups for i in g], device=device)] = torch.arange(len(wrapped), device=device)
    return {m: (torch.cat([p[m][0] for p in parts])[inverse], torch.cat([p[m][1] for p in parts])[inverse])
            for m in parts[0]}


def row_key(target: str, layer: int, match_layer: int | None = None) -> str:
    """The factors key of reading-memory rows on ``target`` of ``layer`` (``"down_proj@29"``);
    rows that fire from another layer's input of the same module (``match_layer``) are
    ``"down_proj@29<22"``."""
    return f"{target}@{layer}" if match_layer is None or match_layer == layer else f"{target}@{layer}<{match_layer}"


def parse_row_key(key: str) -> tuple[str, int, int | None]:
    """``(target, layer, match_layer)`` of a :func:`row_key` (``match_layer`` ``None``: its own layer).

    :raises ValueError: not a row key.
    """
    target, sep, rest = key.partition("@")
    layer, lt, match = rest.partition("<")
    if not sep or not target or not layer.isdigit() or (lt and not match.isdigit()):
        raise ValueError(f"{key!r} is not a reading-memory rows key (module@layer or module@layer<layer)")
    return target, int(layer), int(match) if match else None


class ValueEnds:
    """Where a value copied from a document ends, by the classes of a tokenizer's tokens.

    :class:`RowUse`'s ``carry`` goes on copying the document after the value: "1988, Amara Nakamura
    received a national award.", "548627 belongs to the replacement boiler." With ``ValueEnds``
    the carry stops before the document's next token where it

    - begins a word with a lower-case letter, except one right after a digit (a value of names, codes
      and numbers goes on in capitals, digits and signs, "263 Elm Terrace", "C15", "$60.69", and a
      number with its unit, "68 kilograms", "12:30 am"; a verb or a function word ends it: "Gideon
      Yilmaz | will", "548627 belongs | to"),
    - is a line break (a lone space, which some tokenizers put before a number, is a word's start), or
    - begins a word after a token of signs only (the end of a clause: "1988, | Amara", "Terrace. | The").

    After the stop no row is lifted, the rows that fire on their own still fire (as with ``once``),
    and the model ends the answer or goes on by itself. The document's next token at a row is the
    token whose output embedding is closest in angle to the row's value (the value is that token's
    unit embedding scaled per dimension, :mod:`d2l_haystack.core.memory`). The first rule needs a
    script with letter case; in one without it only the line-break and clause rules stop the carry.
    Measured in docs/training.md, "A carry that stops where the value ends"; the engine uses it for a
    memory whose ``row_use`` is ``value`` (the shipped one).

    :param tokenizer: the model's tokenizer (``decode`` of one token id).
    :param output_embeddings: the model's output embedding matrix ``(vocab, d_out)``.
    """

    def __init__(self, tokenizer: Any, output_embeddings: torch.Tensor) -> None:
        vocab = output_embeddings.shape[0]
        known = min(vocab, len(tokenizer))
        texts = list(tokenizer.batch_decode([[i] for i in range(known)])) + [""] * (vocab - known)
        word_start = [t[:1].isspace() for t in texts]
        line_break = [not t.strip() and ("\n" in t or "\r" in t) for t in texts]  # a lone space is a word's start
        lower = [s and t.strip()[:1].islower() for s, t in zip(word_start, texts, strict=True)]
        signs = [bool(t.strip()) and not any(c.isalnum() for c in t) for t in texts]
        device = output_embeddings.device
        self.lower_word = torch.tensor(lower, device=device)
        self.line_break = torch.tensor(line_break, device=device)
        self.digit_end = torch.tensor([t.rstrip()[-1:].isdigit() for t in texts], device=device)
        self.word_start = torch.tensor(word_start, device=device)
        self.signs = torch.tensor(signs, device=device)
        self.alnum = torch.tensor([any(c.isalnum() for c in t) for t in texts], device=device)
        self.lone_space = torch.tensor([t != "" and not t.strip() and not ("\n" in t or "\r" in t) for t in texts],
                                       device=device)
        self.inverse_norms = 1.0 / output_embeddings.detach().float().norm(dim=-1).clamp_min(1e-6)

    def next_tokens(self, values: torch.Tensor, output_embeddings: torch.Tensor) -> torch.Tensor:
        """The document's token at each row of ``values`` ``(rows, d_out)``: the nearest output embedding in angle."""
        scores = values.float() @ output_embeddings.detach().to(values.device).float().T
        return (scores * self.inverse_norms.to(values.device)).argmax(-1)

    def stops(self, given: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Whether the value ends between ``given`` (the token just generated) and ``following``
        (the document's next token), elementwise over token ids."""
        following, given = following.to(self.line_break.device), given.to(self.line_break.device)
        return (self.lower_word[following] & ~self.digit_end[given]) | self.line_break[following] \
            | (self.signs[given] & self.word_start[following])

    def continues(self, given: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Whether ``following`` goes on with the word of ``given`` (it begins without a space and has
        a letter or digit: "Lind|q|vist", "H|5|6|Q") or with the digits of a number (a space or signs
        after a digit: "0652| |294", "23|-|19", "316|.|18"), elementwise over token ids."""
        following, given = following.to(self.alnum.device), given.to(self.alnum.device)
        return (~self.word_start[following] & self.alnum[following]) \
            | (self.digit_end[given] & (self.lone_space[following] | self.signs[following]))


class RowUse:
    """Each reading-memory row gives its token once per generated answer.

    A row ``i`` adds the direction of the token that followed position ``i`` of the document
    (:mod:`~d2l_haystack.core.memory`). Nothing in the sum stops the row that gave a token from
    firing again at the next step, and answers looped on it ("War War War", "Spanish Spanish
    Spanish"). With a ``RowUse`` in :meth:`LoraHooks.apply`, after each generated token the row that
    pushed hardest towards it (its firing at the step that chose the token times its value's dot
    product with the token's output embedding) is switched off for the rest of the answer, like
    a pointer moving on: a token that the document has at several positions can still come back.

    With ``carry``, the row after the spent one (the document's following position), where it
    fires at all on its own, then fires at least as strongly as the spent row did: the copy goes on
    as the document goes on, so a number read from the document is followed by the document's unit,
    not the one a trained format prefers. (Lifting it even where it does not fire carried the copy
    on from the wrong position where a token repeats: docs/training.md, "Each row once".)

    A pass over more than one token (a prompt) starts a new answer; each following pass of one
    token per sequence (a generation step with the key-value cache) spends one row per sequence.

    With ``follow`` (an answer the adapters alone were sure of: the memory yielded), no row fires
    but the carried one: the answer is the adapters', and where its last token is one the document
    has (a row pushed towards it), the document's next position pushes the next token, so a value
    the adapters began goes on as the document wrote it ("8 minutes", not a trained "8 weeks").

    :param output_embeddings: the model's output embedding matrix ``(vocab, d_out)``.
    :param carry: pass the spent row's firing on to the next row.
    :param follow: only the carried rows fire (implies ``carry``); a bool per sequence of the batch
        (a tensor) follows in those sequences only and carries in the others.
    :param ends: where given, the carry stops where the copied value ends (:class:`ValueEnds`).
    :param firm: with ``ends``, inside one word or number (:meth:`ValueEnds.continues`) each carried
        step fires this many times as strongly as the step before it, so a long copy is not
        outvoted by a trained format half-way ("065 294 5142" for "0652 294 514"); where a new word
        begins the carry starts again from the spent row's own firing (1: no firming).
    """

    def __init__(self, output_embeddings: torch.Tensor, carry: bool = False,
                 follow: bool | torch.Tensor = False, ends: ValueEnds | None = None, firm: float = 1.0) -> None:
        self.output_embeddings, self.follow, self.ends, self.firm = output_embeddings, follow, ends, float(firm)
        self.carry = carry or (bool(follow.any()) if isinstance(follow, torch.Tensor) else follow)
        self.spent: torch.Tensor | None = None  # (sequences, rows): 1 usable, 0 spent
        self.last: torch.Tensor | None = None   # (sequences, rows): firing at the last position, unfirmed
        self.last_firm: torch.Tensor | None = None  # the same as applied (firmed)

    def __call__(self, fired: torch.Tensor, values: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """The rows' firing ``(sequences, positions, rows)`` with the spent rows zeroed."""
        if fired.dim() == 2:
            return self(fired.unsqueeze(0), values, tokens).squeeze(0)
        batch, positions, n = fired.shape
        only = torch.zeros_like(fired)  # follow: the carried rows' firing
        plain = fired  # the firing without firming (what the next step's carry starts from)
        if positions > 1 or self.spent is None or self.last is None or tokens is None \
                or self.spent.shape != (batch, n):
            self.spent = torch.ones(batch, n, dtype=fired.dtype, device=fired.device)
        else:
            token = tokens.reshape(batch, -1)[:, -1].to(self.output_embeddings.device)
            toward = self.output_embeddings[token].to(values.device, values.dtype) @ values.T  # (batch, rows)
            push = self.last * toward.to(self.last.dtype)
            best = push.argmax(-1)
            gave = push.gather(1, best[:, None]).squeeze(1) > 0
            seqs, givers = torch.arange(batch, device=fired.device)[gave], best[gave]
            self.spent[seqs, givers] = 0
            if self.carry:
                fired, plain, only = self._carry(fired, values, token, seqs, givers, only)
        usable = self.spent[:, None, :].to(fired.dtype)
        self.last = (plain * usable)[:, -1, :].detach().float()
        fired = fired * usable
        self.last_firm = self.last if self.firm == 1.0 else fired[:, -1, :].detach().float()
        if isinstance(self.follow, torch.Tensor):
            return torch.where(self.follow.to(fired.device).view(-1, 1, 1), only * usable, fired)
        return only * usable if self.follow else fired

    def _carry(self, fired: torch.Tensor, values: torch.Tensor, token: torch.Tensor, seqs: torch.Tensor,
               givers: torch.Tensor, only: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lift the row after each spent one: ``(firing as applied, firing unfirmed, follow's firing)``."""
        assert self.spent is not None and self.last is not None and self.last_firm is not None
        n = fired.shape[-1]
        inside = givers + 1 < n
        following = None
        if self.ends is not None and bool(inside.any()):
            following = self.ends.next_tokens(values[(givers + 1).clamp_max(n - 1)], self.output_embeddings)
            inside = inside & ~self.ends.stops(token[seqs], following).to(inside.device)
        carried = torch.zeros_like(self.spent)
        from_spent = self.last[seqs, givers].to(carried.dtype)
        carried[seqs[inside], givers[inside] + 1] = from_spent[inside]
        firmed = carried
        if self.firm != 1.0 and following is not None and self.ends is not None:
            same = self.ends.continues(token[seqs], following).to(carried.device)
            held = self.last_firm[seqs, givers].to(carried.dtype) * self.firm
            firmed = carried.clone()
            firmed[seqs[inside], givers[inside] + 1] = torch.where(same, held, from_spent)[inside]
        goes_on = (fired > 0) & (carried[:, None, :] > 0).to(fired.device)  # only a row that matches on its own
        lifted = torch.maximum(fired, carried[:, None, :].to(fired.dtype))
        plain = torch.where(fired > 0, lifted, fired)
        if firmed is carried:  # no firming: what is applied is the plain lift
            return plain, plain, torch.where(goes_on, lifted, only)
        lifted = torch.maximum(fired, firmed[:, None, :].to(fired.dtype))
        return torch.where(fired > 0, lifted, fired), plain, torch.where(goes_on, lifted, only)


class LoraHooks:
    """Hooks on a model's target modules that add the thread's active LoRA, if any."""

    def __init__(self, model: nn.Module, targets: list[str]) -> None:
        self.targets = list(targets)
        self._local = threading.local()
        self._handles = []
        found = find_target_modules(model, self.targets)
        if not found:
            raise ValueError(f"no target modules {targets} found in {type(model).__name__}")
        for (layer, target), (_, module) in sorted(found.items()):
            self._handles.append(module.register_forward_hook(self._make_hook(layer, target)))
        get_embeddings = getattr(model, "get_input_embeddings", None)
        embeddings = get_embeddings() if callable(get_embeddings) else None
        if isinstance(embeddings, nn.Module):  # the tokens a pass reads, for RowUse
            self._handles.append(embeddings.register_forward_hook(self._remember_tokens))

    def _remember_tokens(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if getattr(self._local, "row_use", None) is not None and inputs:
            self._local.tokens = inputs[0]

    def _make_hook(self, layer: int, target: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            record = getattr(self._local, "record", None)
            if record is not None:
                record.setdefault(target, {})[layer] = inputs[0][0].detach()
            state = getattr(self._local, "state", None)
            if state is None:
                return None
            if (target, layer) in self._local.match_at:  # rows of a layer above fire from this input
                self._local.matched[(target, layer)] = inputs[0]
            key, match = self._local.rows_at.get((target, layer), (None, None))  # rows of this layer (the memory)
            rows = state.get(key) if key is not None else None
            if target not in state and rows is None:
                return None
            x, scale = inputs[0], self._local.scale
            delta = torch.zeros((), dtype=x.dtype, device=x.device)
            if target in state:
                a, b = state[target]
                if a.dim() == 3:
                    a_l, b_l = a[layer], b[layer]
                    delta = (x @ a_l.to(x.dtype).T) @ b_l.to(x.dtype)
                else:
                    a_l, b_l = a[:, layer].to(x.dtype), b[:, layer].to(x.dtype)
                    shape = x.shape
                    x3 = x.reshape(shape[0], -1, shape[-1])
                    delta = torch.bmm(torch.bmm(x3, a_l.transpose(1, 2)), b_l).reshape(*shape[:-1], -1)
            if rows is not None:
                reads = x if match is None else self._local.matched[(target, match)]
                fired = reads @ rows[0].to(reads.dtype).T
                use = self._local.row_use
                if use is not None:
                    fired = use(fired, rows[1], getattr(self._local, "tokens", None))
                from_rows = fired @ rows[1].to(x.dtype)
                mask = self._local.row_mask
                if mask is not None:  # per sequence of the batch: rows on (1) or off (0)
                    from_rows = from_rows * mask.to(x.dtype).view(-1, *([1] * (from_rows.dim() - 1)))
                delta = delta + from_rows
            return output + (scale * delta).to(output.dtype)

        return hook

    @contextmanager
    def apply(self, factors: Factors | None, scale: float = 1.0, row_mask: torch.Tensor | None = None,
              row_use: RowUse | None = None) -> Iterator[None]:
        """Activate ``factors`` for forward passes made by this thread inside the block.

        ``row_mask`` (one 0/1 value per sequence of the batch) switches the reading-memory rows
        (the ``"module@layer"`` factors) off for the sequences marked 0: two readers in one batch.
        ``row_use`` (a fresh :class:`RowUse` per generation) spends each row once it has given a token.
        """
        previous: tuple[Any, ...] = (getattr(self._local, "state", None), getattr(self._local, "scale", 1.0),
                    getattr(self._local, "row_mask", None), getattr(self._local, "row_use", None),
                    getattr(self._local, "rows_at", {}), getattr(self._local, "match_at", set()),
                    getattr(self._local, "matched", {}))
        rows_at: dict[tuple[str, int], tuple[str, int | None]] = {}  # (target, layer) -> (key, match layer)
        match_at: set[tuple[str, int]] = set()
        for key in factors or {}:
            if "@" in key:
                target, layer, match = parse_row_key(key)
                rows_at[(target, layer)] = (key, match)
                if match is not None:
                    match_at.add((target, match))
        self._local.state, self._local.scale, self._local.row_mask, self._local.row_use = (
            factors, scale, row_mask, row_use)
        self._local.rows_at, self._local.match_at, self._local.matched = rows_at, match_at, {}
        try:
            yield
        finally:
            (self._local.state, self._local.scale, self._local.row_mask, self._local.row_use,
             self._local.rows_at, self._local.match_at, self._local.matched) = previous
            self._local.tokens = None

    @contextmanager
    def capture(self) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
        """Record the inputs of every target layer (first sample of the batch) in this thread.

        Yields ``{target: {layer: (tokens, d_in)}}``, filled by the forward passes made inside
        the block (the last pass wins).
        """
        previous = getattr(self._local, "record", None)
        record: dict[str, dict[int, torch.Tensor]] = {}
        self._local.record = record
        try:
            yield record
        finally:
            self._local.record = previous

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


_HOOKS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], LoraHooks]] = weakref.WeakKeyDictionary()
_HOOKS_LOCK = threading.Lock()


def get_hooks(model: nn.Module, targets: list[str]) -> LoraHooks:
    """The (single) :class:`LoraHooks` of ``model`` for ``targets``, installed on first use."""
    with _HOOKS_LOCK:
        per_model = _HOOKS.setdefault(model, {})
        key = tuple(targets)
        if key not in per_model:
            per_model[key] = LoraHooks(model, list(targets))
        return per_model[key]
