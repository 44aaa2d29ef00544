"""The method runner behind ``d2l eval``: every method on every case, scored, with timings.

    >>> from d2l_haystack.evaluation.runner import available_methods
    >>> "d2l" in available_methods() and "rag" in available_methods()
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.engine import D2LEngine
from ..core.errors import InputError
from . import haystack_methods  # noqa: F401  (registers rag / hybrid / routed)
from .cases import Case
from .methods import METHODS, ICLMethod
from .metrics import contains, exact_match, f1_score


def available_methods() -> list[str]:
    """The names :func:`run_eval` accepts (the core methods and the Haystack ones)."""
    return list(METHODS)


def run_eval(engine: D2LEngine, cases: list[Case], methods: list[str], max_new_tokens: int = 32,
             progress: bool = True) -> dict[str, Any]:
    """Run every method on every case; documents are prepared once per method."""
    from tqdm.auto import tqdm

    known = available_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; available: {known}")
    by_doc: dict[str, list[Case]] = {}
    for c in cases:
        by_doc.setdefault(c.doc_id, []).append(c)
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    bar = tqdm(total=len(cases) * len(methods), desc="eval", unit="q", disable=not progress)
    for name in methods:
        method = METHODS[name](engine, max_new_tokens)
        prep_seconds: list[float] = []
        scores: dict[str, list[float]] = {"exact_match": [], "f1": [], "contains": [], "seconds": [], "ttft": []}
        gated: list[bool] = []
        for doc_id, doc_cases in by_doc.items():
            prep_seconds.append(method.prepare(doc_id, doc_cases[0].document))
            for c in doc_cases:
                r = method.answer(doc_id, c.document, c.question)
                em, f1, ct = exact_match(r.text, c.answers), f1_score(r.text, c.answers), contains(r.text, c.answers)
                for k, v in (("exact_match", em), ("f1", f1), ("contains", ct), ("seconds", r.seconds),
                             ("ttft", r.time_to_first_token)):
                    scores[k].append(v)
                if "gated" in r.meta:
                    gated.append(bool(r.meta["gated"]))
                rows.append({"id": c.id, "method": name, "doc_id": doc_id, "question": c.question,
                             "answers": c.answers, "reply": r.text, "exact_match": em, "f1": f1, "contains": ct,
                             "seconds": round(r.seconds, 4), "meta": {**c.meta, **r.meta}})
                bar.update(1)
            method.release(doc_id)
        results[name] = {
            "n": len(scores["f1"]),
            "exact_match": float(np.mean(scores["exact_match"])) if scores["f1"] else 0.0,
            "f1": float(np.mean(scores["f1"])) if scores["f1"] else 0.0,
            "contains": float(np.mean(scores["contains"])) if scores["f1"] else 0.0,
            "seconds_per_query": float(np.mean(scores["seconds"])) if scores["f1"] else 0.0,
            "time_to_first_token": float(np.mean(scores["ttft"])) if scores["f1"] else 0.0,
            "internalize_seconds": float(np.mean([s for s in prep_seconds if s > 0])) if any(prep_seconds) else 0.0,
            "documents": len(by_doc),
        }
        if isinstance(method, ICLMethod):
            results[name]["truncated"] = method.truncated
        if gated:  # questions that got no adapter because no chunk was relevant to them
            results[name]["gated"] = sum(gated)
        replaced = replaced_answer_rate([r for r in rows if r["method"] == name])
        if replaced is not None:
            results[name]["replaced_answer"] = replaced
    bar.close()
    return {"results": results, "cases": rows,
            "engine": engine.describe(portable=True), "max_new_tokens": max_new_tokens}


def replaced_answer_rate(rows: list[dict[str, Any]]) -> float | None:
    """Share of the replies that hold the answer a case's document no longer has: on swapped-answer
    cases (``meta["swapped_from"]``, ``d2l cases squad-swapped``) a reply with the original answer
    came from what the model knows, not from the text. ``None`` when no row is such a case."""
    hits = [contains(r["reply"], [r["meta"]["swapped_from"]]) for r in rows if r.get("meta", {}).get("swapped_from")]
    return float(np.mean(hits)) if hits else None


def format_table(results: dict[str, Any]) -> str:
    head = f"{'method':<8} {'n':>5} {'EM':>6} {'F1':>6} {'contains':>8} {'s/query':>8} {'intern. s':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<8} {r['n']:>5} {r['exact_match']:>6.3f} {r['f1']:>6.3f} {r['contains']:>8.3f} "
                     f"{r['seconds_per_query']:>8.3f} {r['internalize_seconds']:>9.3f}"
                     + (f"  ({r['truncated']} truncated)" if r.get("truncated") else "")
                     + (f"  ({r['gated']} without adapter: not relevant)" if r.get("gated") else "")
                     + (f"  (replaced answer {r['replaced_answer']:.3f})" if "replaced_answer" in r else ""))
    return "\n".join(lines)
