"""The comparative benchmark behind ``d2l bench``: base, icl, rag, d2l, hybrid and routed answering
on reading comprehension, needle in a haystack and a changing, skewed workload.

* :mod:`.workloads` builds the documents, questions and event streams;
* :mod:`.runner` runs the methods and records every measurement (:func:`run_benchmark`);
* :mod:`.costs` holds the cost arithmetic (break-even points, router verdicts);
* :mod:`.report` summarizes and writes ``results.json``, ``results.md`` and the plots.

Usage example::

    from d2l_haystack.bench import BenchConfig, run_benchmark, write_report
    from d2l_haystack.core import D2LEngine

    engine = D2LEngine(checkpoint="runs/my_run/best")
    raw = run_benchmark(engine, BenchConfig.quick())
    write_report(raw, "benchmarks/results/compare-quick")
"""

from .costs import break_even, router_verdict, total_cost
from .report import load_report, summarize, write_report
from .runner import BenchConfig, estimate_seconds, run_benchmark

__all__ = ["BenchConfig", "break_even", "estimate_seconds", "load_report", "router_verdict", "run_benchmark",
           "summarize", "total_cost", "write_report"]
