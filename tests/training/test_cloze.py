"""Cloze-translated questions: rules, answers in the text, seeded picks, documents, config checks."""

from __future__ import annotations

import numpy as np
import pytest

from d2l_haystack.training import data as D
from d2l_haystack.training.cloze import cloze_questions, pick_cloze
from d2l_haystack.training.trainer import Phase

PARAGRAPH = ("The Harbour Bridge opened in 1932 after eight years of work. It was designed by John Bradfield, "
             "and about 1,400 workers built it. Tolls rose by 12% on 4 March 1992 to pay for the tunnel. "
             "Ferries still cross the bay below the bridge every day.")


def _by_answer(text: str) -> dict[str, tuple[str, str]]:
    return {q.answer: (q.question, q.kind) for q in cloze_questions(text)}


def test_each_span_kind_gets_its_question_phrase():
    qs = _by_answer(PARAGRAPH)
    assert qs["1932"] == ("The Harbour Bridge opened in what year after eight years of work?", "year")
    assert qs["John Bradfield"] == ("It was designed by whom, and about 1,400 workers built it?", "name")
    assert qs["1,400"][0] == "It was designed by John Bradfield, and about how many workers built it?"
    assert qs["12%"][0].startswith("Tolls rose by what percentage on 4 March 1992")
    assert qs["4 March 1992"] == ("Tolls rose by 12% when to pay for the tunnel?", "date")
    # the first word of a sentence is capitalised anyway, so it is never taken for a name
    assert "The Harbour" not in qs and "Harbour Bridge" in qs and "Ferries" not in qs


def test_questions_never_contain_their_answer_and_answers_come_from_the_text():
    qas = cloze_questions(PARAGRAPH + " Mr Lee met Ana de la Cruz in Lisbon's old port in 2001.")
    assert len(qas) >= 7
    for q in qas:
        assert q.question.endswith("?") and q.question[0].isupper()
        assert q.answer in PARAGRAPH + " Mr Lee met Ana de la Cruz in Lisbon's old port in 2001."
        assert q.answer not in q.question
    answers = {q.answer for q in qas}
    assert "Lisbon" in answers and "Lisbon's" not in answers  # possessives are cut off names
    assert "Ana de la Cruz" in answers


def test_text_without_spans_or_with_repeated_spans_gives_no_question():
    assert cloze_questions("") == []
    assert cloze_questions("the quiet river crossed the old valley floor at dawn.") == []
    # the same year twice in a sentence would make the answer ambiguous
    assert cloze_questions("prices rose in 1990 and fell again in 1990 across the region.") == []


def test_long_sentences_are_cut_to_the_clause_holding_the_answer():
    long = ("After the long war ended and the treaties were signed by every party that had fought, "
            "the old kingdom was divided into many provinces, each with its own council and its own laws, "
            "and in 1815 the capital moved to a small river town in the north of the country.")
    qs = _by_answer(long)
    assert qs["1815"][0] == "And in what year the capital moved to a small river town in the north of the country?"


def test_pick_cloze_is_seeded_distinct_and_balances_kinds():
    first = pick_cloze(np.random.default_rng(4), PARAGRAPH, 4)
    assert first == pick_cloze(np.random.default_rng(4), PARAGRAPH, 4)
    assert len(first) == 4 and len({q.question for q in first}) == 4
    assert len({q.kind for q in first}) >= 3  # five kinds present: the draw does not follow the most common
    assert len(pick_cloze(np.random.default_rng(0), PARAGRAPH, 100)) == len(cloze_questions(PARAGRAPH))
    assert pick_cloze(np.random.default_rng(0), "no spans here at all, none.", 3) == []


def test_cloze_document_skips_passages_without_questions_and_refuses_when_none_has_one():
    rng = np.random.default_rng(0)
    doc = D.cloze_document(rng, ["nothing to ask about here, really nothing.", PARAGRAPH], [], 3)
    assert doc.text == PARAGRAPH and doc.source == "cloze"
    assert len(doc.qas) == 3 and all(qa.kind == "cloze" and qa.answer in doc.text for qa in doc.qas)
    with pytest.raises(ValueError, match="no passage yields a cloze question"):
        D.cloze_document(rng, ["nothing to ask about here, really nothing."], [], 2)


def test_unknown_document_kinds_fail_when_the_phase_is_made():
    with pytest.raises(ValueError, match=r"unknown document kinds \['clozee'\]"):
        Phase(until_step=10, mix={"needle": 0.5, "clozee": 0.5})
    Phase(until_step=10, mix={"needle": 0.3, "squad": 0.3, "cloze": 0.4})
    with pytest.raises(ValueError, match="cloze_sentences"):
        Phase(until_step=10, mix={"cloze": 1.0}, cloze_sentences=-1)


def test_short_cloze_documents_are_runs_of_consecutive_sentences():
    from d2l_haystack.training.cloze import split_cloze_sentences

    sentences = split_cloze_sentences(PARAGRAPH)
    assert len(sentences) == 4 and " ".join(sentences) == " ".join(PARAGRAPH.split())
    lengths = set()
    for seed in range(30):
        doc = D.cloze_document(np.random.default_rng(seed), [PARAGRAPH], [], 2, max_sentences=2)
        parts = split_cloze_sentences(doc.text)
        lengths.add(len(parts))
        assert 1 <= len(parts) <= 2 and doc.text in " ".join(sentences)  # consecutive, in order
        assert doc.qas and all(qa.answer in doc.text for qa in doc.qas)
    assert lengths == {1, 2}
    # whole passages by default
    whole = D.cloze_document(np.random.default_rng(3), [PARAGRAPH], [], 2)
    assert whole.text == PARAGRAPH


@pytest.mark.requires_squad
def test_phase_cloze_sentences_reaches_the_documents(data_trainer):
    from d2l_haystack.training.cloze import split_cloze_sentences

    tr = data_trainer
    short = tr.make_docs(np.random.default_rng(0), Phase(until_step=9, mix={"cloze": 1.0}, cloze_sentences=1), 8)
    whole = tr.make_docs(np.random.default_rng(0), Phase(until_step=9, mix={"cloze": 1.0}), 8)
    assert all(len(split_cloze_sentences(d.text)) == 1 for d in short)
    assert sum(len(split_cloze_sentences(d.text)) for d in whole) > 3 * len(whole)
