"""Instruction generator and its rules: every rule passes a compliant reply and fails another."""

from __future__ import annotations

import numpy as np
import pytest

from d2l_haystack.training import instructions as I

COMPLIANT = {
    "max_words": ("Paris is the capital.", {"n": 5}),
    "min_words": (" ".join(["word"] * 45), {"n": 40}),
    "start_phrase": ("Certainly! Paris is the capital.", {"phrase": "Certainly!"}),
    "end_phrase": ("Paris is the capital. Hope this helps!", {"phrase": "Hope this helps!"}),
    "forbidden_word": ("Paris, obviously.", {"word": "the"}),
    "required_word": ("Paris has no banana shortage.", {"word": "banana"}),
    "uppercase": ("PARIS IS THE CAPITAL.", {}),
    "lowercase": ("paris is the capital.", {}),
    "bullet_list": ("- Paris\n- France", {}),
    "numbered_list": ("1. Paris\n2. France", {}),
    "json_keys": ('{"answer": "Paris", "confidence": 0.9}', {"keys": ["answer", "confidence"]}),
    "quoted": ('"Paris is the capital."', {}),
    "persona": ("Arr, matey, Paris it be.", {"markers": ["arr", "matey"]}),
    "ask_back": ("Paris. Have you been there?", {}),
    "sign_off": ("Paris is the capital.\n— Nina", {"name": "Nina"}),
    "title_case": ("Paris Is The Capital Of France.", {}),
    "lettered_list": ("a) Paris\nb) France", {}),
    "exclaim": ("Paris is the capital! What a city!", {}),
}
BROKEN = "The capital of France is Paris, and it is a lovely city."


@pytest.mark.parametrize("kind", I.KIND_NAMES)
def test_each_rule_tells_compliance_apart(kind: str):
    reply, params = COMPLIANT[kind]
    inst = I.Instruction(kind, "x", params)
    assert inst.check(reply)
    broken = {"min_words": "Paris.", "forbidden_word": "The capital is Paris."}.get(kind, BROKEN)
    assert not inst.check(broken)


def test_every_kind_has_a_compliant_example():
    assert set(COMPLIANT) == set(I.KIND_NAMES)


def test_held_out_kinds_and_phrasings_never_reach_training():
    rng = np.random.default_rng(0)
    train = [I.sample_instruction(rng, "train") for _ in range(800)]
    assert not {i.kind for i in train} & I.HELDOUT_KINDS
    assert {i.kind for i in train} == set(I.KIND_NAMES) - I.HELDOUT_KINDS
    held = [I.make_instruction(rng, k, "heldout") for k in I.KIND_NAMES for _ in range(30)]
    train_texts = {i.text for i in train}
    for kind in set(I.KIND_NAMES) - I.HELDOUT_KINDS:  # trained kinds: held-out phrasings only
        texts = {i.text for i in held if i.kind == kind}
        assert texts and not texts & train_texts, kind


def test_instructions_are_seeded_and_round_trip():
    a = [I.sample_instruction(np.random.default_rng(3)) for _ in range(3)]
    b = [I.sample_instruction(np.random.default_rng(3)) for _ in range(3)]
    assert a == b
    assert I.Instruction.from_dict(a[0].to_dict()) == a[0]
    with pytest.raises(ValueError, match="unknown instruction kind 'poem'"):
        I.make_instruction(np.random.default_rng(0), "poem")


def test_an_instructions_document_asks_general_questions():
    doc = I.instructions_document(np.random.default_rng(1), n_requests=3)
    assert doc.source == "instructions" and len(doc.qas) == 3
    assert doc.meta["instruction"]["text"] in doc.text
    from d2l_haystack.training.data import held_out_general_questions

    assert not {qa.question for qa in doc.qas} & held_out_general_questions()


@pytest.mark.parametrize("kind", sorted(set(I.KIND_NAMES) - {"min_words"}))
def test_comply_rewrites_a_reply_until_its_rule_holds(kind: str):
    rng = np.random.default_rng(5)
    for _ in range(5):
        inst = I.make_instruction(rng, kind, "heldout")
        for reply in (BROKEN, "Paris.", "The capital is Paris. It lies on the Seine. That is the answer"):
            fixed = inst.comply(reply)
            assert inst.check(fixed), (inst.text, reply, fixed)


def test_comply_keeps_a_compliant_reply_and_leaves_min_words_alone():
    inst = I.Instruction("start_phrase", "x", {"phrase": "Well,"})
    assert inst.comply("Well, Paris.") == "Well, Paris."
    assert I.Instruction("min_words", "x", {"n": 40}).comply("Paris.") == "Paris."


def test_validation_instructions_are_trained_kinds_in_held_out_phrasings():
    rng = np.random.default_rng(0)
    train_texts = {I.sample_instruction(rng, "train").text for _ in range(800)}
    val = [I.sample_instruction(rng, "validation") for _ in range(200)]
    assert not {i.kind for i in val} & I.HELDOUT_KINDS
    assert not {i.text for i in val} & train_texts
