"""Two readers: the adapter alone and the adapter with the reading memory, per question.

The data behind ``core.memory.DEFAULT_YIELD_ABOVE`` and ``DEFAULT_OVERRIDE`` (docs/training.md,
"Two readers"). For every question of a case file: both greedy answers, whether each contains the
gold answer, the adapter's first-token probability, and, where the answers differ, the three mean
token log-probabilities the override rule reads (the memory's of its own answer and of the
adapter's, the adapter's of the memory's; ``D2LEngine.both_readers``). ``table`` then replays
the choosing rules on the records: the adapter alone, the memory always, the yield test, the
yield test with the override.

Usage (training-part or study-only data only: the rules are chosen here, so held-out sets never
come near this script)::

    export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
    d2l cases realistic --part train --max-docs 70 --seed 902 -o /tmp/tr/realistic.jsonl
    .venv/bin/python benchmarks/two_readers.py needles --seed 4243 -o /tmp/tr/needles.jsonl
    .venv/bin/python benchmarks/two_readers.py answer /tmp/tr/needles.jsonl --max-new-tokens 16 -o /tmp/tr/needles.rec
    .venv/bin/python benchmarks/two_readers.py answer /tmp/tr/realistic.jsonl -o /tmp/tr/realistic.rec
    .venv/bin/python benchmarks/two_readers.py table /tmp/tr/needles.rec /tmp/tr/realistic.rec --json out.json

``needles`` writes needles in phrasings written for this study only (neither the training
templates nor the held-out evaluation's), each with a value format of its own, in TRAINING-part
filler (``training.data.speech_sentences("train")``, read from ``$D2L_EVALDATA``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, run_info, write_json  # noqa: E402

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
FIRST = ["Amelia", "Tomasz", "Ingrid", "Rahul", "Odette", "Kwame", "Lucia", "Bernard", "Yusuf", "Hana"]
LAST = ["Root", "Halvorsen", "Okafor", "Brennan", "Castell", "Moreau", "Lindqvist", "Sato", "Pereira", "Voss"]
STREETS = ["Tanner Lane", "Orchard Row", "Millbrook Road", "Quarry Street", "Heron Walk", "Elm Terrace"]
LETTERS = list("ABCDEFGHJKLMNPQRSTUVWXYZ")


VALUES: dict[str, Callable[[np.random.Generator], str]] = {
    "combination": lambda r: "-".join(str(int(r.integers(1, 60))) for _ in range(3)),
    "tag": lambda r: str(r.choice(LETTERS)) + str(int(r.integers(10, 100))) + str(r.choice(LETTERS)),
    "money": lambda r: f"${int(r.integers(3, 400))}.{int(r.integers(0, 100)):02d}",
    "clock": lambda r: f"{int(r.integers(1, 13))}:{int(r.integers(0, 12)) * 5:02d} {'am' if r.random() < .5 else 'pm'}",
    "date": lambda r: f"{r.choice(MONTHS)} {int(r.integers(1, 29))}",
    "person": lambda r: f"{r.choice(FIRST)} {r.choice(LAST)}",
    "street": lambda r: f"{int(r.integers(2, 300))} {r.choice(STREETS)}",
    "weight": lambda r: f"{int(r.integers(2, 90))} kilograms",
    "room": lambda r: f"Room {r.choice(list('ABCDEFG'))}{int(r.integers(1, 40))}",
    "phone": lambda r: f"0{int(r.integers(100, 999))} {int(r.integers(100, 999))} {int(r.integers(100, 999))}",
    "reference": lambda r: str(int(r.integers(100000, 1000000))),
}
"""A value of each format, drawn from ``r``."""


STUDY_TEMPLATES = [
    ("Members are reminded that the padlock on the rowing shed opens with {v}.",
     "What opens the padlock on the rowing shed?", "combination"),
    ("Inventory tag {v} was assigned to the borrowed telescope.",
     "Which inventory tag does the borrowed telescope carry?", "tag"),
    ("Renewing a fishing permit now costs {v} at the harbour office.", "How much is a fishing permit renewal?",
     "money"),
    ("The ferry to the island leaves the pier each morning at {v}.",
     "When does the morning ferry to the island depart?", "clock"),
    ("Clearing out of the allotments has to be finished by {v}.", "By what date must the allotments be cleared?",
     "date"),
    ("Keys to the choir hall are held by {v}, the caretaker.", "Who keeps the keys to the choir hall?", "person"),
    ("Parcels for the book club should be sent to {v}.", "Where should parcels for the book club go?", "street"),
    ("Each crate of donated apples weighed roughly {v}.", "About how heavy was a crate of the donated apples?",
     "weight"),
    ("The chess tournament moved to {v} because of the leak.", "Where is the chess tournament being held now?",
     "room"),
    ("Anyone who finds the lost terrier can ring {v}.", "What number should someone call about the lost terrier?",
     "phone"),
    ("Shipment reference {v} belongs to the replacement boiler.",
     "What is the shipment reference of the replacement boiler?", "reference"),
]
"""Needle phrasings written for this study only (see the module docstring)."""


def make_needles(args: argparse.Namespace) -> int:
    from d2l_haystack.core.models import get_model
    from d2l_haystack.evaluation import cases as C
    from d2l_haystack.evaluation.cases import write_cases
    from d2l_haystack.training import data as D

    def needle(rng: np.random.Generator, template: str) -> tuple[str, str, str]:
        sentence, question, kind = STUDY_TEMPLATES[int(rng.integers(len(STUDY_TEMPLATES)))]
        value = VALUES[kind](rng)
        return sentence.format(v=value), question, value

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(" ".join(D.speech_sentences("train")))
    original, C._needle = C._needle, needle  # the filler and placement of niah_cases, these needles
    try:
        lengths = [int(x) for x in args.lengths.split(",")]
        made = C.niah_cases(get_model(args.model).tokenizer, lengths, [0, 0.25, 0.5, 0.75, 1],
                            per_cell=args.per_cell, filler="file", filler_file=fh.name, seed=args.seed)
    finally:
        C._needle = original
        Path(fh.name).unlink()
    for c in made:
        c["id"] = c["doc_id"] = "study-" + c["id"]
    print(f"wrote {write_cases(made, args.out)} cases to {args.out}")
    return 0


def answer(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from d2l_haystack.core import D2LEngine
    from d2l_haystack.evaluation.cases import load_cases
    from d2l_haystack.evaluation.metrics import contains

    engine = D2LEngine(args.model, checkpoint=args.checkpoint, chunking=args.chunking, device="cpu")
    if engine.memory is None:
        raise SystemExit(f"two_readers.py: error: checkpoint {args.checkpoint} has no reading memory")
    adapters: dict[str, Any] = {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        for c in tqdm(load_cases(args.cases), desc="questions", disable=args.no_progress):
            if c.doc_id not in adapters:
                adapters[c.doc_id] = engine.internalize(c.document, progress=False)
            both = engine.both_readers(c.question, adapters[c.doc_id], max_new_tokens=args.max_new_tokens)
            rec: dict[str, Any] = {"id": c.id, "answers": c.answers, "gated": both is None}
            if both is not None:
                checks = {k: v for k, v in asdict(both).items() if k not in ("adapter", "memory", "meta")}
                rec.update({who: {"text": text, "contains": contains(text, c.answers)}
                            for who, text in (("adapter", both.adapter), ("memory", both.memory))},
                           adapter_first=checks.pop("adapter_confidence"), **checks, same=both.same)
            fh.write(json.dumps(rec) + "\n")
    print(f"wrote {out}")
    return 0


def choose(rec: dict[str, Any], rule: str, yield_above: float, override: Any) -> str:
    """Which reader's answer ``rule`` sends: ``adapter``, ``memory``, ``yield`` or ``override``."""
    if rule in ("adapter", "memory"):
        return rule
    if rec["adapter_first"] < yield_above:
        return "memory"
    if rule == "yield" or rec["same"]:
        return "adapter"
    return "memory" if override.prefers_memory(rec["own"], rec["memory_on_adapter"],
                                               rec["adapter_on_memory"]) else "adapter"


def table(args: argparse.Namespace) -> int:
    from d2l_haystack.core.memory import DEFAULT_OVERRIDE, DEFAULT_YIELD_ABOVE

    rules = ("adapter", "memory", "yield", "override")
    rows = []
    for path in args.records:
        recs = [json.loads(line) for line in open(path)]
        row: dict[str, Any] = {"records": Path(path).name, "questions": len(recs),
                               "gated": sum(r["gated"] for r in recs)}
        picks = {rule: [choose(r, rule, DEFAULT_YIELD_ABOVE, DEFAULT_OVERRIDE) if not r["gated"] else None
                        for r in recs] for rule in rules}
        for rule in rules:
            right = [r[p]["contains"] if p else 0.0 for r, p in zip(recs, picks[rule])]
            row[rule] = round(sum(right) / max(1, len(recs)), 3)
        changed = [(r["memory"]["contains"] - r["adapter"]["contains"]) for r, y, o in
                   zip(recs, picks["yield"], picks["override"]) if y and o and y != o]
        row["override_won"], row["override_lost"] = sum(d > 0 for d in changed), sum(d < 0 for d in changed)
        rows.append(row)
    print_table(rows, [("records", "records"), ("questions", "questions"), ("gated", "gated"),
                       ("adapter alone", "adapter"), ("memory always", "memory"), ("yield test", "yield"),
                       ("yield + override", "override"), ("override won", "override_won"),
                       ("override lost", "override_lost")])
    if args.json:
        write_json(args.json, {"run": run_info("two_readers.py", None), "yield_above": DEFAULT_YIELD_ABOVE,
                               "override": DEFAULT_OVERRIDE.to_text(), "metric": "contains", "rows": rows})
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    n = sub.add_parser("needles", help="needles in study-only phrasings, in training-part filler")
    n.add_argument("--seed", type=int, default=4242)
    n.add_argument("--per-cell", type=int, default=3)
    n.add_argument("--lengths", default="128,256,384,500", help="document lengths in tokens")
    n.add_argument("--model", default="smollm2-135m-instruct")
    n.add_argument("-o", "--out", required=True)
    n.set_defaults(handler=make_needles)
    a = sub.add_parser("answer", help="both readers' answers and the rule's inputs, per question")
    a.add_argument("cases")
    a.add_argument("-o", "--out", required=True)
    a.add_argument("--checkpoint", default="default")
    a.add_argument("--model", default="smollm2-135m-instruct")
    a.add_argument("--chunking", default="auto")
    a.add_argument("--max-new-tokens", type=int, default=32)
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(handler=answer)
    t = sub.add_parser("table", help="replay the choosing rules on records")
    t.add_argument("records", nargs="+")
    t.add_argument("--json")
    t.set_defaults(handler=table)
    args = p.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
