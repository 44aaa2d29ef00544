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


def collect(points: list[tuple[Any, Path]], sets: tuple[tuple[str, str, str, tuple[str, float], str | None], ...]
            = SETS, carry: bool = False) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per held-out set of ``sets``, the d2l score of each point's report (``(label, folder)``) and
    its paired difference from the first point's; table rows beside. With ``carry``, a folder
    without a set's report takes the last earlier one's (``carried``: unchanged by construction)."""
    from d2l_haystack.evaluation.compare import paired_difference, scores

    rows: list[dict[str, Any]] = []
    series: dict[str, dict[str, Any]] = {}
    for name, title, metric, (bar_kind, share_or_score), icl_file in sets:
        first: dict[str, float] | None = None
        icl = _icl(icl_file, metric)
        bar: float | None = share_or_score
        if bar_kind == "icl":  # a share of the prompt's score: unknown without the prompt's report
            bar = share_or_score * icl if icl is not None else None
        line: dict[str, Any] = {"title": title, "metric": metric, "icl": icl, "bar": bar, "points": []}
        last: Path | None = None
        for label, folder in points:
            report, carried = folder / f"{name}.json", False
            if not report.is_file():
                if not carry or last is None:
                    continue
                report, carried = last, True
            last = report
            these = scores(report, "d2l", metric)
            first = first or these
            diff = paired_difference(these, first)
            value = sum(these.values()) / len(these)
            line["points"].append({"label": label, "score": value, "n": len(these), "report": str(report),
                                   "carried": carried, "vs_first": [diff.value, diff.low, diff.high]})
            rows.append({"set": title, "metric": metric, "point": label, "score": f"{value:.3f}",
                         "of icl": f"{value / icl:.2f}" if icl else "",
                         "vs first (95 %)": f"{diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]",
                         "report": "(carried) " + report.parent.name if carried else report.parent.name})
        if line["points"]:
            series[name] = line
    return series, rows


def parse_points(parser: argparse.ArgumentParser, items: list[str], numeric: bool) -> list[tuple[Any, Path]]:
    """``LABEL=FOLDER`` arguments as ``(label, folder)`` (``numeric``: the label is a number of
    documents, an int); a malformed one or a missing folder is the parser's one-line error."""
    points: list[tuple[Any, Path]] = []
    for item in items:
        label, sep, folder = item.partition("=") if numeric else item.rpartition("=")
        if not sep or not label or (numeric and not label.isdigit()) or not Path(folder).is_dir():
            parser.error(f"{item!r}: expected {'DOCS' if numeric else 'LABEL'}=FOLDER with "
                         f"{'a number of documents' if numeric else 'a label'} and an existing folder")
        points.append((int(label) if numeric else label, Path(folder)))
    return points


def reports_parser(description: str, metavar: str, help: str) -> argparse.ArgumentParser:
    """The command line of a script over folders of held-out reports: ``points``, ``--json``, ``--plot``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("points", nargs="+", metavar=metavar, help=help)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="write the plot here (PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = reports_parser(__doc__.split("\n\n")[0], "DOCS=FOLDER",
                       "training documents of a fit and the folder of its held-out reports, in order")
    args = p.parse_args(argv)
    series, rows = collect(parse_points(p, args.points, numeric=True))
    if not rows:
        p.error("no held-out report found in the folders")
    for row in rows:
        row["documents"] = row.pop("point")
    print_table(rows, [(h, h) for h in ("set", "metric", "documents", "score", "of icl", "vs first (95 %)")])
    if args.json:
        for line in series.values():
            for pt in line["points"]:
                pt["documents"] = pt.pop("label")
                del pt["report"], pt["carried"]
        write_json(args.json, {"run": run_info("memory_scaling.py", argv),
                               "folders": dict(arg.partition("=")[::2] for arg in args.points), "sets": series})
    if args.plot:
        plot(series, args.plot, "training documents of the memory",
             "Reading memory: held-out scores against fitted documents "
             "(bars: 95 % paired interval of the change from the first fit)", log_x=True)
    return 0


def plot(series: dict[str, dict[str, Any]], out: str, xlabel: str, title: str, log_x: bool = False) -> None:
    """One panel per held-out set: each point's score with the 95 % interval of its change from
    the first point, the prompt's score and the issue's bar as lines; hollow markers are carried."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(series)
    cols = 3 if panels > 4 else 2
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.5 * rows), constrained_layout=True, squeeze=False)
    for ax, line in zip(axes.flat, series.values(), strict=False):
        pts = line["points"]
        labels = [pt.get("label", pt.get("documents")) for pt in pts]
        x = labels if log_x else list(range(len(pts)))
        score = [pt["score"] for pt in pts]
        low = [pt["vs_first"][0] - pt["vs_first"][1] for pt in pts]
        high = [pt["vs_first"][2] - pt["vs_first"][0] for pt in pts]
        ax.errorbar(x, score, yerr=[low, high], marker="o", capsize=3, label="adapter (+ memory)")
        hollow = [(xi, si) for xi, si, pt in zip(x, score, pts, strict=True) if pt.get("carried")]
        if hollow:
            ax.plot(*zip(*hollow, strict=True), "o", color="white", markeredgecolor="tab:blue", zorder=4,
                    label="not rerun: the stage before's report")
        if line["icl"] is not None:
            ax.axhline(line["icl"], color="grey", linestyle="--", label="document in the prompt")
        if line["bar"] is not None:
            ax.axhline(line["bar"], color="tab:red", linestyle=":", label="the issue's bar")
        if log_x:
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{d:,}" for d in labels])
            ax.minorticks_off()
        else:
            ax.set_xticks(x, [str(v) for v in labels], rotation=45, ha="right", fontsize=8)
        ax.set_title(line["title"], fontsize=10)
        ax.set_ylabel(line["metric"])
        ax.set_xlabel(xlabel)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=4, fontsize=9)
    fig.suptitle(title, fontsize=11)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
