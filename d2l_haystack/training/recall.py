"""Recall questions: continue a sentence of the document from its first words.

A dense, self-supervised reading signal on any text. A question answer has two or three tokens;
a recall question's answer is the rest of a sentence (up to ``max_words`` words), every token of
it read from the document and none guessable from its shape. The cue is the sentence's first
words, lengthened until they occur once in the document, so the continuation is unambiguous::

    >>> import numpy as np
    >>> text = "The clinic opens at 7:45 on weekdays. Parking is free for patients with a permit."
    >>> qa = recall_question(np.random.default_rng(0), text)
    >>> qa.kind, qa.answer in text
    ('recall', True)

Question phrasings are split like :mod:`.realistic`'s templates: every third one is held out of
training (``part="heldout"`` uses only those), so evaluation asks in words training never used.
"""

from __future__ import annotations

import numpy as np

from ..core.keys import split_sentences
from .data import QA
from .heldout import held_out_index

TEMPLATES = (
    'How does the sentence that begins "{cue}" continue in the document?',
    'Complete this line from the document: "{cue} ..."',
    'Finish the sentence from the document: "{cue} ..."',
    'What comes right after "{cue}" in the document?',
    'Quote the rest of the sentence starting "{cue}".',
    'The document says "{cue} ..." - how does it go on?',
)
"""Recall question phrasings; indices 2 and 5 are the held-out part."""

MIN_CUE_WORDS = 2
MAX_CUE_WORDS = 5


def recall_question(rng: np.random.Generator, text: str, part: str = "train", max_words: int = 16) -> QA | None:
    """One recall question about ``text`` (``None`` when no sentence is long enough).

    :param part: ``"train"`` or ``"heldout"`` (which phrasings, see :data:`TEMPLATES`).
    :param max_words: the most words of the continuation that make the answer.
    """
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be 'train' or 'heldout', got {part!r}")
    sentences = [s for line in text.splitlines()  # a title line is not the start of its next sentence
                 for s in split_sentences(line, min_words=MIN_CUE_WORDS + 2, max_words=10**6)]
    if not sentences:
        return None
    words = sentences[int(rng.integers(len(sentences)))].split()
    longest = min(MAX_CUE_WORDS, len(words) - 2)
    k = int(rng.integers(MIN_CUE_WORDS, longest + 1))
    while k < len(words) - 1 and text.count(" ".join(words[:k])) > 1:  # a cue that names one place
        k += 1
    cue, rest = " ".join(words[:k]), " ".join(words[k:k + max_words])
    templates = [t for i, t in enumerate(TEMPLATES) if held_out_index(i) == (part == "heldout")]
    question = templates[int(rng.integers(len(templates)))].format(cue=cue)
    return QA(question, rest, "recall")
