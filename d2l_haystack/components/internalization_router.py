"""Decide per document, at indexing time, between internalizing (D2L) and indexing (RAG)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from d2l_haystack.core.models import DEFAULT_MODEL

from ._utils import get_tokenizer, source_key

logger = logging.getLogger(__name__)

DAY = 86400.0
_D2L_WORDS = {"d2l", "internalize", "adapter", "lora"}
_RAG_WORDS = {"rag", "index", "retrieve"}


def human_duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.0 h``, ``12 d``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.0f} d"


def parse_route(value: Any) -> str | None:
    """``"d2l"``/``"rag"`` for an explicit override value, ``None`` for none/``"auto"``."""
    if value is None:
        return None
    word = str(value).strip().lower()
    if word in _D2L_WORDS:
        return "d2l"
    if word in _RAG_WORDS:
        return "rag"
    return None


@component
class InternalizationRouter:
    """Route each document to ``internalize`` (a D2L adapter) or ``index`` (RAG chunks).

    The policy, in order (the first rule that applies wins; every decision is explained in
    ``meta["d2l_route_reason"]``, and ``meta["d2l_route"]`` is ``"d2l"`` or ``"rag"``):

    1. **Override**: ``meta["d2l_route_override"]`` or ``meta["d2l_route"]`` (or the history's
       ``route_override``) set to ``"d2l"``/``"rag"``.
    2. **Size**: over ``max_tokens`` tokens -> RAG. Chunk keys let an adapter of a long document
       answer from the right chunk (41k-token needle: contains 0.80 with the shipped checkpoint),
       but retrieval found the needle at every length in the benchmark and internalizing grows
       with the length (about 38 s for 41k tokens on 2 CPU cores), so long documents default to
       RAG; raise ``max_tokens`` to internalize them.
    3. **Volatility**: ``volatile_changes`` content changes within ``volatile_window_seconds`` -> RAG.
    4. **Cost model**: internalizing costs about
       ``internalize_overhead_seconds + internalize_seconds_per_1k_tokens * tokens / 1000`` once
       (the default 3.5 s per 1,000 tokens is the shipped checkpoint with its reading memory on the
       2-core CPU: 1,000 tokens 3.6 s, 4,000 tokens 13.8 s, ``benchmarks/bench_memory.py``; without
       the memory about 1.0 s);
       each query answered from the adapter instead of retrieved chunks saves about
       ``rag_seconds_per_1k_tokens * min(tokens, rag_context_tokens) / 1000`` (the chunks no
       longer sit in the prompt). The expected number of queries before the next change is
       ``query rate * change interval``: the rate blends the observed query count with
       ``prior_queries_per_day`` (weight ``prior_days``); the interval is the observed mean
       interval between changes once there are ``min_changes_for_history`` of them, else
       ``prior_change_interval_days`` (or the document's age, if longer). Internalize when
       ``expected queries * saving >= cost_margin * cost`` and at least
       ``min_expected_queries`` queries are expected.

    History comes from the ``history`` input (``{doc_id: {"first_seen", "changes", "queries"}}``,
    as kept by :class:`~d2l_haystack.kb.workspace.Workspace`) or, when ``workspace`` is set, from the
    workspace's file records. Documents are identified by ``meta["d2l_doc_id"]``, else
    ``meta["file_path"]``, else their id.

    Usage example::

        from haystack import Document
        from d2l_haystack.components import InternalizationRouter

        router = InternalizationRouter(model=None)          # None: estimate tokens, no tokenizer
        out = router.run(documents=[Document(content="Warranty: 3 years.", meta={"file_path": "m.md"})])
        print(out["internalize"][0].meta["d2l_route_reason"])

    :param workspace: optional workspace folder to read change history and query counts from.
    :param model: base model whose tokenizer counts tokens (``None``: about 4 characters per token).
    """

    def __init__(self, workspace: str | None = None, model: str | None = DEFAULT_MODEL,
                 max_tokens: int = 4096, volatile_changes: int = 3, volatile_window_seconds: float = DAY,
                 min_changes_for_history: int = 2, prior_change_interval_days: float = 30.0,
                 prior_queries_per_day: float = 2.0, prior_days: float = 1.0,
                 internalize_overhead_seconds: float = 0.2, internalize_seconds_per_1k_tokens: float = 3.5,
                 rag_seconds_per_1k_tokens: float = 2.0, rag_context_tokens: int = 600,
                 cost_margin: float = 1.0, min_expected_queries: float = 1.0) -> None:
        self.workspace = workspace
        self.model = model
        self.max_tokens = max_tokens
        self.volatile_changes = volatile_changes
        self.volatile_window_seconds = volatile_window_seconds
        self.min_changes_for_history = min_changes_for_history
        self.prior_change_interval_days = prior_change_interval_days
        self.prior_queries_per_day = prior_queries_per_day
        self.prior_days = prior_days
        self.internalize_overhead_seconds = internalize_overhead_seconds
        self.internalize_seconds_per_1k_tokens = internalize_seconds_per_1k_tokens
        self.rag_seconds_per_1k_tokens = rag_seconds_per_1k_tokens
        self.rag_context_tokens = rag_context_tokens
        self.cost_margin = cost_margin
        self.min_expected_queries = min_expected_queries
        self._tokenizer: Any = None

    def warm_up(self) -> None:
        """Load the tokenizer used to count tokens (idempotent)."""
        if self._tokenizer is None and self.model:
            self._tokenizer = get_tokenizer(self.model)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, **self.init_parameters())

    def init_parameters(self) -> dict[str, Any]:
        """The init parameters (all thresholds) as a plain dict."""
        names = ("workspace", "model", "max_tokens", "volatile_changes", "volatile_window_seconds",
                 "min_changes_for_history", "prior_change_interval_days", "prior_queries_per_day", "prior_days",
                 "internalize_overhead_seconds", "internalize_seconds_per_1k_tokens", "rag_seconds_per_1k_tokens",
                 "rag_context_tokens", "cost_margin", "min_expected_queries")
        return {n: getattr(self, n) for n in names}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InternalizationRouter:
        return default_from_dict(cls, data)

    # -- policy ---------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        self.warm_up()
        if self._tokenizer is None:
            return max(1, len(text) // 4)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _load_history(self) -> dict[str, dict[str, Any]]:
        if not self.workspace:
            return {}
        path = Path(self.workspace).expanduser() / "files.json"
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")).get("files", {}))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("cannot read workspace history %s: %s", path, exc)
            return {}

    def decide(self, tokens: int, record: dict[str, Any] | None = None, override: Any = None,
               now: float | None = None) -> tuple[str, str, dict[str, Any]]:
        """The policy for one document: ``(route, reason, numbers)`` (see the class docstring)."""
        now = time.time() if now is None else now
        record = record or {}
        numbers: dict[str, Any] = {"tokens": tokens}
        forced = parse_route(override) or parse_route(record.get("route_override"))
        if forced:
            return forced, f"override: route set to '{forced}' explicitly", numbers
        if tokens > self.max_tokens:
            return "rag", (f"too long for an adapter: {tokens:,} tokens > max_tokens {self.max_tokens:,} "
                           f"(retrieval is the more accurate memory for long documents) -> RAG"), numbers
        changes = sorted(float(t) for t in record.get("changes", []) or [])
        first_seen = float(record.get("first_seen") or (changes[0] if changes else now))
        mods = max(0, len(changes) - 1)
        recent = [t for t in changes[1:] if now - t <= self.volatile_window_seconds]
        numbers.update(modifications=mods, recent_modifications=len(recent))
        if self.volatile_changes > 0 and len(recent) >= self.volatile_changes:
            return "rag", (f"volatile: changed {len(recent)} times in the last "
                           f"{human_duration(self.volatile_window_seconds)} -> RAG"), numbers
        age = max(0.0, now - first_seen)
        if mods >= self.min_changes_for_history:
            interval = max(1e-3, (changes[-1] - changes[0]) / mods)
            interval_text = f"changed {mods} times in {human_duration(changes[-1] - changes[0])} " \
                            f"(every ~{human_duration(interval)})"
        else:
            interval = max(self.prior_change_interval_days * DAY, age)
            interval_text = f"stable (assume a change every ~{human_duration(interval)})"
        queries = int(record.get("queries", 0) or 0)
        rate = (queries + self.prior_queries_per_day * self.prior_days) / (age / DAY + self.prior_days)
        expected = rate * interval / DAY
        cost = self.internalize_overhead_seconds + self.internalize_seconds_per_1k_tokens * tokens / 1000
        saving = self.rag_seconds_per_1k_tokens * min(tokens, self.rag_context_tokens) / 1000
        numbers.update(queries=queries, queries_per_day=round(rate, 4), change_interval_s=round(interval, 3),
                       expected_queries=round(expected, 4), internalize_s=round(cost, 3),
                       saving_per_query_s=round(saving, 3))
        worth = expected * saving >= self.cost_margin * cost and expected >= self.min_expected_queries
        verdict = "D2L" if worth else "RAG"
        reason = (f"cost model: {interval_text}, {rate:.1f} queries/day -> ~{expected:,.2g} queries before the "
                  f"next change; internalizing costs ~{cost:.2f} s once, saves ~{saving:.2f} s per query -> "
                  f"{verdict}")
        return ("d2l" if worth else "rag"), reason, numbers

    # -- run ------------------------------------------------------------------------------
    @component.output_types(internalize=list[Document], index=list[Document])
    def run(self, documents: list[Document], history: dict[str, Any] | None = None) -> dict[str, list[Document]]:
        """Route ``documents``.

        :param documents: source documents (not chunks).
        :param history: per-document history keyed by document id (overrides the workspace's).
        :returns: ``internalize`` (for :class:`DocToLoRAConverter`) and ``index`` (for the RAG
            branch); every document carries ``meta["d2l_route"]``, ``meta["d2l_route_reason"]``
            and ``meta["d2l_num_tokens"]``.
        """
        records = history if history is not None else self._load_history()
        now = time.time()
        out: dict[str, list[Document]] = {"internalize": [], "index": []}
        for doc in documents:
            key = source_key(doc.meta, doc.id)
            text = doc.content or ""
            tokens = int(doc.meta.get("d2l_num_tokens") or self.count_tokens(text))
            override = doc.meta.get("d2l_route_override", doc.meta.get("d2l_route"))
            route, reason, numbers = self.decide(tokens, records.get(key), override, now)
            meta = {**doc.meta, "d2l_route": route, "d2l_route_reason": reason, "d2l_num_tokens": tokens,
                    "d2l_expected_queries": numbers.get("expected_queries")}
            out["internalize" if route == "d2l" else "index"].append(replace(doc, meta=meta))
        return out
