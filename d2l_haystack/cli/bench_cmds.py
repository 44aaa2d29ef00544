"""``d2l bench``: the comparative benchmark (base, icl, rag, d2l, hybrid, routed).

Examples::

    d2l bench --quick --out benchmarks/results/compare-quick            # 2-5 minutes (docs/benchmark.md)
    d2l bench --out benchmarks/results/compare --checkpoint runs/x/best # the full run (see docs/benchmark.md)
    d2l bench --dry-run                                                 # sizes and an estimated duration
    d2l bench --render benchmarks/results/compare                       # re-write tables and plots from JSON
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from d2l_haystack.core.models import DEFAULT_MODEL

from .options import add_chunking_option, add_device_option, add_reading_memory_option, checkpoint_arg


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"max_tokens\": 16384}'")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="comparative benchmark: base/icl/rag/d2l/hybrid/routed on SQuAD, "
                                     "needle-in-a-haystack and a changing workload",
                       description="Run the comparative benchmark and write results.json, results.md and "
                                   "PNG plots into --out (see docs/benchmark.md).")
    p.add_argument("--out", help="output folder (required unless --dry-run)")
    p.add_argument("--quick", action="store_true", help="smoke-sized run (under 5 minutes on 2 idle cores)")
    p.add_argument("--checkpoint", default="default",
                   help="hypernetwork checkpoint folder, 'default' (shipped, else untrained) or 'none'")
    p.add_argument("--model", default=DEFAULT_MODEL)
    add_device_option(p)
    p.add_argument("--chunk-tokens", type=int, help="tokens per internalized chunk (default: the checkpoint's)")
    add_chunking_option(p)
    add_reading_memory_option(p)
    p.add_argument("--methods", type=_words, help="comma-separated subset of base,icl,rag,d2l,hybrid,routed")
    p.add_argument("--workloads", type=_words,
                   help="comma-separated subset of squad_paragraphs,squad_articles,niah,mixed")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--niah-lengths", type=_ints, help="needle document lengths in tokens, e.g. 256,1024,41984")
    p.add_argument("--niah-depths", type=_floats, help="needle depths in [0, 1], e.g. 0.1,0.5,0.9")
    p.add_argument("--squad-paragraphs", type=int, help="paragraph documents")
    p.add_argument("--squad-articles", type=int, help="article documents (1-10)")
    p.add_argument("--article-questions", type=int, help="questions per article")
    p.add_argument("--mixed-docs", type=int)
    p.add_argument("--mixed-queries", type=int)
    p.add_argument("--router", type=_json_object, help="InternalizationRouter parameters for 'routed' (JSON)")
    p.add_argument("--query-router", type=_json_object, help="QueryRouter parameters for 'routed' (JSON)")
    p.add_argument("--accuracy-metric", choices=["f1", "contains", "exact_match"],
                   help="metric for the comparisons (default: f1 for SQuAD and mixed, contains for the needle)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's). On a shared machine 1 thread can be several times "
                        "faster than oversubscribed cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the sizes and an estimated duration, run nothing")
    p.add_argument("--render", metavar="DIR", help="re-write results.md and the plots from DIR/results.json")
    p.set_defaults(handler=_bench)


def config_from_args(args: argparse.Namespace) -> Any:
    from d2l_haystack.bench.runner import BenchConfig

    overrides: dict[str, Any] = {}
    for attr, key in (("methods", "methods"), ("workloads", "workloads"), ("max_new_tokens", "max_new_tokens"),
                      ("niah_lengths", "niah_lengths"), ("niah_depths", "niah_depths"),
                      ("squad_paragraphs", "squad_paragraph_docs"), ("squad_articles", "squad_article_docs"),
                      ("article_questions", "squad_article_questions"), ("mixed_docs", "mixed_docs"),
                      ("mixed_queries", "mixed_queries"), ("router", "router"), ("query_router", "query_router"),
                      ("accuracy_metric", "accuracy_metric")):
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    overrides["seed"] = args.seed
    overrides["measure_memory"] = not args.no_memory
    return BenchConfig.quick(**overrides) if args.quick else BenchConfig.full(**overrides)


def _print_tables(report: dict[str, Any]) -> None:
    for name, summary in report["summary"].items():
        metric = report["config"].get("accuracy_metric") or report["workloads"][name]["workload"]["primary_metric"]
        print(f"\n{name} (accuracy: {metric})")
        head = (f"{'method':<8} {'n':>4} {'EM':>6} {'F1':>6} {'contains':>8} {'prep s':>7} {'q med s':>8} "
                f"{'q p95 s':>8} {'TTFT s':>7} {'total s':>8}")
        print(head)
        print("-" * len(head))
        for m, s in summary["methods"].items():
            def num(x: Any, d: int = 3) -> str:
                return "-" if x is None else f"{x:.{d}f}"

            extra = f"  ({s['truncated']} truncated)" if s.get("truncated") else ""
            if m == "routed" and s.get("routes"):
                extra += "  routes " + ",".join(f"{k}:{v}" for k, v in sorted(s["routes"].items()))
            print(f"{m:<8} {s['n']:>4} {num(s['exact_match']):>6} {num(s['f1']):>6} {num(s['contains']):>8} "
                  f"{num(s['prepare_seconds_mean'], 2):>7} {num(s['query_seconds_median'], 2):>8} "
                  f"{num(s['query_seconds_p95'], 2):>8} {num(s['ttft_median'], 2):>7} "
                  f"{num(s['total_cost_seconds'], 1):>8}{extra}")


def _bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    from d2l_haystack.core.errors import InputError

    if args.render:
        from d2l_haystack.bench.report import load_report, write_report

        report = write_report(load_report(args.render), args.out or args.render)
        print(f"re-wrote {', '.join(report['files'])} in {args.out or args.render}")
        return 0
    cfg = config_from_args(args)
    if args.dry_run:
        from transformers import AutoTokenizer

        from d2l_haystack.bench.runner import build_workloads, estimate_seconds
        from d2l_haystack.core.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(args.model))
        workloads = build_workloads(tok, cfg)
        est = estimate_seconds(workloads, cfg, chunk_tokens=args.chunk_tokens or 512)
        print(f"preset {cfg.preset}; methods {','.join(cfg.methods)}")
        for w in workloads:
            d = w.describe()
            edits = f", {d['edits']} edits" if "edits" in d else ""
            print(f"  {w.name:<17} {d['documents']:>3} documents ({d['min_tokens']}-{d['max_tokens']} tokens), "
                  f"{d['questions']:>3} questions{edits}: "
                  f"~{est[w.name] / 60:.1f} min")
        print(f"estimated total on 2 CPU cores (calibrated on measured full runs): "
              f"~{sum(est.values()) / 60:.0f} min (+ ~1 min loading)")
        return 0
    if not args.out:
        raise InputError("d2l bench needs --out DIR (or --dry-run / --render DIR)")
    from d2l_haystack.bench.report import write_report
    from d2l_haystack.bench.runner import run_benchmark
    from d2l_haystack.core.engine import D2LEngine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import time

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > 0.5 * cores and torch.get_num_threads() > 1:
        print(f"d2l bench: note: the machine is busy (load average {load:.1f} on {cores} cores); timings will be "
              f"slow and noisy, and {torch.get_num_threads()} torch threads contend with the other processes "
              "(--threads 1 is often much faster on a shared machine)")
    t = time.perf_counter()
    engine = D2LEngine(args.model, checkpoint_arg(args.checkpoint), device=args.device, chunk_tokens=args.chunk_tokens,
                       chunking=args.chunking, reading_memory=args.reading_memory)
    load_seconds = time.perf_counter() - t
    if not engine.trained:
        print("d2l bench: note: no trained checkpoint; the hypernetwork is untrained (d2l answers like base)")
    partial = out / "raw_partial.json"

    def save_partial(raw: dict[str, Any]) -> None:
        partial.write_text(json.dumps(raw) + "\n", encoding="utf-8")

    raw = run_benchmark(engine, cfg, progress=not args.no_progress, on_workload=save_partial)
    raw["load_seconds"] = load_seconds
    report = write_report(raw, out)
    partial.unlink(missing_ok=True)
    _print_tables(report)
    print(f"\nwrote {', '.join(report['files'])} to {out} (benchmark {report['wall_seconds'] / 60:.1f} min "
          f"+ {load_seconds:.0f} s loading the model)")
    return 0
