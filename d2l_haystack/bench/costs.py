"""Cost arithmetic: total cost of answering n questions, break-even points, router verdicts.

Cost is measured in seconds of compute on the benchmark machine (wall time of one process):

* a method's cost for one document answered ``n`` times is ``prepare + n * per_query``, where
  ``prepare`` is the one-time work (internalizing: encoder + hypernetwork; indexing: split +
  embed + write; ``icl``/``base``: nothing) and ``per_query`` the mean wall time of one answer
  (retrieval and routing included);
* the break-even number of questions of method A against B is the ``n`` from which A is not
  more expensive than B: ``(prepare_A - prepare_B) / (per_query_B - per_query_A)`` when A is
  cheaper per query; ``0`` when A is cheaper both ways; ``None`` (never) when A is dearer per
  query, or as dear per query and dearer up front.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict


class PublishedClaim(TypedDict):
    """A published cost/accuracy result a routed run is compared with."""

    source: str
    accuracy_delta_points: tuple[float, float]
    cost_saving_pct: tuple[float, float]
    claim: str


SELF_ROUTE: PublishedClaim = {
    "source": "Li et al. 2024, 'Retrieval Augmented Generation or Long-Context LLMs? A Comprehensive Study "
              "and Hybrid Approach' (Self-Route)",
    "accuracy_delta_points": (-2.2, 1.7),
    "cost_saving_pct": (39.0, 65.0),
    "claim": "within about 2 points of long context at 39-65% lower cost",
}
"""The published Self-Route baseline the router is compared with."""

PUBLISHED_D2L_ICL_RATIO = {"squad": 0.814, "drop": 0.655, "ropes": 0.906,
                           "source": "Doc-to-LoRA (Sakana AI, arXiv 2602.15902): score relative to the base "
                                     "model with the document in context, gemma-2-2b-it, rank 8"}
"""Published D2L accuracy relative to in-context reading."""

EQUAL_ACCURACY_POINTS = 2.0
"""Accuracy within this many points (0-100 scale) counts as equal (Self-Route's margin)."""


def total_cost(prepare_seconds: float, per_query_seconds: float, questions: float) -> float:
    """``prepare + questions * per_query`` seconds."""
    return float(prepare_seconds) + float(questions) * float(per_query_seconds)


def cost_curve(prepare_seconds: float, per_query_seconds: float, questions: list[int]) -> list[float]:
    """:func:`total_cost` for each number of questions."""
    return [total_cost(prepare_seconds, per_query_seconds, n) for n in questions]


def break_even(prepare_a: float, per_query_a: float, prepare_b: float, per_query_b: float) -> float | None:
    """Questions per document from which method A costs no more than method B.

    :returns: ``0.0`` if A is never more expensive, a positive number of questions, or ``None``
        if A never pays off: dearer per query (even when cheaper up front, it loses with every
        question), or as dear per query and dearer up front. NaN inputs give ``None``.
    """
    values = (prepare_a, per_query_a, prepare_b, per_query_b)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    extra = float(prepare_a) - float(prepare_b)
    saving = float(per_query_b) - float(per_query_a)
    if saving > 0:
        return max(0.0, extra / saving)
    if saving == 0:
        return 0.0 if extra <= 0 else None
    return None  # dearer per question: whatever it saves up front, every question loses it again


def break_even_questions(value: float | None) -> int | None:
    """A break-even point as a whole number of questions (rounded up); ``None`` stays ``None``."""
    if value is None:
        return None
    return int(math.ceil(value - 1e-9))


def router_verdict(routed: dict[str, float], other: dict[str, float],
                   tolerance_points: float = EQUAL_ACCURACY_POINTS) -> dict[str, Any]:
    """Compare the router with one single method on total cost and accuracy.

    :param routed: ``{"cost": seconds, "accuracy": 0..1}`` of the router.
    :param other: the same for the single method.
    :returns: ``cost_saving_pct`` (positive: the router is cheaper), ``accuracy_delta_points``
        (router minus method, 0-100 scale) and ``verdict``: ``beats`` (cheaper, accuracy within
        the tolerance or better), ``cheaper-less-accurate``, ``better-costlier`` (more accurate
        beyond the tolerance, dearer), ``equal-accuracy-costlier``, or ``worse`` (dearer and less
        accurate).
    """
    cost_r, cost_o = float(routed["cost"]), float(other["cost"])
    saving = (1.0 - cost_r / cost_o) * 100.0 if cost_o > 0 else math.nan
    delta = (float(routed["accuracy"]) - float(other["accuracy"])) * 100.0
    cheaper = cost_r < cost_o
    if cheaper and delta >= -tolerance_points:
        verdict = "beats"
    elif cheaper:
        verdict = "cheaper-less-accurate"
    elif delta > tolerance_points:
        verdict = "better-costlier"
    elif delta >= -tolerance_points:
        verdict = "equal-accuracy-costlier"
    else:
        verdict = "worse"
    in_self_route_band = (SELF_ROUTE["accuracy_delta_points"][0] <= delta
                          and saving >= SELF_ROUTE["cost_saving_pct"][0])
    return {"cost_saving_pct": saving, "accuracy_delta_points": delta, "verdict": verdict,
            "matches_self_route": bool(in_self_route_band)}


def accuracy_ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` (e.g. D2L F1 over icl F1); ``None`` when the denominator is 0."""
    if denominator is None or numerator is None or denominator <= 0 or math.isnan(denominator):
        return None
    return float(numerator) / float(denominator)
