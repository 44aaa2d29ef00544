"""The realistic-document generator: seeded, answerable, and its held-out part really held out."""

from __future__ import annotations

import numpy as np
import pytest

from d2l_haystack.evaluation.cases import realistic_cases
from d2l_haystack.training import realistic as R


def _docs(part: str, n: int = 400, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [R.realistic_document(rng, n_questions=3, part=part) for _ in range(n)]


def test_same_seed_same_documents_and_fresh_values_otherwise():
    a, b = _docs("train", 20, seed=4), _docs("train", 20, seed=4)
    assert [(d.text, [(q.question, q.answer) for q in d.qas]) for d in a] == \
        [(d.text, [(q.question, q.answer) for q in d.qas]) for d in b]
    other = _docs("train", 20, seed=5)
    assert {d.text for d in a}.isdisjoint({d.text for d in other})


def test_every_answer_is_read_from_the_document():
    for part in R.PARTS:
        for doc in _docs(part, 300):
            assert doc.qas, doc.text
            for qa in doc.qas:
                assert qa.kind == "realistic"
                if qa.answer in ("yes", "no"):  # stated as a sentence, not as the word
                    continue
                assert qa.answer.lower() in doc.text.lower(), (qa.question, qa.answer, doc.text)


def test_questions_are_about_different_facts_of_one_document():
    for doc in _docs("train", 200):
        assert len({q.question for q in doc.qas}) == len(doc.qas)


def _templates(part: str) -> tuple[set[str], set[str]]:
    """Every statement and question text a part may produce, rendered with placeholders kept."""
    statements, questions = set(), set()
    for kind in R.kinds_of(part):
        whole = part == "heldout" and kind.name in R.HELDOUT_KINDS
        for attr in kind.attrs:
            statements.update(attr.statements if whole else R._part_of(attr.statements, part))
            questions.update(attr.questions if whole else R._part_of(attr.questions, part))
    return statements, questions


def test_training_never_sees_held_out_kinds_or_templates():
    seen_kinds = {d.meta["kind"] for d in _docs("train", 600)}
    assert seen_kinds == set(R.TRAIN_KINDS)
    assert seen_kinds.isdisjoint(R.HELDOUT_KINDS)
    train_s, train_q = _templates("train")
    held_s, held_q = set(), set()
    for kind in R.KINDS:
        for attr in kind.attrs:
            held = attr.questions if kind.name in R.HELDOUT_KINDS else R._part_of(attr.questions, "heldout")
            held_q.update(held)
            held_s.update(attr.statements if kind.name in R.HELDOUT_KINDS
                          else R._part_of(attr.statements, "heldout"))
    assert train_q.isdisjoint(held_q) and train_s.isdisjoint(held_s)
    # and the rendered questions of held-out documents are never rendered by training's templates
    train_questions = {q.question for d in _docs("train", 600) for q in d.qas}
    held_questions = {q.question for d in _docs("heldout", 600) for q in d.qas}
    assert not train_questions & held_questions


def test_every_attribute_has_a_held_out_phrasing():
    for kind in R.KINDS:
        for attr in kind.attrs:
            assert len(attr.statements) >= 3 and len(attr.questions) >= 3, (kind.name, attr.name)


def test_value_formats_are_split_too():
    rng = np.random.default_rng(1)
    train = {R.date(rng, "train") for _ in range(300)}
    held = {R.date(rng, "heldout") for _ in range(300)}
    assert any("-" in d for d in held) and not any("-" in d for d in train)  # ISO dates only held out


def test_bad_part_or_kind_is_a_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown part 'dev'"):
        R.realistic_document(rng, part="dev")
    with pytest.raises(ValueError, match="unknown document kind 'poem'"):
        R.realistic_document(rng, kind="poem")


def test_cases_are_held_out_and_grouped_by_document():
    cases = realistic_cases(n_docs=30, seed=2)
    assert len(cases) == 60 and len({c["doc_id"] for c in cases}) == 30
    assert {c["meta"]["kind"] for c in cases} & set(R.HELDOUT_KINDS)
    assert realistic_cases(n_docs=30, seed=2) == cases
