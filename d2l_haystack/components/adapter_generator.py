"""A Haystack chat generator answering with the base model plus per-request D2L adapters."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.dataclasses import ChatMessage, StreamingChunk
from haystack.dataclasses.streaming_chunk import ComponentInfo, select_streaming_callback
from haystack.utils import deserialize_callable, serialize_callable

from d2l_haystack.core.errors import AdapterError, InputError
from d2l_haystack.core.models import DEFAULT_DTYPE, DEFAULT_MODEL
from d2l_haystack.core.textio import DEFAULT_CHUNKING
from d2l_haystack.stores.adapter_store import AdapterStore

from ._utils import source_key

logger = logging.getLogger(__name__)

_GEN_KEYS = {"max_new_tokens", "do_sample", "temperature", "top_p", "max_chunks", "gate"}
_ALIASES = {"max_tokens": "max_new_tokens", "max_length": "max_new_tokens"}


@component
class AdapterGenerator:
    """Answer chat messages with the base model plus generated LoRA adapters and/or context chunks.

    The chat-generator shape of Haystack: ``messages`` in, ``replies`` (assistant
    :class:`ChatMessage`) out. Per request it can

    * apply the adapters of ``adapter_ids`` (loaded from the :class:`AdapterStore`, composed along
      the rank dimension; the document is *not* in the prompt) -- route ``d2l``;
    * put retrieved ``documents`` in the prompt with the project's one context template
      (:mod:`d2l_haystack.core.prompts`) -- route ``rag``;
    * both -- route ``hybrid``; or neither -- route ``base``.

    The base model and hypernetwork come from the core's process cache
    (:func:`~d2l_haystack.core.get_engine`), shared with :class:`DocToLoRAConverter`: every
    component naming the same model, checkpoint, device and dtype uses one loaded copy.

    Every reply's meta names the ``route``, the ``adapters`` and ``chunks`` used, ``seconds``,
    ``time_to_first_token``, ``usage`` and ``finish_reason``; the ``routing`` input (from
    :class:`QueryRouter`) is copied into ``meta["routing"]`` and its route wins. Queries are
    counted in the adapter store for every adapter used.

    Usage example::

        from haystack.dataclasses import ChatMessage
        from d2l_haystack.components import AdapterGenerator

        generator = AdapterGenerator(store="kb/adapters")
        reply = generator.run(messages=[ChatMessage.from_user("What is the warranty period?")],
                              adapter_ids=["/docs/manual.md"])["replies"][0]
        print(reply.text, reply.meta["route"], reply.meta["seconds"])

    :param model: base model (embedded name, local folder or hub id).
    :param checkpoint: hypernetwork checkpoint (``"default"``, a folder, ``None``: untrained).
    :param device: ``cpu``/``cuda`` (default: CUDA when available).
    :param dtype: base model dtype.
    :param chunk_tokens: tokens per internalized chunk (part of the shared-engine key).
    :param chunking: ``"tokens"`` or ``"sentences"`` (part of the shared-engine key, as in
        :class:`DocToLoRAConverter`).
    :param reading_memory: load the checkpoint's reading memory (part of the shared-engine key, as
        in :class:`DocToLoRAConverter`; adapters with memory rows apply them either way).
    :param store: the :class:`AdapterStore` (or its folder) that ``adapter_ids`` refer to.
    :param generation_kwargs: defaults for ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``,
        ``max_chunks``, ``gate``.
    :param streaming_callback: called with a :class:`StreamingChunk` per text delta.
    :param max_context_tokens: chunks beyond this many tokens are left out of the prompt.
    :param record_queries: count a query in the store for each adapter used.
    :param instruction_ids: ids of instructions adapters in the store (:class:`InstructionsToLoRA`)
        applied to every request beside the documents' adapters: "how to answer" next to "what is
        known" (the ``instruction_ids`` input overrides them per request).
    :param instruction_weight: the weight of each instructions adapter in the composition.
    """

    def __init__(self, model: str = DEFAULT_MODEL, checkpoint: str | None = "default", device: str | None = None,
                 dtype: str = DEFAULT_DTYPE, chunk_tokens: int | None = None,
                 chunking: str = DEFAULT_CHUNKING, reading_memory: bool = True,
                 store: AdapterStore | str | None = None,
                 generation_kwargs: dict[str, Any] | None = None,
                 streaming_callback: Callable[[StreamingChunk], None] | None = None,
                 max_context_tokens: int = 1536, record_queries: bool = True,
                 instruction_ids: list[str] | None = None, instruction_weight: float = 1.0) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.chunk_tokens = chunk_tokens
        self.chunking = chunking
        self.reading_memory = reading_memory
        self.store = store
        self.generation_kwargs = generation_kwargs or {}
        self.streaming_callback = streaming_callback
        self.max_context_tokens = max_context_tokens
        self.record_queries = record_queries
        self.instruction_ids = list(instruction_ids or [])
        self.instruction_weight = instruction_weight
        self._engine: Any = None
        self._store: AdapterStore | None = None

    def warm_up(self) -> None:
        """Load (or reuse) the shared base model and hypernetwork; open the store. Idempotent."""
        if self._store is None and self.store is not None:
            self._store = AdapterStore.resolve(self.store)
        if self._engine is None:
            from d2l_haystack.core import get_engine

            self._engine = get_engine(self.model, self.checkpoint, self.device, self.dtype, self.chunk_tokens,
                                      self.chunking, self.reading_memory)

    @property
    def engine(self) -> Any:
        self.warm_up()
        return self._engine

    def to_dict(self) -> dict[str, Any]:
        callback = serialize_callable(self.streaming_callback) if self.streaming_callback else None
        return default_to_dict(self, model=self.model, checkpoint=self.checkpoint, device=self.device,
                               dtype=self.dtype, chunk_tokens=self.chunk_tokens, chunking=self.chunking,
                               reading_memory=self.reading_memory, store=self.store,
                               generation_kwargs=self.generation_kwargs, streaming_callback=callback,
                               max_context_tokens=self.max_context_tokens, record_queries=self.record_queries,
                               instruction_ids=self.instruction_ids, instruction_weight=self.instruction_weight)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterGenerator:
        params = dict(data.get("init_parameters", {}))
        if isinstance(params.get("store"), dict):
            params["store"] = AdapterStore.from_dict(params["store"])
        if isinstance(params.get("streaming_callback"), str):
            params["streaming_callback"] = deserialize_callable(params["streaming_callback"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    # -- helpers --------------------------------------------------------------------------
    def _gen_kwargs(self, runtime: dict[str, Any] | None) -> dict[str, Any]:
        merged = {"max_new_tokens": 64, **self.generation_kwargs, **(runtime or {})}
        out = {}
        for key, value in merged.items():
            key = _ALIASES.get(key, key)
            if key in _GEN_KEYS:
                out[key] = value
            else:
                logger.warning("AdapterGenerator ignores the unsupported generation kwarg %r", key)
        return out

    def _context(self, documents: list[Document]) -> tuple[str, list[Document]]:
        tokenizer = self._engine.tokenizer
        parts: list[str] = []
        used: list[Document] = []
        total = 0
        for doc in documents:
            text = (doc.content or "").strip()
            if not text:
                continue
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if used and total + n > self.max_context_tokens:
                break
            parts.append(text)
            used.append(doc)
            total += n
        return "\n\n".join(parts), used

    @staticmethod
    def _messages(messages: list[ChatMessage] | str) -> list[dict[str, str]]:
        if isinstance(messages, str):
            return [{"role": "user", "content": messages}]
        out = []
        for msg in messages:
            role = msg.role.value if hasattr(msg.role, "value") else str(msg.role)
            if role not in ("user", "assistant", "system"):
                raise InputError(f"AdapterGenerator cannot use '{role}' messages")
            out.append({"role": role, "content": msg.text or ""})
        return out

    # -- run ------------------------------------------------------------------------------
    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage] | str, adapter_ids: list[str] | None = None,
            documents: list[Document] | None = None, generation_kwargs: dict[str, Any] | None = None,
            streaming_callback: Callable[[StreamingChunk], None] | None = None,
            routing: dict[str, Any] | None = None, adapter_weights: list[float] | None = None,
            instruction_ids: list[str] | None = None) -> dict[str, Any]:
        """Answer the last user message.

        :param messages: the chat history (or one question as a string).
        :param adapter_ids: document ids whose adapters to apply (from the store).
        :param documents: chunks to put in the prompt (RAG / hybrid).
        :param generation_kwargs: ``max_new_tokens`` (alias ``max_tokens``), ``do_sample``,
            ``temperature``, ``top_p``, ``max_chunks`` (most chunk adapters applied per question,
            those the question is about; default 8, 0 = every chunk, no relevance gate), ``gate``
            (apply no adapter when no chunk is relevant to the question; default on, off when
            ``routing`` already chose the adapters).
        :param streaming_callback: overrides the init callback for this call.
        :param routing: the :class:`QueryRouter` decision, copied into the reply meta.
        :param adapter_weights: one weight per adapter (default 1.0 each).
        :param instruction_ids: instructions adapters for this request (default: the init's); they
            apply to every question, whatever the documents' relevance, and are listed in the
            reply's ``instructions`` meta.
        :returns: ``replies``: one assistant message.
        :raises AdapterError: an unknown adapter id, or adapters without a store (a damaged adapter
            is left out of the answer, logged and listed in the reply's ``damaged_adapters`` meta).
        :raises InputError: no user message, an unsupported message role, or ``adapter_weights``
            not one per adapter id.
        """
        chat = self._messages(messages)
        if not chat or chat[-1]["role"] != "user" or not chat[-1]["content"].strip():
            raise InputError("AdapterGenerator needs the last message to be a non-empty user message")
        user_question = chat[-1]["content"]  # before retrieved context is added to it
        self.warm_up()
        engine = self._engine
        requested = list(adapter_ids or [])
        if adapter_weights is not None and len(adapter_weights) != len(requested):
            raise InputError(f"adapter_weights has {len(adapter_weights)} weights for {len(requested)} adapter ids")
        first = dict(zip(requested, adapter_weights or [1.0] * len(requested), strict=True))  # duplicates: once
        standing = [i for i in (self.instruction_ids if instruction_ids is None else instruction_ids)
                    if i not in first]
        first = {**{i: self.instruction_weight for i in standing}, **first}
        weighted = adapter_weights is not None or (bool(standing) and self.instruction_weight != 1.0)
        adapters, weights, damaged = [], [], []
        if first and self._store is None:
            raise AdapterError("AdapterGenerator got adapter_ids but has no store")
        for doc_id, weight in first.items():
            assert self._store is not None
            try:
                adapters.append(self._store.get(doc_id))
                weights.append(float(weight))
            except AdapterError as exc:
                if doc_id not in self._store:
                    raise
                # one damaged file must not fail the question: answer without it, say so, log it
                logger.warning("answering without the damaged adapter of %s (%s); `d2l repair` re-internalizes it",
                               doc_id, exc)
                damaged.append(doc_id)
        ids = [i for i in first if i not in damaged]
        used_docs: list[Document] = []
        if documents:
            context, used_docs = self._context(documents)
            if context:
                chat[-1]["content"] = engine.format.question_text(chat[-1]["content"], context)
        callback = select_streaming_callback(self.streaming_callback, streaming_callback, requires_async=False)
        info = ComponentInfo.from_component(self)

        def on_text(delta: str) -> None:
            if callback is not None:
                callback(StreamingChunk(content=delta, component_info=info, start=False))

        kwargs = self._gen_kwargs(generation_kwargs)
        if routing and routing.get("route") in ("d2l", "hybrid"):
            kwargs.setdefault("gate", False)  # the router already judged the adapters relevant
        question: str | list[dict[str, str]] = chat[0]["content"] if len(chat) == 1 else chat
        result = engine.generate(question, adapters=adapters or None,
                                 weights=weights if weighted and adapters else None,
                                 streaming_callback=on_text if callback is not None else None,
                                 query=user_question, **kwargs)
        finish: Literal["length", "stop"] = (
            "length" if result.num_tokens >= int(kwargs.get("max_new_tokens", 64)) else "stop")
        if callback is not None:
            callback(StreamingChunk(content="", component_info=info, finish_reason=finish,
                                    meta={"seconds": result.seconds}))
        if ids and self.record_queries and self._store is not None:
            self._store.record_query(ids)
        applied_instructions = [i for i in ids if i in standing]
        ids = [i for i in ids if i not in standing]  # the documents' adapters decide the route
        if ids and documents is not None and used_docs:
            route = "hybrid"
        elif ids:
            route = "d2l"
        elif documents is not None:
            route = "rag"
        else:
            route = "base"
        if routing and routing.get("route"):
            route = routing["route"]
        if len(adapters) == len(applied_instructions) and not used_docs:  # no document applied or in the prompt
            route = "base"
        meta: dict[str, Any] = {
            "model": engine.loaded.name, "checkpoint_id": engine.checkpoint_id, "route": route,
            "adapters": ids, "chunks": [{"id": d.id, "source": source_key(d.meta, d.id), "score": d.score}
                                        for d in used_docs],
            "seconds": round(result.seconds, 4), "time_to_first_token": round(result.time_to_first_token, 4),
            "finish_reason": finish, "index": 0,
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.num_tokens,
                      "total_tokens": result.prompt_tokens + result.num_tokens},
        }
        if "chunks_total" in result.meta:  # adapter chunks applied out of those stored, and why
            meta["adapter_chunks"] = {"applied": result.meta["chunks_applied"], "total": result.meta["chunks_total"],
                                      **{k: result.meta[k] for k in ("selection", "relevance", "gated")
                                         if k in result.meta}}
        if applied_instructions:
            meta["instructions"] = applied_instructions
        if damaged:
            meta["damaged_adapters"] = damaged
        if routing:
            meta["routing"] = routing
        return {"replies": [ChatMessage.from_assistant(result.text, meta=meta)]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(self, messages: list[ChatMessage] | str, adapter_ids: list[str] | None = None,
                        documents: list[Document] | None = None, generation_kwargs: dict[str, Any] | None = None,
                        streaming_callback: Callable[[StreamingChunk], None] | None = None,
                        routing: dict[str, Any] | None = None,
                        adapter_weights: list[float] | None = None,
                        instruction_ids: list[str] | None = None) -> dict[str, Any]:
        """:meth:`run` for Haystack's ``AsyncPipeline``: the generation runs in a worker thread, so
        the event loop (a server's other requests) is not blocked; an ``async`` streaming callback
        is awaited on the caller's loop, chunk by chunk."""
        loop = asyncio.get_running_loop()
        callback = streaming_callback or self.streaming_callback
        if callback is not None and inspect.iscoroutinefunction(callback):
            awaited = callback

            def callback(chunk: StreamingChunk) -> None:
                asyncio.run_coroutine_threadsafe(awaited(chunk), loop).result()

        return await asyncio.to_thread(self.run, messages, adapter_ids, documents, generation_kwargs, callback,
                                       routing, adapter_weights, instruction_ids)

