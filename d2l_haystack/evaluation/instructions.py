"""Evaluation of internalized instructions: rule-checked compliance per instruction kind.

Three ways to answer each held-out request: ``none`` (no instructions), ``system`` (the
instructions as the system prompt, the reference), ``adapter`` (the instructions internalized
into an adapter, :meth:`~d2l_haystack.core.D2LEngine.internalize` with ``kind="instructions"``, and
no system prompt). Each reply is checked by its instruction's rule
(:mod:`d2l_haystack.training.instructions`) and, for quality, by whether it contains the request's
known answer. Requests are the held-out general questions (``data/general_qa.jsonl``, never
trained on); instructions are drawn from the held-out part (held-out kinds with any phrasing,
training kinds with held-out phrasings and values only).

Usage example::

    from d2l_haystack.core import D2LEngine
    from d2l_haystack.evaluation.instructions import instruction_cases, evaluate_instructions

    engine = D2LEngine(instructions_checkpoint="runs/instructions/best")
    report = evaluate_instructions(engine, instruction_cases(per_kind=4), methods=["none", "system"])
    print(report["results"]["system"]["compliance"])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from d2l_haystack.core.prompts import system_messages
from d2l_haystack.training import instructions as I

from .cases import general_questions
from .metrics import contains

METHODS = ("none", "system", "adapter")


def instruction_cases(per_kind: int = 6, seed: int = 0, part: str = "heldout",
                      kinds: list[str] | None = None) -> list[dict[str, Any]]:
    """``per_kind`` cases of every kind (default: all kinds; held-out ones are marked): one
    instruction and one held-out general question each, seeded."""
    rng = np.random.default_rng([seed, 24])
    requests = general_questions()
    names = kinds or list(I.KIND_NAMES)
    out = []
    for kind in names:
        for j in range(per_kind):
            inst = I.make_instruction(rng, kind, part)
            req = requests[int(rng.integers(len(requests)))]
            out.append({"id": f"inst-{kind}-{j}", "kind": kind, "heldout_kind": kind in I.HELDOUT_KINDS,
                        "instruction": inst.to_dict(), "system_prompt": I.system_prompt(rng, inst),
                        "question": req["question"], "answers": list(req["answers"])})
    return out


def _answer(engine: Any, method: str, case: dict[str, Any], adapters: dict[str, Any],
            max_new_tokens: int) -> Any:
    if method == "none":
        return engine.generate(case["question"], max_new_tokens=max_new_tokens)
    if method == "system":
        return engine.generate(system_messages(case["system_prompt"], case["question"]), max_new_tokens=max_new_tokens)
    if method == "adapter":
        text = case["system_prompt"]
        if text not in adapters:
            adapters[text] = engine.internalize(text, kind="instructions", progress=False)
        return engine.generate(case["question"], adapters[text], max_new_tokens=max_new_tokens)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def evaluate_instructions(engine: Any, cases: list[dict[str, Any]], methods: list[str] | None = None,
                          max_new_tokens: int = 64, progress: bool = False,
                          on_case: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Answer every case with each method and score it.

    :returns: ``{"results": {method: {n, compliance, compliance_heldout_kinds, compliance_trained_kinds,
        quality, prompt_tokens, time_to_first_token, by_kind: {kind: compliance}}}, "cases": [...]}``;
        each case row has ``method``, ``reply``, ``complies`` (0/1), ``quality`` (0/1).
    :raises ValueError: an unknown method.
    """
    from tqdm.auto import tqdm

    methods = list(methods or METHODS)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    rows: list[dict[str, Any]] = []
    adapters: dict[str, Any] = {}
    for method in methods:
        for case in tqdm(cases, desc=f"instructions {method}", disable=not progress):
            result = _answer(engine, method, case, adapters, max_new_tokens)
            inst = I.Instruction.from_dict(case["instruction"])
            row = {"id": case["id"], "method": method, "kind": case["kind"], "heldout_kind": case["heldout_kind"],
                   "reply": result.text, "complies": float(inst.check(result.text)),
                   "quality": contains(result.text, case["answers"]), "prompt_tokens": result.prompt_tokens,
                   "time_to_first_token": result.time_to_first_token}
            rows.append(row)
            if on_case:
                on_case(row)
    results: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        held = [r["complies"] for r in mine if r["heldout_kind"]]
        trained = [r["complies"] for r in mine if not r["heldout_kind"]]
        results[method] = {
            "n": len(mine), "compliance": _mean([r["complies"] for r in mine]),
            "compliance_heldout_kinds": _mean(held), "compliance_trained_kinds": _mean(trained),
            "quality": _mean([r["quality"] for r in mine]),
            "prompt_tokens": _mean([r["prompt_tokens"] for r in mine]),
            "time_to_first_token": _mean([r["time_to_first_token"] for r in mine]),
            "by_kind": {k: _mean([r["complies"] for r in mine if r["kind"] == k])
                        for k in dict.fromkeys(r["kind"] for r in mine)},
        }
    return {"results": results, "cases": rows, "comparisons": paired_comparisons(rows)}


COMPARED = (("adapter", "none"), ("adapter", "system"), ("system", "none"))
"""Method pairs :func:`paired_comparisons` reports (where both were run)."""


def paired_comparisons(rows: list[dict[str, Any]], rounds: int = 10000) -> list[dict[str, Any]]:
    """Paired bootstrap differences (:func:`.compare.paired_difference`, cases paired by id) of
    compliance on all kinds, held-out kinds and trained kinds, and of request quality, for each
    pair of :data:`COMPARED`; the ratio ``a / b`` of compliance beside it."""
    from .compare import paired_difference

    out: list[dict[str, Any]] = []
    methods = {r["method"] for r in rows}
    subsets = (("all kinds", lambda r: True), ("held-out kinds", lambda r: r["heldout_kind"]),
               ("trained kinds", lambda r: not r["heldout_kind"]))
    for a, b in COMPARED:
        if a not in methods or b not in methods:
            continue
        for label, keep in subsets:
            for metric in ("complies", "quality"):
                if metric == "quality" and label != "all kinds":
                    continue
                xa = {r["id"]: float(r[metric]) for r in rows if r["method"] == a and keep(r)}
                xb = {r["id"]: float(r[metric]) for r in rows if r["method"] == b and keep(r)}
                if not xa or not set(xa) & set(xb):
                    continue
                d = paired_difference(xa, xb, rounds)
                mb = _mean(list(xb.values()))
                out.append({"a": a, "b": b, "subset": label, "metric": metric, "difference": d.value,
                            "low": d.low, "high": d.high, "n": d.n,
                            "ratio": (_mean(list(xa.values())) / mb) if mb > 0 else None})
    return out


def format_comparisons(comparisons: list[dict[str, Any]]) -> str:
    """One line per comparison: ``adapter - none, compliance on held-out kinds: +0.21 [+0.10, +0.33]``."""
    lines = []
    for c in comparisons:
        what = "compliance" if c["metric"] == "complies" else "request quality"
        ratio = "" if c["ratio"] is None else f", ratio {c['ratio']:.2f}"
        lines.append(f"{c['a']} - {c['b']}, {what} on {c['subset']}: {c['difference']:+.3f} "
                     f"[{c['low']:+.3f}, {c['high']:+.3f}] (n={c['n']}{ratio})")
    return "\n".join(lines)


COMPOSABLE_KINDS = ("uppercase", "lowercase", "start_phrase", "end_phrase", "required_word", "quoted", "persona")
"""Instruction kinds a reply can follow while still holding a short answer (composition check)."""

COMPOSITION_METHODS = ("document", "document+instructions", "document+system")


def evaluate_composition(engine: Any, cases: list[Any], seed: int = 0, max_new_tokens: int = 48,
                         progress: bool = False, part: str = "heldout") -> dict[str, Any]:
    """Document questions answered with the document's adapter alone, with it AND an instructions
    adapter, and with it and the instructions as the system prompt: the answers' ``contains`` and
    ``f1`` (:mod:`.metrics`, case-insensitive) and the instructions' compliance.

    :param cases: :class:`~d2l_haystack.evaluation.cases.Case` rows (e.g. held-out realistic documents).
    """
    from tqdm.auto import tqdm

    from .metrics import f1_score

    rng = np.random.default_rng([seed, 25])
    doc_adapters: dict[str, Any] = {}
    inst_adapters: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc="composition", disable=not progress):
        inst = I.make_instruction(rng, COMPOSABLE_KINDS[int(rng.integers(len(COMPOSABLE_KINDS)))], part)
        system = I.system_prompt(rng, inst)
        if case.doc_id not in doc_adapters:
            doc_adapters[case.doc_id] = engine.internalize(case.document, progress=False)
        if system not in inst_adapters:
            inst_adapters[system] = engine.internalize(system, kind="instructions", progress=False)
        doc, rules = doc_adapters[case.doc_id], inst_adapters[system]
        replies = {
            "document": engine.generate(case.question, doc, max_new_tokens=max_new_tokens),
            "document+instructions": engine.generate(case.question, [rules, doc], max_new_tokens=max_new_tokens),
            "document+system": engine.generate(system_messages(system, case.question), doc,
                                               max_new_tokens=max_new_tokens, query=case.question),
        }
        for method, result in replies.items():
            rows.append({"id": case.id, "method": method, "kind": inst.kind, "reply": result.text,
                         "contains": contains(result.text, case.answers), "f1": f1_score(result.text, case.answers),
                         "complies": float(inst.check(result.text))})
    results = {m: {"n": len([r for r in rows if r["method"] == m]),
                   **{k: _mean([r[k] for r in rows if r["method"] == m]) for k in ("contains", "f1", "complies")}}
               for m in COMPOSITION_METHODS}
    return {"results": results, "cases": rows}


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def format_table(report: dict[str, Any]) -> str:
    """Compliance per kind (rows) and method (columns), then the summary lines."""
    results = report["results"]
    methods = list(results)
    kinds = list(next(iter(results.values()))["by_kind"]) if results else []
    lines = ["| kind | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for k in kinds:
        mark = " (held out)" if k in I.HELDOUT_KINDS else ""
        lines.append(f"| {k}{mark} | " + " | ".join(f"{results[m]['by_kind'].get(k, float('nan')):.2f}"
                                                  for m in methods) + " |")
    for label, key, fmt in (("compliance, all kinds", "compliance", ".3f"),
                            ("compliance, held-out kinds", "compliance_heldout_kinds", ".3f"),
                            ("compliance, trained kinds (held-out phrasings)", "compliance_trained_kinds", ".3f"),
                            ("request quality (contains the answer)", "quality", ".3f"),
                            ("prompt tokens per query", "prompt_tokens", ".0f"),
                            ("time to first token (s)", "time_to_first_token", ".3f")):
        lines.append(f"| **{label}** | " + " | ".join(format(results[m][key], fmt) for m in methods) + " |")
    return "\n".join(lines)
