"""Cloze-translated reading-comprehension questions from any text.

SQuAD offers 1,409 training paragraphs here, and the hypernetwork learns to recall their gold
answers (training accuracy 0.4-0.5) without learning to read unseen ones (held-out 0.06). This
module makes many more reading questions from plain text, after the cloze translation of Lewis
et al. (2019, "Unsupervised Question Answering by Cloze Translation"): a span of a sentence (a
year, a date, a number, a capitalised name) is replaced in place by a question phrase, and the
span is the answer::

    "The Normans gave their name to Normandy in the 10th century, after 911."
    -> ("The Normans gave their name to Normandy in the 10th century, after what year?", "911")

Questions are in-situ (``"... after what year?"``), like many SQuAD questions
(``"The Normans were in Normandy in what century?"``). Rules only; no model is needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..core.textio import SENTENCE_BREAK

_MONTHS = ("January February March April May June July August September October November "
           "December").split()
_DATE = re.compile(r"\b(?:" + "|".join(_MONTHS) + r")(?: \d{1,2})?,? \d{4}\b|\b\d{1,2} (?:"
                   + "|".join(_MONTHS) + r")(?: \d{4})?\b")
_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})\b")
_PERCENT = re.compile(r"\b\d+(?:\.\d+)?(?:%| percent)")
_NUMBER = re.compile(r"\b\d{1,3}(?:,\d{3})+(?:\.\d+)?\b|\b\d+(?:\.\d+)?\b")
_CAP_WORD = re.compile(r"^[A-Z][a-zA-Z'\-]+$")
_JOINERS = {"of", "de", "the", "and", "von", "van", "da", "du", "la"}
_NOT_NAMES = set(("I A An The This That These Those It Its He She They We You Our Your His Her Their "
                  "In On At For From By With As But And Or If When While Mr Mrs Ms Dr St "
                  + " ".join(_MONTHS)
                  + " Monday Tuesday Wednesday Thursday Friday Saturday Sunday").split())
MAX_QUESTION_WORDS = 40


@dataclass(frozen=True)
class ClozeQA:
    question: str
    answer: str
    kind: str  # date | year | percent | number | name


def _name_spans(sentence: str) -> list[tuple[int, int]]:
    """Character spans of capitalised names (1-4 capitalised words, joiners inside) that do not
    start the sentence."""
    words = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", sentence)]
    spans: list[tuple[int, int]] = []
    i = 1  # the first word is capitalised anyway
    while i < len(words):
        token = words[i][2].strip(",;:.!?\"()")
        prev = words[i - 1][2]
        if _CAP_WORD.match(token) and token not in _NOT_NAMES and not prev.endswith((".", "!", "?", ":", '"')):
            j = i
            parts = [i]
            while j + 1 < len(words) and len(parts) < 4:
                nxt = words[j + 1][2]
                if words[j][2][-1:] in ",;:.!?)":
                    break
                k = j + 1
                while k < len(words) and k - j <= 2 and words[k][2] in _JOINERS:
                    k += 1  # "of", "de la", ... between two capitalised words
                if k > j + 1 and k < len(words) and _CAP_WORD.match(words[k][2].strip(",;:.!?\"()")):
                    j = k
                    parts.append(j)
                elif _CAP_WORD.match(nxt.strip(",;:.!?\"()")):
                    j += 1
                    parts.append(j)
                else:
                    break
            start = words[i][0]
            last = words[j][2].rstrip(",;:.!?\")")
            last = last[:-2] if last.endswith(("'s", "’s")) else last
            end = words[j][0] + len(last)
            spans.append((start, end))
            i = j + 1
        else:
            i += 1
    return spans


def _candidates(sentence: str) -> list[tuple[int, int, str]]:
    """Non-overlapping ``(start, end, kind)`` answer spans, more specific patterns first."""
    taken: list[tuple[int, int, str]] = []

    def add(start: int, end: int, kind: str) -> None:
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, kind))

    for pattern, kind in ((_DATE, "date"), (_PERCENT, "percent"), (_YEAR, "year"), (_NUMBER, "number")):
        for m in pattern.finditer(sentence):
            add(m.start(), m.end(), kind)
    for start, end in _name_spans(sentence):
        add(start, end, "name")
    return sorted(taken)


def _wh(sentence: str, start: int, end: int, kind: str) -> tuple[int, int, str]:
    """The question phrase for a span and the (possibly widened) span it replaces."""
    before = sentence[:start]
    if kind == "date":
        m = re.search(r"\b(?:on|in)\s+$", before)
        return (m.start() if m else start), end, "when"
    if kind == "year":
        m = re.search(r"\bin\s+$", before)
        return (m.start(), end, "in what year") if m else (start, end, "what year")
    if kind == "percent":
        return start, end, "what percentage"
    if kind == "number":
        return start, end, "how many"
    m = re.search(r"\bby\s+$", before)
    return (m.start(), end, "by whom") if m else (start, end, "what")


def _window(sentence: str, start: int, end: int) -> str | None:
    """The sentence, or for a long sentence the clause holding ``[start, end)``; None if the
    result would still be too long."""
    if len(sentence.split()) <= MAX_QUESTION_WORDS:
        return sentence
    bounds = [0] + [m.end() for m in re.finditer(r"[;,]\s+", sentence)] + [len(sentence) + 1]
    for a, b in zip(bounds, bounds[1:]):
        if a <= start and end <= b - 1:
            clause = sentence[a:b - 1]
            return clause if 5 <= len(clause.split()) <= MAX_QUESTION_WORDS else None
    return None


def cloze_questions(text: str) -> list[ClozeQA]:
    """Every cloze question the rules make from ``text`` (each answer occurs in ``text``).

    >>> [q.question for q in cloze_questions("The bridge opened in 1932 after six years of work.")]
    ['The bridge opened in what year after six years of work?']
    """
    out: list[ClozeQA] = []
    for sentence in split_cloze_sentences(text):
        if len(sentence.split()) < 5:
            continue
        for start, end, kind in _candidates(sentence):
            answer = sentence[start:end]
            if sentence.count(answer) != 1:
                continue
            a, b, wh = _wh(sentence, start, end, kind)
            # a one-character placeholder marks the span while the clause is chosen
            window = _window(sentence[:a] + "\x00" + sentence[b:], a, a + 1)
            if window is None:
                continue
            question = window.replace("\x00", wh).strip().rstrip(".!?;:,\"' ") + "?"
            question = question[0].upper() + question[1:]  # also a question phrase that starts it
            if len(question.split()) >= 4:
                out.append(ClozeQA(question, answer, kind))
    return out


def split_cloze_sentences(text: str) -> list[str]:
    """The sentences of ``text`` as the cloze rules cut them (non-empty, stripped)."""
    return [s.strip() for s in SENTENCE_BREAK.split(" ".join(text.split())) if s.strip()]


def pick_cloze(rng: np.random.Generator, text: str, n: int) -> list[ClozeQA]:
    """Up to ``n`` distinct cloze questions of ``text``, kinds balanced (names are the most common
    span, numbers the rarest), drawn with ``rng``."""
    qas = cloze_questions(text)
    if not qas:
        return []
    by_kind: dict[str, list[ClozeQA]] = {}
    for q in qas:
        by_kind.setdefault(q.kind, []).append(q)
    picked: list[ClozeQA] = []
    kinds = sorted(by_kind)
    while len(picked) < n and any(by_kind.values()):
        kinds = [k for k in kinds if by_kind[k]]
        pool = by_kind[kinds[int(rng.integers(len(kinds)))]]
        picked.append(pool.pop(int(rng.integers(len(pool)))))
    return picked
