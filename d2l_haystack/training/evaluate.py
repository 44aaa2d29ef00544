"""Evaluation: QA-case files, SQuAD-style metrics and the method runner behind ``d2l eval``.

Case format (JSON lines)::

    {"id": str, "document": str, "question": str, "answers": [str, ...], "doc_id": str (optional)}

Cases sharing a ``doc_id`` (or identical document text) share one document, internalized or
indexed once. Methods implement :class:`Method`; ``base``, ``icl`` and ``d2l`` live here (core
only); the Haystack layer registers ``rag``, ``routed`` and ``hybrid`` through
:func:`register_method`.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.engine import D2LEngine, GenerationResult
from ..core.errors import InputError
from ..core.textio import content_hash


# -- metrics (the standard SQuAD v1.1 normalisation) ---------------------------------------------
def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction).split()
    best = 0.0
    for a in answers:
        gold = normalize_answer(a).split()
        common = Counter(pred) & Counter(gold)
        same = sum(common.values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        if same == 0:
            continue
        precision, recall = same / len(pred), same / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains(prediction: str, answers: list[str]) -> float:
    p = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(a) and f" {normalize_answer(a)} " in p for a in answers))


# -- cases -----------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    document: str
    question: str
    answers: list[str]
    doc_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.doc_id:
            self.doc_id = content_hash(self.document)[:16]


def load_cases(path: str | Path, limit: int | None = None) -> list[Case]:
    """Read a JSONL case file (clear errors naming the line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such case file")
    cases: list[Case] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            cases.append(Case(id=str(row["id"]), document=row["document"], question=row["question"],
                              answers=list(row["answers"]), doc_id=str(row.get("doc_id") or ""),
                              meta=row.get("meta", {})))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{n}: not a valid case ({exc})") from exc
        if limit and len(cases) >= limit:
            break
    return cases


def write_cases(cases: Iterable[dict[str, Any]], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w") as fh:
        for c in cases:
            fh.write(json.dumps(c) + "\n")
            n += 1
    return n


# -- methods ---------------------------------------------------------------------------------------
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


def available_methods() -> list[str]:
    try:  # the Haystack layer registers rag / routed / hybrid when installed
        import d2l_haystack.eval_methods  # noqa: F401
    except ImportError:
        pass
    return list(METHODS)


def run_eval(engine: D2LEngine, cases: list[Case], methods: list[str], max_new_tokens: int = 32,
             progress: bool = True) -> dict[str, Any]:
    """Run every method on every case; documents are prepared once per method."""
    from tqdm.auto import tqdm

    known = available_methods()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise InputError(f"unknown method(s) {unknown}; available: {known}")
    by_doc: dict[str, list[Case]] = {}
    for c in cases:
        by_doc.setdefault(c.doc_id, []).append(c)
    rows: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    bar = tqdm(total=len(cases) * len(methods), desc="eval", unit="q", disable=not progress)
    for name in methods:
        method = METHODS[name](engine, max_new_tokens)
        prep_seconds: list[float] = []
        scores: dict[str, list[float]] = {"exact_match": [], "f1": [], "contains": [], "seconds": [], "ttft": []}
        gated: list[bool] = []
        for doc_id, doc_cases in by_doc.items():
            prep_seconds.append(method.prepare(doc_id, doc_cases[0].document))
            for c in doc_cases:
                r = method.answer(doc_id, c.document, c.question)
                em, f1, ct = exact_match(r.text, c.answers), f1_score(r.text, c.answers), contains(r.text, c.answers)
                for k, v in (("exact_match", em), ("f1", f1), ("contains", ct), ("seconds", r.seconds),
                             ("ttft", r.time_to_first_token)):
                    scores[k].append(v)
                if "gated" in r.meta:
                    gated.append(bool(r.meta["gated"]))
                rows.append({"id": c.id, "method": name, "doc_id": doc_id, "question": c.question,
                             "answers": c.answers, "reply": r.text, "exact_match": em, "f1": f1, "contains": ct,
                             "seconds": round(r.seconds, 4), "meta": {**c.meta, **r.meta}})
                bar.update(1)
            method.release(doc_id)
        results[name] = {
            "n": len(scores["f1"]),
            "exact_match": float(np.mean(scores["exact_match"])) if scores["f1"] else 0.0,
            "f1": float(np.mean(scores["f1"])) if scores["f1"] else 0.0,
            "contains": float(np.mean(scores["contains"])) if scores["f1"] else 0.0,
            "seconds_per_query": float(np.mean(scores["seconds"])) if scores["f1"] else 0.0,
            "time_to_first_token": float(np.mean(scores["ttft"])) if scores["f1"] else 0.0,
            "internalize_seconds": float(np.mean([s for s in prep_seconds if s > 0])) if any(prep_seconds) else 0.0,
            "documents": len(by_doc),
        }
        if isinstance(method, ICLMethod):
            results[name]["truncated"] = method.truncated
        if gated:  # questions that got no adapter because no chunk was relevant to them
            results[name]["gated"] = sum(gated)
    bar.close()
    return {"results": results, "cases": rows,
            "engine": engine.describe(portable=True), "max_new_tokens": max_new_tokens}


def format_table(results: dict[str, Any]) -> str:
    head = f"{'method':<8} {'n':>5} {'EM':>6} {'F1':>6} {'contains':>8} {'s/query':>8} {'intern. s':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        lines.append(f"{name:<8} {r['n']:>5} {r['exact_match']:>6.3f} {r['f1']:>6.3f} {r['contains']:>8.3f} "
                     f"{r['seconds_per_query']:>8.3f} {r['internalize_seconds']:>9.3f}"
                     + (f"  ({r['truncated']} truncated)" if r.get("truncated") else "")
                     + (f"  ({r['gated']} without adapter: not relevant)" if r.get("gated") else ""))
    return "\n".join(lines)
