from __future__ import annotations

from pathlib import Path

import pytest
from haystack import Document
from haystack.dataclasses import ChatMessage, StreamingChunk

from d2l_haystack.components import AdapterGenerator
from d2l_haystack.core.errors import AdapterError, InputError
from d2l_haystack.stores import AdapterStore

SMALL = {"max_new_tokens": 3}
collected: list[StreamingChunk] = []


def collect(chunk: StreamingChunk) -> None:
    collected.append(chunk)


@pytest.fixture
def store(tmp_path: Path, engine_params: dict) -> AdapterStore:
    from d2l_haystack.core import get_engine

    engine = get_engine(**engine_params)
    store = AdapterStore(str(tmp_path / "adapters"))
    store.put("/manual.md", engine.internalize("The warranty lasts 3 years."))
    return store


@pytest.fixture
def generator(store: AdapterStore, engine_params: dict) -> AdapterGenerator:
    return AdapterGenerator(store=store, generation_kwargs=SMALL, **engine_params)


class TestAdapterGenerator:
    def test_plain_question(self, generator: AdapterGenerator):
        reply = generator.run(messages="What is the warranty?")["replies"][0]
        assert reply.role.value == "assistant" and isinstance(reply.text, str)
        meta = reply.meta
        assert meta["route"] == "base" and meta["adapters"] == [] and meta["chunks"] == []
        assert meta["seconds"] > 0 and meta["usage"]["completion_tokens"] <= 3
        assert meta["finish_reason"] in ("stop", "length") and meta["model"] == "tiny-llama"

    def test_with_adapter_counts_queries(self, generator: AdapterGenerator, store: AdapterStore):
        msgs = [ChatMessage.from_system("Be brief."), ChatMessage.from_user("What is the warranty?")]
        reply = generator.run(messages=msgs, adapter_ids=["/manual.md"])["replies"][0]
        assert reply.meta["route"] == "d2l" and reply.meta["adapters"] == ["/manual.md"]
        assert store.info("/manual.md")["queries"] == 1
        assert reply.meta["adapter_chunks"] == {"applied": 1, "total": 1, "selection": "relevance",
                                                "relevance": pytest.approx(0.6, abs=0.2), "gated": False}

    def test_unrelated_questions_get_no_adapter_unless_routed(self, generator: AdapterGenerator):
        question = "What is the capital of France?"
        gated = generator.run(messages=question, adapter_ids=["/manual.md"])["replies"][0]
        assert gated.meta["route"] == "d2l" and gated.meta["adapter_chunks"]["gated"] is True
        assert gated.meta["adapter_chunks"]["applied"] == 0
        assert gated.text == generator.run(messages=question)["replies"][0].text  # the base model's answer
        routed = generator.run(messages=question, adapter_ids=["/manual.md"],
                               routing={"route": "d2l", "reason": "test"})["replies"][0]
        assert routed.meta["adapter_chunks"]["gated"] is False and routed.meta["adapter_chunks"]["applied"] == 1
        forced = generator.run(messages=question, adapter_ids=["/manual.md"], routing={"route": "d2l"},
                               generation_kwargs={"gate": True})["replies"][0]
        assert forced.meta["adapter_chunks"]["gated"] is True

    def test_max_chunks_generation_kwarg(self, generator: AdapterGenerator, store: AdapterStore, engine_params: dict):
        from d2l_haystack.core import get_engine

        text = " ".join(f"Entry {i} says the shelf holds {i % 7} boxes of nails." for i in range(120))
        store.put("/ledger.md", get_engine(**engine_params).internalize(text, progress=False))
        total = store.get("/ledger.md").num_chunks
        assert total > 2
        reply = generator.run(messages="How many boxes?", adapter_ids=["/ledger.md", "/manual.md"],
                              generation_kwargs={"max_chunks": 2})["replies"][0]
        chunks = reply.meta["adapter_chunks"]
        assert 1 <= chunks["applied"] <= 2 and chunks["total"] == total + 1 and chunks["selection"] == "relevance"
        every = generator.run(messages="How many boxes?", adapter_ids=["/ledger.md"],
                              generation_kwargs={"max_chunks": 0})["replies"][0]
        assert every.meta["adapter_chunks"] == {"applied": total, "total": total, "selection": "all"}

    def test_with_documents_and_hybrid(self, generator: AdapterGenerator):
        chunks = [Document(content="The warranty lasts 3 years.", meta={"file_path": "/faq.md"}, score=0.9)]
        rag = generator.run(messages="What is the warranty?", documents=chunks)["replies"][0]
        assert rag.meta["route"] == "rag" and rag.meta["chunks"][0]["source"] == "/faq.md"
        assert rag.meta["usage"]["prompt_tokens"] > generator.run(messages="What is the warranty?")["replies"][0] \
            .meta["usage"]["prompt_tokens"]
        hybrid = generator.run(messages="What is the warranty?", documents=chunks, adapter_ids=["/manual.md"])
        assert hybrid["replies"][0].meta["route"] == "hybrid"
        routed = generator.run(messages="q", routing={"route": "rag", "reason": "test"}, documents=chunks)
        assert routed["replies"][0].meta["route"] == "rag" and routed["replies"][0].meta["routing"]["reason"] == "test"
        # routed to RAG but nothing retrieved (and no adapter): the base model answered, and says so
        empty = generator.run(messages="q", routing={"route": "rag", "reason": "test"}, documents=[])["replies"][0]
        assert empty.meta["route"] == "base" and empty.meta["routing"]["route"] == "rag"

    def test_streaming(self, store: AdapterStore, engine_params: dict):
        collected.clear()
        gen = AdapterGenerator(store=store, generation_kwargs={"max_new_tokens": 4}, streaming_callback=collect,
                               **engine_params)
        reply = gen.run(messages="Hello")["replies"][0]
        assert collected and all(isinstance(c, StreamingChunk) for c in collected)
        assert collected[-1].finish_reason in ("stop", "length")
        assert "".join(c.content for c in collected).strip() == reply.text
        assert collected[0].component_info.type.endswith("AdapterGenerator")
        runtime: list[StreamingChunk] = []
        AdapterGenerator(store=store, generation_kwargs=SMALL, **engine_params).run(
            messages="Hello", streaming_callback=runtime.append)
        assert runtime

    def test_run_async_in_an_async_pipeline_run_with_an_async_callback(self, generator: AdapterGenerator):
        """Pipeline.run_async (Haystack's async run; AsyncPipeline before 3.0) awaits run_async: two
        questions at once both answer (the event loop is free meanwhile), an async streaming
        callback gets every chunk, the replies equal run()'s."""
        import asyncio

        from haystack import Pipeline

        pipe = Pipeline()
        pipe.add_component("gen", generator)
        streamed: list[StreamingChunk] = []
        ticks = 0

        async def on_chunk(chunk: StreamingChunk) -> None:
            streamed.append(chunk)

        async def ticker() -> None:  # runs while the generations do: the loop is not blocked
            nonlocal ticks
            for _ in range(200):
                ticks += 1
                await asyncio.sleep(0.005)

        async def both():
            return await asyncio.gather(
                pipe.run_async({"gen": {"messages": "What is the warranty?", "adapter_ids": ["/manual.md"],
                                        "streaming_callback": on_chunk}}),
                generator.run_async(messages="Hello"), ticker())

        first, second, _ = asyncio.run(both())
        assert first["gen"]["replies"][0].text == generator.run(
            messages="What is the warranty?", adapter_ids=["/manual.md"])["replies"][0].text
        assert second["replies"][0].text == generator.run(messages="Hello")["replies"][0].text
        assert streamed and "".join(c.content for c in streamed).strip() == first["gen"]["replies"][0].text
        assert ticks > 10

    def test_errors(self, generator: AdapterGenerator, engine_params: dict):
        with pytest.raises(AdapterError, match="no adapter for 'missing'"):
            generator.run(messages="q", adapter_ids=["missing"])
        with pytest.raises(AdapterError, match="no store"):
            AdapterGenerator(**engine_params).run(messages="q", adapter_ids=["x"])
        with pytest.raises(InputError):
            generator.run(messages=[ChatMessage.from_assistant("hi")])
        with pytest.raises(InputError):
            generator.run(messages="   ")

    def test_generation_kwargs_aliases(self, generator: AdapterGenerator, caplog):
        reply = generator.run(messages="Hello", generation_kwargs={"max_tokens": 1, "stop_words": ["x"]})
        assert reply["replies"][0].meta["usage"]["completion_tokens"] <= 1
        assert "stop_words" in caplog.text

    def test_to_dict_from_dict(self, tmp_path: Path, engine_params: dict):
        from haystack.components.generators.utils import print_streaming_chunk

        gen = AdapterGenerator(store=str(tmp_path / "s"), generation_kwargs={"max_new_tokens": 7},
                               streaming_callback=print_streaming_chunk, **engine_params)
        data = gen.to_dict()
        params = data["init_parameters"]
        assert data["type"] == "d2l_haystack.components.adapter_generator.AdapterGenerator"
        assert params["streaming_callback"] == "haystack.components.generators.utils.print_streaming_chunk"
        assert params["store"] == str(tmp_path / "s") and params["generation_kwargs"] == {"max_new_tokens": 7}
        again = AdapterGenerator.from_dict(data)
        assert again.streaming_callback is print_streaming_chunk and again.to_dict() == data
        shared = AdapterStore.open(tmp_path / "shared")
        assert AdapterGenerator.from_dict(AdapterGenerator(store=shared, **engine_params).to_dict()).store is shared
