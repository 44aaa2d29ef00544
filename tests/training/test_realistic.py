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


def test_more_phrasings_add_training_templates_only():
    from d2l_haystack.training.realistic_more import MORE_PHRASINGS

    train_attrs = {f"{k.name}.{a.name}" for k in R.kinds_of("train") for a in k.attrs}
    assert set(MORE_PHRASINGS) == train_attrs  # every training fact, no held-out kind
    held_s, held_q = set(), set()
    for kind in R.KINDS:
        whole = kind.name in R.HELDOUT_KINDS
        for attr in kind.attrs:
            held_s.update(attr.statements if whole else R._part_of(attr.statements, "heldout"))
            held_q.update(attr.questions if whole else R._part_of(attr.questions, "heldout"))

    def words(t: str) -> set[str]:
        return set(t.lower().replace("?", "").replace(".", "").replace(",", "").split())

    for kind in R.kinds_of("train"):
        for attr in kind.attrs:
            s, q = R.templates_of(kind, attr, "train", "more")
            base_s, base_q = R.templates_of(kind, attr, "train")
            assert len(s) == len(base_s) + 2 and len(q) == len(base_q) + 2, (kind.name, attr.name)
            assert set(s).isdisjoint(held_s) and set(q).isdisjoint(held_q), (kind.name, attr.name)
            # not a near copy of the attribute's held-out phrasing either (word overlap under 0.6)
            for t in s[len(base_s):] + q[len(base_q):]:
                for h in R._part_of(attr.statements, "heldout") + R._part_of(attr.questions, "heldout"):
                    overlap = len(words(t) & words(h)) / len(words(t) | words(h))
                    assert overlap < 0.6, (kind.name, attr.name, t, h)
            assert all(("{v}" in t) == ("{v}" in s[0]) for t in s), (kind.name, attr.name)  # yes/no pairs alike
            assert R.templates_of(kind, attr, "heldout", "more") == R.templates_of(kind, attr, "heldout")
    # the held-out part is the same document for document; the training part draws the new templates
    held = [R.realistic_document(np.random.default_rng(i), 3, part="heldout", phrasings="more") for i in range(50)]
    assert [d.text for d in held] == [d.text for d in _docs_seeded("heldout", 50)]
    more = [R.realistic_document(np.random.default_rng(i), 3, part="train", phrasings="more") for i in range(300)]
    extra_q = {t.split("{")[0] for v in MORE_PHRASINGS.values() for t in v[1].split(" || ")}
    assert any(q.question.startswith(p) for d in more for q in d.qas for p in extra_q if len(p) > 12)
    for doc in more:
        for qa in doc.qas:
            assert qa.answer in ("yes", "no") or qa.answer.lower() in doc.text.lower(), (qa.question, doc.text)
    with pytest.raises(ValueError, match="phrasings must be one of base, more"):
        R.realistic_document(np.random.default_rng(0), phrasings="many")


def _docs_seeded(part: str, n: int) -> list:
    return [R.realistic_document(np.random.default_rng(i), 3, part=part) for i in range(n)]


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
