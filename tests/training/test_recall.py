"""Recall questions: a sentence's continuation from its first words, read from the document."""

import numpy as np
import pytest

from d2l_haystack.training.realistic import realistic_document
from d2l_haystack.training.recall import TEMPLATES, recall_question

TEXT = ("The clinic opens at 7:45 on weekdays. The clinic closes at 16:30 on Fridays. "
        "Parking is free for patients with a permit from the front desk.")


def test_the_answer_is_the_rest_of_one_sentence_after_a_cue_found_once():
    for seed in range(40):
        qa = recall_question(np.random.default_rng(seed), TEXT)
        assert qa is not None and qa.kind == "recall"
        cue = qa.question.split('"')[1].removesuffix(" ...")
        assert TEXT.count(cue) == 1  # "The clinic" alone names two sentences: the cue grows
        assert f"{cue} {qa.answer}" in TEXT
        assert len(cue.split()) >= 2 and qa.answer


def test_the_continuation_is_cut_at_max_words():
    qa = recall_question(np.random.default_rng(0), "One two three four five six seven eight nine ten.",
                         max_words=3)
    assert qa is not None and len(qa.answer.split()) == 3


def test_held_out_phrasings_are_never_asked_in_training():
    def templates(part: str) -> set[str]:
        found = set()
        for seed in range(200):
            qa = recall_question(np.random.default_rng(seed), TEXT, part=part)
            assert qa is not None
            found |= {t for t in TEMPLATES if t.split("{cue}")[0] in qa.question
                      and qa.question.endswith(t.split("{cue}")[1])}
        return found

    train, held = templates("train"), templates("heldout")
    assert train and held and not train & held
    assert train | held == set(TEMPLATES)


def test_no_question_without_a_long_enough_sentence_and_a_bad_part_is_named():
    assert recall_question(np.random.default_rng(0), "Too short. Also short.") is None
    with pytest.raises(ValueError, match="part must be"):
        recall_question(np.random.default_rng(0), TEXT, part="validation")


def test_realistic_documents_give_values_to_read():
    rng = np.random.default_rng(5)
    for _ in range(20):
        doc = realistic_document(rng, 2)
        qa = recall_question(rng, doc.text)
        assert qa is not None and qa.answer in doc.text
