"""Training-throughput benchmark: documents per second of one training step, per document kind.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py              # writes benchmarks/results/train.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py --quick      # one timed step per kind

For each document kind the trainer draws (``needle``, ``squad``, ``cloze``, ``realistic``), a
trainer on the embedded model and the shipped checkpoint runs ``--steps`` full training steps
(draw the documents, encode them with the frozen base model, run the hypernetwork, the student
with the generated adapters, the backward pass and the optimizer step) on batches of only that
kind, after one warm-up step. Each step is split into its parts with ``time.perf_counter``:

* ``draw``: generating the documents and their questions;
* ``encode``: the frozen encoder (early exit) over the chunks, no gradient;
* ``hypernet``: the hypernetwork forward and the rank layout of the factors;
* ``student``: the base model with the adapters answering the questions (forward);
* ``backward``: the backward pass and the optimizer step.

It also reports the padding waste of the encoder batch (padded tokens / real tokens), the lever
for bucketing documents by length. Speed depends on the machine and on other processes: measure
when nothing else runs (the load average at the start and the end is recorded). The optimizer
steps change a copy of the hypernetwork only; nothing is saved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KINDS = ("needle", "squad", "cloze", "realistic")


def _timed_step(trainer: Any, kind: str, step: int) -> dict[str, float]:
    import numpy as np
    import torch

    from d2l_haystack.training.trainer import Phase

    phase = Phase(until_step=10**9, min_tokens=32, max_tokens=384, max_facts=2, cloze_sentences=6,
                  squad_sentences=4, mix={kind: 1.0})
    parts: dict[str, float] = {}
    t = time.perf_counter()
    docs = trainer.make_docs(np.random.default_rng([99, step]), phase, trainer.cfg.batch_docs)
    parts["draw"] = time.perf_counter() - t
    real_encoder = trainer.encoder
    hyper_forward = trainer.hypernet.forward
    seen: dict[str, Any] = {}

    def encode(input_ids: Any, attention_mask: Any) -> Any:
        t0 = time.perf_counter()
        out = real_encoder(input_ids, attention_mask)
        parts["encode"] = parts.get("encode", 0.0) + time.perf_counter() - t0
        seen["real"], seen["padded"] = int(attention_mask.sum()), int(attention_mask.numel())
        return out

    def hyper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = hyper_forward(*a, **kw)
        parts["hypernet"] = parts.get("hypernet", 0.0) + time.perf_counter() - t0
        return out

    trainer.encoder, trainer.hypernet.forward = encode, hyper
    try:
        trainer.opt.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss, _ = trainer.loss(docs)
        forward = time.perf_counter() - t
        t = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.hypernet.parameters(), 1.0)
        trainer.opt.step()
        parts["backward"] = time.perf_counter() - t
    finally:
        trainer.encoder = real_encoder
        del trainer.hypernet.forward  # back to the class's forward
    parts["student"] = forward - parts.get("encode", 0.0) - parts.get("hypernet", 0.0)
    parts["total"] = sum(v for k, v in parts.items() if k != "total")
    parts["questions"] = float(sum(len(d.qas) for d in docs))
    parts["padding_waste"] = (seen["padded"] - seen["real"]) / max(1, seen["real"]) if seen else 0.0
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/train.json")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-docs", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--quick", action="store_true", help="one timed step per kind")
    args = parser.parse_args(argv)
    import torch

    from d2l_haystack.training.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    steps = 1 if args.quick else args.steps
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out_dir=tmp, init_from=str(Path(__file__).resolve().parents[1] / "d2l_haystack"
                                                     / "checkpoints" / "smollm2-135m-instruct"),
                          batch_docs=args.batch_docs, questions_per_doc=3, unrelated_prob=0.0, unrelated_pool=0,
                          threads=args.threads)
        trainer = Trainer(cfg, log=lambda s: print(s, file=sys.stderr))
        rows: dict[str, Any] = {}
        for kind in args.kinds.split(","):
            _timed_step(trainer, kind, 0)  # warm-up
            runs = [_timed_step(trainer, kind, i + 1) for i in range(steps)]
            row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            row["docs_per_second"] = args.batch_docs / row["total"]
            rows[kind] = row
    head = f"{'kind':<10} {'docs/s':>7} {'step s':>7} {'draw':>6} {'encode':>7} {'hyper':>6} {'student':>8} " \
           f"{'backward':>9} {'pad waste':>9}"
    print(head)
    print("-" * len(head))
    for kind, r in rows.items():
        print(f"{kind:<10} {r['docs_per_second']:>7.2f} {r['total']:>7.2f} {r['draw']:>6.2f} {r['encode']:>7.2f} "
              f"{r['hypernet']:>6.2f} {r['student']:>8.2f} {r['backward']:>9.2f} {r['padding_waste']:>9.0%}")
    report = {"kinds": rows, "batch_docs": args.batch_docs, "steps": steps, "threads": args.threads,
              "load_average": [load_start, os.getloadavg()[0]], "torch": torch.__version__,
              "machine": platform.machine(), "cpus": os.cpu_count(),
              "when": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
