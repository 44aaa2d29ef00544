"""Comparative benchmark: base, icl, rag, d2l, hybrid and routed (a thin wrapper of ``d2l bench``).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_compare.py --quick        # -> benchmarks/results/compare-quick
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_compare.py --checkpoint FOLDER   # -> benchmarks/results/compare

Every ``d2l bench`` option is accepted; see docs/benchmark.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from d2l_haystack.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args and not any(a in args for a in ("--dry-run", "--render")):
        name = "compare-quick" if "--quick" in args else "compare"
        args += ["--out", str(REPO / "benchmarks" / "results" / name)]
    return cli_main(["bench", *args])


if __name__ == "__main__":
    sys.exit(main())
