"""Evaluation cases: the JSONL case format, and builders of case files from held-out data.

Case format (JSON lines)::

    {"id": str, "document": str, "question": str, "answers": [str, ...], "doc_id": str (optional),
     "meta": {...} (optional)}

Cases sharing a ``doc_id`` (or identical document text) share one document, internalized or
indexed once. The builders draw only on data never used in training: the held-out speech files,
the SQuAD validation articles (``d2l_haystack/data/splits.json``), the general-knowledge
questions in ``d2l_haystack/data/general_qa.jsonl`` and the held-out part of the realistic
document generator (:mod:`d2l_haystack.training.realistic`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from ..core.textio import content_hash
from ..training import data as D
from ..training.realistic import realistic_document, standalone_fact


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



NEEDLE_TEMPLATES = {
    "magic": ("The special magic number is {value}.", "What is the special magic number?"),
    "code": ("The access code for the {key} is {value}.", "What is the access code for the {key}?"),
    "city": ("The {key} is kept in {value}.", "Where is the {key} kept?"),
}


NEEDLE_HELDOUT = "heldout"
"""The needle template of facts phrased as training never phrased them: a held-out statement,
question and value format of the realistic-document generator
(:func:`~d2l_haystack.training.realistic.standalone_fact`)."""


def _needle(rng: np.random.Generator, template: str) -> tuple[str, str, str]:
    if template == NEEDLE_HELDOUT:
        return standalone_fact(rng, "heldout")
    sentence, question = NEEDLE_TEMPLATES[template]
    if template == "magic":
        value, key = str(int(rng.integers(10000, 100000))), ""
    elif template == "code":
        value, key = D._code(rng), str(rng.choice(["north gate", "lab freezer", "server room", "boat house"]))
    else:
        value = str(rng.choice(D._CITY))
        key = str(rng.choice(["golden compass", "ledger", "spare key", "silver bell"]))
    return sentence.format(key=key, value=value), question.format(key=key), value


def niah_cases(tokenizer: Any, lengths: list[int], depths: list[float], per_cell: int = 1,
               filler: str = "natural", template: str = "magic", seed: int = 1234,
               filler_file: str | None = None) -> list[dict[str, Any]]:
    """Needle-in-a-haystack cases: one needle at each depth of filler of each token length.

    :param filler: ``natural`` (held-out public-domain speeches), ``synthetic``, or ``file``
        (sentences of ``filler_file``).
    :param template: a key of :data:`NEEDLE_TEMPLATES` (the trained phrasings) or
        :data:`NEEDLE_HELDOUT` (a fresh held-out phrasing for every needle).
    """
    rng = np.random.default_rng(seed)
    if filler == "file":
        if not filler_file:
            raise ValueError("filler='file' needs filler_file")
        text = Path(filler_file).read_text(errors="replace")
        sentences = [s for s in D._SENT_SPLIT.split(" ".join(text.split())) if s.strip()]
    elif filler == "natural":
        sentences = D.speech_sentences("heldout")
    else:
        sentences = [D.synthetic_sentence(rng) for _ in range(20000)]
    if not sentences:
        raise ValueError("no filler sentences found (is the evaluation data folder there? see D2L_EVALDATA)")
    lens = [len(x) + 1 for x in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    cases = []
    for length in lengths:
        for depth in depths:
            for k in range(per_cell):
                start = int(rng.integers(len(sentences)))
                chosen, total, i = [], 0, start
                while total < length:
                    chosen.append(sentences[i % len(sentences)])
                    total += lens[i % len(sentences)]
                    i += 1
                # per-sentence counts are estimates (joining changes tokenization): top up on the real count
                while (missing := length - len(tokenizer(" ".join(chosen), add_special_tokens=False)["input_ids"])) > 0:
                    while missing > 0:
                        missing -= lens[i % len(sentences)]
                        chosen.append(sentences[i % len(sentences)])
                        i += 1
                needle, question, answer = _needle(rng, template)
                pos = int(round(depth * len(chosen)))
                chosen.insert(pos, needle)
                doc = " ".join(chosen)
                cases.append({"id": f"niah-{length}-{depth:g}-{k}", "document": doc, "question": question,
                              "answers": [answer], "doc_id": f"niah-{length}-{depth:g}-{k}",
                              "meta": {"length": length, "depth": depth, "filler": filler}})
    return cases


def squad_cases(unit: str = "paragraph", part: str = "validation", max_docs: int | None = None,
                questions_per_doc: int | None = None, seed: int = 0,
                exclude_docs: Collection[str] = ()) -> list[dict[str, Any]]:
    """SQuAD cases; ``unit`` is ``paragraph`` (one paragraph per document) or ``article``.

    Documents whose ``doc_id`` is in ``exclude_docs`` are left out before ``max_docs`` are drawn,
    so a new case file can be disjoint from earlier ones (a selection set beside a report set).
    """
    rng = np.random.default_rng(seed)
    cases = []
    articles = D.load_squad(part)
    docs: list[tuple[str, str, list[tuple[str, list[str]]]]] = []
    for a in articles:
        paras = [(p["context"], [(q["question"], [x["text"] for x in q["answers"]]) for q in p["qas"]])
                 for p in a["paragraphs"]]
        if unit == "article":
            docs.append((a["title"], "\n\n".join(c for c, _ in paras), [qa for _, qas in paras for qa in qas]))
        else:
            docs.extend((f"{a['title']}-{i}", c, qas) for i, (c, qas) in enumerate(paras))
    excluded = set(exclude_docs)
    docs = [d for d in docs if d[0] not in excluded]
    if max_docs and len(docs) > max_docs:
        idx = sorted(rng.choice(len(docs), size=max_docs, replace=False).tolist())
        docs = [docs[i] for i in idx]
    for doc_id, text, qas in docs:
        if questions_per_doc and len(qas) > questions_per_doc:
            qas = [qas[i] for i in sorted(rng.choice(len(qas), size=questions_per_doc, replace=False).tolist())]
        for j, (q, answers) in enumerate(qas):
            cases.append({"id": f"squad-{doc_id}-{j}", "document": text, "question": q, "answers": answers,
                          "doc_id": doc_id, "meta": {"unit": unit}})
    return cases


def sentence_cloze_cases(max_docs: int = 100, seed: int = 0, min_words: int = 8,
                         max_words: int = 40) -> list[dict[str, Any]]:
    """One sentence of a SQuAD validation paragraph per document, asked one of its own
    cloze-translated questions (:mod:`.cloze`): the simplest reading a hypernetwork can be asked to
    do on ordinary text (the question is nearly the sentence), without the templates of needles.

    Paragraphs are visited in a seeded order; each gives at most one sentence of
    ``min_words``-``max_words`` words that has a cloze question.
    """
    from ..training.cloze import cloze_questions, pick_cloze, split_cloze_sentences

    rng = np.random.default_rng(seed)
    paras = D.squad_paragraphs("validation")
    cases: list[dict[str, Any]] = []
    for i in rng.permutation(len(paras)):
        sentences = [x for x in split_cloze_sentences(paras[int(i)][0])
                     if min_words <= len(x.split()) <= max_words and cloze_questions(x)]
        if not sentences:
            continue
        sentence = sentences[int(rng.integers(len(sentences)))]
        qa = pick_cloze(rng, sentence, 1)[0]
        doc_id = f"para-{int(i)}"
        cases.append({"id": f"cloze-{doc_id}", "document": sentence, "question": qa.question,
                      "answers": [qa.answer], "doc_id": doc_id, "meta": {"unit": "sentence", "kind": qa.kind}})
        if len(cases) >= max_docs:
            break
    return cases


def gold_sentence_cases(max_docs: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """One gold question of a SQuAD validation paragraph per document, asked with only the
    sentence that holds its answer as the document: SQuAD's paraphrased questions without the
    rest of the paragraph (between :func:`sentence_cloze_cases` and whole paragraphs).

    Paragraphs are visited in a seeded order; each gives at most one case, its question drawn
    among those whose answer lies inside one sentence; all gold answers found in that sentence
    are kept."""
    from ..training.cloze import split_cloze_sentences

    rng = np.random.default_rng(seed)
    paras = D.squad_paragraphs("validation")
    cases: list[dict[str, Any]] = []
    for i in rng.permutation(len(paras)):
        sentences = split_cloze_sentences(paras[int(i)][0])
        anchored = [(q, answers, hit) for q, answers in paras[int(i)][1]
                    if (hit := D.answer_sentence(sentences, answers))]
        if not anchored:
            continue
        question, answers, (at, _) = anchored[int(rng.integers(len(anchored)))]
        doc_id = f"para-{int(i)}"
        cases.append({"id": f"gold-{doc_id}", "document": sentences[at], "question": question,
                      "answers": [a for a in answers if a in sentences[at]], "doc_id": doc_id,
                      "meta": {"unit": "sentence"}})
        if len(cases) >= max_docs:
            break
    return cases


def swapped_cases(max_docs: int = 100, questions_per_doc: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """SQuAD validation paragraphs whose answers are swapped (:func:`~d2l_haystack.training.swap.swap_qas`):
    every occurrence of a question's answer in the paragraph replaced by another span of the same
    shape (other digits, another year, another validation answer with the same capitalisation), and
    the new span is the answer. Such an answer can only be read from the document, never remembered
    or known: the reading test of docs/training.md. The original answer is kept in ``meta`` (a reply
    holding it answered from what the model knows, not from the text).

    Paragraphs are visited in a seeded order; each gives up to ``questions_per_doc`` swapped
    questions (paragraphs where none can be swapped are skipped).
    """
    from ..training.swap import AnswerPool, swap_qas

    rng = np.random.default_rng([seed, 19])
    paras = D.squad_paragraphs("validation")
    pool = AnswerPool(paras)
    cases: list[dict[str, Any]] = []
    docs = 0
    for i in rng.permutation(len(paras)):
        text, qas = paras[int(i)]
        new_text, swapped = swap_qas(rng, text, qas, pool, questions_per_doc)
        if not swapped:
            continue
        original = {q: min(answers, key=len).strip() for q, answers in qas}
        doc_id = f"swap-para-{int(i)}"
        for j, qa in enumerate(swapped):
            cases.append({"id": f"{doc_id}-{j}", "document": new_text, "question": qa.question,
                          "answers": [qa.answer], "doc_id": doc_id,
                          "meta": {"unit": "paragraph", "swapped_from": original[qa.question]}})
        docs += 1
        if docs >= max_docs:
            break
    return cases


def general_questions() -> list[dict[str, Any]]:
    path = D.DATA_DIR / "general_qa.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def interference_cases(n_docs: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """General-knowledge questions asked with an UNRELATED document (a SQuAD validation paragraph)."""
    rng = np.random.default_rng(seed)
    paras = D.squad_paragraphs("validation")
    qs = general_questions()
    cases = []
    for i, q in enumerate(qs):
        j = int(rng.integers(len(paras)))
        k = i % n_docs
        context = paras[(j + k * 7919) % len(paras)][0] if n_docs else paras[j][0]
        cases.append({"id": f"interference-{i}", "document": context, "question": q["question"],
                      "answers": q["answers"], "doc_id": f"para-{(j + k * 7919) % len(paras)}",
                      "meta": {"unrelated": True}})
    return cases


def realistic_cases(n_docs: int = 200, seed: int = 0, part: str = "heldout",
                    questions_per_doc: int = 2) -> list[dict[str, object]]:
    """Evaluation cases (the ``d2l eval`` JSONL rows) of generated realistic documents
    (:func:`~d2l_haystack.training.realistic.realistic_document`) of a part.

    The held-out part's cases draw on held-out kinds and templates only (see the module
    docstring), from a seed stream separate from training's (``[seed, 77]``).
    """
    rng = np.random.default_rng([seed, 77])
    cases: list[dict[str, object]] = []
    for i in range(n_docs):
        doc = realistic_document(rng, questions_per_doc, part=part)
        doc_id = f"real-{part}-{seed}-{i}"
        for j, qa in enumerate(doc.qas):
            cases.append({"id": f"{doc_id}-{j}", "document": doc.text, "question": qa.question,
                          "answers": [qa.answer], "doc_id": doc_id, "meta": {"kind": doc.meta["kind"]}})
    return cases
