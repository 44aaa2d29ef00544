"""The reading issue's held-out scores, stage by stage: one table, one plot.

Reads the held-out ``d2l eval`` reports of several stages of the shipped checkpoint (one folder per
stage, the files of ``scripts/eval_reading.sh`` as ``benchmarks/results/reading/memory/*/`` keep
them), and prints, per held-out set, each stage's score, its share of the score with the document
in the prompt and its paired difference from the first stage (95 % bootstrap interval, cases paired
by id); writes ``--json`` and a plot (``--plot``) with the prompt's score and the issue's bar. A
stage whose folder lacks a set's report (a change that cannot alter it: the set has no long
document, or no question over the row budget) takes the stage before's, drawn hollow. Nothing is
run: the reports are made by ``d2l eval`` (the commands are in the folders' README).

Usage::

    R=benchmarks/results/reading
    .venv/bin/python benchmarks/reading_progress.py "network=$R/N320" "M7 memory=$R/memory/candidate7" \\
        "M10 next=$R/memory/row_use_next_matched" "M11 follow=$R/memory/follow_on_yield" \\
        "M12 gate 0.35=$R/memory/gate035" "M13 long docs=$R/memory/long_follow" "M14 64 rows=$R/memory/rows64" \\
        "M15 match 22=$R/memory/m15" --json $R/progress.json --plot $R/progress.png
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, run_info, write_json  # noqa: E402
from memory_scaling import SETS, collect, parse_points, plot, reports_parser  # noqa: E402

LONG_NEEDLES = ("needle_heldout_long", "held-out needle phrasings, 41k tokens", "contains", ("abs", 0.9), None)
PROGRESS_SETS = (*SETS[:4], LONG_NEEDLES, *SETS[4:])
"""The sets of :data:`memory_scaling.SETS` and the held-out needles at 41k tokens."""


def main(argv: list[str] | None = None) -> int:
    p = reports_parser(__doc__.split("\n\n")[0], "LABEL=FOLDER",
                       "a stage's label and the folder of its held-out reports, in order")
    args = p.parse_args(argv)
    stages = parse_points(p, args.points, numeric=False)
    series, rows = collect(stages, PROGRESS_SETS, carry=True)
    if not rows:
        p.error("no held-out report found in the folders")
    print_table(rows, [(h, h) for h in ("set", "metric", "point", "score", "of icl", "vs first (95 %)", "report")])
    if args.json:
        write_json(args.json, {"run": run_info("reading_progress.py", argv),
                               "stages": {str(label): str(f) for label, f in stages}, "sets": series})
    if args.plot:
        plot(series, args.plot, "stage",
             "Reading real documents: held-out scores by stage (bars: 95 % paired interval of the change "
             "from the first stage)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
