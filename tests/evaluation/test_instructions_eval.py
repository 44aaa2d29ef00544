"""d2l eval-instructions on a tiny model: every method answers every case, and the report adds up."""

from __future__ import annotations

import pytest

from d2l_haystack.core import D2LEngine
from d2l_haystack.evaluation.instructions import evaluate_instructions, format_table, instruction_cases
from d2l_haystack.training.instructions import HELDOUT_KINDS, KIND_NAMES


def test_cases_cover_every_kind_with_held_out_requests():
    cases = instruction_cases(per_kind=2, seed=1)
    assert len(cases) == 2 * len(KIND_NAMES)
    assert {c["kind"] for c in cases if c["heldout_kind"]} == set(HELDOUT_KINDS)
    assert cases == instruction_cases(per_kind=2, seed=1)  # seeded
    assert all(c["instruction"]["text"] in c["system_prompt"] and c["answers"] for c in cases)


def test_report_of_the_three_methods(tiny_llama_dir):
    engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", instructions_checkpoint=None)
    cases = instruction_cases(per_kind=1, kinds=["uppercase", "end_phrase"])
    seen = []
    report = evaluate_instructions(engine, cases, max_new_tokens=3, on_case=seen.append)
    assert len(report["cases"]) == len(seen) == 3 * len(cases)
    r = report["results"]
    assert set(r) == {"none", "system", "adapter"}
    # the system prompt costs prompt tokens; the adapter does not
    assert r["system"]["prompt_tokens"] > r["none"]["prompt_tokens"] == r["adapter"]["prompt_tokens"]
    assert set(r["adapter"]["by_kind"]) == {"uppercase", "end_phrase"}
    assert all(row["complies"] in (0.0, 1.0) for row in report["cases"])
    assert "end_phrase (held out)" in format_table(report)
    with pytest.raises(ValueError, match="unknown method 'prompt'"):
        evaluate_instructions(engine, cases, methods=["prompt"])


def test_composition_report(tiny_llama_dir):
    from d2l_haystack.evaluation.cases import Case
    from d2l_haystack.evaluation.instructions import COMPOSITION_METHODS, evaluate_composition

    engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", instructions_checkpoint=None)
    cases = [Case("c1", "The harbor office opens at 7 am.", "When does the harbor office open?", ["7 am"]),
             Case("c2", "Tickets cost 12 euros.", "How much is a ticket?", ["12 euros"])]
    report = evaluate_composition(engine, cases, max_new_tokens=3)
    assert set(report["results"]) == set(COMPOSITION_METHODS)
    assert all(r["n"] == 2 for r in report["results"].values()) and len(report["cases"]) == 6
    assert all(0.0 <= row["contains"] <= 1.0 and row["complies"] in (0.0, 1.0) for row in report["cases"])


def test_paired_comparisons_pair_cases_by_id_per_subset():
    from d2l_haystack.evaluation.instructions import format_comparisons, paired_comparisons

    rows = []
    for i in range(8):
        held = i % 2 == 0
        rows.append({"id": f"c{i}", "method": "none", "heldout_kind": held, "complies": 0.0, "quality": 1.0})
        rows.append({"id": f"c{i}", "method": "adapter", "heldout_kind": held, "complies": float(not held),
                     "quality": 1.0})
    comps = {(c["a"], c["b"], c["subset"], c["metric"]): c for c in paired_comparisons(rows, rounds=200)}
    subsets = ("all kinds", "held-out kinds", "trained kinds")
    assert set(comps) == {("adapter", "none", s, "complies") for s in subsets} | {("adapter", "none", "all kinds",
                                                                                      "quality")}
    assert comps[("adapter", "none", "trained kinds", "complies")]["difference"] == 1.0
    assert comps[("adapter", "none", "held-out kinds", "complies")]["difference"] == 0.0
    assert comps[("adapter", "none", "all kinds", "complies")]["n"] == 8
    assert comps[("adapter", "none", "all kinds", "complies")]["ratio"] is None  # none never complies
    assert "adapter - none, compliance on trained kinds: +1.000" in format_comparisons(list(comps.values()))
