"""``d2l eval``, ``d2l niah``, ``d2l cases`` and ``d2l compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from d2l_haystack.core.models import DEFAULT_MODEL

from .options import add_chunking_option, add_reading_memory_option, checkpoint_arg


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="evaluate methods (base, icl, d2l, ...) on a QA case file")
    p.add_argument("--cases", required=True, help="JSONL: {id, document, question, answers, doc_id?}")
    p.add_argument("--methods", default="base,icl,d2l", help="comma-separated (base,icl,d2l,rag,routed,hybrid)")
    p.add_argument("--json", dest="json_out", help="write results and per-case outputs here")
    p.add_argument("--limit", type=int, help="only the first N cases")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--checkpoint", default="default", help="'default', a folder, or 'none' (untrained)")
    p.add_argument("--chunk-tokens", type=int, help="tokens per chunk when internalizing")
    p.add_argument("--min-relevance", type=float, metavar="S",
                   help="the engine's relevance gate (default: the engine's DEFAULT_MIN_RELEVANCE)")
    add_chunking_option(p)
    add_reading_memory_option(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_eval)

    n = sub.add_parser("niah", help="build needle-in-a-haystack case files")
    n.add_argument("--lengths", default="256,512,1024,2048,4096", help="document lengths in tokens")
    n.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1]")
    n.add_argument("--per-cell", type=int, default=2)
    n.add_argument("--filler", default="natural", choices=["natural", "synthetic", "file"])
    n.add_argument("--filler-file", help="text file of filler when --filler file")
    n.add_argument("--template", default="magic", choices=["magic", "code", "city", "heldout"],
                   help="needle phrasing: magic/code/city (trained) or heldout (phrasings, value formats and "
                        "question templates training never used; a new one per needle)")
    n.add_argument("--seed", type=int, default=1234)
    n.add_argument("--model", default=DEFAULT_MODEL, help="model whose tokenizer counts tokens")
    n.add_argument("-o", "--out", required=True)
    n.set_defaults(handler=_niah)

    c = sub.add_parser("cases", help="build SQuAD or interference case files from the evaluation data",
                       description="squad-paragraphs / squad-articles: SQuAD validation documents with their "
                                   "gold questions; squad-sentences: one sentence of a validation paragraph "
                                   "per document with one of its cloze-translated questions (default 100); "
                                   "squad-gold-sentences: one gold question per validation paragraph, asked "
                                   "with only the sentence holding its answer (default 100); "
                                   "squad-swapped: validation paragraphs whose answers are swapped for "
                                   "other spans of the same shape, answerable only by reading (default 100 "
                                   "paragraphs, 2 questions each); "
                                   "interference: general questions asked with an unrelated document; "
                                   "realistic: generated everyday documents of held-out kinds and templates "
                                   "(training never sees them; default 100 documents, 2 questions each; "
                                   "--part train for the training distribution).")
    c.add_argument("kind", choices=["squad-paragraphs", "squad-articles", "squad-sentences", "squad-gold-sentences",
                                      "squad-swapped", "interference", "realistic"])
    c.add_argument("--part", choices=["heldout", "train"], default="heldout",
                   help="realistic: which part of the generator (default heldout)")
    c.add_argument("--max-docs", type=int)
    c.add_argument("--questions-per-doc", type=int)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="squad-paragraphs / squad-articles: leave out the documents (doc_id) of this case "
                        "file (.jsonl) or d2l eval report (.json), so the new file is disjoint from it "
                        "(repeatable)")
    c.add_argument("-o", "--out", required=True)
    c.set_defaults(handler=_cases)

    i = sub.add_parser("eval-instructions", help="rule-checked compliance with instructions: none / system "
                                                 "prompt / internalized adapter",
                       description="Held-out instructions (held-out kinds with any phrasing, trained kinds with "
                                   "held-out phrasings) on held-out general questions, answered with no "
                                   "instructions, with them as the system prompt, and with their internalized "
                                   "adapter; each reply checked by its rule (docs/instructions.md).")
    i.add_argument("--methods", default="none,system,adapter", help="comma-separated (none,system,adapter)")
    i.add_argument("--per-kind", type=int, default=6, help="cases per instruction kind")
    i.add_argument("--kinds", help="comma-separated kinds (default: all)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--max-new-tokens", type=int, default=64)
    i.add_argument("--model", default=DEFAULT_MODEL)
    i.add_argument("--instructions-checkpoint", default="default", metavar="DIR", type=checkpoint_arg,
                   help="the instructions hypernetwork ('default': shipped; 'none': untrained)")
    i.add_argument("--documents", metavar="CASES.jsonl",
                   help="also answer these document questions with the document's adapter alone, with it and an "
                        "instructions adapter, and with it and the system prompt (composition)")
    i.add_argument("--documents-limit", type=int, default=40, metavar="N", help="first N document cases")
    add_chunking_option(i)
    i.add_argument("--json", dest="json_out", help="write results and per-case replies here")
    i.add_argument("--no-progress", action="store_true")
    i.set_defaults(handler=_eval_instructions)

    m = sub.add_parser("compare", help="paired bootstrap: two methods of a report, or one method of two reports",
                       description="One report: METHOD against --against (e.g. d2l against icl): the ratio of "
                                   "their means and the paired difference, with 95 %% bootstrap intervals. Two "
                                   "reports of the same case file: METHOD in the first minus METHOD in the "
                                   "second (a candidate checkpoint against the shipped one); with --against, "
                                   "METHOD in the first against AGAINST in the second (a checkpoint's d2l "
                                   "against baselines measured once: base, icl and rag do not depend on it). "
                                   "Two folders: that for every report name in both, and all their cases "
                                   "pooled.")
    m.add_argument("reports", nargs="+", help="one or two d2l eval reports (.json), or two folders of them")
    m.add_argument("--method", default="d2l")
    m.add_argument("--against", help="the method to compare with: in the report (default icl), or with two "
                                     "reports in the second")
    m.add_argument("--metric", default="f1", choices=["f1", "exact_match", "contains"])
    m.add_argument("--rounds", type=int, default=10000)
    m.set_defaults(handler=_compare)


def _eval(args: argparse.Namespace) -> int:
    from d2l_haystack.core.engine import D2LEngine
    from d2l_haystack.evaluation.cases import load_cases
    from d2l_haystack.evaluation.runner import format_table, run_eval

    cases = load_cases(args.cases, args.limit)
    gate = {} if args.min_relevance is None else {"min_relevance": args.min_relevance}
    engine = D2LEngine(args.model, checkpoint_arg(args.checkpoint), chunk_tokens=args.chunk_tokens,
                       chunking=args.chunking, reading_memory=args.reading_memory, **gate)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report = run_eval(engine, cases, methods, max_new_tokens=args.max_new_tokens, progress=not args.no_progress)
    report["cases_file"] = str(args.cases)
    print(format_table(report["results"]))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json_out}")
    return 0


def _niah(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from d2l_haystack.core.models import resolve_model
    from d2l_haystack.evaluation.cases import niah_cases, write_cases

    tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
    cases = niah_cases(tok, [int(x) for x in args.lengths.split(",")], [float(x) for x in args.depths.split(",")],
                       per_cell=args.per_cell, filler=args.filler, template=args.template, seed=args.seed,
                       filler_file=args.filler_file)
    print(f"wrote {write_cases(cases, args.out)} cases to {args.out}")
    return 0


def _doc_ids(path: str) -> set[str]:
    """The document ids of a case file (``.jsonl``) or of a ``d2l eval`` report (``.json``)."""
    from d2l_haystack.evaluation.cases import load_cases

    if not path.endswith(".json"):
        return {c.doc_id for c in load_cases(path)}
    try:
        rows = json.loads(Path(path).read_text())["cases"]
        return {str(r["doc_id"]) for r in rows}
    except FileNotFoundError:
        raise SystemExit(f"--exclude: {path} not found") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--exclude: {path} is not a d2l eval report (a 'cases' list with doc_id): {e}") from None


def _cases(args: argparse.Namespace) -> int:
    from d2l_haystack.evaluation.cases import (
        gold_sentence_cases,
        interference_cases,
        realistic_cases,
        sentence_cloze_cases,
        squad_cases,
        swapped_cases,
        write_cases,
    )

    if args.exclude and args.kind not in ("squad-paragraphs", "squad-articles"):
        raise SystemExit(f"--exclude applies to squad-paragraphs and squad-articles, not {args.kind}")
    exclude = {doc_id for path in args.exclude for doc_id in _doc_ids(path)}
    if args.kind == "interference":
        cases = interference_cases(seed=args.seed)
    elif args.kind == "squad-sentences":
        cases = sentence_cloze_cases(max_docs=args.max_docs or 100, seed=args.seed)
    elif args.kind == "squad-gold-sentences":
        cases = gold_sentence_cases(max_docs=args.max_docs or 100, seed=args.seed)
    elif args.kind == "squad-swapped":
        cases = swapped_cases(max_docs=args.max_docs or 100, questions_per_doc=args.questions_per_doc or 2,
                              seed=args.seed)
    elif args.kind == "realistic":
        cases = realistic_cases(n_docs=args.max_docs or 100, seed=args.seed, part=args.part,
                                questions_per_doc=args.questions_per_doc or 2)
    else:
        unit = "paragraph" if args.kind == "squad-paragraphs" else "article"
        cases = squad_cases(unit, max_docs=args.max_docs, questions_per_doc=args.questions_per_doc, seed=args.seed,
                            exclude_docs=exclude)
    print(f"wrote {write_cases(cases, args.out)} cases to {args.out}")
    return 0


def _eval_instructions(args: argparse.Namespace) -> int:
    from d2l_haystack.core import get_engine
    from d2l_haystack.evaluation.instructions import (
        evaluate_instructions,
        format_comparisons,
        format_table,
        instruction_cases,
    )

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    kinds = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
    try:
        cases = instruction_cases(per_kind=args.per_kind, seed=args.seed, kinds=kinds)
    except ValueError as exc:
        raise SystemExit(f"d2l eval-instructions: error: {exc}") from None
    engine = get_engine(args.model, chunking=args.chunking)
    engine.set_instructions_checkpoint(args.instructions_checkpoint)
    report = evaluate_instructions(engine, cases, methods, args.max_new_tokens, progress=not args.no_progress)
    if args.documents:
        from d2l_haystack.evaluation.cases import load_cases
        from d2l_haystack.evaluation.instructions import evaluate_composition

        composition = evaluate_composition(engine, load_cases(args.documents, args.documents_limit),
                                           seed=args.seed, progress=not args.no_progress)
        report["composition"] = {**composition, "cases_file": args.documents}
    report["settings"] = {"per_kind": args.per_kind, "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                          "instructions_checkpoint": args.instructions_checkpoint,
                          "engine": engine.describe(portable=True)}
    if "adapter" in methods:
        report["settings"]["instructions_checkpoint_id"] = engine.reader("instructions").checkpoint_id
    print(format_table(report))
    if report["comparisons"]:
        print("\npaired bootstrap (95 % intervals):\n" + format_comparisons(report["comparisons"]))
    if "composition" in report:
        print("\ncomposition (document questions):")
        for method, r in report["composition"]["results"].items():
            print(f"  {method:22s} contains {r['contains']:.3f}  F1 {r['f1']:.3f}  follows the instructions "
                  f"{r['complies']:.3f}  (n={r['n']})")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json_out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from d2l_haystack.core.errors import InputError
    from d2l_haystack.evaluation.compare import compare_folders, paired_difference, ratio, scores

    if len(args.reports) > 2:
        raise SystemExit("d2l compare: give one or two reports, or two folders of reports")
    try:
        if len(args.reports) == 2 and all(Path(r).is_dir() for r in args.reports):
            print(f"{args.metric} of {args.method}: {args.reports[0]} - {args.reports[1]} (paired, 95 %)")
            rows = compare_folders(args.reports[0], args.reports[1], method=args.method, metric=args.metric,
                                   rounds=args.rounds)
            for name, x, y, d in rows:
                print(f"  {name:<28} {x:.3f} - {y:.3f} = {d}")
        elif len(args.reports) == 1 or args.against:
            against = args.against or "icl"
            a = scores(args.reports[0], args.method, args.metric)
            b = scores(args.reports[-1], against, args.metric)
            r, d = ratio(a, b, args.rounds), paired_difference(a, b, args.rounds)
            shared = set(a) & set(b)
            mean_a, mean_b = (sum(x[i] for i in shared) / len(shared) for x in (a, b))
            print(f"{args.metric} on {len(shared)} shared cases: {args.method} {mean_a:.3f}, {against} {mean_b:.3f}")
            print(f"{args.method} / {against}: {r.value:.2f} [{r.low:.2f}, {r.high:.2f}]")
            print(f"{args.method} - {against}: {d}")
        else:
            a = scores(args.reports[0], args.method, args.metric)
            b = scores(args.reports[1], args.method, args.metric)
            d = paired_difference(a, b, args.rounds)
            print(f"{args.metric} of {args.method}: {sum(a.values()) / len(a):.3f} ({args.reports[0]}) against "
                  f"{sum(b.values()) / len(b):.3f} ({args.reports[1]})")
            print(f"first - second: {d}")
    except InputError as exc:
        raise SystemExit(f"d2l compare: error: {exc}") from None
    return 0
