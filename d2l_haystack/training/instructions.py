"""Instructions of many kinds, each with a rule that checks whether a reply follows it.

The data of the Text-to-LoRA variant (:class:`~d2l_haystack.core.D2LEngine` with
``kind="instructions"``): a system prompt is internalized once into an adapter, and the adapter must
make the base model answer as it answers WITH that system prompt. Every instruction here is
checkable by a rule (a word count, a phrase present, a format that parses, a word absent), so
compliance is measured without a judge model.

Held out of training, as in :mod:`d2l_haystack.training.realistic`: whole KINDS
(:data:`HELDOUT_KINDS`, never seen in training with any phrasing) and, for the training kinds,
every third phrasing and parameter value (``part="heldout"``). Seeded and reproducible.

Usage example::

    import numpy as np
    from d2l_haystack.training.instructions import sample_instruction

    rng = np.random.default_rng(0)
    inst = sample_instruction(rng, part="train")
    print(inst.kind, "|", inst.text, "|", inst.check("Sure: the answer is 4."))
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .heldout import PARTS
from .heldout import part_of as _part_of

Rng = np.random.Generator
SAMPLE_PARTS = (*PARTS, "validation")
"""``validation``: training kinds in held-out phrasings and values (what a training run selects its
best checkpoint on; the held-out KINDS stay unseen until the evaluation)."""


def _pick(rng: Rng, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


_WORD = re.compile(r"[A-Za-z0-9']+")


def words(text: str) -> list[str]:
    """The words of a reply (letters, digits, apostrophes)."""
    return _WORD.findall(text)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# -- rules ------------------------------------------------------------------------------------------
def _max_words(reply: str, p: dict[str, Any]) -> bool:
    return 0 < len(words(reply)) <= int(p["n"])


def _min_words(reply: str, p: dict[str, Any]) -> bool:
    return len(words(reply)) >= int(p["n"])


def _starts_with(reply: str, p: dict[str, Any]) -> bool:
    return _norm(reply).lstrip("\"'*#> ").startswith(_norm(p["phrase"]))


def _ends_with(reply: str, p: dict[str, Any]) -> bool:
    tail = _norm(reply).rstrip("\"'* ")
    phrase = _norm(p["phrase"]).rstrip(".!")
    return tail.rstrip(".!").endswith(phrase)


def _contains_word(reply: str, p: dict[str, Any]) -> bool:
    return str(p["word"]).lower() in {w.lower() for w in words(reply)}


def _avoids_word(reply: str, p: dict[str, Any]) -> bool:
    return bool(words(reply)) and not _contains_word(reply, p)


def _letters(reply: str) -> str:
    return "".join(c for c in reply if c.isalpha())


def _uppercase(reply: str, p: dict[str, Any]) -> bool:
    letters = _letters(reply)
    return len(letters) >= 2 and sum(c.isupper() for c in letters) >= 0.95 * len(letters)


def _lowercase(reply: str, p: dict[str, Any]) -> bool:
    letters = _letters(reply)
    return len(letters) >= 2 and not any(c.isupper() for c in letters)


def _items(reply: str, label: str) -> int:
    """How many of the reply's non-empty lines start with the list label ``label`` (a regex)."""
    return sum(bool(re.match(label, ln.strip())) for ln in reply.splitlines() if ln.strip())


def _bullets(reply: str, p: dict[str, Any]) -> bool:
    return _items(reply, r"[-*•]") >= 2


def _numbered(reply: str, p: dict[str, Any]) -> bool:
    return _items(reply, r"\d+[.)]\s") >= 2


def _json_keys(reply: str, p: dict[str, Any]) -> bool:
    text = reply.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and all(k in value for k in p["keys"])


def _quoted(reply: str, p: dict[str, Any]) -> bool:
    text = reply.strip()
    return len(text) >= 3 and text[0] in "\"“" and text[-1] in "\"”"


def _any_word(reply: str, p: dict[str, Any]) -> bool:
    have = {w.lower() for w in words(reply)}
    return any(w in have for w in p["markers"])


def _questions_back(reply: str, p: dict[str, Any]) -> bool:
    return reply.rstrip().endswith("?")


def _signed(reply: str, p: dict[str, Any]) -> bool:
    last = reply.strip().splitlines()[-1].strip() if reply.strip() else ""
    return _norm(last).lstrip("-—– ").rstrip(".").endswith(_norm(p["name"]))


def _title_case(reply: str, p: dict[str, Any]) -> bool:
    ws = [w for w in words(reply) if w[:1].isalpha()]
    return bool(ws) and sum(w[0].isupper() for w in ws) >= 0.9 * len(ws)


def _lettered(reply: str, p: dict[str, Any]) -> bool:
    return _items(reply, r"[a-z][.)]\s") >= 2


def _exclaims(reply: str, p: dict[str, Any]) -> bool:
    text = reply.strip()
    return text.endswith("!") and not re.search(r"\.(\s|$)", text)


# -- compliant rewrites (training targets where the teacher does not follow) --------------------------
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _sentences(reply: str) -> list[str]:
    """The reply's sentences; a one-sentence reply split at commas, so that a list has two items."""
    parts = [x.strip() for x in _SENTENCE.split(reply.strip()) if x.strip()]
    if len(parts) < 2:
        parts = [x.strip() for x in reply.strip().rstrip(".").split(",") if x.strip()]
    if len(parts) < 2:
        parts = [reply.strip() or "I do not know.", "That is my answer."]
    return parts


def _fix_max_words(reply: str, p: dict[str, Any]) -> str:
    first = _sentences(reply)[0]
    kept = first if len(words(first)) <= int(p["n"]) else " ".join(first.split()[: int(p["n"])])
    while len(words(kept)) > int(p["n"]):  # punctuation-joined words count apart
        kept = " ".join(kept.split()[:-1])
    return kept.rstrip(",;:") + ("" if kept.endswith((".", "!", "?")) else ".")


def _fix_forbidden(reply: str, p: dict[str, Any]) -> str:
    gone = re.sub(rf"(?i)(?<![A-Za-z0-9']){re.escape(str(p['word']))}(?![A-Za-z0-9'])\s*", "", reply)
    return " ".join(gone.split()) or "No."


def _fix_json(reply: str, p: dict[str, Any]) -> str:
    parts = _sentences(reply)
    return json.dumps({p["keys"][0]: parts[0], p["keys"][1]: " ".join(parts[1:])})


_PERSONA_OPENERS = {"a pirate": "Arr, matey!", "a medieval knight": "Verily, good sire,", "a cowboy": "Howdy, partner!",
                    "a robot": "Beep boop. Processing.", "a sports commentator": "Folks, this is incredible!",
                    "a chef": "Ah, a delicious question!"}
_ASK_BACKS = ("Do you have any other questions?", "What else would you like to know?", "Does that help?",
              "Shall I explain more?")


def _fix_persona(reply: str, p: dict[str, Any]) -> str:
    return f"{_PERSONA_OPENERS.get(p['who'], 'Ahoy!')} {reply.strip()}"


def _fix_ask_back(reply: str, p: dict[str, Any]) -> str:
    return f"{reply.strip()} {_ASK_BACKS[len(reply) % len(_ASK_BACKS)]}"


_FIXES: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "max_words": _fix_max_words,
    "start_phrase": lambda r, p: f"{p['phrase']} {r.strip()}",
    "end_phrase": lambda r, p: f"{r.strip()} {p['phrase']}",
    "forbidden_word": _fix_forbidden,
    "required_word": lambda r, p: f"{r.strip()} ({p['word']})",
    "uppercase": lambda r, p: r.upper(),
    "lowercase": lambda r, p: r.lower(),
    "bullet_list": lambda r, p: "\n".join(f"- {x}" for x in _sentences(r)),
    "numbered_list": lambda r, p: "\n".join(f"{i}. {x}" for i, x in enumerate(_sentences(r), 1)),
    "json_keys": _fix_json,
    "quoted": lambda r, p: f"\"{r.strip()}\"",
    "persona": _fix_persona,
    "ask_back": _fix_ask_back,
    "sign_off": lambda r, p: f"{r.strip()}\n— {p['name']}",
    "title_case": lambda r, p: " ".join(w[:1].upper() + w[1:] for w in r.split(" ")),
    "lettered_list": lambda r, p: "\n".join(f"{'abcdefghij'[i % 10]}) {x}" for i, x in enumerate(_sentences(r))),
    "exclaim": lambda r, p: re.sub(r"\.(?=\s|$)", "!", r.strip().rstrip(".?!") + "!"),
}
"""How each kind's rule is met by rewriting a reply that does not meet it (``min_words`` has none:
a short reply cannot be lengthened by a rule)."""


# -- kinds --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstructionKind:
    """One kind of instruction: phrasings with ``{placeholders}``, a parameter sampler and a rule."""

    name: str
    phrasings: tuple[str, ...]
    params: Callable[[Rng, str], dict[str, Any]]
    rule: Callable[[str, dict[str, Any]], bool]
    group: str = ""
    """What it constrains: length, phrase, word, case, format, persona."""


def _n(lo: int, hi: int) -> Callable[[Rng, str], dict[str, Any]]:
    def sample(rng: Rng, part: str) -> dict[str, Any]:
        values = _part_of(list(range(lo, hi + 1)), part)
        return {"n": int(_pick(rng, values))}
    return sample


def _from(key: str, pool: Sequence[str]) -> Callable[[Rng, str], dict[str, Any]]:
    def sample(rng: Rng, part: str) -> dict[str, Any]:
        return {key: _pick(rng, _part_of(pool, part))}
    return sample


_START_PHRASES = ("Certainly!", "Good question.", "Here is my answer:", "Well,", "In short,", "Of course.",
                  "Great question!", "Let me explain.", "Happy to help.", "To put it simply,", "Absolutely.",
                  "Thanks for asking.")
_END_PHRASES = ("Hope this helps!", "Have a nice day.", "That is all.", "Stay curious!", "Best regards.",
                "End of answer.", "Good luck!", "Cheers!", "Thank you.", "Over and out.", "Take care.",
                "See you soon.")
_SIGNATURES = ("Alex", "The Help Desk", "Sam from Support", "Your Assistant", "Dr. Lee", "Maria", "The Team",
               "Captain Jones", "Professor Oak", "Nina", "Robo", "The Librarian")
_COMMON_WORDS = ("the", "is", "and", "a", "of", "it", "in", "to", "are", "you", "this", "that")
_TOPIC_WORDS = ("banana", "rocket", "ocean", "guitar", "pizza", "castle", "penguin", "rainbow", "forest",
                "volcano", "tiger", "bicycle")
_JSON_KEYS = (("answer", "confidence"), ("reply", "source"), ("result", "explanation"), ("answer", "reason"),
              ("summary", "details"), ("value", "unit"), ("response", "certainty"), ("text", "language"),
              ("output", "notes"))
_PERSONAS = (
    ("a pirate", ("arr", "matey", "ahoy", "aye", "ye", "sea", "ship", "captain")),
    ("a medieval knight", ("sire", "thee", "thou", "thy", "milord", "verily", "honor", "knight", "noble")),
    ("a cowboy", ("howdy", "partner", "y'all", "ranch", "cowboy", "yeehaw", "reckon")),
    ("a robot", ("beep", "boop", "robot", "processing", "computing", "human", "data", "system")),
    ("a sports commentator", ("incredible", "crowd", "goal", "score", "folks", "amazing", "fans", "unbelievable")),
    ("a chef", ("recipe", "delicious", "taste", "kitchen", "cook", "flavor", "ingredients", "dish")),
)


def _persona(rng: Rng, part: str) -> dict[str, Any]:
    who, markers = _pick(rng, _part_of(_PERSONAS, part))
    return {"who": who, "markers": list(markers)}


def _json(rng: Rng, part: str) -> dict[str, Any]:
    keys = _pick(rng, _part_of(_JSON_KEYS, part))
    return {"keys": list(keys), "k1": keys[0], "k2": keys[1]}


KINDS: tuple[InstructionKind, ...] = (
    InstructionKind("max_words", (
        "Answer in at most {n} words.", "Keep every reply under {n} words.", "Your answers must not exceed {n} words.",
        "Be brief: no more than {n} words per answer.", "Reply with {n} words or fewer.",
        "Limit yourself to {n} words.", "Never write more than {n} words.", "Use at most {n} words in your reply.",
        "Short answers only, {n} words maximum."), _n(3, 14), _max_words, "length"),
    InstructionKind("min_words", (
        "Always answer in at least {n} words.", "Write long, detailed answers of {n} words or more.",
        "Every reply must contain at least {n} words.", "Explain at length: use no fewer than {n} words.",
        "Give thorough answers, at least {n} words long.", "Do not answer in fewer than {n} words."),
        _n(40, 70), _min_words, "length"),
    InstructionKind("start_phrase", (
        "Begin every answer with \"{phrase}\"", "Always start your reply with the words \"{phrase}\"",
        "Your first words must be \"{phrase}\"", "Open each response with \"{phrase}\"",
        "Start with \"{phrase}\" and then answer.", "Every reply begins with the phrase \"{phrase}\""),
        _from("phrase", _START_PHRASES), _starts_with, "phrase"),
    InstructionKind("end_phrase", (
        "End every reply with \"{phrase}\"", "Always finish your answer with the words \"{phrase}\"",
        "Close each response with \"{phrase}\"", "Your last words must be \"{phrase}\"",
        "Finish with \"{phrase}\" after answering.", "Sign off every answer with \"{phrase}\""),
        _from("phrase", _END_PHRASES), _ends_with, "phrase"),
    InstructionKind("forbidden_word", (
        "Never use the word \"{word}\".", "Do not write the word \"{word}\" in your answers.",
        "The word \"{word}\" is forbidden.", "Avoid the word \"{word}\" completely.",
        "You must not say \"{word}\".", "Answer without ever using \"{word}\"."),
        _from("word", _COMMON_WORDS), _avoids_word, "word"),
    InstructionKind("required_word", (
        "Mention the word \"{word}\" in every answer.", "Always include the word \"{word}\" in your reply.",
        "Each response must contain the word \"{word}\".", "Work the word \"{word}\" into every answer.",
        "Use the word \"{word}\" at least once.", "Somewhere in your answer, say \"{word}\"."),
        _from("word", _TOPIC_WORDS), _contains_word, "word"),
    InstructionKind("uppercase", (
        "Write your whole answer in capital letters.", "Reply only in UPPERCASE.", "Use capital letters only.",
        "Every letter of your answer must be uppercase.", "ANSWER IN ALL CAPS.", "Shout: write in capitals only."),
        lambda rng, part: {}, _uppercase, "case"),
    InstructionKind("lowercase", (
        "Write only in lowercase letters.", "Do not use any capital letters.", "your answers must be all lowercase.",
        "Use lowercase only, even at the start of sentences.", "Never capitalize anything.",
        "Reply entirely in small letters."), lambda rng, part: {}, _lowercase, "case"),
    InstructionKind("bullet_list", (
        "Answer as a bulleted list, each line starting with \"- \".", "Format every reply as bullet points.",
        "Give your answer as a list of bullet points.", "Use a bullet list for your answer, one point per line.",
        "Reply with bullet points only.", "Structure your answer as dash-prefixed bullet lines."),
        lambda rng, part: {}, _bullets, "format"),
    InstructionKind("numbered_list", (
        "Answer as a numbered list (1., 2., 3.).", "Format every reply as numbered steps.",
        "Give your answer as a numbered list, one item per line.", "Number each point of your answer.",
        "Reply with a numbered list only.", "Write your answer as points 1., 2. and so on."),
        lambda rng, part: {}, _numbered, "format"),
    InstructionKind("json_keys", (
        "Reply only with a JSON object with the keys \"{k1}\" and \"{k2}\".",
        "Your answer must be valid JSON with fields \"{k1}\" and \"{k2}\".",
        "Output a JSON object containing \"{k1}\" and \"{k2}\", nothing else.",
        "Respond in JSON: an object with keys \"{k1}\" and \"{k2}\".",
        "Format: JSON with two keys, \"{k1}\" and \"{k2}\".",
        "Answer with JSON only, using the keys \"{k1}\" and \"{k2}\"."), _json, _json_keys, "format"),
    InstructionKind("quoted", (
        "Wrap your entire answer in double quotes.", "Put your whole reply inside quotation marks.",
        "Every answer must start and end with a double quote.", "Enclose your response in \"quotes\".",
        "Write your reply as one quoted string.", "Surround the answer with double quotation marks."),
        lambda rng, part: {}, _quoted, "format"),
    InstructionKind("persona", (
        "You are {who}. Talk like one in every answer.", "Answer as {who} would, in their voice.",
        "Role-play {who} in all your replies.", "Stay in character as {who}.",
        "Speak in the style of {who}.", "Pretend to be {who} when you answer."), _persona, _any_word, "persona"),
    InstructionKind("ask_back", (
        "End every answer with a question to the user.", "Always finish by asking the user a question.",
        "Close each reply with a follow-up question.", "Your reply must end with a question mark.",
        "After answering, ask the user something.", "Finish every response with a question."),
        lambda rng, part: {}, _questions_back, "format"),
    # trained neighbours of the held-out kinds (a reply's end, its case, a list's labels, its last mark)
    InstructionKind("sign_off", (
        "Sign every answer with \"— {name}\" on its own last line.", "End each reply with your signature: {name}.",
        "Put the signature \"{name}\" under every answer.", "Always sign your replies as {name}.",
        "Add \"— {name}\" as the last line of each response.", "Your answers are signed by {name}."),
        _from("name", _SIGNATURES), _signed, "phrase"),
    InstructionKind("title_case", (
        "Capitalize The First Letter Of Every Word.", "Write every word with a capital first letter.",
        "Use Title Case for your whole answer.", "Start each word of your reply with an uppercase letter.",
        "Every word you write begins with a capital.", "Answer In Title Case Only."),
        lambda rng, part: {}, _title_case, "case"),
    InstructionKind("lettered_list", (
        "Answer as a lettered list: a), b), c).", "Label each point of your reply with a letter: a), b) and so on.",
        "Give your answer as points a), b), c), one per line.", "Format the reply as a list lettered a), b), c).",
        "Reply with lettered items only, starting at a).", "Use letters, not numbers, for the points of your answer."),
        lambda rng, part: {}, _lettered, "format"),
    InstructionKind("exclaim", (
        "End every sentence with an exclamation mark.", "Be enthusiastic: finish each sentence with \"!\".",
        "Never end a sentence with a period; use exclamation marks.", "Every sentence you write ends in \"!\".",
        "Write excitedly, with an exclamation mark after each sentence.", "Use \"!\" instead of \".\" everywhere."),
        lambda rng, part: {}, _exclaims, "format"),
)
KIND_NAMES = tuple(k.name for k in KINDS)
HELDOUT_KINDS = frozenset({"end_phrase", "lowercase", "numbered_list", "ask_back"})
"""Kinds training never sees (any phrasing): one per constraint group where the group has two; each
has a trained neighbour (``start_phrase`` and ``sign_off``; ``uppercase`` and ``title_case``;
``bullet_list`` and ``lettered_list``; ``exclaim``)."""


def kinds_of(part: str) -> list[InstructionKind]:
    """The kinds of a part: training kinds for ``train``, every kind for ``heldout`` (held-out kinds
    with all their phrasings, training kinds with held-out phrasings and values only)."""
    if part == "train":
        return [k for k in KINDS if k.name not in HELDOUT_KINDS]
    if part == "heldout":
        return list(KINDS)
    raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")


@dataclass(frozen=True)
class Instruction:
    """One instruction: its kind, its text (a system prompt) and the parameters its rule checks."""

    kind: str
    text: str
    params: dict[str, Any] = field(default_factory=dict)

    def check(self, reply: str) -> bool:
        """Whether ``reply`` follows this instruction."""
        return kind_named(self.kind).rule(reply, self.params)

    def comply(self, reply: str) -> str:
        """``reply`` if it follows this instruction, else the reply rewritten by the kind's rule so
        that it does (the teacher's wording kept); unchanged where no rewrite exists (``min_words``).
        """
        if self.check(reply) or self.kind not in _FIXES:
            return reply
        return _FIXES[self.kind](reply.strip() or "I do not know.", self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "params": self.params}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instruction:
        return cls(str(data["kind"]), str(data["text"]), dict(data.get("params") or {}))


def kind_named(name: str) -> InstructionKind:
    for k in KINDS:
        if k.name == name:
            return k
    raise ValueError(f"unknown instruction kind {name!r}; known: {', '.join(KIND_NAMES)}")


def make_instruction(rng: Rng, kind: str, part: str = "train") -> Instruction:
    """An instruction of ``kind`` in ``part``'s phrasings and values (a held-out kind: all of them)."""
    k = kind_named(kind)
    sub = "any" if part == "heldout" and k.name in HELDOUT_KINDS else part
    params = k.params(rng, sub)
    text = str(_pick(rng, _part_of(k.phrasings, sub))).format(**params)
    return Instruction(k.name, text, params)


def sample_instruction(rng: Rng, part: str = "train") -> Instruction:
    """An instruction of a kind drawn among ``part``'s kinds (``validation``: :data:`SAMPLE_PARTS`)."""
    if part == "validation":
        kinds = kinds_of("train")
        return make_instruction(rng, kinds[int(rng.integers(len(kinds)))].name, "heldout")
    kinds = kinds_of(part)
    return make_instruction(rng, kinds[int(rng.integers(len(kinds)))].name, part)


_PREAMBLES = ("You are a helpful assistant.", "You are the assistant of a small company's help desk.",
              "You are a friendly tutor.", "You answer questions from the public.", "")


def system_prompt(rng: Rng, instruction: Instruction) -> str:
    """The instruction as a system prompt: sometimes after a neutral preamble."""
    pre = str(_pick(rng, _PREAMBLES))
    return f"{pre} {instruction.text}".strip()


def instructions_document(rng: Rng, n_requests: int = 2, part: str = "train") -> Any:
    """A training document of kind ``instructions``: a system prompt and user requests whose targets
    are the base model's replies WITH it (filled by the trainer's teacher, so ``answer`` is empty).

    Requests are general questions (:func:`~d2l_haystack.training.data.general_question`, never the
    held-out interference questions).
    """
    from . import data as D

    inst = sample_instruction(rng, part)
    held = D.held_out_general_questions()
    qas = [D.QA(D.general_question(rng, held), "", "instructions") for _ in range(n_requests)]
    return D.TrainDoc(system_prompt(rng, inst), qas, "instructions", meta={"instruction": inst.to_dict()})
