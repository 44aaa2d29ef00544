"""InstructionsToLoRA and AdapterGenerator's instruction_ids: "how to answer" beside "what is known"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from d2l_haystack.components import AdapterGenerator, InstructionsToLoRA, QueryRouter
from d2l_haystack.core.errors import InputError, ModelNotFoundError
from d2l_haystack.stores import AdapterStore

RULES = "Answer in at most ten words. End every reply with \"Cheers!\""


@pytest.fixture
def store(tmp_path: Path, engine_params: dict) -> AdapterStore:
    from d2l_haystack.core import get_engine

    store = AdapterStore(str(tmp_path / "adapters"))
    routing = np.eye(1, 384, dtype=np.float32)  # one routing passage: the document is routable
    store.put("/manual.md", get_engine(**engine_params).internalize("The warranty lasts 3 years."), routing=routing)
    return store


def _converter(store: AdapterStore, tiny_model: str) -> InstructionsToLoRA:
    return InstructionsToLoRA(store=store, model=tiny_model, checkpoint=None, instructions_checkpoint=None,
                              device="cpu")


def test_instructions_are_stored_once_and_never_routed(store: AdapterStore, tiny_model: str):
    conv = _converter(store, tiny_model)
    out = conv.run(text=RULES)
    assert out == {"instruction_ids": ["instructions"], "internalized": True}
    assert store.get("instructions").kind == "instructions" and store.get_routing("instructions") is None
    assert conv.run(text=RULES)["internalized"] is False  # unchanged: not internalized again
    assert conv.run(text=RULES + " Be kind.")["internalized"] is True
    assert conv.run(text="Reply in JSON.", name="json-style")["instruction_ids"] == ["json-style"]
    router = QueryRouter(store=store)
    assert [d for d, _ in router.score_documents([1.0] + [0.0] * 383)] == ["/manual.md"]
    with pytest.raises(InputError):
        conv.run(text="   ")
    again = InstructionsToLoRA.from_dict(conv.to_dict())
    assert again.to_dict() == conv.to_dict()


def test_generator_applies_instructions_to_every_request(store: AdapterStore, tiny_model: str, engine_params: dict):
    _converter(store, tiny_model).run(text=RULES)
    gen = AdapterGenerator(store=store, generation_kwargs={"max_new_tokens": 2}, instruction_ids=["instructions"],
                           **engine_params)
    alone = gen.run(messages="What is the capital of France?")["replies"][0].meta
    assert alone["instructions"] == ["instructions"] and alone["route"] == "base" and alone["adapters"] == []
    both = gen.run(messages="How long is the warranty?", adapter_ids=["/manual.md"])["replies"][0].meta
    assert both["instructions"] == ["instructions"] and both["adapters"] == ["/manual.md"] and both["route"] == "d2l"
    none = gen.run(messages="How long is the warranty?", instruction_ids=[])["replies"][0].meta
    assert "instructions" not in none  # the input overrides the init
    again = AdapterGenerator.from_dict(gen.to_dict())
    assert again.instruction_ids == ["instructions"] and again.instruction_weight == 1.0


def test_no_instructions_checkpoint_fails_at_warm_up(store: AdapterStore, tiny_model: str):
    conv = InstructionsToLoRA(store=store, model=tiny_model, checkpoint=None, device="cpu")
    with pytest.raises(ModelNotFoundError, match="no instructions checkpoint is shipped"):
        conv.warm_up()
