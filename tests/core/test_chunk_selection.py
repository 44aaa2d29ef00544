"""Query-time chunk selection by response (adapters without chunk keys).

Selection by chunk keys and the relevance gate: ``test_chunk_keys.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from d2l_haystack.core import D2LEngine
from d2l_haystack.core.engine import DEFAULT_MAX_CHUNKS


def without_keys(adapter):
    return dataclasses.replace(adapter, keys=None, key_chunks=None, key_model="")


@pytest.fixture(scope="module")
def many_chunks(nonzero_engine: D2LEngine, long_text):
    adapter = nonzero_engine.internalize(long_text(400), progress=False)
    assert adapter.num_chunks > 4 and adapter.has_keys
    return without_keys(adapter)


def _inputs(engine: D2LEngine, question: str):
    with engine.hooks.capture() as inputs, torch.no_grad():
        engine.model(input_ids=torch.tensor([engine.format.question_ids(question)]))
    return inputs


def test_capture_records_every_target_layer_and_stops_after_the_block(nonzero_engine: D2LEngine):
    inputs = _inputs(nonzero_engine, "Where is the river?")
    n_layers = nonzero_engine.config.num_layers
    assert set(inputs) == set(nonzero_engine.config.target_modules)
    for per_layer in inputs.values():
        assert sorted(per_layer) == list(range(n_layers))
    with torch.no_grad():
        nonzero_engine.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(x.shape[0] != 3 for per in inputs.values() for x in per.values())  # not recorded any more


def test_chunk_responses_match_a_direct_computation(nonzero_engine: D2LEngine, many_chunks):
    inputs = _inputs(nonzero_engine, "Where is the river?")
    scores = many_chunks.chunk_responses(inputs)
    assert scores.shape == (many_chunks.num_chunks,) and (scores > 0).all()
    r = many_chunks.rank
    for c in (0, many_chunks.num_chunks - 1):
        expected = 0.0
        for m, (a, b) in many_chunks.factors.items():
            for layer, x in inputs[m].items():
                delta = (x @ a[layer, c * r:(c + 1) * r].T) @ b[layer, c * r:(c + 1) * r]
                expected += delta.norm().item()
        assert scores[c].item() == pytest.approx(expected * many_chunks.scale, rel=1e-4)
    # a chunk whose adapter is zero does not respond at all
    zeroed = many_chunks.select_chunks(list(range(many_chunks.num_chunks)))
    for _, b in zeroed.factors.values():
        b[:, :r] = 0
    assert zeroed.chunk_responses(inputs)[0] == 0


def test_select_chunks_keeps_the_chosen_chunks_and_the_bias(many_chunks):
    sub = many_chunks.select_chunks([3, 1])
    r, k = many_chunks.rank, many_chunks.num_chunks
    assert sub.num_chunks == 2 and sub.meta["selected_chunks"] == [1, 3]
    for m, (a, b) in sub.factors.items():
        full_a, full_b = many_chunks.factors[m]
        assert torch.equal(a[:, :r], full_a[:, r:2 * r]) and torch.equal(b[:, r:2 * r], full_b[:, 3 * r:4 * r])
        assert torch.equal(a[:, 2 * r:], full_a[:, k * r:])  # the bias block
    with pytest.raises(ValueError, match="chunk indices"):
        many_chunks.select_chunks([k])


def test_generate_applies_only_the_most_responsive_chunks(nonzero_engine: D2LEngine, many_chunks):
    question = "Where is the river?"
    ids = nonzero_engine.format.question_ids(question)
    scores = many_chunks.chunk_responses(_inputs(nonzero_engine, question))
    top2 = scores.topk(2).indices.tolist()
    result = nonzero_engine.generate(question, many_chunks, max_new_tokens=8, max_chunks=2)
    assert result.meta == {"chunks_applied": 2, "chunks_total": many_chunks.num_chunks, "selection": "response"}
    manual = nonzero_engine.generate(question, many_chunks.select_chunks(top2), max_new_tokens=8, max_chunks=0)
    assert result.text == manual.text
    # the selected adapter really differs from applying every chunk
    every = nonzero_engine.logits(ids, many_chunks)
    selected = nonzero_engine.logits(ids, many_chunks.select_chunks(top2))
    assert not torch.allclose(every, selected)
    everything = nonzero_engine.generate(question, many_chunks, max_new_tokens=8, max_chunks=0)
    assert everything.meta == {"chunks_applied": many_chunks.num_chunks, "chunks_total": many_chunks.num_chunks,
                               "selection": "all"}


def test_selection_spans_several_adapters_and_keeps_short_documents_whole(nonzero_engine: D2LEngine,
                                                                          many_chunks, sample_text):
    short = without_keys(nonzero_engine.internalize(sample_text))
    ids = nonzero_engine.format.question_ids("Who built the lighthouse?")
    kept, weights, meta = nonzero_engine.select_chunks(ids, [many_chunks, short], [1.0, 2.0], max_chunks=3)
    assert meta["chunks_total"] == many_chunks.num_chunks + 1 and sum(a.num_chunks for a in kept) == 3
    assert weights == [1.0, 2.0]
    same, _, meta = nonzero_engine.select_chunks(ids, short)
    assert same == [short] and meta == {"chunks_applied": 1, "chunks_total": 1, "selection": "all"}
    assert nonzero_engine.max_chunks == DEFAULT_MAX_CHUNKS
    with pytest.raises(ValueError, match="max_chunks"):
        nonzero_engine.select_chunks(ids, short, max_chunks=-1)


def test_the_needle_chunk_responds_most_on_the_real_model(real_engine: D2LEngine, magic_number_document):
    """With the shipped checkpoint, the chunk holding a fact responds most to its question."""
    document, needle = magic_number_document(real_engine, 520, 300)
    adapter = real_engine.internalize(document, progress=False)
    assert adapter.num_chunks > DEFAULT_MAX_CHUNKS
    question = "What is the special magic number?"
    scores = adapter.chunk_responses(_inputs(real_engine, question))
    assert int(scores.argmax()) == needle
    result = real_engine.generate(question, without_keys(adapter), max_new_tokens=8)
    assert {k: result.meta[k] for k in ("chunks_applied", "chunks_total", "selection")} == {
        "chunks_applied": DEFAULT_MAX_CHUNKS, "chunks_total": adapter.num_chunks, "selection": "response"}
    # longer than the reading memory's max_tokens: no rows at internalization, the token ids instead;
    # the chosen chunks' rows are made for the question, at most max_rows apply, and they only follow
    assert real_engine.memory is not None and real_engine.memory.long_documents == "follow"
    assert adapter.memory_rows == 0 and adapter.token_ids is not None and len(adapter.token_ids) == adapter.num_tokens
    assert result.meta["memory"] == "followed" and 0 < result.meta["memory_rows"] <= real_engine.memory.max_rows
    assert result.meta["memory_rows_made"] >= result.meta["memory_rows"]


def test_adapters_of_another_model_are_rejected_before_any_selection(nonzero_engine: D2LEngine, many_chunks):
    from d2l_haystack.core.errors import AdapterError

    foreign = dataclasses.replace(many_chunks, base_model="another-model")
    with pytest.raises(AdapterError, match="another-model"):
        nonzero_engine.generate("Where is the river?", foreign, max_new_tokens=2, max_chunks=2)
    with pytest.raises(ValueError, match="max_chunks"):
        D2LEngine(nonzero_engine.loaded.path, checkpoint=None, device="cpu", max_chunks=-1)
