"""Counterfactual SQuAD: gold questions whose answers are swapped, in the paragraph and the target.

On its 1,409 training paragraphs the hypernetwork learns the gold answers (teacher-forced accuracy
0.4-0.5) while held-out paragraphs stay at 0.06: with a few thousand questions it is cheaper to
remember "the paragraph about chloroplasts -> environmental factors" than to learn to read. A
swapped answer cannot be remembered: every occurrence of the answer in the paragraph is replaced
by a random span of the same shape (digits by random digits, a year by another year, words by
another gold answer with the same number of words and the same capitalisation), and the target
is the new span. The question is SQuAD's own (paraphrased, unlike needle and cloze questions), so
matching a question to its sentence is still learned on real questions; only remembering is
ruled out. (Counterfactual answer substitution; cf. Longpre et al. 2021, "Entity-based knowledge
conflicts in question answering".)

Usage example::

    import numpy as np
    from d2l_haystack.training.swap import AnswerPool, swap_document

    paragraphs = [("The bridge opened in 1932 after six years of work.",
                   [("When did the bridge open?", ["1932"])])]
    doc = swap_document(np.random.default_rng(0), paragraphs, AnswerPool(paragraphs), 1)
    doc.qas[0].answer   # a year other than 1932, and the text says so
"""

from __future__ import annotations

import re

import numpy as np

from .data import QA, TrainDoc, squad_run_document

Paragraphs = list[tuple[str, list[tuple[str, list[str]]]]]

MAX_WORDS = 6
"""Answers longer than this many words are not swapped (long spans rarely have a same-shape twin)."""
_YEAR = re.compile(r"^(1[0-9]{3}|20[0-2][0-9])$")
_DIGIT = re.compile(r"\d")


def _shape(answer: str) -> tuple[bool, ...]:
    """Capitalisation of each word: the key under which word answers are swapped."""
    return tuple(w[:1].isupper() for w in answer.split())


def _occurs(span: str, text: str, flags: int = 0) -> re.Pattern[str] | None:
    pattern = re.compile(r"(?<!\w)" + re.escape(span) + r"(?!\w)", flags)
    return pattern if pattern.search(text) else None


class AnswerPool:
    """Shortest gold answers of some paragraphs, grouped by shape, to draw replacements from."""

    def __init__(self, paragraphs: Paragraphs) -> None:
        by_shape: dict[tuple[bool, ...], set[str]] = {}
        for _, qas in paragraphs:
            for _, answers in qas:
                a = min(answers, key=len).strip()
                if a and not _DIGIT.search(a) and len(a.split()) <= MAX_WORDS:
                    by_shape.setdefault(_shape(a), set()).add(a)
        self.by_shape = {k: sorted(v) for k, v in by_shape.items()}

    def replacement(self, rng: np.random.Generator, answer: str) -> str | None:
        """A random span of the same shape as ``answer`` and different from it, or ``None``."""
        answer = answer.strip()
        if not answer or len(answer.split()) > MAX_WORDS:
            return None
        if _DIGIT.search(answer):
            if _YEAR.match(answer):
                while True:
                    new = str(int(rng.integers(1100, 2021)))
                    if new != answer:
                        return new
            first = next(i for i, c in enumerate(answer) if c.isdigit())
            for _ in range(10):
                chars = [str(int(rng.integers(0, 10))) if c.isdigit() else c for c in answer]
                if answer[first] != "0" and chars[first] == "0":
                    chars[first] = str(int(rng.integers(1, 10)))
                new = "".join(chars)
                if new != answer:
                    return new
            return None
        candidates = self.by_shape.get(_shape(answer), [])
        if len(candidates) < 2:
            return None
        for _ in range(10):
            new = candidates[int(rng.integers(len(candidates)))]
            if new.lower() != answer.lower():
                return new
        return None


def swap_qas(rng: np.random.Generator, text: str, qas: list[tuple[str, list[str]]], pool: AnswerPool,
             n_questions: int) -> tuple[str, list[QA]]:
    """Swap the answers of up to ``n_questions`` of ``qas`` in ``text``: ``(new text, questions)``.

    A question is skipped when its answer is not in the text as whole words, occurs in the
    question, overlaps an answer already swapped (either way round), or when an earlier chosen
    question mentions it (the question would then name a span the text no longer has).
    """
    used: list[str] = []
    questions: list[str] = []
    out: list[QA] = []
    for j in rng.permutation(len(qas)):
        if len(out) >= n_questions:
            break
        question, answers = qas[int(j)]
        answer = min(answers, key=len).strip()
        pattern = _occurs(answer, text) if answer else None
        if pattern is None or _occurs(answer, question, re.IGNORECASE):
            continue
        low = answer.lower()
        if any(low in u.lower() or u.lower() in low for u in used):
            continue
        if any(_occurs(answer, q, re.IGNORECASE) for q in questions):
            continue
        if any(_occurs(u, question, re.IGNORECASE) for u in used):
            continue
        new = pool.replacement(rng, answer)
        if new is None:
            continue
        text = pattern.sub(new.replace("\\", "\\\\"), text)  # backslashes are the only escapes
        used += [answer, new]
        questions.append(question)
        out.append(QA(question, new, "swap"))
    return text, out


def swap_document(rng: np.random.Generator, paragraphs: Paragraphs, pool: AnswerPool, n_questions: int,
                  n_paragraphs: int = 1) -> TrainDoc:
    """Consecutive SQuAD paragraphs with swapped answers (:func:`swap_qas`); paragraphs where no
    question can be swapped are skipped."""
    for _ in range(100):
        i = int(rng.integers(len(paragraphs)))
        chosen = [paragraphs[(i + k) % len(paragraphs)] for k in range(n_paragraphs)]
        text = "\n\n".join(c for c, _ in chosen)
        qas = [qa for _, p_qas in chosen for qa in p_qas]
        text, swapped = swap_qas(rng, text, qas, pool, n_questions)
        if swapped:
            return TrainDoc(text, swapped, "swap", meta={"paragraph": i})
    raise ValueError("no SQuAD paragraph has an answer that can be swapped (is the SQuAD file there?)")


def swap_run_document(rng: np.random.Generator, paragraphs: Paragraphs, pool: AnswerPool, n_questions: int,
                      max_sentences: int) -> TrainDoc:
    """A short run of sentences around gold answers (:func:`.data.squad_run_document`) with those
    answers swapped (:func:`swap_qas`): SQuAD's paraphrased questions on documents a few sentences
    long, with answers that cannot be remembered from the training articles. Runs whose questions
    cannot be swapped are skipped."""
    for _ in range(100):
        run = squad_run_document(rng, paragraphs, n_questions, max_sentences)
        text, swapped = swap_qas(rng, run.text, [(qa.question, [qa.answer]) for qa in run.qas], pool,
                                 n_questions)
        if swapped:
            return TrainDoc(text, swapped, "swap")
    raise ValueError("no short SQuAD run has an answer that can be swapped (is the SQuAD file there?)")
