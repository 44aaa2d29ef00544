"""The one place where documents and questions are wrapped in the chat template.

Training and inference both call these functions, so the two cannot drift apart.

* Encoder side: a document chunk is the content of a single user turn, rendered with the base
  model's chat template (no generation prompt). Chunks are cut from the token ids of the whole
  document and re-wrapped: ``prefix_ids + chunk_ids + suffix_ids``.
* Generator side: a question is a single user turn followed by the generation prompt. With a
  document in the prompt (``icl``) or retrieved chunks (``rag``), the user turn is
  :data:`CONTEXT_TEMPLATE` filled with the context and the question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_SENTINEL = "\u2063D2LDOC\u2063"

CONTEXT_TEMPLATE = (
    "Read the document and answer the question.\n\nDocument:\n{context}\n\nQuestion: {question}"
)


@dataclass
class ChatFormat:
    """Token-level chat wrapping for one tokenizer."""

    tokenizer: Any

    def __post_init__(self) -> None:
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False
        )
        head, _, tail = rendered.partition(_SENTINEL)
        self.doc_prefix_ids: list[int] = self.tokenizer(head, add_special_tokens=False)["input_ids"]
        self.doc_suffix_ids: list[int] = self.tokenizer(tail, add_special_tokens=False)["input_ids"]

    def document_ids(self, text: str) -> list[int]:
        """Token ids of a document's text (no template)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def wrap_chunk(self, chunk_ids: list[int]) -> list[int]:
        """Wrap the token ids of one document chunk as a chat user turn (encoder input)."""
        return self.doc_prefix_ids + list(chunk_ids) + self.doc_suffix_ids

    def question_text(self, question: str, context: str | None = None) -> str:
        """The user-turn text of a question, with or without a context."""
        if context is None:
            return question
        return CONTEXT_TEMPLATE.format(context=context, question=question)

    def question_ids(self, question: str, context: str | None = None,
                     history: list[dict[str, str]] | None = None) -> list[int]:
        """Prompt token ids for answering a question (ends with the generation prompt)."""
        messages = list(history or [])
        messages.append({"role": "user", "content": self.question_text(question, context)})
        return self.messages_ids(messages)

    def messages_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt token ids for a list of chat messages (ends with the generation prompt)."""
        rendered = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an assistant answer followed by the end-of-turn token (training target)."""
        ids = list(self.tokenizer(answer, add_special_tokens=False)["input_ids"])
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None else [])


def chunk_token_ids(ids: list[int], chunk_tokens: int) -> list[list[int]]:
    """Split token ids into ``ceil(n / chunk_tokens)`` contiguous chunks of near-equal length."""
    if chunk_tokens <= 0:
        raise ValueError("chunk_tokens must be positive")
    n = len(ids)
    if n == 0:
        return []
    count = -(-n // chunk_tokens)
    base, extra = divmod(n, count)
    chunks, start = [], 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        chunks.append(ids[start:start + size])
        start += size
    return chunks
