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

from .textio import CHUNKINGS, split_text_sentences

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
        # The end-of-turn token is read from the template (the token right after an assistant
        # message), not from ``tokenizer.eos_token``: some converters set eos to another token
        # (transformers 5.17 reads SmolLM2's GGUF with eos = <|im_start|>).
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
        )
        after = rendered.partition(_SENTINEL)[2]
        after_ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        self.end_of_turn_id: int | None = after_ids[0] if after_ids else self.tokenizer.eos_token_id
        stops = {self.end_of_turn_id, self.tokenizer.eos_token_id}
        # the token that opens a new turn also ends the answer (e.g. <|im_start|>)
        if self.doc_prefix_ids and self.doc_prefix_ids[0] in set(self.tokenizer.all_special_ids):
            stops.add(self.doc_prefix_ids[0])
        self.stop_ids: list[int] = sorted(i for i in stops if i is not None)

    @property
    def pad_id(self) -> int:
        """The id that pads a batch: the tokenizer's pad token, else the first stop token."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids[0]

    def until_stop(self, tokens: list[int]) -> list[int]:
        """Generated ``tokens`` up to and including the first stop token (what follows it in a
        batch is padding); all of them when none stops."""
        stops = set(self.stop_ids)
        end = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        return tokens[:end]

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
        eot = self.end_of_turn_id
        return ids + ([eot] if eot is not None else [])


def system_messages(system: str, question: str) -> list[dict[str, str]]:
    """A question asked under a system prompt, as chat messages (the reference an instructions
    adapter is trained and measured against)."""
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def chunk_text_ids(fmt: ChatFormat, text: str, chunking: str, chunk_tokens: int) -> list[list[int]]:
    """The token ids of each chunk of ``text`` (no template), as the engine and the trainer cut it.

    ``"tokens"``: near-equal chunks of at most ``chunk_tokens`` tokens; ``"sentences"``: one chunk per
    sentence (:func:`.textio.split_text_sentences`; a sentence longer than ``chunk_tokens`` is cut
    further); ``"auto"``: sentences for a document of at most ``chunk_tokens`` tokens, else tokens.
    """
    if chunking not in CHUNKINGS:
        raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {chunking!r}")
    if chunking != "sentences":
        ids = fmt.document_ids(text)
        if chunking == "tokens" or len(ids) > chunk_tokens:
            return chunk_token_ids(ids, chunk_tokens)
    return [c for s in split_text_sentences(text) for c in chunk_token_ids(fmt.document_ids(s), chunk_tokens)]


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
