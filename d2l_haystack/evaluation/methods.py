"""Ways of answering a question about a document, behind ``d2l eval`` and ``d2l bench``.

A method implements :class:`Method`: ``prepare`` a document once, ``answer`` questions about it,
``release`` it. ``base``, ``icl``, ``d2l`` and ``d2l-all`` live here (core only);
:mod:`.haystack_methods` registers ``rag``, ``hybrid`` and ``routed`` through
:func:`register_method`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core.engine import D2LEngine, GenerationResult


class Method:
    """One way of answering: ``prepare`` a document once, then ``answer`` questions about it."""

    name = "method"

    def __init__(self, engine: D2LEngine, max_new_tokens: int = 32) -> None:
        self.engine = engine
        self.max_new_tokens = max_new_tokens
        self.truncated = 0

    def prepare(self, doc_id: str, text: str) -> float:
        """Index or internalize a document; returns seconds spent (0 when nothing to do)."""
        return 0.0

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        raise NotImplementedError

    def release(self, doc_id: str) -> None:
        """Forget a document's prepared state (keeps memory bounded over many documents)."""


class BaseMethod(Method):
    name = "base"

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        return self.engine.generate(question, max_new_tokens=self.max_new_tokens)


class ICLMethod(Method):
    """The whole document in the prompt, truncated to the window (counted in ``truncated``)."""

    name = "icl"

    def __init__(self, engine: D2LEngine, max_new_tokens: int = 32) -> None:
        super().__init__(engine, max_new_tokens)
        self._doc_ids: dict[str, tuple[str, list[int]]] = {}  # tokenized once per document, not per question

    def fit_context(self, text: str, question: str, doc_id: str | None = None) -> tuple[str, bool]:
        window = int(getattr(self.engine.model.config, "max_position_embeddings", 8192))
        overhead = len(self.engine.prompt_ids(question, context="")) + self.max_new_tokens + 8
        budget = window - overhead
        cached = self._doc_ids.get(doc_id) if doc_id is not None else None
        if cached is not None and cached[0] == text:  # an edited document is tokenized again
            ids = cached[1]
        else:
            ids = self.engine.format.document_ids(text)
            if doc_id is not None:
                self._doc_ids[doc_id] = (text, ids)
        if len(ids) <= budget:
            return text, False
        return self.engine.tokenizer.decode(ids[:budget]), True

    def release(self, doc_id: str) -> None:
        self._doc_ids.pop(doc_id, None)

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        context, cut = self.fit_context(text, question, doc_id)
        self.truncated += int(cut)
        result = self.engine.generate(question, context=context, max_new_tokens=self.max_new_tokens)
        result.meta["truncated"] = cut
        return result


class D2LMethod(Method):
    """The internalized adapter, no document in the prompt, as the engine applies it by default:
    only the chunks a question is about, none when no chunk is relevant (chunk keys)."""

    name = "d2l"

    def __init__(self, engine: D2LEngine, max_new_tokens: int = 32) -> None:
        super().__init__(engine, max_new_tokens)
        self.adapters: dict[str, Any] = {}

    def prepare(self, doc_id: str, text: str) -> float:
        if doc_id in self.adapters:
            return 0.0
        t = time.perf_counter()
        self.adapters[doc_id] = self.engine.internalize(text, progress=False)
        return time.perf_counter() - t

    max_chunks: int | None = None
    """Chunk adapters applied per question (``None``: the engine's default, 8; 0: all, no gate)."""

    def answer(self, doc_id: str, text: str, question: str) -> GenerationResult:
        return self.engine.generate(question, adapters=self.adapters[doc_id], max_new_tokens=self.max_new_tokens,
                                    max_chunks=self.max_chunks)

    def release(self, doc_id: str) -> None:
        self.adapters.pop(doc_id, None)


class D2LAllChunksMethod(D2LMethod):
    """``d2l`` applying every chunk adapter of the document to every question: the published
    concatenation, without chunk selection or relevance gate (the hypernetwork alone)."""

    name = "d2l-all"
    max_chunks = 0


MethodFactory = Callable[[D2LEngine, int], Method]
METHODS: dict[str, MethodFactory] = {"base": BaseMethod, "icl": ICLMethod, "d2l": D2LMethod,
                                     "d2l-all": D2LAllChunksMethod}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make another method (``rag``, ``routed``...) available to :func:`run_eval`."""
    METHODS[name] = factory


