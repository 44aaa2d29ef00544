"""Paired bootstrap comparisons of ``d2l eval`` reports: is a difference beyond noise?

Scores are paired by case id: two methods of one report (``d2l`` against ``icl``), or one method
of two reports (a candidate checkpoint against the shipped one, on the same case file). Cases
are resampled with replacement; the interval is the 2.5-97.5 percentile of the resampled
statistic.

    >>> a = {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 1.0}
    >>> b = {"q1": 0.0, "q2": 0.0, "q3": 1.0, "q4": 0.0}
    >>> round(paired_difference(a, b).value, 2), round(ratio(a, b).value, 2)
    (0.5, 3.0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

METRICS = ("f1", "exact_match", "contains")


@dataclass
class Interval:
    """A statistic with its 95 % bootstrap interval over ``n`` paired cases."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}] (n={self.n})"


def _paired(a: dict[str, float], b: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    ids = sorted(set(a) & set(b))
    if not ids:
        raise InputError("the two score sets share no case id (different case files?)")
    return np.array([a[i] for i in ids], dtype=float), np.array([b[i] for i in ids], dtype=float)


def _resample(n: int, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def paired_difference(a: dict[str, float], b: dict[str, float], rounds: int = 10000, seed: int = 0) -> Interval:
    """Mean of ``a - b`` over the shared cases, with its interval."""
    x, y = _paired(a, b)
    idx = _resample(len(x), rounds, seed)
    diffs = (x[idx] - y[idx]).mean(axis=1)
    return Interval(float((x - y).mean()), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5)),
                    len(x))


def ratio(a: dict[str, float], b: dict[str, float], rounds: int = 10000, seed: int = 0) -> Interval:
    """``mean(a) / mean(b)`` over the shared cases, with its interval (``inf`` where ``b`` is 0)."""
    x, y = _paired(a, b)
    idx = _resample(len(x), rounds, seed)
    num, den = x[idx].mean(axis=1), y[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1), np.inf)
    value = float(x.mean() / y.mean()) if y.mean() > 0 else float("inf")
    return Interval(value, float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5)), len(x))


def scores(report: dict[str, Any] | str | Path, method: str, metric: str = "f1") -> dict[str, float]:
    """``{case id: score}`` of one method in a ``d2l eval`` report (a dict or its JSON file).

    :raises InputError: not a report, an unknown metric, or a method the report lacks.
    """
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not isinstance(report, dict):
        try:
            report = json.loads(Path(report).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{report}: not a readable d2l eval report ({exc})") from None
    rows = report.get("cases") if isinstance(report, dict) else None
    if not isinstance(rows, list):
        raise InputError("not a d2l eval report (no 'cases' list)")
    out = {str(r["id"]): float(r[metric]) for r in rows if r.get("method") == method}
    if not out:
        methods = sorted({str(r.get("method")) for r in rows})
        raise InputError(f"the report has no method {method!r}; it has: {', '.join(methods)}")
    return out


def folder_scores(folder: str | Path, method: str, metric: str = "f1") -> dict[str, dict[str, float]]:
    """``{report name: {case id: score}}`` of every ``d2l eval`` report (``*.json``) in ``folder``
    that has ``method`` (other JSON files are left out).

    :raises InputError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder}: not a folder of d2l eval reports")
    out: dict[str, dict[str, float]] = {}
    for path in sorted(root.glob("*.json")):
        try:
            out[path.stem] = scores(path, method, metric)
        except InputError:
            continue
    return out


def compare_folders(first: str | Path, second: str | Path, method: str = "d2l", metric: str = "f1",
                    rounds: int = 10000) -> list[tuple[str, float, float, Interval]]:
    """``method`` in every report of ``first`` minus the same report of ``second`` (a candidate's
    evaluation folder against the shipped one's), and all their shared cases pooled (last row,
    named ``pooled``): ``[(name, mean first, mean second, paired difference)]``.

    :raises InputError: no report name in both folders.
    """
    a, b = folder_scores(first, method, metric), folder_scores(second, method, metric)
    names = [n for n in a if n in b and set(a[n]) & set(b[n])]
    if not names:
        raise InputError(f"{first} and {second} share no report of {method!r} on the same cases")
    rows: list[tuple[str, float, float, Interval]] = []
    pooled_a: dict[str, float] = {}
    pooled_b: dict[str, float] = {}
    for name in names:
        shared = sorted(set(a[name]) & set(b[name]))
        x = {i: a[name][i] for i in shared}
        y = {i: b[name][i] for i in shared}
        rows.append((name, float(np.mean(list(x.values()))), float(np.mean(list(y.values()))),
                     paired_difference(x, y, rounds)))
        pooled_a.update({f"{name}/{i}": v for i, v in x.items()})
        pooled_b.update({f"{name}/{i}": v for i, v in y.items()})
    rows.append(("pooled", float(np.mean(list(pooled_a.values()))), float(np.mean(list(pooled_b.values()))),
                 paired_difference(pooled_a, pooled_b, rounds)))
    return rows
