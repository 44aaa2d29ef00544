"""The benchmark's workloads, built only from evaluation data never used in training.

* ``squad_paragraphs`` / ``squad_articles`` (reading comprehension): SQuAD v1.1 validation
  articles (``d2l_haystack/data/splits.json``), either one paragraph per document or a whole
  article per document (5k-12k tokens here, hundreds of questions each; a few are asked).
* ``niah`` (needle in a haystack): held-out public-domain speeches as filler, one
  "special magic number" needle per document, on a grid of lengths and depths.
* ``mixed`` (a changing knowledge base): documents of 1-4 consecutive validation paragraphs;
  a stream of queries whose documents are drawn with a Zipf skew (a few documents get most
  questions); some documents are edited between queries (an "Update:" sentence with a new fact
  is appended, and later questions about that document often ask for the newest fact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from d2l_haystack.evaluation.cases import niah_cases, squad_cases
from d2l_haystack.training import data as D


@dataclass
class Question:
    question: str
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchDoc:
    id: str
    text: str
    questions: list[Question]
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0


@dataclass
class Workload:
    """Documents with their questions (``per_document``) or a stream of events (``stream``)."""

    name: str
    kind: str  # per_document | stream
    docs: list[BenchDoc]
    primary_metric: str
    description: str
    events: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_questions(self) -> int:
        if self.kind == "stream":
            return sum(e["kind"] == "query" for e in self.events)
        return sum(len(d.questions) for d in self.docs)

    def describe(self) -> dict[str, Any]:
        toks = [d.tokens for d in self.docs]
        out = {"name": self.name, "kind": self.kind, "description": self.description,
               "primary_metric": self.primary_metric, "documents": len(self.docs),
               "questions": self.num_questions, "min_tokens": min(toks) if toks else 0,
               "max_tokens": max(toks) if toks else 0, "settings": self.settings}
        if self.kind == "stream":
            out["edits"] = sum(e["kind"] == "edit" for e in self.events)
        return out


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _group(cases: list[dict[str, Any]], tokenizer: Any, meta_keys: tuple[str, ...] = ()) -> list[BenchDoc]:
    docs: dict[str, BenchDoc] = {}
    for c in cases:
        doc = docs.get(c["doc_id"])
        if doc is None:
            meta = {k: c.get("meta", {}).get(k) for k in meta_keys}
            doc = docs[c["doc_id"]] = BenchDoc(c["doc_id"], c["document"], [], meta, _count(tokenizer, c["document"]))
        doc.questions.append(Question(c["question"], list(c["answers"]), dict(c.get("meta", {}))))
    return list(docs.values())


def squad_paragraph_workload(tokenizer: Any, n_docs: int, questions_per_doc: int, seed: int = 0) -> Workload:
    cases = squad_cases("paragraph", max_docs=n_docs, questions_per_doc=questions_per_doc, seed=seed)
    docs = _group(cases, tokenizer)
    for d in docs:
        d.meta["unit"] = "paragraph"
    return Workload("squad_paragraphs", "per_document", docs, "f1",
                    "SQuAD v1.1 validation paragraphs, one paragraph per document",
                    settings={"documents": n_docs, "questions_per_doc": questions_per_doc, "seed": seed})


def squad_article_workload(tokenizer: Any, n_docs: int, questions_per_doc: int, seed: int = 0) -> Workload:
    """Whole articles as documents; ``n_docs`` spread evenly over the articles sorted by length."""
    cases = squad_cases("article", questions_per_doc=questions_per_doc, seed=seed)
    docs = sorted(_group(cases, tokenizer), key=lambda d: d.tokens)
    if n_docs < len(docs):
        if n_docs == 1:
            picks = [0]
        else:
            picks = sorted({round(i * (len(docs) - 1) / (n_docs - 1)) for i in range(n_docs)})
        docs = [docs[i] for i in picks]
    for d in docs:
        d.meta["unit"] = "article"
    return Workload("squad_articles", "per_document", docs, "f1",
                    "SQuAD v1.1 validation articles, a whole article per document",
                    settings={"documents": n_docs, "questions_per_doc": questions_per_doc, "seed": seed})


def niah_workload(tokenizer: Any, lengths: list[int], depths: list[float], per_cell: int = 1,
                  seed: int = 1234) -> Workload:
    cases = niah_cases(tokenizer, lengths, depths, per_cell=per_cell, filler="natural", template="magic", seed=seed)
    docs = _group(cases, tokenizer, ("length", "depth"))
    return Workload("niah", "per_document", docs, "contains",
                    "needle in a haystack: held-out speeches as filler, one 'special magic number' needle",
                    settings={"lengths": lengths, "depths": depths, "per_cell": per_cell, "seed": seed})


def zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def mixed_workload(tokenizer: Any, n_docs: int, n_queries: int, volatile_docs: int, edits_per_volatile: int,
                   skew: float = 1.1, update_question_prob: float = 0.5, seed: int = 7) -> Workload:
    """A changing knowledge base with a skewed query stream (see the module docstring)."""
    rng = np.random.default_rng(seed)
    articles = D.load_squad("validation")
    order = rng.permutation(len(articles))
    docs: list[BenchDoc] = []
    for i in range(n_docs):
        art = articles[int(order[i % len(articles)])]
        paras = [p for p in art["paragraphs"] if any(q["answers"] for q in p["qas"])]
        k = int(rng.choice([1, 2, 4]))
        start = int(rng.integers(max(1, len(paras) - k + 1)))
        chosen = paras[start:start + k]
        text = "\n\n".join(p["context"] for p in chosen)
        qs = [Question(q["question"], [a["text"] for a in q["answers"]], {"about": "squad"})
              for p in chosen for q in p["qas"] if q["answers"]]
        doc_id = f"mixed-{i}-{art['title']}-{start}"
        docs.append(BenchDoc(doc_id, text, qs, {"unit": "mixed", "paragraphs": k}, _count(tokenizer, text)))
    popularity = rng.permutation(n_docs)  # popularity[r] = the doc of rank r
    weights = np.zeros(n_docs)
    weights[popularity] = zipf_weights(n_docs, skew)
    volatile = [int(x) for x in rng.choice(n_docs, size=min(volatile_docs, n_docs), replace=False)]
    # edits at random points of the stream (never before the first query)
    edit_slots = sorted((int(rng.integers(1, max(2, n_queries))), d) for d in volatile
                        for _ in range(edits_per_volatile))
    texts = {d.id: d.text for d in docs}
    latest: dict[str, Question] = {}
    versions = {d.id: 0 for d in docs}
    events: list[dict[str, Any]] = []
    slot = 0
    for qi in range(n_queries):
        while slot < len(edit_slots) and edit_slots[slot][0] <= qi:
            doc = docs[edit_slots[slot][1]]
            sentence, questions, answer, _ = D.make_fact(rng)
            versions[doc.id] += 1
            texts[doc.id] = texts[doc.id] + f"\n\nUpdate {versions[doc.id]}: {sentence}"
            latest[doc.id] = Question(questions[0], [answer], {"about": "update", "version": versions[doc.id]})
            events.append({"kind": "edit", "doc": doc.id, "text": texts[doc.id], "version": versions[doc.id],
                           "tokens": _count(tokenizer, texts[doc.id])})
            slot += 1
        doc = docs[int(rng.choice(n_docs, p=weights))]
        if doc.id in latest and rng.random() < update_question_prob:
            q = latest[doc.id]
        else:
            q = doc.questions[int(rng.integers(len(doc.questions)))]
        events.append({"kind": "query", "doc": doc.id, "question": q.question, "answers": q.answers,
                       "about": q.meta.get("about", "squad"), "version": versions[doc.id]})
    for r, i in enumerate(popularity):
        docs[int(i)].meta.update(popularity_rank=r, query_share=round(float(weights[int(i)]), 4),
                                 volatile=int(i) in volatile)
    return Workload("mixed", "stream", docs, "f1",
                    "a changing knowledge base: Zipf-skewed queries over documents of 1-4 SQuAD paragraphs, "
                    "some edited between queries",
                    events=events,
                    settings={"documents": n_docs, "queries": n_queries, "volatile_docs": volatile_docs,
                              "edits_per_volatile": edits_per_volatile, "skew": skew,
                              "update_question_prob": update_question_prob, "seed": seed})
