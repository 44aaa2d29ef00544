"""Answer through an OpenAI-compatible multi-LoRA server (vLLM) while this project routes.

:class:`RemoteAdapterGenerator` takes the same inputs as :class:`AdapterGenerator` (the query
router's ``adapter_ids``, ``documents`` and ``routing``) but generates nowhere here: it sends the
question to a server that serves the base model and the workspace's adapters as LoRA modules,
naming the chosen adapter in the request's ``model`` field. Adapters are exported for the server
with ``d2l export-peft ADAPTER EXPORTS/NAME --serving vllm`` (:mod:`d2l_haystack.core.serving`);
the LoRA name of an adapter id is :func:`~d2l_haystack.core.serving.lora_name` of it, and for a
document exported in chunk groups the group the question is about is picked with the export's
chunk keys and the ``query_embedding``. A server applies one LoRA per request: with several
adapters the first (the router's best) is used and the others are listed in the reply meta.

The HTTP side is Haystack's own ``OpenAIChatGenerator`` (one per served name).

Usage example::

    from haystack.dataclasses import ChatMessage
    from d2l_haystack.components import RemoteAdapterGenerator

    generator = RemoteAdapterGenerator(api_base_url="http://gpu-host:8000/v1",
                                       base_model="HuggingFaceTB/SmolLM2-135M-Instruct", exports="exports")
    reply = generator.run(messages=[ChatMessage.from_user("How long is the warranty?")],
                          adapter_ids=["/srv/docs/kettle-manual.md"])["replies"][0]
    reply.text, reply.meta["served_model"]
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.dataclasses import ChatMessage
from haystack.utils import Secret, deserialize_secrets_inplace

from d2l_haystack.components._utils import source_key
from d2l_haystack.core.errors import InputError
from d2l_haystack.core.prompts import CONTEXT_TEMPLATE
from d2l_haystack.core.serving import MANIFEST, lora_name, pick_group, read_manifest


@component
class RemoteAdapterGenerator:
    """A chat generator whose adapters are applied by a remote OpenAI-compatible LoRA server.

    :param api_base_url: the server's OpenAI base URL (``http://host:8000/v1``).
    :param base_model: the served base model's name (the ``model`` of a question without adapter).
    :param exports: the folder of ``d2l export-peft --serving vllm`` exports (``<exports>/<name>/``),
        read for documents exported in chunk groups; ``None``: every adapter is one LoRA.
    :param api_key: the server's key (default: ``D2L_REMOTE_API_KEY`` or ``OPENAI_API_KEY``; a
        server without keys, such as a default ``vllm serve``, needs none).
    :param generation_kwargs: OpenAI request fields (``max_tokens``, ``temperature``...); the
        project's ``max_new_tokens`` is accepted as ``max_tokens``.
    :param max_context_chars: retrieved chunks put in the prompt, at most this many characters.
    :param timeout: seconds per request.
    """

    def __init__(self, api_base_url: str, base_model: str, exports: str | None = None,
                 api_key: Secret = Secret.from_env_var(["D2L_REMOTE_API_KEY", "OPENAI_API_KEY"], strict=False),
                 generation_kwargs: dict[str, Any] | None = None, max_context_chars: int = 6000,
                 timeout: float = 120.0) -> None:
        self.api_base_url = api_base_url.rstrip("/")
        self.base_model = base_model
        self.exports = exports
        self.api_key = api_key
        self.generation_kwargs = dict(generation_kwargs or {})
        self.max_context_chars = max_context_chars
        self.timeout = timeout
        self._generators: dict[str, Any] = {}
        self._manifests: dict[str, dict[str, Any] | None] = {}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, api_base_url=self.api_base_url, base_model=self.base_model,
                               exports=self.exports, api_key=self.api_key.to_dict(),
                               generation_kwargs=self.generation_kwargs, max_context_chars=self.max_context_chars,
                               timeout=self.timeout)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RemoteAdapterGenerator:
        deserialize_secrets_inplace(data.get("init_parameters", {}), keys=["api_key"])
        return default_from_dict(cls, data)

    def warm_up(self) -> None:
        """Nothing to load: the model runs on the server."""

    # -- names ------------------------------------------------------------------------------
    def served_name(self, adapter_id: str, query_embedding: list[float] | None = None) -> str:
        """The ``model`` a request for ``adapter_id`` names (its chunk group's, for a long document)."""
        name = lora_name(adapter_id)
        if self.exports is None:
            return name
        if name not in self._manifests:
            folder = Path(self.exports) / name
            self._manifests[name] = read_manifest(folder) if (folder / MANIFEST).is_file() else None
        manifest = self._manifests[name]
        return pick_group(manifest, query_embedding) if manifest else name

    def _generator(self, model: str) -> Any:
        gen = self._generators.get(model)
        if gen is None:
            from haystack.components.generators.chat import OpenAIChatGenerator

            key = self.api_key.resolve_value() or "EMPTY"  # vLLM without --api-key accepts any
            gen = OpenAIChatGenerator(api_key=Secret.from_token(key), model=model, api_base_url=self.api_base_url,
                                      timeout=self.timeout, max_retries=0)
            self._generators[model] = gen
        return gen

    # -- run --------------------------------------------------------------------------------
    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage] | str, adapter_ids: list[str] | None = None,
            documents: list[Document] | None = None, generation_kwargs: dict[str, Any] | None = None,
            routing: dict[str, Any] | None = None, query_embedding: list[float] | None = None) -> dict[str, Any]:
        """Send the last user message (with retrieved chunks, if any) to the server.

        :raises InputError: no user message.
        """
        chat = [ChatMessage.from_user(messages)] if isinstance(messages, str) else list(messages)
        if not chat or not chat[-1].is_from("user") or not (chat[-1].text or "").strip():
            raise InputError("RemoteAdapterGenerator needs the last message to be a non-empty user message")
        ids = list(dict.fromkeys(adapter_ids or []))
        model = self.served_name(ids[0], query_embedding) if ids else self.base_model
        used: list[Document] = []
        if documents:
            parts, total = [], 0
            for doc in documents:
                text = (doc.content or "").strip()
                if not text or (used and total + len(text) > self.max_context_chars):
                    continue
                parts.append(text)
                used.append(doc)
                total += len(text)
            if parts:
                question = CONTEXT_TEMPLATE.format(context="\n\n".join(parts), question=chat[-1].text)
                chat[-1] = ChatMessage.from_user(question)
        kwargs = {**self.generation_kwargs, **(generation_kwargs or {})}
        if "max_new_tokens" in kwargs:
            kwargs["max_tokens"] = kwargs.pop("max_new_tokens")
        start = time.perf_counter()
        reply = self._generator(model).run(messages=chat, generation_kwargs=kwargs)["replies"][0]
        route = (routing or {}).get("route") or ("hybrid" if ids and used else "d2l" if ids else
                                                 "rag" if used else "base")
        meta = {**reply.meta, "route": route, "served_model": model, "adapters": ids[:1],
                "unapplied_adapters": ids[1:], "seconds": round(time.perf_counter() - start, 4),
                "chunks": [{"id": d.id, "source": source_key(d.meta, d.id), "score": d.score} for d in used]}
        if routing:
            meta["routing"] = routing
        return {"replies": [ChatMessage.from_assistant(reply.text or "", meta=meta)]}

    @component.output_types(replies=list[ChatMessage])
    async def run_async(self, messages: list[ChatMessage] | str, adapter_ids: list[str] | None = None,
                        documents: list[Document] | None = None, generation_kwargs: dict[str, Any] | None = None,
                        routing: dict[str, Any] | None = None,
                        query_embedding: list[float] | None = None) -> dict[str, Any]:
        """:meth:`run` in a worker thread (the request waits on the network, not on the event loop)."""
        return await asyncio.to_thread(self.run, messages, adapter_ids, documents, generation_kwargs, routing,
                                       query_embedding)
