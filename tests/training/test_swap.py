"""Counterfactual SQuAD: swapped answers are read from the text, never remembered."""

from __future__ import annotations

import numpy as np
import pytest

from d2l_haystack.training.cloze import split_cloze_sentences
from d2l_haystack.training.swap import AnswerPool, swap_document, swap_qas, swap_run_document
from d2l_haystack.training.trainer import Phase

TEXT = ("The Harbour Bridge opened in 1932 after eight years of work. It was designed by John Bradfield, "
        "and 1,400 workers built it. John Bradfield also planned the city railway.")
QAS = [("When did the bridge open?", ["1932"]),
       ("Who designed the Harbour Bridge?", ["John Bradfield", "Bradfield"]),
       ("How many workers built the bridge?", ["1,400"]),
       ("What opened in 1932?", ["The Harbour Bridge"])]
POOL_PARAGRAPHS = [("", [("q", ["Mary Shelley"]), ("q", ["Ada Lovelace"]), ("q", ["green tea"]),
                         ("q", ["red wine"]), ("q", ["Paris"]), ("q", ["London"])])]


def test_answers_are_swapped_in_the_text_and_the_target():
    pool = AnswerPool(POOL_PARAGRAPHS + [(TEXT, QAS)])
    asked: set[str] = set()
    for seed in range(20):
        text, qas = swap_qas(np.random.default_rng(seed), TEXT, QAS, pool, 3)
        assert qas and all(qa.kind == "swap" for qa in qas)
        for qa in qas:
            assert qa.answer in text and qa.answer.lower() not in qa.question.lower()
        by_q = {qa.question: qa.answer for qa in qas}
        asked |= set(by_q)
        if "When did the bridge open?" in by_q:
            year = by_q["When did the bridge open?"]
            assert year != "1932" and len(year) == 4 and year.isdigit() and "1932" not in text
            # the question naming the year is never asked beside the swapped year
            assert "What opened in 1932?" not in by_q
        if "Who designed the Harbour Bridge?" in by_q:
            name = by_q["Who designed the Harbour Bridge?"]  # the shortest gold answer, "Bradfield"
            assert name != "Bradfield" and name[0].isupper() and len(name.split()) == 1
            assert text.count(name) >= 2 and "Bradfield" not in text  # every occurrence
        if "How many workers built the bridge?" in by_q:
            workers = by_q["How many workers built the bridge?"]
            assert workers != "1,400" and workers[0] != "0" and workers[1] == "," and len(workers) == 5
    assert asked >= {q for q, _ in QAS[:3]}


def test_unswappable_questions_are_skipped():
    pool = AnswerPool(POOL_PARAGRAPHS)
    qas = [("What is not in the text?", ["the moon"]),             # answer not in the text
           ("When did the bridge open in 1932?", ["1932"]),        # answer inside the question
           ("What did the workers build?", ["it"]),                # no word answer of that shape
           ("Which bridge?", ["a very long answer of more than six words here"])]
    text, out = swap_qas(np.random.default_rng(0), TEXT, qas, pool, 3)
    assert out == [] and text == TEXT
    with pytest.raises(ValueError, match="swapped"):
        swap_document(np.random.default_rng(0), [(TEXT, qas)], pool, 2)


@pytest.mark.requires_squad
def test_swap_documents_are_seeded_and_use_their_own_part(data_trainer):
    tr = data_trainer
    phase = Phase(until_step=10, mix={"swap": 1.0})
    first = tr.make_docs(np.random.default_rng(0), phase, 6)
    again = tr.make_docs(np.random.default_rng(0), phase, 6)
    held = tr.make_docs(np.random.default_rng(0), phase, 6, held_out=True)
    assert [d.text for d in first] == [d.text for d in again]
    train_text = " ".join(c for c, _ in tr.squad)
    val_answers = {min(a, key=len) for _, qas in tr.squad_eval for _, a in qas}
    for docs in (first, held):
        assert all(d.source == "swap" and 1 <= len(d.qas) <= 3 for d in docs)
        assert all(qa.kind == "swap" and qa.answer in d.text for d in docs for qa in d.qas)
    # held-out documents are validation paragraphs, never training text
    assert not any(d.text[:80] in train_text for d in held)
    # their word replacements come from validation answers only
    assert any(qa.answer in val_answers for d in held for qa in d.qas if not any(c.isdigit() for c in qa.answer))


def test_short_runs_swap_the_answers_of_their_own_sentences():
    pool = AnswerPool(POOL_PARAGRAPHS + [(TEXT, QAS)])
    sentences = split_cloze_sentences(TEXT)
    for seed in range(20):
        doc = swap_run_document(np.random.default_rng(seed), [(TEXT, QAS)], pool, 2, max_sentences=1)
        assert doc.source == "swap" and doc.qas and all(qa.kind == "swap" for qa in doc.qas)
        assert len(split_cloze_sentences(doc.text)) == 1 and doc.text not in sentences
        for qa in doc.qas:
            gold = dict(QAS)[qa.question]
            assert qa.answer in doc.text and qa.answer not in gold
            assert min(gold, key=len) not in doc.text  # the remembered answer is gone
    with pytest.raises(ValueError, match="swapped"):
        swap_run_document(np.random.default_rng(0), [(TEXT, [("When did the bridge open in 1932?", ["1932"])])],
                          pool, 2, max_sentences=2)


@pytest.mark.requires_squad
def test_phases_with_short_runs_draw_short_swapped_runs(data_trainer):
    tr = data_trainer
    phase = Phase(until_step=10, mix={"swap": 1.0}, squad_sentences=2)
    docs = tr.make_docs(np.random.default_rng(0), phase, 6)
    held = tr.make_docs(np.random.default_rng(0), phase, 6, held_out=True)
    assert [d.text for d in docs] == [d.text for d in tr.make_docs(np.random.default_rng(0), phase, 6)]
    for d in docs + held:
        assert d.source == "swap" and all(qa.kind == "swap" and qa.answer in d.text for qa in d.qas)
        assert 1 <= len(split_cloze_sentences(d.text)) <= 2
    train_text = " ".join(c for c, _ in tr.squad)
    assert not any(d.text[:40] in train_text for d in held)
