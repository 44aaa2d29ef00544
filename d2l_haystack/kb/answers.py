"""What a workspace query sends into its pipeline and what it makes of the pipeline's outputs.

Pure functions around :func:`~d2l_haystack.kb.pipelines.build_query_pipeline`: the workspace runs
the pipeline under its commit gate and counts the query; this module turns a question into the
pipeline's inputs and the outputs into a :class:`QueryResult`.

Usage example::

    from d2l_haystack.kb.answers import pipeline_inputs

    data = pipeline_inputs("What is the warranty period?", max_new_tokens=64)
    result = pipe.run(data, include_outputs_from={"query_router", "retriever"})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from d2l_haystack.components.query_router import chunk_similarity
from d2l_haystack.core.errors import InputError

GENERATORS = ("d2l_generator", "rag_generator")
"""The query pipeline's generators (each gets the generation settings and the streaming callback)."""


@dataclass
class QueryResult:
    """An answer with how it was produced."""

    question: str
    answer: str
    route: str
    reason: str
    adapters: list[dict[str, Any]] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    generation_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    explanation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def used_sources(self) -> set[str]:
        """The documents the answer used: adapters applied and chunks retrieved."""
        return {a["id"] for a in self.adapters} | {c["source"] for c in self.chunks}


def pipeline_inputs(question: str, *, max_new_tokens: int, mode: str | None = None,
                    streaming_callback: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """The query pipeline's inputs for one question.

    :param mode: force ``d2l``, ``rag`` or ``hybrid`` (``None``: the query router decides).
    :raises InputError: an empty question.
    """
    if not isinstance(question, str) or not question.strip():
        raise InputError("question is empty")
    data: dict[str, Any] = {"query_embedder": {"text": question}, "query_router": {"query": question}}
    if mode:
        data["query_router"]["mode"] = mode
    for name in GENERATORS:
        data[name] = {"generation_kwargs": {"max_new_tokens": max_new_tokens}}
        if streaming_callback is not None:
            data[name]["streaming_callback"] = streaming_callback
    return data


def query_result(question: str, outputs: dict[str, Any], records: dict[str, dict[str, Any]], seconds: float,
                 explanation: dict[str, Any] | None = None) -> QueryResult:
    """The answer in ``outputs`` (the pipeline's, with the query router's), adapters named by
    their records' paths and titles."""
    reply = outputs["answer_joiner"]["value"][0]
    routing = outputs["query_router"]["routing"]
    adapters = []
    for a in routing.get("adapters", []):
        rec = records.get(a["id"])
        adapters.append({**a, "path": rec["path"] if rec else a["id"], "title": rec.get("title", "") if rec else ""})
    return QueryResult(question=question, answer=reply.text or "",
                       route=reply.meta.get("route", routing["route"]),  # "base": nothing applied or retrieved
                       reason=routing["reason"], adapters=adapters,
                       chunks=[{**c, "path": c["source"]} for c in reply.meta.get("chunks", [])],
                       seconds=round(seconds, 4), generation_seconds=reply.meta.get("seconds", 0.0),
                       meta=dict(reply.meta), explanation=explanation)


def explain(outputs: dict[str, Any], question_embedding: Any) -> dict[str, Any]:
    """The router's scores for every candidate and the retrieved chunks with their similarity."""
    emb = np.asarray(question_embedding, dtype=np.float32)
    retrieved = outputs.get("retriever", {}).get("documents", [])
    return {**outputs["query_router"]["routing"],
            "retrieved": [{"source": d.meta.get("file_path"), "similarity": chunk_similarity(d, emb),
                           "text": (d.content or "")[:160]} for d in retrieved]}
