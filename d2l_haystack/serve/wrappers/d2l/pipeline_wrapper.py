"""Hayhooks wrapper ``d2l``: ask the served workspace (``POST /d2l/run``, and the OpenAI chat
endpoint with ``model="d2l"``). The answer's route, adapters and chunks travel with it: in the
``/d2l/run`` response, and in the chat completion's ``d2l`` field."""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator
from typing import Any

from hayhooks import BasePipelineWrapper

from d2l_haystack.serve import errors, state


class PipelineWrapper(BasePipelineWrapper):
    def setup(self) -> None:
        self.workspace = state.workspace()
        self.pipeline = self.workspace.query_pipeline()

    def run_api(self, question: str, mode: str | None = None, max_new_tokens: int | None = None,
                explain: bool = False) -> dict:
        """Answer a question from the knowledge base (adapter, RAG or hybrid, as the router decides).

        :param question: the question.
        :param mode: force ``d2l``, ``rag`` or ``hybrid``.
        :param max_new_tokens: the answer length limit.
        :param explain: include the router's scores and the retrieved chunks.
        """
        with errors.as_http():
            return self.workspace.query(question, explain=explain, mode=mode,
                                        max_new_tokens=max_new_tokens).to_dict()

    def run_chat_completion(self, model: str, messages: list[dict], body: dict) -> Any:
        from fastapi_openai_compat import ChatCompletion

        question = errors.last_user_message(messages)
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if body.get("stream"):
            return self._stream(question, limit)
        with errors.as_http():
            answer = self.workspace.query(question, max_new_tokens=limit)
        usage = answer.meta.get("usage") or {}
        return ChatCompletion(
            id=f"d2l-{uuid.uuid4()}", object="chat.completion", created=int(time.time()), model=model,
            choices=[{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                      "finish_reason": answer.meta.get("finish_reason", "stop")}],
            usage={k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
            d2l=_route_info(answer))

    def _stream(self, question: str, limit: int | None) -> Generator[Any, None, None]:
        """Tokens as they are generated (the generation runs in a thread; chunks pass a queue)."""
        import queue
        import threading

        from haystack.dataclasses import StreamingChunk

        chunks: queue.Queue[Any] = queue.Queue()
        done = object()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["answer"] = self.workspace.query(question, max_new_tokens=limit,
                                                     streaming_callback=lambda c: chunks.put(c.content or ""))
            except Exception as exc:  # noqa: BLE001 - reported at the end of the stream
                box["error"] = exc
            finally:
                chunks.put(done)

        threading.Thread(target=work, daemon=True).start()
        while (item := chunks.get()) is not done:
            if item:
                yield StreamingChunk(content=item)
        if "error" in box:
            raise box["error"]
        yield StreamingChunk(content="", finish_reason="stop", meta={"d2l": _route_info(box["answer"])})


def _route_info(answer: Any) -> dict:
    return {"route": answer.route, "reason": answer.reason, "adapters": answer.adapters, "chunks": answer.chunks,
            "seconds": answer.seconds}
