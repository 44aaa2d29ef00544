"""The engine: chunking, input validation, generation with streaming, the real embedded model."""

from __future__ import annotations

import pytest
import torch

from d2l_haystack.core import D2LEngine
from d2l_haystack.core.errors import AdapterError, InputError
from d2l_haystack.core.prompts import chunk_token_ids
from d2l_haystack.core.textio import read_text_file, validate_text


@pytest.mark.parametrize("n,size", [(1, 512), (512, 512), (513, 512), (1000, 300), (2049, 512), (7, 2)])
def test_chunks_are_contiguous_and_near_equal(n: int, size: int) -> None:
    ids = list(range(n))
    chunks = chunk_token_ids(ids, size)
    assert len(chunks) == -(-n // size)
    assert [i for c in chunks for i in c] == ids
    lengths = [len(c) for c in chunks]
    assert max(lengths) <= size
    assert max(lengths) - min(lengths) <= 1


def test_chunking_edge_cases() -> None:
    assert chunk_token_ids([], 8) == []
    with pytest.raises(ValueError):
        chunk_token_ids([1, 2], 0)
    # 513 tokens at 512: two chunks of 257 and 256, not 512 + 1
    assert [len(c) for c in chunk_token_ids(list(range(513)), 512)] == [257, 256]


def test_internalize_chunks_the_document(tiny_engine: D2LEngine, long_text) -> None:
    text = long_text(400)
    n = len(tiny_engine.format.document_ids(text))
    adapter = tiny_engine.internalize(text, meta={"name": "river"})
    cfg = tiny_engine.config
    assert adapter.num_tokens == n
    assert adapter.num_chunks == -(-n // tiny_engine.chunk_tokens) > 1
    assert adapter.total_rank == adapter.num_chunks * cfg.rank + cfg.bias_rank
    assert adapter.base_model == "tiny-llama"
    assert adapter.checkpoint_id == tiny_engine.checkpoint_id
    assert adapter.meta == {"name": "river"}
    assert adapter.scale == pytest.approx(cfg.alpha)
    # batching does not change the result
    other = tiny_engine.internalize(text, batch_size=1)
    for m in adapter.factors:
        torch.testing.assert_close(other.factors[m][0], adapter.factors[m][0], atol=1e-5, rtol=1e-4)


def test_each_chunk_is_wrapped_in_the_chat_template(tiny_engine: D2LEngine, monkeypatch: pytest.MonkeyPatch,
                                                    long_text) -> None:
    seen: list[list[int]] = []
    original = tiny_engine.chunk_factors

    def spy(wrapped, *args, **kwargs):
        seen.extend(wrapped)
        return original(wrapped, *args, **kwargs)

    monkeypatch.setattr(tiny_engine, "chunk_factors", spy)
    adapter = tiny_engine.internalize(long_text(150), batch_size=2)
    fmt = tiny_engine.format
    assert len(seen) == adapter.num_chunks
    for ids in seen:
        assert ids[: len(fmt.doc_prefix_ids)] == fmt.doc_prefix_ids
        assert ids[len(ids) - len(fmt.doc_suffix_ids):] == fmt.doc_suffix_ids
    rendered = tiny_engine.tokenizer.decode(seen[0])
    assert rendered.startswith("<|im_start|>") and "<|im_start|>user\n" in rendered


@pytest.mark.parametrize("text", ["", "   \n\t  ", "abc\x00def", "\x01\x02\x03\x04" * 10])
def test_unusable_text_is_rejected(tiny_engine: D2LEngine, text: str) -> None:
    with pytest.raises(InputError):
        tiny_engine.internalize(text)
    with pytest.raises(InputError):
        validate_text(text)


def test_non_text_input_is_rejected(tiny_engine: D2LEngine) -> None:
    with pytest.raises(InputError, match="expected text"):
        tiny_engine.internalize(b"bytes are not text")  # type: ignore[arg-type]


def test_read_text_file_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="is a folder"):
        read_text_file(tmp_path)
    (tmp_path / "bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    with pytest.raises(InputError, match="binary"):
        read_text_file(tmp_path / "bin")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_text_file(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_text_file(tmp_path / "empty.txt")
    (tmp_path / "big.txt").write_text("x" * 100)
    with pytest.raises(InputError, match="limit"):
        read_text_file(tmp_path / "big.txt", max_bytes=10)
    (tmp_path / "ok.txt").write_bytes("\ufeffhello world".encode())
    assert read_text_file(tmp_path / "ok.txt") == "hello world"


def test_empty_question_is_rejected(tiny_engine: D2LEngine) -> None:
    with pytest.raises(InputError, match="question is empty"):
        tiny_engine.generate("   ")


def test_prompt_over_the_window_is_rejected(tiny_engine: D2LEngine) -> None:
    window = tiny_engine.model.config.max_position_embeddings
    with pytest.raises(InputError, match=f"{window}-token window"):
        tiny_engine.generate("Summarise.", context="word " * window, max_new_tokens=4)


def test_streaming_callback_gets_the_same_text(tiny_engine: D2LEngine, sample_text: str) -> None:
    adapter = tiny_engine.internalize(sample_text)
    pieces: list[str] = []
    result = tiny_engine.generate("Who built the lighthouse?", adapter, max_new_tokens=12,
                                  streaming_callback=pieces.append)
    assert result.num_tokens > 0 and len(pieces) > 0
    assert "".join(pieces).strip() == result.text
    assert 0 < result.time_to_first_token <= result.seconds
    assert result.prompt_tokens == len(tiny_engine.format.question_ids("Who built the lighthouse?"))
    # streaming does not change the answer
    assert tiny_engine.generate("Who built the lighthouse?", adapter, max_new_tokens=12).text == result.text


def test_streamer_flushes_text_held_back_at_the_end(tiny_engine: D2LEngine) -> None:
    """A reply ending in an incomplete UTF-8 sequence is still delivered in full at the end."""
    from d2l_haystack.core.engine import _CallbackStreamer

    tok = tiny_engine.tokenizer
    ids = tok("Caf\u00e9 \U0001F600", add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    streamer = _CallbackStreamer(tok, pieces.append, 0.0)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt
    for i in ids[:-1]:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert "".join(pieces) == tok.decode(ids[:-1], skip_special_tokens=True)
    assert streamer.tokens == ids[:-1]


def test_generation_with_context_and_history(tiny_engine: D2LEngine, sample_text: str) -> None:
    with_doc = tiny_engine.generate("Who built it?", context=sample_text, max_new_tokens=3)
    without = tiny_engine.generate("Who built it?", max_new_tokens=3)
    assert with_doc.prompt_tokens > without.prompt_tokens + 40
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": "Who built it?"}]
    chat = tiny_engine.generate(history, max_new_tokens=3)
    assert chat.prompt_tokens > without.prompt_tokens


@pytest.mark.parametrize("change, message", [({"base_model": "other-model"}, "made for base model 'other-model'"),
                                             ({"layers": 1}, "adapter has 1 layers")])
def test_generation_refuses_an_adapter_of_another_model(tiny_engine: D2LEngine, sample_text: str,
                                                        change: dict, message: str) -> None:
    adapter = tiny_engine.internalize(sample_text, progress=False)
    if "layers" in change:
        adapter.factors = {m: (a[:1], b[:1]) for m, (a, b) in adapter.factors.items()}
    else:
        adapter.base_model = change["base_model"]
    for max_chunks in (None, 0):  # with and without chunk selection
        with pytest.raises(AdapterError, match=message):
            tiny_engine.generate("What is it about?", adapter, max_chunks=max_chunks, gate=False,
                                 max_new_tokens=2)


def test_split_text_sentences_keeps_every_word_in_order() -> None:
    from d2l_haystack.core.textio import split_text_sentences

    text = ("The bridge opened in 1932.  It took eight years!\n\n# Notes\nno stop here\n\n"
            "Was it (really) done? \"Yes.\" (Maybe.) e.g. not a break. Dr. Smith agreed.")
    parts = split_text_sentences(text)
    assert parts == ["The bridge opened in 1932.", "It took eight years!", "# Notes no stop here",
                     "Was it (really) done?", '"Yes." (Maybe.) e.g. not a break.', "Dr.", "Smith agreed."]
    assert " ".join(parts).split() == text.split()
    assert split_text_sentences("one line without an end") == ["one line without an end"]
    assert split_text_sentences(" \n\n ") == []


def test_sentence_chunking_gives_each_sentence_its_chunk(tiny_engine: D2LEngine, tiny_llama_dir, sample_text,
                                                         long_text) -> None:
    from d2l_haystack.core import get_engine
    from d2l_haystack.core.textio import split_text_sentences

    engine = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, chunking="sentences")
    sentences = split_text_sentences(sample_text)
    assert len(sentences) == 3
    adapter = engine.internalize(sample_text)
    assert adapter.num_chunks == 3 and tiny_engine.internalize(sample_text).num_chunks == 1
    assert engine.chunk_ids(sample_text) == [engine.format.document_ids(s) for s in sentences]
    assert adapter.num_tokens == sum(len(engine.format.document_ids(s)) for s in sentences)
    assert adapter.keys is not None and set(adapter.key_chunks.tolist()) == {0, 1, 2}
    # a sentence longer than chunk_tokens is cut like a document
    long_sentence = long_text(300).replace(".", ",") + "."
    assert len(engine.format.document_ids(long_sentence)) > 64
    assert engine.chunk_ids(long_sentence) == tiny_engine.chunk_ids(long_sentence)
    assert engine.describe()["chunking"] == "sentences" and tiny_engine.describe()["chunking"] == "tokens"
    with pytest.raises(ValueError, match="chunking must be one of tokens, sentences, auto"):
        D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunking="paragraphs")
    shared = get_engine(str(tiny_llama_dir), None, "cpu", chunk_tokens=64)
    assert get_engine(str(tiny_llama_dir), None, "cpu", chunk_tokens=64, chunking="sentences") is not shared
    assert get_engine(str(tiny_llama_dir), None, "cpu", chunk_tokens=64, chunking="tokens") is shared


def test_describe(tiny_engine: D2LEngine) -> None:
    info = tiny_engine.describe()
    assert info["base_model"] == "tiny-llama" and info["trained"] is False
    assert info["checkpoint"] == "untrained"
    assert info["hypernet_parameters"] == sum(p.numel() for p in tiny_engine.hypernet.parameters())


@pytest.mark.integration
def test_internalize_on_the_real_model(real_engine: D2LEngine, sample_text: str) -> None:
    cfg = real_engine.config
    assert real_engine.loaded.name == "smollm2-135m-instruct"
    assert (cfg.num_layers, cfg.hidden_size) == (30, 576)
    adapter = real_engine.internalize(sample_text)
    assert adapter.num_chunks == 1
    a, b = adapter.factors["down_proj"]
    assert a.shape == (30, cfg.rank + cfg.bias_rank, 1536)
    assert b.shape == (30, cfg.rank + cfg.bias_rank, 576)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    # the shipped checkpoint's reading memory: one row per token of a short document, on the last layer
    assert real_engine.memory is not None and adapter.memory_key == "down_proj@29<22"  # matched on layer 22
    assert adapter.memory_rows == len(real_engine.chunk_ids(sample_text)[0])
    answer = real_engine.generate("Who built the Marlow lighthouse?", adapter, max_new_tokens=8)
    # the shipped memory follows a yielded answer (follow_on_yield), so greedy answers never say "yielded"
    assert answer.meta["memory"] in ("applied", "followed", "overrode")
    described = real_engine.describe()
    assert described["memory_follow_on_yield"] and described["memory_row_use"] == "value"
    assert described["memory_long_documents"] == "follow"  # a document over 4,096 tokens keeps its token ids
    from d2l_haystack.core.memory import DEFAULT_MAX_ROWS

    assert described["memory_max_rows"] == DEFAULT_MAX_ROWS == 64
    assert 0 <= answer.meta["adapter_confidence"] <= 1
    ids = real_engine.format.question_ids("Who built the Marlow lighthouse?")
    base = real_engine.logits(ids)
    adapted = real_engine.logits(ids, adapter)
    assert torch.isfinite(adapted).all()
    if not real_engine.trained:
        assert torch.equal(adapted, base)
    result = real_engine.generate("Who built the Marlow lighthouse?", context=sample_text, max_new_tokens=12)
    assert result.text and result.num_tokens <= 12


@pytest.mark.integration
def test_sentence_chunks_apply_the_sentence_a_question_is_about(real_engine: D2LEngine, sample_text: str) -> None:
    from d2l_haystack.core import get_engine

    engine = get_engine(real_engine.loaded.name, device="cpu", chunking="sentences")
    assert engine.model is real_engine.model  # the base model is loaded once
    adapter = engine.internalize(sample_text)
    assert adapter.num_chunks == 3
    r = engine.config.rank
    everything = adapter.document_factors()["down_proj"][0]
    for question, sentence in (("Who built the Marlow lighthouse?", 0), ("What are the keeper's cats called?", 2),
                               ("How far away can its lamp be seen?", 1)):
        chosen, _, meta = engine.select_chunks(engine.prompt_ids(question), adapter, max_chunks=1, query=question)
        assert meta["chunks_applied"] == 1 and not meta["gated"], question
        assert torch.equal(chosen[0].document_factors()["down_proj"][0], everything[:, sentence * r:(sentence + 1) * r])


def test_read_text_file_refuses_a_fifo_without_blocking(tmp_path):
    import os

    from d2l_haystack.core.errors import InputError
    from d2l_haystack.core.textio import read_text_file

    fifo = tmp_path / "notes.md"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_text_file(fifo)


def test_portable_description_has_no_machine_paths(real_engine: D2LEngine) -> None:
    portable = real_engine.describe(portable=True)
    assert portable["model_path"] == "<cache>/smollm2-135m-instruct"
    assert portable["checkpoint"] == "d2l_haystack/checkpoints/smollm2-135m-instruct"
    plain = real_engine.describe()
    assert plain["model_path"].endswith("smollm2-135m-instruct") and plain["model_path"].startswith("/")
    assert {k: v for k, v in plain.items() if k not in ("model_path", "checkpoint")} == \
        {k: v for k, v in portable.items() if k not in ("model_path", "checkpoint")}


def test_engines_share_one_early_exit_hook_per_layer(tiny_llama_dir):
    """Engines over the same (cached) base model do not pile forward hooks onto its layers, and
    each still stops after its own exit layer."""
    import threading

    from d2l_haystack.core.encoder import ContextEncoder, decoder_layers, pad_batch

    engines = [D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64) for _ in range(3)]
    model = engines[0].model
    assert all(e.model is model for e in engines)
    layers = decoder_layers(model)
    exit_layer = engines[0].config.exit_layer
    assert len(layers[exit_layer - 1]._forward_hooks) == 1
    other = ContextEncoder(model, "early_exit", 1)
    assert len(layers[0]._forward_hooks) == 1 and len(layers[exit_layer - 1]._forward_hooks) == 1
    ids, mask = pad_batch([[5, 6, 7, 8]], 0, "cpu")
    full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.allclose(other(ids, mask), full[1], atol=1e-5)
    assert torch.allclose(engines[1].encoder(ids, mask), full[exit_layer], atol=1e-5)
    # a plain forward pass is not stopped, from this thread or another
    out: list = []
    worker = threading.Thread(target=lambda: out.append(model(input_ids=ids, attention_mask=mask).logits))
    worker.start()
    worker.join()
    assert out and out[0].shape[:2] == ids.shape


def test_auto_chunking_cuts_short_documents_by_sentence_and_long_ones_by_tokens(tiny_llama_dir, sample_text,
                                                                                long_text) -> None:
    auto = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, chunking="auto")
    sentences = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, chunking="sentences")
    tokens = D2LEngine(str(tiny_llama_dir), checkpoint=None, device="cpu", chunk_tokens=64, chunking="tokens")
    assert len(auto.format.document_ids(sample_text)) <= 64
    assert auto.chunk_ids(sample_text) == sentences.chunk_ids(sample_text) and len(auto.chunk_ids(sample_text)) == 3
    text = long_text(400)
    assert len(auto.format.document_ids(text)) > 64
    assert auto.chunk_ids(text) == tokens.chunk_ids(text) != sentences.chunk_ids(text)
