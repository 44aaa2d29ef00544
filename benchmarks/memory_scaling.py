"""The reading memory against the documents it was fitted on: held-out scores per fit, one plot.

Reads the held-out ``d2l eval`` reports of several memory fits (one folder per fit, the files of
``benchmarks/results/reading/memory/candidateN/``), and prints, per held-out set, each fit's score
and its paired difference from the first fit (95 % bootstrap interval, cases paired by id); writes
``--json`` and a plot (``--plot``): score against training documents, with the document in the
prompt (``icl``) and the reading issue's bar where they are known. Nothing is run: the reports
are made by ``d2l eval`` (the commands are in that folder's README).

Usage::

    .venv/bin/python benchmarks/memory_scaling.py \\
        900=benchmarks/results/reading/memory/candidate5 \\
        2250=benchmarks/results/reading/memory/candidate6 \\
        4050=benchmarks/results/reading/memory/candidate7 \\
        --json benchmarks/results/reading/memory/scaling.json \\
        --plot benchmarks/results/reading/memory/scaling.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, run_info, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: ``(report file, title, metric, bar as a share of icl or an absolute score, icl report or None)``:
#: the held-out sets of the reading issue (docs/training.md, "Where the bars stand").
SETS: tuple[tuple[str, str, str, tuple[str, float], str | None], ...] = (
    ("realistic_auto", "held-out realistic documents", "contains", ("icl", 0.6), "reading/L/realistic.json"),
    ("squad_large", "SQuAD validation, 390", "f1", ("icl", 0.7), "eval_keys_cpu_run2l_full/squad_large.json"),
    ("short_docs_auto", "hand-written notes, 20", "contains", ("abs", 0.6), "reading/L/short_docs.json"),
    ("needle_heldout_chunk_auto", "held-out needle phrasings", "contains", ("abs", 0.9), None),
    ("needle_chunk_auto", "trained needle phrasings", "exact_match", ("abs", 0.95), None),
    ("interference", "unrelated questions (base 0.683)", "contains", ("abs", 0.663), None),
)


def _icl(path: str | None, metric: str) -> float | None:
    if path is None or not (RESULTS / path).is_file():
        return None
    from d2l_haystack.evaluation.compare import scores

    values = scores(RESULTS / path, "icl", metric)
    return sum(values.values()) / len(values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("points", nargs="+", metavar="DOCS=FOLDER",
                   help="training documents of a fit and the folder of its held-out reports, in order")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="write the plot here (PNG)")
    args = p.parse_args(argv)

    from d2l_haystack.evaluation.compare import paired_difference, scores

    points: list[tuple[int, Path]] = []
    for item in args.points:
        docs, sep, folder = item.partition("=")
        if not sep or not docs.isdigit() or not Path(folder).is_dir():
            p.error(f"{item!r}: expected DOCS=FOLDER with a number of documents and an existing folder")
        points.append((int(docs), Path(folder)))
    rows: list[dict[str, Any]] = []
    series: dict[str, dict[str, Any]] = {}
    for name, title, metric, (bar_kind, share_or_score), icl_file in SETS:
        first: dict[str, float] | None = None
        icl = _icl(icl_file, metric)
        bar: float | None = share_or_score
        if bar_kind == "icl":  # a share of the prompt's score: unknown without the prompt's report
            bar = share_or_score * icl if icl is not None else None
        line: dict[str, Any] = {"title": title, "metric": metric, "icl": icl, "bar": bar, "points": []}
        for docs, folder in points:
            report = folder / f"{name}.json"
            if not report.is_file():
                continue
            these = scores(report, "d2l", metric)
            first = first or these
            diff = paired_difference(these, first)
            value = sum(these.values()) / len(these)
            line["points"].append({"documents": docs, "score": value, "n": len(these),
                                   "vs_first": [diff.value, diff.low, diff.high]})
            rows.append({"set": title, "metric": metric, "documents": docs, "score": f"{value:.3f}",
                         "of icl": f"{value / icl:.2f}" if icl else "",
                         "vs first (95 %)": f"{diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"})
        if line["points"]:
            series[name] = line
    if not rows:
        p.error("no held-out report found in the folders")
    print_table(rows, [(h, h) for h in ("set", "metric", "documents", "score", "of icl", "vs first (95 %)")])
    if args.json:
        write_json(args.json, {"run": run_info("memory_scaling.py", argv),
                               "folders": {str(d): str(f) for d, f in points}, "sets": series})
    if args.plot:
        _plot(series, args.plot)
    return 0


def _plot(series: dict[str, dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, line in zip(axes.flat, series.values(), strict=False):
        docs = [pt["documents"] for pt in line["points"]]
        score = [pt["score"] for pt in line["points"]]
        low = [pt["vs_first"][0] - pt["vs_first"][1] for pt in line["points"]]
        high = [pt["vs_first"][2] - pt["vs_first"][0] for pt in line["points"]]
        ax.errorbar(docs, score, yerr=[low, high], marker="o", capsize=3, label="adapter + memory")
        if line["icl"] is not None:
            ax.axhline(line["icl"], color="grey", linestyle="--", label="document in the prompt")
        if line["bar"] is not None:
            ax.axhline(line["bar"], color="tab:red", linestyle=":", label="the issue's bar")
        ax.set_xscale("log")
        ax.set_xticks(docs, [f"{d:,}" for d in docs])
        ax.minorticks_off()
        ax.set_title(line["title"], fontsize=10)
        ax.set_ylabel(line["metric"])
        ax.set_xlabel("training documents of the memory")
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9)
    fig.suptitle("Reading memory: held-out scores against fitted documents "
                 "(bars: 95 % paired interval of the change from the first fit)", fontsize=11)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
