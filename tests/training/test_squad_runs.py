"""SQuAD gold questions on short runs of sentences (stage L's documents) and the held-out
gold-sentence cases."""

from __future__ import annotations

import numpy as np
import pytest

from d2l_haystack.training import data as D
from d2l_haystack.training.cloze import split_cloze_sentences
from d2l_haystack.training.trainer import Phase

PARAGRAPH = ("The Harbour Bridge opened in 1932 after eight years of work. It was designed by John Bradfield, "
             "and about 1,400 workers built it. Tolls rose by 12% on 4 March 1992 to pay for the tunnel. "
             "Ferries still cross the bay below the bridge every day.")
QAS = [("Who designed the bridge?", ["John Bradfield", "Bradfield"]),
       ("How long did building it take?", ["eight years"]),
       ("What crosses the bay each day?", ["Ferries"]),
       ("What did the toll rise pay for?", ["the tunnel", "tunnel"]),
       ("Which river does it cross?", ["the Parramatta"])]  # answer not in the text: never asked


def test_answer_sentence_finds_the_first_sentence_and_the_shortest_answer_in_it():
    sentences = split_cloze_sentences(PARAGRAPH)
    assert D.answer_sentence(sentences, ["John Bradfield", "Bradfield"]) == (1, "Bradfield")
    assert D.answer_sentence(sentences, ["the bridge"]) == (3, "the bridge")
    assert D.answer_sentence(sentences, ["the Parramatta", ""]) is None
    # an answer cut across two sentences is in no single one
    assert D.answer_sentence(sentences, ["work. It was"]) is None


def test_squad_runs_hold_every_asked_answer_in_consecutive_sentences():
    sentences = split_cloze_sentences(PARAGRAPH)
    lengths, asked = set(), set()
    for seed in range(40):
        doc = D.squad_run_document(np.random.default_rng(seed), [(PARAGRAPH, QAS)], 2, max_sentences=2)
        parts = split_cloze_sentences(doc.text)
        lengths.add(len(parts))
        assert 1 <= len(parts) <= 2 and doc.text in " ".join(sentences)
        assert doc.source == "squad" and 1 <= len(doc.qas) <= 2
        assert len({qa.question for qa in doc.qas}) == len(doc.qas)
        for qa in doc.qas:
            assert qa.kind == "squad" and qa.answer in doc.text
            asked.add(qa.question)
    assert lengths == {1, 2}
    assert "Which river does it cross?" not in asked and len(asked) == 4
    assert D.squad_run_document(np.random.default_rng(5), [(PARAGRAPH, QAS)], 2, 2) == \
        D.squad_run_document(np.random.default_rng(5), [(PARAGRAPH, QAS)], 2, 2)
    with pytest.raises(ValueError, match="no SQuAD paragraph"):
        D.squad_run_document(np.random.default_rng(0), [(PARAGRAPH, QAS[-1:])], 2, 2)


def test_phase_squad_sentences_is_checked():
    with pytest.raises(ValueError, match="squad_sentences"):
        Phase(until_step=10, mix={"squad": 1.0}, squad_sentences=-2)


@pytest.mark.requires_squad
def test_phase_squad_sentences_reaches_the_documents(data_trainer):
    tr = data_trainer
    short = tr.make_docs(np.random.default_rng(0), Phase(until_step=9, mix={"squad": 1.0}, squad_sentences=1), 8)
    whole = tr.make_docs(np.random.default_rng(0), Phase(until_step=9, mix={"squad": 1.0}), 8)
    assert all(len(split_cloze_sentences(d.text)) == 1 for d in short)
    assert all(qa.answer in d.text for d in short for qa in d.qas)
    assert sum(len(split_cloze_sentences(d.text)) for d in whole) > 3 * len(whole)
    held = tr.make_docs(np.random.default_rng(0), Phase(until_step=9, mix={"squad": 1.0}, squad_sentences=3), 8,
                        held_out=True)
    validation = " ".join(" ".join(c.split()) for c, _ in tr.squad_eval)
    assert all(d.text in validation for d in held)


@pytest.mark.requires_squad
def test_gold_sentence_cases_are_held_out_sentences_holding_their_answer(tmp_path):
    from d2l_haystack.cli import main
    from d2l_haystack.evaluation.cases import gold_sentence_cases

    cases = gold_sentence_cases(max_docs=25, seed=1)
    assert len(cases) == 25 and cases == gold_sentence_cases(max_docs=25, seed=1)
    validation = " ".join(" ".join(c.split()) for c, _ in D.squad_paragraphs("validation"))
    training = " ".join(" ".join(c.split()) for c, _ in D.squad_paragraphs("train"))
    gold = {q: answers for _, qas in D.squad_paragraphs("validation") for q, answers in qas}
    for c in cases:
        assert c["document"] in validation and c["document"] not in training
        assert len(split_cloze_sentences(c["document"])) == 1
        assert c["answers"] and all(a in c["document"] and a in gold[c["question"]] for a in c["answers"])
    assert len({c["doc_id"] for c in cases}) == 25
    assert main(["cases", "squad-gold-sentences", "--max-docs", "4", "-o", str(tmp_path / "g.jsonl")]) == 0
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 4


def test_swapped_cases_hold_only_the_new_answer_and_are_reproducible(monkeypatch, tmp_path):
    import re

    from d2l_haystack.cli import main
    from d2l_haystack.evaluation import cases as C

    other = ("The museum opened in 1871 under Mary Shelley. Its roof was rebuilt after the fire of 1904, "
             "when James Watt led the repairs.",
             [("Who led the repairs?", ["James Watt"]), ("When did the museum open?", ["1871"])])
    third = ("Grace Hopper wrote the first compiler in 1952.", [("Who wrote the first compiler?", ["Grace Hopper"])])
    monkeypatch.setattr(C.D, "squad_paragraphs", lambda part: [(PARAGRAPH, QAS), other, third])
    cases = C.swapped_cases(max_docs=3, questions_per_doc=2, seed=3)
    assert cases == C.swapped_cases(max_docs=3, questions_per_doc=2, seed=3)
    assert cases and len({c["doc_id"] for c in cases}) <= 3
    originals = {q: a for _, qas in (other, third, (PARAGRAPH, QAS)) for q, a in qas}
    for c in cases:
        new, old = c["answers"][0], c["meta"]["swapped_from"]
        assert new != old and old in originals[c["question"]]
        assert re.search(rf"(?<!\w){re.escape(new)}(?!\w)", c["document"])
        assert not re.search(rf"(?<!\w){re.escape(old)}(?!\w)", c["document"])  # only readable, never known
        assert c["document"] not in (PARAGRAPH, other[0], third[0])
    assert main(["cases", "squad-swapped", "--max-docs", "2", "--seed", "3", "-o", str(tmp_path / "s.jsonl")]) == 0
    assert 1 <= len((tmp_path / "s.jsonl").read_text().splitlines()) <= 4
