"""Chunk keys: which chunk adapters a question is about, and no adapter for unrelated questions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from d2l_haystack.core import Adapter, D2LEngine
from d2l_haystack.core.errors import AdapterError
from d2l_haystack.core.keys import (
    KEY_SCHEME,
    WINDOW_STRIDE,
    WINDOW_WORDS,
    get_key_encoder,
    split_sentences,
    split_words,
)
from d2l_haystack.core.prompts import chunk_token_ids

NEEDLE = "The secret code for the blue door of the observatory is 59605."
QUESTION = "What is the secret code for the blue door of the observatory?"
UNRELATED = "What is the capital of France?"


@pytest.fixture(scope="module")
def needle_text(long_text) -> str:
    words = long_text(400).split()
    return " ".join(words[:200] + [NEEDLE] + words[200:])


@pytest.fixture(scope="module")
def needle_adapter(nonzero_engine: D2LEngine, needle_text: str) -> Adapter:
    return nonzero_engine.internalize(needle_text, progress=False)


def _needle_chunk(engine: D2LEngine, text: str) -> int:
    chunks = chunk_token_ids(engine.format.document_ids(text), engine.chunk_tokens)
    return next(i for i, c in enumerate(chunks) if "59605" in engine.tokenizer.decode(c))


def test_split_words_covers_the_text_with_overlap():
    text = " ".join(f"w{i}" for i in range(70))
    parts = split_words(text, WINDOW_WORDS, WINDOW_WORDS - WINDOW_STRIDE)
    assert parts[0].split() == [f"w{i}" for i in range(WINDOW_WORDS)]
    assert parts[1].split()[0] == f"w{WINDOW_STRIDE}"
    assert parts[-1].split()[-1] == "w69"
    assert split_words("  \n ", 32, 8) == [] and split_words("one two", 32, 8) == ["one two"]


def test_key_texts_are_the_windows_and_the_sentences():
    text = ("The museum opened in 1921 on the north pier. Its first director was Ada Whitcombe! "
            "Ok. The special magic number is 48213? " + " ".join(f"w{i}" for i in range(40)))
    assert split_sentences(text)[:3] == ["The museum opened in 1921 on the north pier.",
                                         "Its first director was Ada Whitcombe!", "The special magic number is 48213?"]
    assert "Ok." not in split_sentences(text)  # under three words
    assert split_sentences(" ".join(["word"] * 25) + ".") == []  # over SENTENCE_MAX_WORDS
    keys = get_key_encoder().key_texts(text)
    windows = split_words(text, WINDOW_WORDS, WINDOW_WORDS - WINDOW_STRIDE)
    assert keys[:len(windows)] == windows and "The special magic number is 48213?" in keys
    assert len(keys) == len(set(keys))
    assert get_key_encoder().key_texts("one two three.") == ["one two three."]  # a sentence that is a window


def test_a_fact_among_topical_sentences_is_relevant_and_unrelated_questions_are_not(nonzero_engine: D2LEngine):
    """Sentence keys: a windows-only key of this document scored 0.29 for the fact's question (gated)."""
    doc = ("The Harlow Museum of Maritime History opened in 1921 on the north pier. Its first director was "
           "Ada Whitcombe. The special magic number is 48213. The museum's largest exhibit is a "
           "19th-century whaling boat called the Dorothea.")
    adapter = nonzero_engine.internalize(doc, progress=False)
    assert adapter.key_scheme == KEY_SCHEME
    encoder = get_key_encoder()
    assert float(adapter.chunk_relevance(encoder.query("What is the special magic number?")).max()) \
        >= nonzero_engine.min_relevance
    for question in (UNRELATED, "Who wrote Hamlet?", "What is 7 times 8?"):
        assert float(adapter.chunk_relevance(encoder.query(question)).max()) < nonzero_engine.min_relevance


def test_adapters_with_keys_of_an_older_scheme_are_ranked_by_response(nonzero_engine: D2LEngine,
                                                                     needle_adapter: Adapter, tmp_path: Path):
    legacy = dataclasses.replace(needle_adapter, key_scheme="")
    loaded = Adapter.load(legacy.save(tmp_path / "legacy"))
    assert loaded.has_keys and loaded.key_scheme == ""
    meta = nonzero_engine.generate(UNRELATED, loaded, max_new_tokens=2, max_chunks=2).meta
    assert meta["selection"] == "response" and "gated" not in meta


def test_internalize_stores_normalised_keys_for_every_chunk(nonzero_engine: D2LEngine, needle_adapter: Adapter,
                                                           needle_text: str):
    a = needle_adapter
    assert a.has_keys and a.key_model == nonzero_engine.key_model == "all-minilm-l6-v2"
    assert a.keys is not None and a.key_chunks is not None
    assert a.keys.shape == (len(a.key_chunks), 384)
    assert torch.allclose(a.keys.norm(dim=1), torch.ones(len(a.keys)), atol=1e-3)
    assert sorted(set(a.key_chunks.tolist())) == list(range(a.num_chunks))  # every chunk has windows
    # the keys of one chunk are the encoder's keys of that chunk's text
    chunks = chunk_token_ids(nonzero_engine.format.document_ids(needle_text), nonzero_engine.chunk_tokens)
    vectors, owners = get_key_encoder().chunk_keys([nonzero_engine.tokenizer.decode(chunks[1])])
    assert torch.allclose(a.keys[a.key_chunks == 1], vectors, atol=1e-4) and set(owners.tolist()) == {0}


def test_chunk_relevance_is_the_best_window_per_chunk(needle_adapter: Adapter):
    a = needle_adapter
    q = get_key_encoder().query(QUESTION)
    scores = a.chunk_relevance(q)
    assert a.keys is not None and a.key_chunks is not None
    sims = a.keys @ q
    for c in range(a.num_chunks):
        assert scores[c].item() == pytest.approx(sims[a.key_chunks == c].max().item(), abs=1e-5)
    with pytest.raises(AdapterError, match="dimensions"):
        a.chunk_relevance(torch.ones(10))
    with pytest.raises(AdapterError, match="no chunk keys"):
        dataclasses.replace(a, keys=None, key_chunks=None, key_model="").chunk_relevance(q)


def test_a_question_gets_the_chunk_it_is_about(nonzero_engine: D2LEngine, needle_adapter: Adapter,
                                              needle_text: str):
    needle = _needle_chunk(nonzero_engine, needle_text)
    ids = nonzero_engine.format.question_ids(QUESTION)
    kept, weights, meta = nonzero_engine.select_chunks(ids, needle_adapter, query=QUESTION)
    assert meta["selection"] == "relevance" and not meta["gated"] and meta["relevance"] >= 0.5
    assert weights is None and len(kept) == 1
    assert needle in kept[0].meta["selected_chunks"] and meta["chunks_applied"] == kept[0].num_chunks
    assert meta["chunks_applied"] < needle_adapter.num_chunks  # the filler chunks are left out
    result = nonzero_engine.generate(QUESTION, needle_adapter, max_new_tokens=6)
    manual = nonzero_engine.generate(QUESTION, kept, max_new_tokens=6, max_chunks=0)
    assert result.text == manual.text and result.meta == meta


def test_an_unrelated_question_gets_no_adapter(nonzero_engine: D2LEngine, needle_adapter: Adapter):
    gated = nonzero_engine.generate(UNRELATED, needle_adapter, max_new_tokens=6)
    assert gated.meta["gated"] is True and gated.meta["chunks_applied"] == 0
    assert gated.meta["relevance"] < nonzero_engine.min_relevance
    assert gated.text == nonzero_engine.generate(UNRELATED, max_new_tokens=6).text  # the base model's answer
    forced = nonzero_engine.generate(UNRELATED, needle_adapter, max_new_tokens=6, gate=False)
    assert forced.meta["gated"] is False and forced.meta["chunks_applied"] >= 1
    every = nonzero_engine.generate(UNRELATED, needle_adapter, max_new_tokens=6, max_chunks=0)
    assert every.meta == {"chunks_applied": needle_adapter.num_chunks, "chunks_total": needle_adapter.num_chunks,
                          "selection": "all"}


def test_the_query_is_the_last_user_message_or_given(nonzero_engine: D2LEngine, needle_adapter: Adapter):
    chat = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "I do not know."},
            {"role": "user", "content": UNRELATED}]
    assert nonzero_engine.generate(chat, needle_adapter, max_new_tokens=2).meta["gated"] is True
    assert nonzero_engine.generate(chat[:1], needle_adapter, max_new_tokens=2).meta["gated"] is False
    given = nonzero_engine.generate(UNRELATED, needle_adapter, max_new_tokens=2, query=QUESTION)
    assert given.meta["gated"] is False


def test_relevance_spans_several_adapters_and_keeps_their_weights(nonzero_engine: D2LEngine,
                                                                  needle_adapter: Adapter, sample_text: str):
    lighthouse = nonzero_engine.internalize(sample_text)
    ids = nonzero_engine.format.question_ids("Who built the Marlow lighthouse?")
    kept, weights, meta = nonzero_engine.select_chunks(ids, [needle_adapter, lighthouse], [1.0, 2.0],
                                                       query="Who built the Marlow lighthouse?")
    assert kept == [lighthouse] and weights == [2.0]  # the needle document has nothing relevant
    assert meta["chunks_total"] == needle_adapter.num_chunks + 1 and meta["chunks_applied"] == 1


def test_keys_survive_save_load_and_chunk_subsets(needle_adapter: Adapter, tmp_path: Path):
    loaded = Adapter.load(needle_adapter.save(tmp_path / "a"))
    assert loaded.key_model == needle_adapter.key_model and loaded.key_scheme == KEY_SCHEME
    assert loaded.keys is not None and needle_adapter.keys is not None
    assert torch.allclose(loaded.keys, needle_adapter.keys, atol=1e-3)
    assert torch.equal(loaded.key_chunks, needle_adapter.key_chunks)
    q = get_key_encoder().query(QUESTION)
    sub = needle_adapter.select_chunks([2, 0])
    assert sub.key_chunks is not None and set(sub.key_chunks.tolist()) == {0, 1}
    assert torch.allclose(sub.chunk_relevance(q), needle_adapter.chunk_relevance(q)[[0, 2]])
    assert sub.nbytes < needle_adapter.nbytes


def test_damaged_keys_are_reported(needle_adapter: Adapter, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    path = needle_adapter.save(tmp_path / "a")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    bad = dict(tensors)
    bad["keys.chunks"] = bad["keys.chunks"] + needle_adapter.num_chunks
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(AdapterError, match="does not match its checksum"):  # the tensor checksum sees it first
        Adapter.load(tmp_path / "bad.safetensors")
    old = {k: v for k, v in meta.items() if k != "data_sha256"}  # a file written before checksums existed
    save_file(bad, str(tmp_path / "bad_old.safetensors"), metadata=old)
    with pytest.raises(AdapterError, match="chunks the adapter does not have"):
        Adapter.load(tmp_path / "bad_old.safetensors")
    half = {k: v for k, v in tensors.items() if k != "keys.chunks"}
    save_file(half, str(tmp_path / "half.safetensors"), metadata=old)
    with pytest.raises(AdapterError, match="incomplete chunk keys"):
        Adapter.load(tmp_path / "half.safetensors")


def test_an_engine_without_keys_ranks_by_response(tiny_llama_dir: Path, needle_text: str):
    engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, keys=None)
    adapter = engine.internalize(needle_text, progress=False)
    assert not adapter.has_keys and adapter.keys is None
    result = engine.generate(UNRELATED, adapter, max_new_tokens=2, max_chunks=2)
    assert result.meta["selection"] == "response" and result.meta["chunks_applied"] == 2
    with pytest.raises(ValueError, match="relevance_margin"):
        D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", relevance_margin=-1)


def test_the_needle_chunk_is_selected_and_answered_on_the_real_model(real_engine: D2LEngine, magic_number_document):
    """The shipped checkpoint + chunk keys: a fact deep in a 40-chunk document is found and answered."""
    document, needle = magic_number_document(real_engine, 2000, 1300)
    adapter = real_engine.internalize(document, progress=False)
    assert adapter.num_chunks > 30 and needle > 20
    question = "What is the special magic number?"
    ids = real_engine.format.question_ids(question)
    kept, _, meta = real_engine.select_chunks(ids, adapter, query=question)
    assert meta["selection"] == "relevance" and needle in kept[0].meta["selected_chunks"]
    assert meta["chunks_applied"] <= 2
    assert "51370" in real_engine.generate(question, adapter, max_new_tokens=12).text
    assert real_engine.generate(UNRELATED, adapter, max_new_tokens=12).meta["gated"] is True
