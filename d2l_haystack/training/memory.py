"""Fitting the reading memory (:mod:`d2l_haystack.core.memory`) on cached states.

Two steps, both resumable by construction (each writes one file):

* :func:`collect` reads generated TRAINING-part documents (realistic kinds of the training part and
  SQuAD training runs; never the held-out kinds, templates or SQuAD validation articles) with an
  engine: per document, what the memory reads (:meth:`D2LEngine.memory_states`, no adapter) and, per
  question, the states along the teacher-forced gold answer with the document's adapter applied
  (the memory layer's inputs ``x`` and the final hidden states ``h`` before the norm). For a
  memory below the last layer it also keeps the whole sequence (the memory layer's inputs and
  output at every prompt and answer position) and the document adapter of the layers above.
* :func:`fit` learns the memory on those caches: the gold answer's cross-entropy over the full
  vocabulary, ``logits = lm_head(norm(h + delta))`` on the last layer (whose output goes straight
  into the final norm); below it, the rows are added to the memory layer's output at every
  position and the model's layers above run on the result with the document's adapter, so what
  is fitted is what the engine serves (a test checks the logits). Plus a contrastive loss that makes the answer's
  document position fire first (with a "none" option). Questions of ``hold_kinds`` (training-part
  kinds) and every ``val_every``-th document of the other kinds are kept out of the fit; the step
  that reads best on both together (kinds it never saw, documents it never saw) is returned.

Usage::

    d2l memory collect --docs 450 --seed 21 -o /tmp/mem/s21.pt
    d2l memory fit /tmp/mem/s21.pt /tmp/mem/s22.pt --out runs/memory --json runs/memory/fit.json
"""

from __future__ import annotations

import copy
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.lora import row_key
from ..core.memory import DEFAULT_MODULE, ReadingMemory, check_match_layer
from .realistic import DEFAULT_PHRASINGS, check_phrasings

SCHEDULES = ("constant", "cosine")
"""The learning-rate schedules of :func:`fit`."""

DEFAULT_HOLD_KINDS = ("faq", "profile", "lease")
"""Training-part kinds kept out of the memory's fit and used to choose its step. ``profile`` among
them keeps every question about a person's employer, hobby, job or birthplace out of the fit, and
those are most of the held-out needle misses (docs/training.md, "The memory never read a person's
facts"); the shipped memory was fitted with these."""


def collect(engine: Any, docs: int, seed: int, out: str | Path, layer: int = 29, module: str = DEFAULT_MODULE,
            squad_share: float = 0.4, needle_share: float = 0.0, log: Callable[[str], None] | None = None,
            match_layer: int | None = None, phrasings: str = DEFAULT_PHRASINGS) -> Path:
    """Cache what :func:`fit` needs for ``docs`` generated training-part documents (see the module
    docstring); ``engine`` is a :class:`~d2l_haystack.core.engine.D2LEngine` whose chunking the
    adapters use. A share ``squad_share`` of the documents are SQuAD training runs, ``needle_share``
    fact needles in training-part filler (32-384 tokens, the trained phrasings: the memory must
    not break what the hypernetwork already reads), the rest realistic documents. ``match_layer``: the
    match reads that layer's inputs (the documents' keys and the answers' states) while the rows
    stay on ``layer``, the last (:attr:`~d2l_haystack.core.memory.ReadingMemory.match_layer`).
    ``phrasings``: the realistic documents' training template set
    (:data:`~d2l_haystack.training.realistic.PHRASINGS`). Writes ``out`` (``torch.save``) and returns it."""
    from ..core.adapter import compose
    from .data import FillerBank, needle_document, squad_paragraphs, squad_run_document
    from .realistic import realistic_document

    model, fmt, tok = engine.model, engine.format, engine.tokenizer
    check_phrasings(phrasings)
    checked = check_match_layer(layer, match_layer)
    reads = layer if checked is None else checked
    if reads != layer and layer < len(model.model.layers) - 1:
        raise ValueError(f"a match layer needs the rows on the last layer ({len(model.model.layers) - 1}), "
                         f"not {layer}")
    paras = squad_paragraphs("train") if squad_share > 0 else []
    filler = FillerBank(tok, "train") if needle_share > 0 else None
    captured: dict[str, torch.Tensor] = {}
    handles = [model.model.norm.register_forward_pre_hook(lambda m, a: captured.__setitem__("h", a[0][0].detach()))]
    upper = layer < len(model.model.layers) - 1  # rows below the last layer: the fit runs the layers above
    if upper:
        handles.append(model.model.layers[layer].register_forward_hook(
            lambda m, a, out: captured.__setitem__("layer", (out[0] if isinstance(out, tuple) else out)[0].detach())))
    rng = np.random.default_rng(seed)
    items: list[dict[str, Any]] = []
    start = time.time()
    try:
        for n in range(docs):
            draw = rng.random()
            if paras and draw < squad_share:
                doc, kind = squad_run_document(rng, paras, 3, 4), "squad"
            elif filler is not None and draw < squad_share + needle_share:
                doc = needle_document(rng, filler, int(rng.integers(32, 385)), int(rng.integers(1, 3)), 3)
                kind = "needle"
            else:
                doc = realistic_document(rng, n_questions=3, part="train", phrasings=phrasings)
                kind = doc.meta["kind"]
            chunks = engine.chunk_ids(doc.text)
            passes = [(s.half(), ids) for s, ids, _ in engine.memory_states(chunks, reads, module)]
            # the network's adapter alone: rows of a memory the checkpoint already has would be in "h"
            factors = {m: f for m, f in compose([engine.internalize(doc.text, progress=False)], None).items()
                       if "@" not in m}
            questions: list[dict[str, Any]] = []
            for qa in doc.qas:
                prompt, answer = fmt.question_ids(qa.question), fmt.answer_ids(qa.answer)
                spaced = tok(" " + qa.answer.strip(), add_special_tokens=False)["input_ids"]
                alt = spaced[0] if spaced[1:] == answer[1:-1] and spaced[0] != answer[0] else -1
                span = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))
                with torch.no_grad(), engine.hooks.capture() as rec, engine.hooks.apply(factors):
                    model(input_ids=torch.tensor([prompt + answer[:-1]]))
                q = {"x": rec[module][reads][span].half(), "h": captured["h"][span].half(), "targets": answer,
                     "alt0": alt}
                if upper:  # the whole sequence: the rows fire at every position, the layers above attend to all
                    q.update(x_all=rec[module][layer].half(), h_layer=captured["layer"].half(), start=span.start,
                             ids=prompt + answer[:-1])
                questions.append(q)
            item: dict[str, Any] = {"passes": passes, "qs": questions, "kind": kind, "text": doc.text}
            if upper:  # the adapter of the layers above (the fit applies it there)
                item["upper"] = {m: (a[layer + 1:].half(), b[layer + 1:].half()) for m, (a, b) in factors.items()
                                 if "@" not in m}
            items.append(item)
            if log is not None and (n % 50 == 0 or n == docs - 1):
                log(f"{n + 1}/{docs} documents, {time.time() - start:.0f} s")
    finally:
        for handle in handles:
            handle.remove()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"layer": layer, "module": module, "checkpoint": engine.network_id, "chunking": engine.chunking,
                **({} if reads == layer else {"match_layer": reads}),
                **({} if phrasings == DEFAULT_PHRASINGS else {"phrasings": phrasings}), "items": items}, out)
    return out


@dataclass
class _Question:
    x: torch.Tensor          # (T, d_in) memory-layer inputs along the answer
    h: torch.Tensor          # (T, d_out) final hidden states before the norm
    keys: torch.Tensor       # (n, d_in) normalised per pass
    nxt: torch.Tensor        # (n,) the token each key predicts
    targets: torch.Tensor    # (T,)
    alt0: int                # the spaced form of the answer's first token, or -1
    bind: torch.Tensor       # (T,) the document position of each answer token, -1 if none
    cand: torch.Tensor | None = None  # the tokens training's softmax runs over (see _Fitter.restrict)
    # rows below the last layer: the whole sequence (prompt and answer) and the adapter of the layers above
    x_all: torch.Tensor | None = None    # (L, d_in) memory-layer inputs
    h_layer: torch.Tensor | None = None  # (L, d_out) the memory layer's output without the rows
    start: int = 0                       # the position that predicts the answer's first token
    upper: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # module -> (layers, R, d) factors


def _questions(item: dict[str, Any]) -> list[_Question]:
    passes = item.get("passes") or [(item["keys"], item["nxt"])]  # caches of the first probe: one pass
    keys = torch.cat([ReadingMemory.normalise_keys(s.float()) for s, _ in passes])
    nxt = [t for _, ids in passes for t in ids]
    upper = item.get("upper")
    out = []
    for q in item["qs"]:
        tg, alt = list(q["targets"]), int(q["alt0"])
        body, at = tg[:-1], -1
        for j in range(len(nxt)):
            spaced = alt >= 0 and nxt[j] == alt and nxt[j + 1:j + len(body)] == body[1:]
            if nxt[j:j + len(body)] == body or spaced:
                at = j
                break
        bind = [at + t if at >= 0 and t < len(body) else -1 for t in range(len(tg))]  # none for end of turn
        question = _Question(q["x"].float(), q["h"].float(), keys, torch.tensor(nxt), torch.tensor(tg), alt,
                             torch.tensor(bind))
        if "x_all" in q:
            question.x_all, question.h_layer = q["x_all"].float(), q["h_layer"].float()
            question.start, question.upper = int(q["start"]), upper
        out.append(question)
    return out


class _Fitter:
    """The answer's logits with and without the memory, for batches of cached questions.

    On the last layer the rows' output goes straight into the final norm (no model pass). Below
    it, the rows are added to the memory layer's cached output at every position and the layers
    above run on the result, each question with its own document adapter (zero-padded in rank).
    """

    def __init__(self, memory: ReadingMemory, lm: Any) -> None:
        self.memory, self.lm = memory, lm
        self.norm = lm.model.norm
        self.emb = lm.get_output_embeddings().weight.detach().float()
        self.unit = self.emb / self.emb.norm(dim=-1, keepdim=True)
        self.above = list(lm.model.layers)[memory.layer + 1:]

    @torch.no_grad()
    def restrict(self, q: _Question, top: int = 64) -> None:
        """Training's softmax runs over the tokens that compete: the model's own top ``top`` along
        the answer, the document's tokens, the answer's (a sampled softmax: 100x cheaper than the
        full vocabulary; the metrics that choose the step use the full vocabulary)."""
        best = (self.norm(q.h) @ self.emb.T).topk(top, dim=-1).indices.flatten()
        extra = torch.tensor([q.alt0] if q.alt0 >= 0 else [], dtype=torch.long)
        q.cand = torch.unique(torch.cat([best, q.nxt, q.targets, extra]))

    def _delta(self, x: torch.Tensor, q: _Question) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.memory.scores(x, q.keys)
        return s @ self.memory.value_rows(self.unit[q.nxt]), s

    def _above(self, qs: list[_Question], use: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Final hidden states (before the norm) along each answer, and the rows' scores there."""
        length = max(len(q.h_layer) for q in qs)  # type: ignore[arg-type]
        h = torch.zeros(len(qs), length, self.emb.shape[1])
        scores = []
        for i, q in enumerate(qs):
            assert q.x_all is not None and q.h_layer is not None
            h[i, :len(q.h_layer)] = q.h_layer
            if use:
                delta, s = self._delta(q.x_all, q)
                h[i, :len(q.h_layer)] += delta
                scores.append(s[q.start:q.start + len(q.targets)])
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in qs[0].upper or {}:
            rank = max(q.upper[m][0].shape[1] for q in qs)  # type: ignore[index]
            a = torch.zeros(len(qs), len(self.above), rank, qs[0].upper[m][0].shape[-1])  # type: ignore[index]
            b = torch.zeros(len(qs), len(self.above), rank, qs[0].upper[m][1].shape[-1])  # type: ignore[index]
            for i, q in enumerate(qs):
                qa, qb = q.upper[m]  # type: ignore[index]
                a[i, :, :qa.shape[1]], b[i, :, :qb.shape[1]] = qa.float(), qb.float()
            factors[m] = (a, b)

        def hook(j: int, m: str) -> Any:
            def add(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
                a, b = factors[m]
                return output + torch.bmm(torch.bmm(inputs[0], a[:, j].transpose(1, 2)), b[:, j])
            return add

        handles = [getattr(layer.mlp, m).register_forward_hook(hook(j, m))
                   for j, layer in enumerate(self.above) for m in factors]
        try:
            position = torch.arange(length)[None].expand(len(qs), -1)
            rotary = self.lm.model.rotary_emb(h, position)
            for layer in self.above:  # right padding: causal attention keeps it out of every real position
                out = layer(h, attention_mask=None, position_ids=position, position_embeddings=rotary)
                h = out[0] if isinstance(out, tuple) else out
        finally:
            for handle in handles:
                handle.remove()
        return [h[i, q.start:q.start + len(q.targets)] for i, q in enumerate(qs)], scores

    def forward(self, qs: list[_Question], use: bool = True, full: bool = True
                ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per question: the answer's logits (full vocabulary, or the question's candidates when
        ``full`` is false) and the rows' scores along the answer (``None`` without the memory)."""
        if use and qs[0].x_all is not None:
            finals, scores = self._above(qs, use)
            pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = list(zip(finals, scores))
        else:
            pairs = []
            for q in qs:
                delta, s = self._delta(q.x, q) if use else (0.0, None)
                pairs.append((q.h + delta, s))
        return [(self.norm(h) @ (self.emb if full or q.cand is None else self.emb[q.cand]).T, s)
                for q, (h, s) in zip(qs, pairs)]

    def loss(self, qs: list[_Question], bind_weight: float) -> torch.Tensor:
        total = torch.zeros(())
        for q, (logits, s) in zip(qs, self.forward(qs, full=False)):
            targets, alt0 = q.targets, q.alt0
            if q.cand is not None:  # positions in the candidate list
                targets = torch.searchsorted(q.cand, q.targets)
                alt0 = int(torch.searchsorted(q.cand, torch.tensor(alt0))) if alt0 >= 0 else -1
            lp = logits.log_softmax(-1)
            tok = lp[torch.arange(len(targets)), targets]
            if alt0 >= 0:  # the first token may be the document's spaced form of the answer's first word
                tok = torch.cat([torch.logsumexp(torch.stack([tok[0], lp[0, alt0]]), 0)[None], tok[1:]])
            total = total - tok.mean()
            m = q.bind >= 0
            if m.any() and bind_weight and s is not None:
                z = torch.cat([s[m] * 10.0, torch.zeros(int(m.sum()), 1)], 1)  # a "none" option at 0
                total = total + bind_weight * F.cross_entropy(z, q.bind[m])
        return total / len(qs)

    @torch.no_grad()
    def metrics(self, data: list[_Question], use: bool = True, per_question: list[int] | None = None,
                batch: int = 16) -> dict[str, float]:
        first = every = cont = n_cont = bound = n_bound = 0
        for i in range(0, len(data), batch):
            qs = data[i:i + batch]
            for q, (logits, s) in zip(qs, self.forward(qs, use)):
                ok = logits.argmax(-1) == q.targets
                ok[0] = ok[0] | (q.alt0 >= 0 and bool(logits[0].argmax() == q.alt0))
                first += int(ok[0])
                every += int(ok.all())
                if per_question is not None:
                    per_question.append(int(ok.all()))
                cont += int(ok[1:].sum())
                n_cont += len(q.targets) - 1
                if s is not None and q.bind[0] >= 0:
                    n_bound += 1
                    bound += int(s[0].argmax() == q.bind[0])
        n = max(len(data), 1)
        return {"first": first / n, "all": every / n, "cont": cont / max(n_cont, 1),
                "bind0": bound / max(n_bound, 1) if use else float("nan")}


def _lr_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """The factor on the learning rate at step ``t``: 1 (``constant``), or a cosine from 1 down to
    0.1 at ``steps`` (``cosine``)."""
    if schedule == "constant":
        return lambda t: 1.0
    return lambda t: 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(t, steps) / max(steps, 1)))


def fit(caches: list[str | Path], lm: Any, hold_kinds: tuple[str, ...] = DEFAULT_HOLD_KINDS, rank: int = 128,
        steps: int = 1500, lr: float = 3e-3, weight_decay: float = 0.0, bind_weight: float = 1.0,
        batch: int = 32, eval_every: int = 250, seed: int = 0, val_every: int = 10,
        init: ReadingMemory | None = None, log: Callable[[str], None] | None = None,
        checkpoint_id: str | None = None, schedule: str = "constant") -> tuple[ReadingMemory, dict[str, Any]]:
    """Fit a reading memory on ``caches`` (:func:`collect`) for the causal LM ``lm``; returns the
    memory at the step that read best (teacher-forced, all answer tokens right) on the held kinds
    and the validation documents together, and a report (sizes, the curve, with/without-memory
    metrics per validation kind, a paired bootstrap on the held kinds). ``init``: a memory to go
    on from (a fit continued in another session; its rank, layer and scale are kept).
    ``checkpoint_id``: the hypernetwork the memory is for; caches collected with another are refused
    (their adapters' states are not this network's). ``schedule``: the learning rate, ``"constant"``
    or ``"cosine"`` (from ``lr`` down to a tenth of it at the last step)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    loaded = [torch.load(c, weights_only=False) for c in caches]
    layers = {(d["layer"], d.get("module", DEFAULT_MODULE), d.get("match_layer")) for d in loaded}
    if len(layers) != 1:
        raise ValueError("caches of different layers cannot be fitted together: "
                         + ", ".join(sorted(row_key(m, layer, match) for layer, m, match in layers)))
    networks = {str(d.get("checkpoint")) for d in loaded}
    if len(networks) != 1 or (checkpoint_id is not None and networks != {checkpoint_id}):
        raise ValueError(f"the caches were collected with checkpoint(s) {', '.join(sorted(networks))}"
                         + (f", the memory is for {checkpoint_id}" if checkpoint_id else "")
                         + ": collect them again with that checkpoint")
    layer, module, match_layer = layers.pop()
    phrasings = sorted({str(d.get("phrasings", DEFAULT_PHRASINGS)) for d in loaded})
    items = [it for d in loaded for it in d["items"]]
    held = [q for it in items if it["kind"] in hold_kinds for q in _questions(it)]
    rest = [it for it in items if it["kind"] not in hold_kinds]
    val_items = [it for i, it in enumerate(rest) if val_every and i % val_every == val_every - 1]
    val = {kind: [q for it in val_items if it["kind"] == kind for q in _questions(it)]
           for kind in sorted({it["kind"] for it in val_items})}
    train = [q for i, it in enumerate(rest) if not (val_every and i % val_every == val_every - 1)
             for q in _questions(it)]
    choose = held + [q for qs in val.values() for q in qs]
    if not train or not held:
        raise ValueError(f"need questions both outside and inside the held kinds {hold_kinds}: "
                         f"{len(train)} and {len(held)}")
    d_out = lm.get_output_embeddings().weight.shape[1]
    scale_x = float(torch.cat([q.x for q in train[:300]]).norm(dim=-1).mean())
    torch.manual_seed(seed)
    if init is None:
        memory = ReadingMemory(train[0].x.shape[1], d_out, rank, layer, module, scale_x, match_layer=match_layer)
    elif (init.layer, init.module, init.match_layer) != (layer, module, match_layer):
        raise ValueError(f"the memory to go on from is on {init.key}, the caches on "
                         f"{row_key(module, layer, match_layer)}")
    else:
        memory = ReadingMemory(init.q.shape[1], d_out, init.q.shape[0], layer, module, init.scale_x,
                               init.yield_above, init.max_tokens, init.override, init.max_rows,
                               init.row_use, init.follow_on_yield, init.long_documents,
                               init.match_layer, init.firm_carry)  # used as the init is
        memory.load_state_dict(init.state_dict())
        memory.requires_grad_(True)
    lm.requires_grad_(False)
    fitter = _Fitter(memory, lm)
    for q in train:
        fitter.restrict(q)
    decay = [memory.q, memory.p]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": [memory.a, memory.log_gain, memory.w], "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(schedule, steps))
    rng = np.random.default_rng(seed)
    curve: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, Any]] = (-1.0, 0, {})
    start = time.time()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            row: dict[str, Any] = {"step": step, "held": fitter.metrics(held), "chosen_on": fitter.metrics(choose),
                                   "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - start)}
            curve.append(row)
            if log is not None:
                log(str(row))
            if row["chosen_on"]["all"] > best[0]:
                best = (row["chosen_on"]["all"], step, copy.deepcopy(memory.state_dict()))
        if step == steps:
            break
        loss = fitter.loss([train[i] for i in rng.choice(len(train), batch)], bind_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    memory.load_state_dict(best[2])
    without: list[int] = []
    with_memory: list[int] = []
    held_without, held_with = fitter.metrics(held, False, without), fitter.metrics(held, True, with_memory)
    diff = np.array(with_memory) - np.array(without)
    boot = np.random.default_rng(0).choice(len(diff), (2000, len(diff)))
    low, high = np.percentile(diff[boot].mean(1), [2.5, 97.5])
    report = {
        "caches": [str(c) for c in caches], "layer": layer, "module": module, "match_layer": match_layer,
        "phrasings": phrasings,
        "hold_kinds": sorted(hold_kinds),
        "rank": memory.q.shape[0], "init": init is not None,
        "steps": steps, "best_step": best[1], "lr": lr, "schedule": schedule, "weight_decay": weight_decay,
        "bind_weight": bind_weight,
        "questions": {"train": len(train), "held": len(held), "validation": sum(len(v) for v in val.values())},
        "held_without_memory": held_without, "held_with_memory": held_with,
        "validation": {kind: {"questions": len(qs), "without": fitter.metrics(qs, False), "with": fitter.metrics(qs)}
                       for kind, qs in val.items()},
        "held_all_paired": {"mean": float(diff.mean()), "ci95": [float(low), float(high)]},
        "train_without_memory": fitter.metrics(train[:400], use=False),
        "train_with_memory": fitter.metrics(train[:400]), "curve": curve,
    }
    return memory.eval().requires_grad_(False), report


def write_checkpoint(memory: ReadingMemory, base: str | Path, out: str | Path, report: dict[str, Any] | None = None
                     ) -> Path:
    """A checkpoint folder ``out``: the hypernetwork checkpoint ``base`` (its files copied) plus
    ``memory.safetensors`` (and ``memory_fit.json``, the report, when given)."""
    import json

    base, out = Path(base), Path(out)
    if out.resolve() == base.resolve():
        raise ValueError("write the memory checkpoint to a new folder, not over its base checkpoint")
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, out / f.name)
    memory.save(out)
    if report is not None:
        (out / "memory_fit.json").write_text(json.dumps(report, indent=1) + "\n")
    return out


def print_report(report: dict[str, Any], file: Any = None) -> None:
    """The fit's table: teacher-forced accuracy with and without the memory (``file``: default the
    standard output at the time of the call)."""
    file = sys.stdout if file is None else file
    print(f"{'teacher-forced accuracy':28s} {'first':>6s} {'all':>6s} {'cont':>6s} {'bind0':>6s}", file=file)
    for name in ("held_without_memory", "held_with_memory", "train_without_memory", "train_with_memory"):
        r = report[name]
        print(f"{name:28s} {r['first']:6.3f} {r['all']:6.3f} {r['cont']:6.3f} {r['bind0']:6.3f}", file=file)
    for kind, v in report.get("validation", {}).items():
        print(f"{'validation ' + kind + ' (' + str(v['questions']) + ')':28s} all tokens {v['without']['all']:.3f} -> "
              f"{v['with']['all']:.3f}", file=file)
    p = report["held_all_paired"]
    print(f"held kinds ({report['questions']['held']} questions), all tokens, with - without: {p['mean']:+.3f} "
          f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] (paired bootstrap); best step {report['best_step']}",
          file=file)
