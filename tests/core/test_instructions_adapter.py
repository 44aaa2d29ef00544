"""Instructions adapters (the Text-to-LoRA variant): internalized once, applied to every question."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from d2l_haystack.core import Adapter, D2LEngine
from d2l_haystack.core.errors import ModelNotFoundError
from tests.conftest import randomize_outputs

RULES = "Answer in at most five words. End every reply with \"Cheers!\""
DOC = ("The harbor office opens at 7 am on weekdays. Ferries to Lindholm leave every forty minutes. "
       "Tickets cost 12 euros for adults.")


@pytest.fixture(scope="module")
def engine(tiny_llama_dir) -> D2LEngine:
    e = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=24, instructions_checkpoint=None,
                  min_relevance=0.99)  # a gate no question passes: documents are never applied
    randomize_outputs(e)
    randomize_outputs(SimpleNamespace(hypernet=e.reader("instructions").hypernet), seed=5)  # non-zero adapters
    return e


def test_instructions_adapter_has_its_kind_and_no_keys(engine: D2LEngine, tmp_path):
    a = engine.internalize(RULES, kind="instructions")
    assert a.kind == "instructions" and a.keys is None and a.num_chunks == 1
    assert a.checkpoint_id.startswith("untrained-instructions")
    assert engine.internalize(DOC).kind == "document"
    a.save(tmp_path / "rules")
    assert Adapter.load(tmp_path / "rules").kind == "instructions"
    with pytest.raises(ValueError, match="kind must be one of document, instructions"):
        engine.internalize(RULES, kind="persona")


def test_instructions_apply_to_every_question_beside_gated_documents(engine: D2LEngine):
    rules, doc = engine.internalize(RULES, kind="instructions"), engine.internalize(DOC)
    question = "What is the capital of France?"
    ids = engine.prompt_ids(question)
    chosen, _, meta = engine.select_chunks(ids, [doc, rules], query=question)
    assert chosen == [rules] and meta["instructions_applied"] == 1 and meta["gated"] is True
    chosen, weights, meta = engine.select_chunks(ids, [rules, doc], weights=[0.5, 1.0], query=question)
    assert chosen == [rules] and weights == [0.5]
    # applied: the logits differ from the base model's, and equal those of the adapter applied directly
    base = engine.logits(ids)
    with_rules = engine.logits(ids, rules)
    assert not torch.allclose(base, with_rules)
    assert engine.generate(question, [doc, rules], max_new_tokens=2).meta["instructions_applied"] == 1


def test_instructions_compose_with_the_documents_chunks(tiny_llama_dir):
    e = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=24, instructions_checkpoint=None,
                  min_relevance=None)
    rules, doc = e.internalize(RULES, kind="instructions"), e.internalize(DOC)
    question = "When does the harbor office open?"
    chosen, _, meta = e.select_chunks(e.prompt_ids(question), [rules, doc], query=question, max_chunks=1)
    assert chosen[0] is rules and len(chosen) == 2 and chosen[1].num_chunks == 1
    assert meta["chunks_applied"] == 1 and meta["instructions_applied"] == 1


def test_no_shipped_instructions_checkpoint_is_a_clear_error(tiny_llama_dir):
    e = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu")
    with pytest.raises(ModelNotFoundError, match="no instructions checkpoint is shipped for"):
        e.internalize(RULES, kind="instructions")


def test_a_call_may_name_its_own_instructions_checkpoint(engine: D2LEngine, tmp_path):
    from d2l_haystack.core.hypernet import save_checkpoint

    trained = engine.reader("instructions").hypernet
    folder = tmp_path / "inst-ckpt"
    cid = save_checkpoint(trained, folder)
    own = engine.internalize(RULES, kind="instructions", instructions_checkpoint=str(folder))
    assert own.checkpoint_id == cid
    assert engine.instructions_checkpoint is None  # the shared engine's setting is untouched
    shared = engine.internalize(RULES, kind="instructions")
    assert shared.checkpoint_id.startswith("untrained-instructions")
    assert engine.reader("instructions", str(folder)) is not engine.reader("instructions")
