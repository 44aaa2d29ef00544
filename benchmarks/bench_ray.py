"""Ray benchmark: documents per second of ``d2l index --ray`` with 1 and 2 workers against the
sequential ``d2l index``, on this machine.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ray.py                 # 24 documents, ~10 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_ray.py --docs 6        # smoke test

The corpus: ``--docs`` generated everyday documents (``training.realistic``, held-out kinds, 5-8 facts
each, ~70-120 words, all internalized: ``--route d2l``), indexed into a fresh workspace with the embedded
model and the shipped checkpoint, three ways: sequentially, and with a local Ray cluster (started
once, ``ray.init(num_cpus=2)``) and 1 or 2 workers. Reported: wall seconds, documents per second
(startup included: cluster, workers loading the engine) and the steady rate after the first
document of each worker; JSON in ``benchmarks/results/ray.json``. Run it on an otherwise idle
machine: Ray's workers run at niceness 15 and starve beside another busy process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _report import print_table, run_info, write_json  # noqa: E402  (beside this script)


def corpus(folder: Path, n: int) -> list[Path]:
    import numpy as np

    from d2l_haystack.training import realistic

    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        doc = realistic.realistic_document(rng, part="heldout", min_facts=5, max_facts=8, plain_sentences=4)
        path = folder / f"doc{i:03d}.md"
        path.write_text(doc.text + "\n", encoding="utf-8")
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=24)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ray.json"))
    args = p.parse_args(argv)
    import ray

    from d2l_haystack.kb.ray_index import index_with_ray
    from d2l_haystack.kb.workspace import Workspace

    rows = []
    with tempfile.TemporaryDirectory(prefix="d2l-ray-bench-") as tmp_name:
        tmp = Path(tmp_name)
        files = corpus(tmp / "docs", args.docs)
        ws = Workspace(tmp / "sequential")
        start = time.perf_counter()
        stamps = []
        ws.index_paths([tmp / "docs"], route="d2l", on_result=lambda _r: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - start
        steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
        rows.append({"mode": "sequential", "workers": 0, "docs": len(files), "wall_s": round(wall, 2),
                     "docs_per_s": round(len(files) / wall, 3), "steady_docs_per_s": steady and round(steady, 3)})
        print(rows[-1], flush=True)
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        cluster_s = time.perf_counter() - t
        try:
            for workers in (1, 2):
                ws = Workspace(tmp / f"ray{workers}")
                stamps: list[float] = []
                start = time.perf_counter()
                report = index_with_ray(ws, [tmp / "docs"], workers=workers, route="d2l", progress=False,
                                        on_result=lambda _r, seen=stamps: seen.append(time.perf_counter()))
                wall = time.perf_counter() - start
                skip = min(workers, len(stamps) - 1)  # each worker's first document carries its start-up
                steady = (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip]) if len(stamps) - 1 > skip else None
                rows.append({"mode": "ray", "workers": workers, "docs": len(report.results), "wall_s": round(wall, 2),
                             "docs_per_s": round(len(report.results) / wall, 3),
                             "steady_docs_per_s": steady and round(steady, 3), "failures": len(report.failures)})
                print(rows[-1], flush=True)
        finally:
            ray.shutdown()
    data = {**run_info("bench_ray.py", argv), "cluster_start_s": round(cluster_s, 2), "rows": rows}
    out = write_json(args.out, data)
    print_table(rows, [("mode", "mode"), ("workers", "workers"), ("docs", "docs"), ("wall s", "wall_s"),
                       ("docs/s", "docs_per_s"), ("steady docs/s", "steady_docs_per_s")])
    print(f"\ncluster start {data['cluster_start_s']} s; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
