"""Probe: does a learned key -> next-token memory of the document, written as LoRA rows of the last
layer, read values that the hypernetwork's adapter alone gets wrong?

The idea (measured in ``docs/training.md``, "A reading memory"): the base model reading a document
has, at every position ``i``, a ``down_proj`` input ``k_i`` of layer ``--layer``; its next token is
``y_i``. A memory row per position, ``A_i = (a k_i + Q^T P k_i) / s`` and
``B_i = g * w * E[y_i] / |E[y_i]|`` (``E`` the output embedding), is a rank-1 LoRA component of
that layer: while the model answers a question, its own state ``x`` fires row ``i`` with
``x . A_i`` and writes ``y_i``. ``Q, P`` (rank ``--rank``), ``a``, ``g`` and ``w`` are learned; on
the last layer, ``B`` goes straight into the final norm, so training needs no pass through the
model: ``logits = lm_head(norm(h + delta))`` on cached states.

``collect`` caches, for generated TRAINING-part documents (realistic kinds of the training part and
SQuAD training runs; never the held-out kinds, templates or SQuAD validation articles): the
document's keys (base model, no adapter) and, per question, the states along the teacher-forced
gold answer with the shipped checkpoint's adapter applied (all chunks, ``chunking="auto"``).
``train`` fits the memory on all but ``--hold-kinds`` (training-part kinds kept out of the memory's
own training) and reports, on those held kinds, teacher-forced first-token accuracy, all-tokens
accuracy, continuation accuracy and whether the answer's document position scores highest
(``bind0``), with and without the memory. Logits are restricted to candidate tokens (the adapter's
top 64, the document's tokens, the answer): an approximation that leaves the partition function
out. Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_reading_memory.py collect --docs 500 --seed 11 -o /tmp/mem/a.pt
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_reading_memory.py collect --docs 500 --seed 12 -o /tmp/mem/b.pt
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_reading_memory.py train /tmp/mem/a.pt /tmp/mem/b.pt \\
        --json benchmarks/results/reading/memory_probe.json

``collect`` takes about 30 minutes per 500 documents on one CPU thread; ``train`` about 4 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def collect(args: argparse.Namespace) -> None:
    from d2l_haystack.core import D2LEngine
    from d2l_haystack.core.adapter import compose
    from d2l_haystack.training.data import squad_paragraphs, squad_run_document
    from d2l_haystack.training.realistic import realistic_document

    eng = D2LEngine(chunking="auto", autocast="off", keys=None)
    model, fmt, tok = eng.model, eng.format, eng.tokenizer
    layer = args.layer
    paras = squad_paragraphs("train") if args.squad_share > 0 else []
    captured: dict[str, torch.Tensor] = {}
    norm = model.model.norm
    handle = norm.register_forward_pre_hook(lambda m, a: captured.__setitem__("h", a[0][0].detach()))
    rng = np.random.default_rng(args.seed)
    items: list[dict[str, Any]] = []
    start = time.time()
    for n in range(args.docs):
        if paras and rng.random() < args.squad_share:
            doc, kind = squad_run_document(rng, paras, 3, 4), "squad"
        else:
            doc = realistic_document(rng, n_questions=3, part="train")
            kind = doc.meta["kind"]
        ids = fmt.wrap_chunk(fmt.document_ids(doc.text))
        pre = len(fmt.doc_prefix_ids)
        n_doc = len(ids) - pre - len(fmt.doc_suffix_ids)
        pos = list(range(pre - 1, pre + n_doc - 1))  # position i predicts ids[i + 1], a document token
        with torch.no_grad(), eng.hooks.capture() as rec:
            model(input_ids=torch.tensor([ids]))
        keys = rec["down_proj"][layer][pos].half()
        factors = compose([eng.internalize(doc.text, progress=False)], None)
        questions = []
        for qa in doc.qas:
            prompt, answer = fmt.question_ids(qa.question), fmt.answer_ids(qa.answer)
            spaced = tok(" " + qa.answer.strip(), add_special_tokens=False)["input_ids"]
            alt = spaced[0] if spaced[1:] == answer[1:-1] and spaced[0] != answer[0] else -1
            span = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))
            with torch.no_grad(), eng.hooks.capture() as rec, eng.hooks.apply(factors):
                model(input_ids=torch.tensor([prompt + answer[:-1]]))
            questions.append({"x": rec["down_proj"][layer][span].half(), "h": captured["h"][span].half(),
                              "targets": answer, "alt0": alt})
        items.append({"keys": keys, "nxt": [ids[i + 1] for i in pos], "qs": questions, "kind": kind})
        if n % 50 == 0:
            print(f"{n}/{args.docs} documents, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    handle.remove()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"layer": layer, "checkpoint": eng.checkpoint_id, "items": items}, args.out)


class Memory(torch.nn.Module):
    """The learned parts of the memory rows (see the module docstring)."""

    def __init__(self, d_in: int, d_out: int, rank: int, scale_x: float) -> None:
        super().__init__()
        self.q = torch.nn.Parameter(torch.randn(rank, d_in) * 0.01)
        self.p = torch.nn.Parameter(torch.randn(rank, d_in) * 0.01)
        self.a = torch.nn.Parameter(torch.tensor(1.0))
        self.log_gain = torch.nn.Parameter(torch.tensor(1.5))
        self.w = torch.nn.Parameter(torch.ones(d_out))
        self.log_tau = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.scale_x = scale_x

    def scores(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (self.a * (x @ k.T) + (x @ self.q.T) @ (k @ self.p.T).T) / self.scale_x


def train(args: argparse.Namespace) -> None:
    from d2l_haystack.core.models import get_model

    lm = get_model("smollm2-135m-instruct", device="cpu").model
    emb = lm.get_output_embeddings().weight.detach().float()
    norm = lm.model.norm  # the model's own final norm: the memory's output goes straight into it
    unit = emb / emb.norm(dim=-1, keepdim=True)
    hold = set(args.hold_kinds.split(","))
    items = [it for f in args.caches for it in torch.load(f)["items"]]

    def prep(it: dict[str, Any]) -> list[tuple[Any, ...]]:
        k = it["keys"].float()
        k = k - k.mean(0, keepdim=True)
        k = k / k.norm(dim=-1, keepdim=True)
        nxt, out = it["nxt"], []
        for q in it["qs"]:
            x, h, tg, alt = q["x"].float(), q["h"].float(), q["targets"], q["alt0"]
            with torch.no_grad():
                top = (norm(h) @ emb.T).topk(64, dim=-1).indices.flatten().tolist()
            cand = sorted(set(top) | set(nxt) | set(tg) | ({alt} if alt >= 0 else set()))
            idx = {c: i for i, c in enumerate(cand)}
            body, at = tg[:-1], -1
            for j in range(len(nxt)):
                spaced = alt >= 0 and nxt[j] == alt and nxt[j + 1:j + len(body)] == body[1:]
                if nxt[j:j + len(body)] == body or spaced:
                    at = j
                    break
            bind = [at + t if at >= 0 and t < len(body) else -1 for t in range(len(tg))]  # none for end of turn
            out.append((x, h, k, torch.tensor(cand), torch.tensor([idx[i] for i in nxt]),
                        torch.tensor([idx[t] for t in tg]), idx[alt] if alt >= 0 else -1, torch.tensor(bind)))
        return out

    train_set = [p for it in items if it["kind"] not in hold for p in prep(it)]
    held_set = [p for it in items if it["kind"] in hold for p in prep(it)]
    scale_x = float(torch.cat([p[0] for p in train_set[:300]]).norm(dim=-1).mean())
    torch.manual_seed(0)
    mem = Memory(train_set[0][0].shape[1], emb.shape[1], args.rank, scale_x)
    opt = torch.optim.AdamW(mem.parameters(), lr=args.lr, weight_decay=0.0)

    def forward(x, h, k, cand, nxt_i, use=True):  # type: ignore[no-untyped-def]
        s = mem.scores(x, k)
        if use:
            h = h + mem.log_gain.exp() * (s @ (unit[cand[nxt_i]] * mem.w))
        return norm(h) @ emb[cand].T, s

    def lm_loss(lg: torch.Tensor, tg: torch.Tensor, alt: int) -> torch.Tensor:
        lp = lg.log_softmax(-1)
        tok = lp[torch.arange(len(tg)), tg]
        if alt >= 0:  # the first token may be the document's spaced form of the answer's first word
            tok = torch.cat([torch.logsumexp(torch.stack([tok[0], lp[0, alt]]), 0)[None], tok[1:]])
        return -tok.mean()

    def bind_loss(s: torch.Tensor, bind: torch.Tensor) -> torch.Tensor:
        m = bind >= 0
        if not m.any():
            return s.sum() * 0
        z = torch.cat([s[m] * mem.log_tau.exp(), torch.zeros(int(m.sum()), 1)], 1)  # a null option at 0
        return F.cross_entropy(z, bind[m])

    def metrics(data: list[tuple[Any, ...]], use: bool = True, per_question: list[int] | None = None
                ) -> dict[str, float]:
        first = every = cont = n_cont = bound = n_bound = 0
        with torch.no_grad():
            for x, h, k, cand, nxt_i, tg, alt, bind in data:
                lg, s = forward(x, h, k, cand, nxt_i, use)
                ok = lg.argmax(-1) == tg
                ok[0] = ok[0] | (lg[0].argmax() == alt)
                first += int(ok[0])
                every += int(ok.all())
                if per_question is not None:
                    per_question.append(int(ok.all()))
                cont += int(ok[1:].sum())
                n_cont += len(tg) - 1
                if bind[0] >= 0:
                    n_bound += 1
                    bound += int(s[0].argmax() == bind[0])
        return {"first": first / len(data), "all": every / len(data), "cont": cont / max(n_cont, 1),
                "bind0": bound / max(n_bound, 1) if use else float("nan")}

    rng = np.random.default_rng(0)
    curve = []
    for step in range(args.steps + 1):
        batch = [train_set[i] for i in rng.choice(len(train_set), 32)]
        loss = torch.zeros(())
        for x, h, k, cand, nxt_i, tg, alt, bind in batch:
            lg, s = forward(x, h, k, cand, nxt_i)
            loss = loss + (lm_loss(lg, tg, alt) + args.bind_weight * bind_loss(s, bind)) / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            row = {"step": step, "loss": float(loss), "held": metrics(held_set)}
            curve.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    without: list[int] = []
    with_memory: list[int] = []
    held_without, held_with = metrics(held_set, False, without), metrics(held_set, True, with_memory)
    diff = np.array(with_memory) - np.array(without)
    boot = np.random.default_rng(0).choice(len(diff), (2000, len(diff))).astype(int)
    low, high = np.percentile(diff[boot].mean(1), [2.5, 97.5])
    report = {
        "caches": [str(c) for c in args.caches], "hold_kinds": sorted(hold), "rank": args.rank, "steps": args.steps,
        "questions": {"train": len(train_set), "held": len(held_set)},
        "held_without_memory": held_without, "held_with_memory": held_with,
        "held_all_paired": {"mean": float(diff.mean()), "ci95": [float(low), float(high)]},
        "train_without_memory": metrics(train_set[:400], use=False), "train_with_memory": metrics(train_set[:400]),
        "curve": curve,
    }
    print(f"{'teacher-forced accuracy':28s} {'first':>6s} {'all':>6s} {'cont':>6s}")
    for name in ("held_without_memory", "held_with_memory", "train_without_memory", "train_with_memory"):
        r = report[name]
        print(f"{name:28s} {r['first']:6.3f} {r['all']:6.3f} {r['cont']:6.3f}")
    paired = report["held_all_paired"]
    print(f"held kinds, all tokens, with - without: {paired['mean']:+.3f} [{low:+.3f}, {high:+.3f}] (paired bootstrap)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="cache keys and answer states of generated training-part documents")
    c.add_argument("--docs", type=int, default=500)
    c.add_argument("--seed", type=int, default=11)
    c.add_argument("--layer", type=int, default=29)
    c.add_argument("--squad-share", type=float, default=0.3)
    c.add_argument("-o", "--out", required=True)
    t = sub.add_parser("train", help="fit the memory on cached states; report on held training kinds")
    t.add_argument("caches", nargs="+")
    t.add_argument("--hold-kinds", default="faq,profile,lease")
    t.add_argument("--rank", type=int, default=128)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--bind-weight", type=float, default=1.0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(getattr(args, "threads", 1))
    (collect if args.cmd == "collect" else train)(args)


if __name__ == "__main__":
    main()
