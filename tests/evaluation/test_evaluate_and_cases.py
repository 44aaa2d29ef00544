"""Metrics, case files and case builders of the evaluation (no model needed beyond a tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d2l_haystack.core.errors import InputError
from d2l_haystack.evaluation.cases import NEEDLE_TEMPLATES, load_cases, niah_cases
from d2l_haystack.evaluation.metrics import contains, exact_match, f1_score, normalize_answer
from d2l_haystack.evaluation.runner import available_methods, format_table

REPO = Path(__file__).resolve().parents[2]


class TestMetrics:
    def test_squad_normalisation(self):
        assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
        assert normalize_answer("an apple, a pear") == "apple pear"

    def test_exact_match_uses_the_best_gold_answer(self):
        assert exact_match("the Paris", ["London", "Paris"]) == 1.0
        assert exact_match("Paris, France", ["Paris"]) == 0.0

    def test_f1_is_token_overlap(self):
        assert f1_score("Paris France", ["Paris"]) == pytest.approx(2 / 3)
        assert f1_score("Berlin", ["Paris"]) == 0.0
        assert f1_score("", [""]) == 1.0

    def test_contains_matches_whole_words_only(self):
        assert contains("The number is 48213.", ["48213"]) == 1.0
        assert contains("It is 148213", ["48213"]) == 0.0

    def test_table_lists_every_method(self):
        row = {"n": 2, "exact_match": 0.5, "f1": 0.5, "contains": 1.0, "seconds_per_query": 0.1,
               "internalize_seconds": 0.2}
        table = format_table({"base": row, "icl": {**row, "truncated": 1}})
        assert "base" in table and "icl" in table and "(1 truncated)" in table
        assert "replaced answer" not in table
        assert "(replaced answer 0.250)" in format_table({"d2l": {**row, "replaced_answer": 0.25}})

    def test_replaced_answer_rate_counts_replies_with_the_answer_the_document_lost(self):
        from d2l_haystack.evaluation.runner import replaced_answer_rate

        rows = [{"reply": "It opened in 1932.", "meta": {"swapped_from": "1932"}},
                {"reply": "It opened in 1871.", "meta": {"swapped_from": "1932"}},
                {"reply": "John Bradfield", "meta": {"swapped_from": "Bradfield"}},
                {"reply": "1932", "meta": {}}]  # not a swapped case: not counted
        assert replaced_answer_rate(rows) == pytest.approx(2 / 3)
        assert replaced_answer_rate([{"reply": "1932", "meta": {}}]) is None


class TestCaseFiles:
    def test_round_trip_and_shared_documents(self, tmp_path):
        path = tmp_path / "cases.jsonl"
        rows = [{"id": "a", "document": "Doc one.", "question": "Q1?", "answers": ["x"]},
                {"id": "b", "document": "Doc one.", "question": "Q2?", "answers": ["y"]},
                {"id": "c", "document": "Other.", "question": "Q3?", "answers": ["z"], "doc_id": "d7"}]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
        cases = load_cases(path)
        assert [c.id for c in cases] == ["a", "b", "c"]
        assert cases[0].doc_id == cases[1].doc_id != cases[2].doc_id == "d7"
        assert len(load_cases(path, limit=2)) == 2

    def test_bad_line_is_named(self, tmp_path):
        path = tmp_path / "bad.jsonl"
        path.write_text('{"id": "a", "document": "d", "question": "q", "answers": ["x"]}\n{"id": "b"}\n')
        with pytest.raises(InputError, match=r"bad.jsonl:2"):
            load_cases(path)

    def test_missing_file_is_named(self, tmp_path):
        with pytest.raises(InputError, match="no such case file"):
            load_cases(tmp_path / "nope.jsonl")

    def test_core_methods_are_registered(self):
        assert {"base", "icl", "d2l"} <= set(available_methods())


class TestNeedleCases:
    def test_lengths_depths_and_needle(self, tokenizer_dir):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        cases = niah_cases(tok, [200, 800], [0.0, 1.0], per_cell=2, filler="synthetic", seed=5)
        assert len(cases) == 8
        for c in cases:
            answer = c["answers"][0]
            assert answer in c["document"]
            assert c["question"] == NEEDLE_TEMPLATES["magic"][1]
            n = len(tok(c["document"], add_special_tokens=False)["input_ids"])
            assert c["meta"]["length"] <= n <= c["meta"]["length"] * 1.3 + 40
            pos = c["document"].index(answer) / len(c["document"])
            assert pos < 0.2 if c["meta"]["depth"] == 0.0 else pos > 0.8
        assert len({c["answers"][0] for c in cases}) > 1


def test_general_unrelated_questions_never_come_from_the_held_out_set():
    import numpy as np

    from d2l_haystack.training import data as D

    held_out = D.held_out_general_questions()
    assert "What is 5 plus 3?" in held_out  # reachable by the arithmetic template, so excluded
    rng = np.random.default_rng(0)
    drawn = [D.general_question(rng, held_out) for _ in range(3000)]
    assert not set(drawn) & held_out and len(set(drawn)) > 300
    pool = D.unrelated_questions(np.random.default_rng(1), 400, ["a SQuAD question?"], general_share=0.5)
    assert not set(pool) & held_out
    assert 150 < sum(q in set(drawn) or q.startswith("What is ") for q in pool) < 400


def test_d2l_applies_at_most_max_chunks_and_d2l_all_every_chunk(nonzero_engine, long_text, monkeypatch):
    from d2l_haystack.core.engine import D2LEngine
    from d2l_haystack.evaluation.cases import Case
    from d2l_haystack.evaluation.runner import run_eval

    applied: list[dict] = []
    original = D2LEngine.generate

    def spy(self, question, adapters=None, **kwargs):
        result = original(self, question, adapters, **kwargs)
        applied.append(result.meta)
        return result

    monkeypatch.setattr(D2LEngine, "generate", spy)
    case = Case(id="x", document=long_text(1200), question="How many barrels?", answers=["3"])
    report = run_eval(nonzero_engine, [case], ["d2l", "d2l-all"], max_new_tokens=2, progress=False)
    assert set(report["results"]) == {"d2l", "d2l-all"}
    selected, every = applied
    assert every["chunks_total"] == selected["chunks_total"] > 8
    assert selected["chunks_applied"] == 8 and every["chunks_applied"] == every["chunks_total"]
    assert "replaced_answer" not in report["results"]["d2l"]


def test_run_eval_reports_the_replaced_answer_on_swapped_cases(tiny_engine):
    from d2l_haystack.evaluation.cases import Case
    from d2l_haystack.evaluation.runner import run_eval

    cases = [Case(id=f"s{i}", document="The bridge opened in 1871.", question="When did the bridge open?",
                  answers=["1871"], meta={"swapped_from": "1932"}) for i in range(2)]
    report = run_eval(tiny_engine, cases, ["base"], max_new_tokens=2, progress=False)
    replies = [r["reply"] for r in report["cases"]]
    assert report["results"]["base"]["replaced_answer"] == sum(contains(x, ["1932"]) for x in replies) / 2


@pytest.mark.requires_squad
def test_sentence_cloze_cases_are_held_out_seeded_sentences_with_their_own_questions(tmp_path):
    from d2l_haystack.cli import main
    from d2l_haystack.evaluation.cases import sentence_cloze_cases
    from d2l_haystack.training import data as D

    cases = sentence_cloze_cases(max_docs=30, seed=3)
    assert len(cases) == 30 and cases == sentence_cloze_cases(max_docs=30, seed=3)
    assert [c["id"] for c in cases] != [c["id"] for c in sentence_cloze_cases(max_docs=30, seed=4)]
    validation = " ".join(" ".join(c.split()) for c, _ in D.squad_paragraphs("validation"))
    training = " ".join(" ".join(c.split()) for c, _ in D.squad_paragraphs("train"))
    for c in cases:
        assert c["document"] in validation and c["document"] not in training
        assert 8 <= len(c["document"].split()) <= 40 and c["question"].endswith("?")
        assert c["answers"][0] in c["document"] and c["answers"][0] not in c["question"]
    assert len({c["doc_id"] for c in cases}) == 30  # one sentence per paragraph
    assert main(["cases", "squad-sentences", "--max-docs", "5", "-o", str(tmp_path / "s.jsonl")]) == 0
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 5


@pytest.mark.requires_squad
def test_squad_paragraph_cases_can_exclude_the_documents_of_earlier_files(tmp_path):
    from d2l_haystack.cli import main
    from d2l_haystack.evaluation.cases import squad_cases

    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert main(["cases", "squad-paragraphs", "--max-docs", "30", "--questions-per-doc", "1", "-o", str(first)]) == 0
    assert main(["cases", "squad-paragraphs", "--max-docs", "30", "--questions-per-doc", "1", "--exclude",
                 str(first), "-o", str(second)]) == 0
    a, b = load_cases(first), load_cases(second)
    assert len(a) == len(b) == 30
    assert not {c.doc_id for c in a} & {c.doc_id for c in b}
    # without --exclude the same seed draws the same documents again
    assert main(["cases", "squad-paragraphs", "--max-docs", "30", "--questions-per-doc", "1", "-o",
                 str(second)]) == 0
    assert [c.doc_id for c in load_cases(second)] == [c.doc_id for c in a]
    # a d2l eval report (.json) names its documents too
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"results": {}, "cases": [{"id": c.id, "doc_id": c.doc_id} for c in a[:10]]}))
    assert main(["cases", "squad-paragraphs", "--questions-per-doc", "1", "--exclude", str(report), "-o",
                 str(second)]) == 0
    rest = {c.doc_id for c in load_cases(second)}
    every = {c["doc_id"] for c in squad_cases("paragraph", questions_per_doc=1)}
    assert rest == every - {c.doc_id for c in a[:10]} and len(rest) == len(every) - 10
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a d2l eval report"):
        main(["cases", "squad-paragraphs", "--exclude", str(tmp_path / "bad.json"), "-o", str(second)])
    with pytest.raises(SystemExit, match="--exclude applies to squad-paragraphs"):
        main(["cases", "interference", "--exclude", str(first), "-o", str(tmp_path / "i.jsonl")])


def test_hand_written_short_docs_are_answerable_from_their_documents():
    """benchmarks/cases/short_docs.jsonl (model card): every gold answer is in its document and
    not in its question, and the questions of one note share one document."""
    path = REPO / "benchmarks" / "cases" / "short_docs.jsonl"
    cases = load_cases(path)
    assert len(cases) == 20
    by_doc: dict[str, set[str]] = {}
    for case in cases:
        assert all(contains(case.document, [a]) for a in case.answers), case.id
        assert not contains(case.question, case.answers), case.id
        by_doc.setdefault(case.doc_id, set()).add(case.document)
    assert len(by_doc) == 5 and all(len(texts) == 1 for texts in by_doc.values())


def test_paired_bootstrap_of_reports(tmp_path):
    import json

    from d2l_haystack.cli import main
    from d2l_haystack.evaluation.compare import paired_difference, ratio, scores

    rows = [{"id": f"q{i}", "method": m, "f1": s, "exact_match": s, "contains": s}
            for i in range(40) for m, s in (("d2l", float(i % 2)), ("icl", 1.0))]
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"results": {}, "cases": rows}))
    d2l, icl = scores(report, "d2l"), scores(report, "icl")
    r, d = ratio(d2l, icl), paired_difference(d2l, icl)
    assert r.value == 0.5 and r.low < 0.5 < r.high and d.value == -0.5 and d.high < 0 and d.n == 40
    same = paired_difference(d2l, d2l)
    assert same.value == same.low == same.high == 0.0
    with pytest.raises(InputError, match="no method 'rag'"):
        scores(report, "rag")
    with pytest.raises(InputError, match="share no case id"):
        paired_difference(d2l, {"other": 1.0})
    assert main(["compare", str(report), "--method", "d2l", "--against", "icl"]) == 0
    with pytest.raises(SystemExit, match="no method 'rag'"):
        main(["compare", str(report), "--method", "rag"])


def test_compare_a_method_against_another_reports_baseline(tmp_path, capsys):
    """A candidate's d2l report against baselines measured once in another report of the same cases."""
    import json

    from d2l_haystack.cli import main

    new, old = tmp_path / "new.json", tmp_path / "old.json"
    new.write_text(json.dumps({"cases": [{"id": f"q{i}", "method": "d2l", "contains": float(i % 2 == 0), "f1": 0.5}
                                         for i in range(20)]}))
    old.write_text(json.dumps({"cases": [{"id": f"q{i}", "method": m, "contains": s, "f1": s}
                                         for i in range(20) for m, s in (("rag", 1.0), ("icl", 0.25))]}))
    assert main(["compare", str(new), str(old), "--against", "rag", "--metric", "contains"]) == 0
    out = capsys.readouterr().out
    assert "contains on 20 shared cases: d2l 0.500, rag 1.000" in out and "d2l / rag: 0.50" in out
    assert "d2l - rag: -0.500" in out
    assert main(["compare", str(new), str(old), "--against", "icl", "--metric", "f1"]) == 0
    assert "d2l / icl: 2.00" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no method 'd2l'"):  # without --against: d2l in both
        main(["compare", str(new), str(old)])


def test_compare_folders_pairs_each_report_and_pools_their_cases(tmp_path, capsys):
    import json

    from d2l_haystack.cli import main
    from d2l_haystack.evaluation.compare import compare_folders

    def report(folder, name, values):
        folder.mkdir(exist_ok=True)
        rows = [{"id": f"q{i}", "method": "d2l", "f1": v, "exact_match": v, "contains": v}
                for i, v in enumerate(values)]
        (folder / f"{name}.json").write_text(json.dumps({"results": {}, "cases": rows}))

    new, old = tmp_path / "new", tmp_path / "old"
    report(new, "notes", [1.0] * 10)           # +1 on each of 10 cases
    report(old, "notes", [0.0] * 10)
    report(new, "squad", [0.0] * 30)           # -0.5 on 30 cases (the same ids q0..q29 as notes: kept apart)
    report(old, "squad", [0.5] * 30)
    report(new, "only_new", [1.0])             # in one folder only: left out
    (new / "fit.json").write_text(json.dumps({"steps": 3}))  # not a report: left out
    rows = compare_folders(new, old, metric="contains")
    assert [r[0] for r in rows] == ["notes", "squad", "pooled"]
    assert rows[0][3].value == 1.0 and rows[1][3].value == -0.5
    pooled = rows[2][3]
    assert pooled.n == 40 and pooled.value == pytest.approx((10 * 1.0 - 30 * 0.5) / 40)
    assert main(["compare", str(new), str(old), "--metric", "contains"]) == 0
    assert "pooled" in capsys.readouterr().out
    with pytest.raises(InputError, match="share no report"):
        compare_folders(new, tmp_path / "old", method="icl")
    with pytest.raises(InputError, match="not a folder"):
        compare_folders(new / "notes.json", old)
