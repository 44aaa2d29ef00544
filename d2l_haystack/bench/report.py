"""Summaries and the written report: ``results.json``, ``results.md`` and PNG plots.

:func:`summarize` turns the raw rows of :func:`~d2l_haystack.bench.runner.run_benchmark` into
per-method and per-length summaries plus the analysis (break-even points, router verdicts,
D2L/icl accuracy ratio, query speed-up, KV cache versus adapter bytes); :func:`write_report`
writes everything. Both work on plain dictionaries, so a saved ``results.json`` can be
re-rendered (``d2l bench --render DIR``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .costs import (
    EQUAL_ACCURACY_POINTS,
    PUBLISHED_D2L_ICL_RATIO,
    SELF_ROUTE,
    accuracy_ratio,
    break_even,
    break_even_questions,
    cost_curve,
    router_verdict,
)
from .measure import mean, median, percentile

METRICS = ("exact_match", "f1", "contains")
QUESTION_GRID = [1, 2, 3, 5, 10, 20, 50, 100]
METHOD_STYLE = {"base": ("tab:gray", ":"), "icl": ("tab:blue", "-"), "rag": ("tab:orange", "-"),
                "d2l": ("tab:green", "-"), "hybrid": ("tab:purple", "--"), "routed": ("tab:red", "-")}


# -- summaries ------------------------------------------------------------------------------------
def _bucket(row: dict[str, Any], workload: str) -> str:
    """The length bucket of a row: the needle grid length, the SQuAD unit, or ``all``."""
    if workload == "niah" and row.get("length") is not None:
        return str(int(row["length"]))
    if workload.startswith("squad"):
        return str(row.get("unit") or workload.split("_")[-1])
    return "all"


def summarize_rows(queries: list[dict[str, Any]], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, latency, cost, memory and sizes of one method on a set of rows."""
    q_secs = [r["seconds"] for r in queries]
    ttfts = [r["ttft"] for r in queries]
    prep = [d["prepare_seconds"] for d in docs]
    initial = [d for d in docs if d.get("kind", "initial") == "initial"]
    out: dict[str, Any] = {"n": len(queries), "documents": len(initial),
                           "doc_tokens_mean": mean(d["doc_tokens"] for d in initial) if initial else math.nan}
    for m in METRICS:
        out[m] = mean(r[m] for r in queries) if queries else math.nan
    out.update(
        query_seconds_mean=mean(q_secs), query_seconds_median=median(q_secs), query_seconds_p95=percentile(q_secs, 95),
        ttft_median=median(ttfts), ttft_p95=percentile(ttfts, 95),
        prepare_seconds_mean=mean(prep) if prep else 0.0, prepare_seconds_total=sum(prep),
        prepare_events=len(docs), query_seconds_total=sum(q_secs),
        prompt_tokens_mean=mean(r["prompt_tokens"] for r in queries) if queries else math.nan,
        kv_prompt_bytes_mean=mean(r["kv_prompt_bytes"] for r in queries) if queries else math.nan,
        state_bytes_mean=mean(d.get("state_bytes", 0) for d in initial) if initial else 0.0,
        adapter_bytes_mean=mean(d.get("adapter_bytes", 0) for d in initial) if initial else 0.0,
        kv_doc_bytes_mean=mean(d["kv_doc_bytes"] for d in initial) if initial else math.nan,
        kv_doc_bytes_16bit_mean=mean(d["kv_doc_bytes_16bit"] for d in initial) if initial else math.nan,
        truncated=sum(bool(r.get("truncated")) for r in queries),
        errors=sum(bool(r.get("error")) for r in queries),
    )
    peaks_p = [d["peak_prepare_bytes"] for d in docs if d.get("peak_prepare_bytes") is not None]
    peaks_a = [r["peak_answer_bytes"] for r in queries if r.get("peak_answer_bytes") is not None]
    out["peak_prepare_bytes_max"] = max(peaks_p) if peaks_p else None
    out["peak_answer_bytes_max"] = max(peaks_a) if peaks_a else None
    out["total_cost_seconds"] = out["prepare_seconds_total"] + out["query_seconds_total"]
    routes: dict[str, int] = defaultdict(int)
    for r in queries:
        routes[str(r.get("route"))] += 1
    out["routes"] = dict(routes)
    doc_routes: dict[str, int] = defaultdict(int)
    for d in docs:
        if d.get("route"):
            doc_routes[str(d["route"])] += 1
    if doc_routes:
        out["document_routes"] = dict(doc_routes)
    right = [r["right_document"] for r in queries if r.get("right_document") is not None]
    if right:
        out["right_document_rate"] = mean(float(x) for x in right)
    return out


def summarize_workload(name: str, data: dict[str, Any]) -> dict[str, Any]:
    queries, docs = data["queries"], data["documents"]
    methods = list(dict.fromkeys([r["method"] for r in docs] + [r["method"] for r in queries]))
    per_method = {m: summarize_rows([r for r in queries if r["method"] == m], [d for d in docs if d["method"] == m])
                  for m in methods}
    buckets: dict[str, dict[str, Any]] = {}
    keys = list(dict.fromkeys(_bucket(r, name) for r in docs))
    if name == "niah":
        keys.sort(key=lambda k: int(k))
    for key in keys:
        buckets[key] = {m: summarize_rows([r for r in queries if r["method"] == m and _bucket(r, name) == key],
                                          [d for d in docs if d["method"] == m and _bucket(d, name) == key])
                        for m in methods}
    out: dict[str, Any] = {"methods": per_method, "by_length": buckets}
    if name == "niah":
        grid: dict[str, dict[str, dict[str, float]]] = {}
        for m in methods:
            cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for r in queries:
                if r["method"] == m:
                    cells[str(int(r["length"]))][f"{float(r['depth']):g}"].append(r["contains"])
            grid[m] = {length: {d: mean(v) for d, v in row.items()} for length, row in cells.items()}
        out["needle_grid"] = grid
    if name == "mixed":
        by_about: dict[str, dict[str, Any]] = {}
        for m in methods:
            rows = [r for r in queries if r["method"] == m]
            by_about[m] = {a: mean(r["f1"] for r in rows if r.get("about") == a)
                           for a in sorted({r.get("about") for r in rows}) if a}
        out["accuracy_by_question_kind"] = by_about
        out["edits"] = sum(1 for d in docs if d.get("kind") == "edit") // max(1, len(methods))
    return out


def _primary(workload: dict[str, Any], report: dict[str, Any] | None = None) -> str:
    """The accuracy metric of a workload: the run's ``accuracy_metric`` override, else the workload's own."""
    override = ((report or {}).get("config") or {}).get("accuracy_metric")
    return str(override or workload.get("primary_metric", "f1"))


def analyze(raw: dict[str, Any], summaries: dict[str, Any]) -> dict[str, Any]:
    """Break-even points, router verdicts, D2L/icl ratios, speed-ups, KV cache versus adapter."""
    analysis: dict[str, Any] = {"break_even": {}, "router": {}, "d2l_icl_ratio": {}, "speedup": {},
                                "kv_vs_adapter": {}, "references": {"self_route": SELF_ROUTE,
                                                                    "d2l_published": PUBLISHED_D2L_ICL_RATIO,
                                                                    "equal_accuracy_points": EQUAL_ACCURACY_POINTS}}
    overall: dict[str, dict[str, float]] = defaultdict(lambda: {"cost": 0.0, "correct": 0.0, "n": 0})
    for wname, summary in summaries.items():
        metric = _primary(raw["workloads"][wname]["workload"], raw)
        methods = summary["methods"]
        # break-even per length bucket (prepare once per document, mean seconds per query)
        be: dict[str, Any] = {}
        for bucket, per in summary["by_length"].items():
            if "d2l" not in per:
                continue
            d = per["d2l"]
            entry: dict[str, Any] = {"doc_tokens_mean": d["doc_tokens_mean"]}
            for other in ("icl", "rag"):
                if other in per and per[other]["n"]:
                    o = per[other]
                    value = break_even(d["prepare_seconds_mean"], d["query_seconds_mean"],
                                       o["prepare_seconds_mean"], o["query_seconds_mean"])
                    entry[f"vs_{other}"] = value
                    entry[f"vs_{other}_questions"] = break_even_questions(value)
                    entry[f"accuracy_d2l_minus_{other}_points"] = (d[metric] - o[metric]) * 100 \
                        if d["n"] and o["n"] else None
            if wname != "mixed":
                be[bucket] = entry
        if be:
            analysis["break_even"][wname] = be
        # router verdicts against each single method, on the workload's total cost
        if "routed" in methods and methods["routed"]["n"]:
            r = methods["routed"]
            routed = {"cost": r["total_cost_seconds"], "accuracy": r[metric]}
            analysis["router"][wname] = {
                "metric": metric, "routed_cost_seconds": r["total_cost_seconds"], "routed_accuracy": r[metric],
                "routes": r.get("routes", {}), "document_routes": r.get("document_routes", {}),
                "vs": {m: {**router_verdict(routed, {"cost": s["total_cost_seconds"], "accuracy": s[metric]}),
                           "cost_seconds": s["total_cost_seconds"], "accuracy": s[metric]}
                       for m, s in methods.items() if m != "routed" and s["n"]},
            }
        for m, s in methods.items():
            if s["n"]:
                overall[m]["cost"] += s["total_cost_seconds"]
                overall[m]["correct"] += s[metric] * s["n"]
                overall[m]["n"] += s["n"]
        # accuracy ratio and speed-up
        if "d2l" in methods and "icl" in methods and methods["icl"]["n"]:
            d, i = methods["d2l"], methods["icl"]
            analysis["d2l_icl_ratio"][wname] = {
                "metric": metric, "ratio": accuracy_ratio(d[metric], i[metric]),
                "f1_ratio": accuracy_ratio(d["f1"], i["f1"]),
                "contains_ratio": accuracy_ratio(d["contains"], i["contains"]), "d2l": d[metric], "icl": i[metric]}
            analysis["speedup"][wname] = {
                bucket: {"query_median": _ratio(per["icl"]["query_seconds_median"], per["d2l"]["query_seconds_median"]),
                         "ttft_median": _ratio(per["icl"]["ttft_median"], per["d2l"]["ttft_median"]),
                         "doc_tokens_mean": per["d2l"]["doc_tokens_mean"]}
                for bucket, per in summary["by_length"].items() if "icl" in per and "d2l" in per
                and per["icl"]["n"] and per["d2l"]["n"]}
        if "d2l" in methods:
            analysis["kv_vs_adapter"][wname] = {
                bucket: {"doc_tokens_mean": per["d2l"]["doc_tokens_mean"],
                         "kv_doc_bytes": per["d2l"]["kv_doc_bytes_mean"],
                         "kv_doc_bytes_16bit": per["d2l"]["kv_doc_bytes_16bit_mean"],
                         "adapter_bytes": per["d2l"]["adapter_bytes_mean"],
                         "ratio_16bit": _ratio(per["d2l"]["kv_doc_bytes_16bit_mean"], per["d2l"]["adapter_bytes_mean"])}
                for bucket, per in summary["by_length"].items()}
    if "routed" in overall and overall["routed"]["n"]:
        def acc(x: dict[str, float]) -> float:
            return x["correct"] / x["n"] if x["n"] else math.nan

        routed_all = {"cost": overall["routed"]["cost"], "accuracy": acc(overall["routed"])}
        analysis["router"]["overall"] = {
            "metric": "primary metric of each workload, weighted by questions",
            "routed_cost_seconds": routed_all["cost"], "routed_accuracy": routed_all["accuracy"],
            "vs": {m: {**router_verdict(routed_all, {"cost": v["cost"], "accuracy": acc(v)}),
                       "cost_seconds": v["cost"], "accuracy": acc(v)}
                   for m, v in overall.items() if m != "routed" and v["n"]}}
    return analysis


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` plus ``summary`` (per workload) and ``analysis``."""
    summaries = {name: summarize_workload(name, data) for name, data in raw["workloads"].items()}
    return {**raw, "summary": summaries, "analysis": analyze(raw, summaries)}


# -- Markdown -------------------------------------------------------------------------------------
def _num(x: Any) -> float:
    """A number, NaN for ``None`` (not measured)."""
    return math.nan if x is None else float(x)


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _mib(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x / 2**20:.1f}"


def _be(x: float | None) -> str:
    """A break-even point: ``never``, or the exact value and the whole number of questions it means."""
    if x is None:
        return "never"
    q = break_even_questions(x)
    return f"{x:.2f} ({q} q)" if x < 10 else f"{x:.1f} ({q} q)"


def _method_table(per: dict[str, Any], metric: str) -> list[str]:
    lines = ["| method | n | EM | F1 | contains | prepare s/doc | query s median | p95 | TTFT median | p95 "
             "| total cost s | peak MiB prepare / answer | prompt tok | KV prompt MiB | state MiB/doc | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | --- |"]
    for m, s in per.items():
        notes = []
        if s.get("truncated"):
            notes.append(f"{s['truncated']} truncated")
        if s.get("errors"):
            notes.append(f"{s['errors']} errors")
        if m == "routed" and s.get("routes"):
            notes.append("routes " + ", ".join(f"{k} {v}" for k, v in sorted(s["routes"].items())))
            if s.get("right_document_rate") is not None:
                notes.append(f"right doc {s['right_document_rate']:.2f}")
        if s.get("document_routes"):
            notes.append("docs " + ", ".join(f"{k} {v}" for k, v in sorted(s["document_routes"].items())))
        bold = (lambda t: f"**{t}**") if metric else (lambda t: t)
        cells = {k: _f(s[k]) for k in METRICS}
        cells[metric] = bold(cells[metric])
        lines.append(
            f"| {m} | {s['n']} | {cells['exact_match']} | {cells['f1']} | {cells['contains']} | "
            f"{_f(s['prepare_seconds_mean'], 2)} | {_f(s['query_seconds_median'], 2)} | "
            f"{_f(s['query_seconds_p95'], 2)} | "
            f"{_f(s['ttft_median'], 2)} | {_f(s['ttft_p95'], 2)} | {_f(s['total_cost_seconds'], 1)} | "
            f"{_mib(s['peak_prepare_bytes_max'])} / {_mib(s['peak_answer_bytes_max'])} | "
            f"{_f(s['prompt_tokens_mean'], 0)} | {_mib(s['kv_prompt_bytes_mean'])} | {_mib(s['state_bytes_mean'])} | "
            f"{'; '.join(notes)} |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    cfg, eng, mach = report["config"], report["engine"], report["machine"]
    window = report.get("window_tokens", 8192)
    lines = [f"# Comparative benchmark ({cfg['preset']})", "",
             f"- date {report['date']}, wall time {report['wall_seconds'] / 60:.1f} min "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in report.get('workload_seconds', {}).items())}"
             + (f"; plus {report['load_seconds']:.0f} s loading the model" if report.get("load_seconds") else "")
             + ")",
             f"- base model `{eng.get('base_model')}`, checkpoint `{eng.get('checkpoint')}` "
             f"(id {eng.get('checkpoint_id')}, trained: {eng.get('trained')}), "
             + ("one chunk per sentence, " if eng.get("chunking") == "sentences"
                else f"chunk {eng.get('chunk_tokens')} tokens, ")
             + f"window {window} tokens, device {eng.get('device')}",
             f"- machine: {mach.get('cpu_count')} CPUs, torch {mach.get('torch')} "
             f"({mach.get('torch_threads')} torch threads), "
             f"load average {_f(mach.get('load_average_start', [math.nan])[0], 2)} at start, "
             f"{_f(mach.get('load_average_end', [math.nan])[0], 2)} at end (other processes slow every timing)",
             f"- methods {', '.join(cfg['methods'])}; greedy, at most {cfg['max_new_tokens']} new tokens; "
             "cost = seconds of compute (prepare + all queries); accuracy metric in bold", ""]
    analysis = report["analysis"]
    lines += ["## Headlines", ""]
    for wname, r in analysis.get("d2l_icl_ratio", {}).items():
        ref = " (published D2L on SQuAD: 0.81)" if wname.startswith("squad") else ""
        lines.append(f"- {wname}: D2L / icl accuracy ({r['metric']}) = {_f(r['ratio'], 2)}{ref}; "
                     f"F1 ratio {_f(r['f1_ratio'], 2)}, contains ratio {_f(r.get('contains_ratio'), 2)}")
    for wname, per in analysis.get("speedup", {}).items():
        parts = [f"{b}: {_f(v['query_median'], 1)}x query, {_f(v['ttft_median'], 1)}x TTFT" for b, v in per.items()]
        if parts:
            lines.append(f"- {wname}: D2L speed-up over icl (median) — " + "; ".join(parts))
    rov = analysis.get("router", {}).get("overall")
    if rov:
        lines.append(f"- router overall: cost {_f(rov['routed_cost_seconds'], 1)} s, "
                     f"accuracy {_f(rov['routed_accuracy'])}; "
                     + "; ".join(f"vs {m}: {v['verdict']} ({_f(v['cost_saving_pct'], 0)}% cheaper, "
                                 f"{_f(v['accuracy_delta_points'], 1)} points)" for m, v in rov["vs"].items()))
    lines.append(f"- reference: Self-Route {SELF_ROUTE['claim']}.")
    lines.append("")
    for wname, summary in report["summary"].items():
        info = report["workloads"][wname]["workload"]
        metric = _primary(info, report)
        lines += [f"## {wname}", "", f"{info['description']}: {info['documents']} documents "
                  f"({info['min_tokens']}-{info['max_tokens']} tokens), {info['questions']} questions"
                  + (f", {info.get('edits', 0)} edits" if info["kind"] == "stream" else "")
                  + f"; accuracy metric **{metric}**.", ""]
        lines += _method_table(summary["methods"], metric)
        lines.append("")
        if len(summary["by_length"]) > 1 or wname == "niah":
            lines += [f"By document length ({metric}; query seconds median; prepare seconds per document):", "",
                      "| length | tokens | " + " | ".join(summary["methods"]) + " |",
                      "| --- | ---: |" + " ---: |" * len(summary["methods"])]
            for bucket, per in summary["by_length"].items():
                any_m = next(iter(per.values()))
                flag = " (beyond window)" if _num(any_m["doc_tokens_mean"]) > window else ""
                cells = [f"{_f(s[metric], 2)} / {_f(s['query_seconds_median'], 2)} s / "
                         f"{_f(s['prepare_seconds_mean'], 2)} s" for s in per.values()]
                lines.append(f"| {bucket}{flag} | {_f(any_m['doc_tokens_mean'], 0)} | " + " | ".join(cells) + " |")
            lines.append("")
        if wname == "niah" and summary.get("needle_grid"):
            grid = summary["needle_grid"]
            names = list(grid)
            points = sorted({(int(length), float(d)) for g in grid.values() for length, row in g.items() for d in row})
            lines += ["Needle grid (contains per length and depth; * = beyond the window, icl truncated):", "",
                      "| length | depth | " + " | ".join(names) + " |", "| ---: | ---: |" + " ---: |" * len(names)]
            for length, depth in points:
                star = "*" if length > window else ""
                lines.append(f"| {length}{star} | {depth:g} | " + " | ".join(
                    _f(grid[m].get(str(length), {}).get(f"{depth:g}"), 2) for m in names) + " |")
            lines.append("")
        if wname == "mixed" and summary.get("accuracy_by_question_kind"):
            lines += ["F1 by question kind (`update`: about the newest edit):", "",
                      "| method | " + " | ".join(sorted({k for v in summary["accuracy_by_question_kind"].values()
                                                         for k in v})) + " |"]
            kinds = sorted({k for v in summary["accuracy_by_question_kind"].values() for k in v})
            lines.append("| --- |" + " ---: |" * len(kinds))
            for m, v in summary["accuracy_by_question_kind"].items():
                lines.append(f"| {m} | " + " | ".join(_f(v.get(k), 3) for k in kinds) + " |")
            lines.append("")
    # break-even
    if analysis.get("break_even"):
        lines += ["## Break-even: questions per document at which internalizing pays off", "",
                  "n* = (prepare_d2l - prepare_other) / (query_other - query_d2l), from mean seconds; "
                  "'never' = D2L is not cheaper per query. Accuracy difference in points (D2L minus the other).", "",
                  "| workload | length | tokens | vs icl | Δacc vs icl | vs rag | Δacc vs rag |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for wname, per in analysis["break_even"].items():
            for bucket, e in per.items():
                lines.append(f"| {wname} | {bucket} | {_f(e['doc_tokens_mean'], 0)} | {_be(e.get('vs_icl'))} | "
                             f"{_f(e.get('accuracy_d2l_minus_icl_points'), 1)} | {_be(e.get('vs_rag'))} | "
                             f"{_f(e.get('accuracy_d2l_minus_rag_points'), 1)} |")
        lines.append("")
    # router
    if analysis.get("router"):
        lines += ["## Router versus each single method", "",
                  f"Verdict `beats` = cheaper in total and accuracy within {EQUAL_ACCURACY_POINTS:g} points or better "
                  f"(the Self-Route criterion: {SELF_ROUTE['claim']}; `matches_self_route` = at least "
                  f"{SELF_ROUTE['cost_saving_pct'][0]:.0f}% cheaper and no more than "
                  f"{-SELF_ROUTE['accuracy_delta_points'][0]:.1f} points worse).", "",
                  "| workload | vs | cost s (method) | cost s (routed) | saving % | acc (method) | acc (routed) "
                  "| Δ points | verdict | Self-Route band |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        for wname, r in analysis["router"].items():
            for m, v in r["vs"].items():
                lines.append(f"| {wname} | {m} | {_f(v['cost_seconds'], 1)} | {_f(r['routed_cost_seconds'], 1)} | "
                             f"{_f(v['cost_saving_pct'], 0)} | {_f(v['accuracy'])} | {_f(r['routed_accuracy'])} | "
                             f"{_f(v['accuracy_delta_points'], 1)} | {v['verdict']} | "
                             f"{'yes' if v['matches_self_route'] else 'no'} |")
        lines.append("")
    # memory
    if analysis.get("kv_vs_adapter"):
        lines += ["## KV cache of the document versus its adapter", "",
                  "| workload | length | tokens | KV cache fp32 MiB | KV cache 16-bit MiB | adapter MiB (fp16) "
                  "| KV16 / adapter |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for wname, per in analysis["kv_vs_adapter"].items():
            for bucket, v in per.items():
                lines.append(f"| {wname} | {bucket} | {_f(v['doc_tokens_mean'], 0)} | {_mib(v['kv_doc_bytes'])} | "
                             f"{_mib(v['kv_doc_bytes_16bit'])} | {_mib(v['adapter_bytes'])} | "
                             f"{_f(v['ratio_16bit'], 1)} |")
        lines.append("")
    lines += ["Plots: `accuracy_vs_length.png`, `latency_vs_length.png`, `cost_vs_questions.png`, "
              "`cost_vs_accuracy.png`. Every number is in `results.json`.", ""]
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------------
def _length_points(report: dict[str, Any], key: str) -> dict[str, list[tuple[float, float]]]:
    """Per method, (mean document tokens, value) for every length bucket of the per-document workloads."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for wname, summary in report["summary"].items():
        if wname == "mixed":
            continue
        for per in summary["by_length"].values():
            for m, s in per.items():
                if s["n"] and not math.isnan(_num(s.get(key))):
                    out[m].append((_num(s["doc_tokens_mean"]), _num(s[key])))
    return {m: sorted(v) for m, v in out.items()}


def _log_axis(ax: Any, which: str = "x", tokens: bool = True) -> None:
    """A log axis with readable labels (``256``, ``1k``, ``41k``; ``0.5``, ``10``) and no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")

    def label(x: float, _pos: int) -> str:
        if tokens and x >= 1000:
            return f"{x / 1000:g}k"
        return f"{x:g}"

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(NullFormatter())


def _legend(ax: Any, size: int = 8) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=size)


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = report.get("window_tokens", 8192)
    written = []

    def style(m: str) -> dict[str, Any]:
        color, ls = METHOD_STYLE.get(m, (None, "-"))
        return {"color": color, "linestyle": ls, "marker": "o", "label": m}

    # accuracy versus length: the needle curve and the SQuAD points
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    niah = report["summary"].get("niah")
    ax = axes[0]
    if niah:
        for k, m in enumerate(niah["methods"]):
            offset = (k - (len(niah["methods"]) - 1) / 2) * 0.012  # overlapping curves stay visible
            pts = [(_num(per[m]["doc_tokens_mean"]), _num(per[m]["contains"]) + offset)
                   for per in niah["by_length"].values() if m in per and per[m]["n"]]
            if pts:
                ax.plot(*zip(*sorted(pts)), **style(m))
    ax.axvline(window, color="black", linestyle="--", linewidth=1)
    ax.text(window, 1.02, f" window {window}", fontsize=8, va="bottom")
    ax.set(ylim=(-0.05, 1.08), xlabel="document tokens", ylabel="needle recall (contains; curves offset slightly)",
           title="Needle in a haystack")
    _log_axis(ax)
    _legend(ax)
    ax = axes[1]
    for wname in ("squad_paragraphs", "squad_articles"):
        s = report["summary"].get(wname)
        if not s:
            continue
        for m, v in s["methods"].items():
            if v["n"]:
                ax.scatter([_num(v["doc_tokens_mean"])], [_num(v["f1"])], color=METHOD_STYLE.get(m, (None,))[0],
                           marker="o" if wname.endswith("paragraphs") else "s",
                           label=m if wname == "squad_paragraphs" else None)
    ax.axvline(window, color="black", linestyle="--", linewidth=1)
    ax.set(ylim=(-0.05, 1.05), xlabel="document tokens (o paragraphs, s articles)", ylabel="F1",
           title="SQuAD reading comprehension")
    _log_axis(ax)
    _legend(ax)
    fig.tight_layout()
    path = out / "accuracy_vs_length.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # latency versus length
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "query_seconds_median", "seconds per query (median)"),
                           (axes[1], "ttft_median", "time to first token, s (median)")):
        for m, pts in _length_points(report, key).items():
            if pts:
                ax.plot(*zip(*pts), **style(m))
        ax.axvline(window, color="black", linestyle="--", linewidth=1)
        ax.set(xlabel="document tokens", ylabel=label)
        _log_axis(ax)
        _log_axis(ax, "y", tokens=False)
        _legend(ax)
    fig.suptitle("Latency versus document length (icl is truncated to the window beyond it)")
    fig.tight_layout()
    path = out / "latency_vs_length.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # total cost versus questions per document
    panels = []
    for wname, summary in report["summary"].items():
        if wname == "mixed":
            continue
        items = list(summary["by_length"].items())
        if wname == "niah" and len(items) > 3:
            items = [items[0], items[len(items) // 2], items[-1]]
        panels += [(f"{wname} {b} (~{_num(next(iter(per.values()))['doc_tokens_mean']):.0f} tok)", per)
                   for b, per in items]
    if panels:
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes_grid = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
        for ax, (title, per) in zip(axes_grid.flat, panels):
            for m, s in per.items():
                if s["n"] and m != "base":
                    ax.plot(QUESTION_GRID, cost_curve(_num(s["prepare_seconds_mean"]), _num(s["query_seconds_mean"]),
                                                      QUESTION_GRID), **{**style(m), "marker": None})
            d = per.get("d2l")
            for other, marker in (("icl", "x"), ("rag", "+")):
                o = per.get(other)
                if d and o and d["n"] and o["n"]:
                    n = break_even(_num(d["prepare_seconds_mean"]), _num(d["query_seconds_mean"]),
                                   _num(o["prepare_seconds_mean"]), _num(o["query_seconds_mean"]))
                    if n is not None and QUESTION_GRID[0] <= n <= QUESTION_GRID[-1]:
                        ax.scatter([n], [_num(d["prepare_seconds_mean"]) + n * _num(d["query_seconds_mean"])],
                                   color="black", marker=marker, s=60, zorder=5, label=f"break-even vs {other}")
            ax.set(xlabel="questions per document", ylabel="seconds per document", title=title)
            _log_axis(ax, tokens=False)
            _log_axis(ax, "y", tokens=False)
            ax.title.set_fontsize(9)
            _legend(ax, 7)
        for ax in list(axes_grid.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle("Cost per document: prepare + n x query", fontsize=10)
        fig.tight_layout()
        path = out / "cost_vs_questions.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # total cost versus accuracy per workload (the router's place among the single methods)
    names = list(report["summary"])
    if names:
        fig, axes_row = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
        for ax, wname in zip(axes_row[0], names):
            metric = _primary(report["workloads"][wname]["workload"], report)
            for m, s in report["summary"][wname]["methods"].items():
                if s["n"]:
                    x, y = _num(s["total_cost_seconds"]), _num(s[metric])
                    ax.scatter([x], [y], color=METHOD_STYLE.get(m, (None,))[0], s=50)
                    ax.annotate(m, (x, y), fontsize=8, xytext=(3, 3),
                                textcoords="offset points")
            ax.set(xlabel="total cost, s (prepare + all queries)", ylabel=metric, title=wname)
            ax.set_xlim(left=0)
        fig.suptitle("Cost versus accuracy per workload (upper left is better)")
        fig.tight_layout()
        path = out / "cost_vs_accuracy.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_report(raw: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Summarize ``raw`` and write ``results.json``, ``results.md`` and the plots into ``out_dir``.

    Numbers that could not be measured are ``null`` in the JSON and ``-`` in the tables.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = _clean(summarize(raw))
    files = [p.name for p in write_plots(report, out)]
    report["files"] = ["results.json", "results.md", *files]
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def load_report(path: str | Path) -> dict[str, Any]:
    """A ``results.json`` (or its folder) as written by :func:`write_report`."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text(encoding="utf-8"))
