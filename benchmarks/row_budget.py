"""The memory's row budget on long documents: greedy contains for several ``max_rows``.

The study behind ``core.memory.DEFAULT_MAX_ROWS`` (docs/training.md, "Long documents"). Long
documents are made by joining ``--join`` documents of a case file (TRAINING-part generated
documents: the budget is chosen here, so held-out sets never come near this script); three of
each long document's questions are asked with the memory's ``max_rows`` set to each of
``--budgets`` (``0``: no budget). Prints the table and writes ``--json``.

Usage::

    export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
    d2l cases realistic --part train --max-docs 240 --seed 777 -o /tmp/study/rt.jsonl
    .venv/bin/python benchmarks/row_budget.py /tmp/study/rt.jsonl --checkpoint CKPT --json out.json
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, run_info, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", help="a case file of short documents (d2l cases realistic --part train)")
    p.add_argument("--checkpoint", default="default", help="a checkpoint with a reading memory")
    p.add_argument("--join", type=int, default=16, help="documents per long document (default 16)")
    p.add_argument("--documents", type=int, default=15, help="long documents (default 15)")
    p.add_argument("--budgets", default="64,128,256,0", help="max_rows values; 0: no budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)

    from d2l_haystack.core import D2LEngine
    from d2l_haystack.evaluation.cases import load_cases
    from d2l_haystack.evaluation.metrics import contains

    engine = D2LEngine(checkpoint=args.checkpoint, chunking="auto", device="cpu")
    memory = engine.memory
    if memory is None:
        raise SystemExit(f"row_budget.py: error: checkpoint {args.checkpoint} has no reading memory")
    memory.max_tokens = max(memory.max_tokens, 1 << 20)
    first: dict[str, Any] = {}
    for case in load_cases(args.cases):
        first.setdefault(case.doc_id, case)
    docs = list(first.values())
    budgets = [int(b) for b in args.budgets.split(",")]
    right: dict[int, list[float]] = {b: [] for b in budgets}
    rng = random.Random(args.seed)
    tokens = []
    for k in range(args.documents):
        group = docs[k * args.join:(k + 1) * args.join]
        if len(group) < args.join:
            break
        adapter = engine.internalize("\n\n".join(c.document for c in group), progress=False)
        tokens.append(adapter.num_tokens)
        for case in rng.sample(group, 3):
            for budget in budgets:
                memory.max_rows = budget or 1 << 30
                reply = engine.generate(case.question, adapter, max_new_tokens=32)
                right[budget].append(contains(reply.text, case.answers))
        print(f"{k + 1} documents: " + ", ".join(f"{b or 'none'} {sum(v):.0f}/{len(v)}" for b, v in right.items()),
              file=sys.stderr, flush=True)
    rows = [{"max_rows": b or "none", "right": int(sum(v)), "questions": len(v),
             "contains": round(sum(v) / max(1, len(v)), 3)} for b, v in right.items()]
    print_table(rows, [("max_rows", "max_rows"), ("right", "right"), ("questions", "questions"),
                       ("contains", "contains")])
    if args.json:
        write_json(args.json, {"run": run_info("row_budget.py", None), "cases": args.cases, "join": args.join,
                               "tokens": tokens, "checkpoint": engine.checkpoint_id, "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
