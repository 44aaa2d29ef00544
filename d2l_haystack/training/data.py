"""Training data: fact/needle documents, SQuAD paragraphs and unrelated-question samples.

Everything is generated from a ``numpy`` random generator seeded per step, so a resumed run sees
exactly the data it would have seen without the interruption.

Sources are read at run time from the evaluation-data folder (``$D2L_EVALDATA``, default
``../shared/evaldata`` beside the checkout) and never copied into the repository; the split of
SQuAD articles and of speech files is committed in ``d2l_haystack/data/splits.json``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def evaldata_dir() -> Path:
    """The folder holding SQuAD and the speech corpora (``$D2L_EVALDATA`` overrides)."""
    env = os.environ.get("D2L_EVALDATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "evaldata"


def load_splits() -> dict[str, Any]:
    return json.loads((DATA_DIR / "splits.json").read_text())


@dataclass
class QA:
    question: str
    answer: str
    kind: str = "fact"  # fact | squad | unrelated


@dataclass
class TrainDoc:
    text: str
    qas: list[QA]
    source: str
    num_chunks: int = 1
    chunking: str = "tokens"
    """How the adapter's chunks are cut: ``"tokens"``: ``num_chunks`` near-equal token chunks;
    ``"sentences"``/``"auto"``: as the engine cuts them (:func:`~d2l_haystack.core.prompts.chunk_text_ids`)."""
    chunks: list[list[int]] | None = None
    """The token ids of the chunks to encode, when chosen in advance (``Phase.max_chunks``)."""
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# filler text
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def speech_sentences(part: str = "train", root: Path | None = None, digits: bool = False) -> list[str]:
    """Sentences of the public-domain speeches (``part``: ``train`` or ``heldout`` files), in order;
    sentences with digits only with ``digits`` (filler must not hold numbers a needle could clash with)."""
    root = root or evaldata_dir()
    splits = load_splits()["filler"]
    out: list[str] = []
    for corpus, parts in splits.items():
        path = root / f"{corpus}.zip"
        if not path.is_file():
            continue
        with zipfile.ZipFile(path) as zf:
            for name in parts[part]:
                text = zf.read(name).decode("latin-1")
                text = re.sub(r"\s+", " ", text)
                for s in _SENT_SPLIT.split(text):
                    s = s.strip()
                    if 20 <= len(s) <= 400 and (digits or not any(ch.isdigit() for ch in s)):
                        out.append(s)
    return out


_ADJ = "quiet bright old narrow distant small heavy gentle rapid silent green northern wooden busy calm".split()
_NOUN = ("river village engineer garden committee harbor merchant library orchard bridge festival market "
         "teacher farmer forest valley council station workshop tower").split()
_VERB = ("watched crossed repaired visited described painted followed measured opened guarded "
         "praised studied").split()
_PLACE = "the old mill|the town square|the eastern hills|the coast|the northern road|the valley floor".split("|")


def synthetic_sentence(rng: np.random.Generator) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    forms = [
        lambda: f"The {pick(_ADJ)} {pick(_NOUN)} {pick(_VERB)} the {pick(_NOUN)} near {pick(_PLACE)}.",
        lambda: f"In the morning, a {pick(_ADJ)} {pick(_NOUN)} {pick(_VERB)} the {pick(_ADJ)} {pick(_NOUN)}.",
        lambda: f"Nobody expected the {pick(_NOUN)} to be so {pick(_ADJ)} that season.",
        lambda: (f"Travellers often {pick(['mention', 'remember', 'ignore'])} the {pick(_ADJ)} "
                 f"{pick(_NOUN)} of {pick(_PLACE)}."),
    ]
    return pick(forms)()


# ---------------------------------------------------------------------------------------------
# facts ("needles") with varied templates and questions
_FIRST = ("Mirela Tomas Anika Joren Liesel Pavel Odalys Kenji Ysolde Baptiste Ingrid Rafael Soraya "
          "Dmitri Elowen Caspian Noor Teodor Marisol Halvard").split()
_LAST = ("Casten Varga Lindqvist Okafor Brandt Moreau Castillo Novak Hartley Sato Ferreira Whitlock "
         "Petrov Ashdown Quintero Mbeki Rasmussen Delacroix").split()
_ORG = ("Valdora Labs|the Harrow Institute|Northwind Shipping|the Cobalt Archive|Kestrel Robotics|"
        "the Amberly Foundation|Silverpine Bank|the Oriel Observatory|Tidewater Mills|Brightlake Studios").split("|")
_ROLE = "chief engineer|director|treasurer|head librarian|lead architect|founder|chief pilot".split("|")
_THING = ("the blue vault|the spare generator|the seed bank|the signal tower|the old printing press|"
          "the emergency radio|the backup server|the tool shed|the archive boxes|the red canoe").split("|")
_CITY = ("Lisbon|Oslo|Nairobi|Quito|Hanoi|Krakow|Adelaide|Tbilisi|Montevideo|Reykjavik|Dakar|Porto|"
         "Bergen|Cusco|Tallinn|Valparaiso").split("|")
_EVENT = ("the harbor festival|the annual chess final|the founders' dinner|the river race|the lantern parade|"
          "the spring auction|the glassblowing fair|the night market").split("|")
_MONTH = "January February March April May June July August September October November December".split()
_COLOR = "crimson teal amber violet ochre indigo scarlet olive".split()
_ITEM = "flag|door|bicycle|umbrella|kite|mailbox|lantern|boat".split("|")


def _code(rng: np.random.Generator) -> str:
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    return "".join(letters[int(rng.integers(len(letters)))] for _ in range(2)) + "-" + str(int(rng.integers(100, 1000)))


FACT_KINDS = ("number", "code", "person", "date", "place", "color", "year")
"""The kinds of :func:`make_fact`, in the order of its ``kind`` index."""


def fact_kind_probs(kinds: dict[str, float]) -> np.ndarray:
    """Probabilities over :data:`FACT_KINDS` from weights; ``ValueError`` names a bad kind or weight."""
    unknown = sorted(set(kinds) - set(FACT_KINDS))
    if unknown:
        raise ValueError(f"unknown fact kinds {unknown}; known: {', '.join(FACT_KINDS)}")
    probs = np.array([float(kinds.get(k, 0.0)) for k in FACT_KINDS])
    if probs.min() < 0 or probs.sum() <= 0:
        raise ValueError(f"fact kind weights must be >= 0 with a positive sum, got {kinds}")
    return probs / probs.sum()


@functools.lru_cache(maxsize=64)
def _cached_kind_probs(items: tuple[tuple[str, float], ...]) -> np.ndarray:
    """:func:`fact_kind_probs` once per distinct weighting (``make_fact`` runs for every fact)."""
    return fact_kind_probs(dict(items))


def make_fact(rng: np.random.Generator, kinds: dict[str, float] | None = None) -> tuple[str, list[str], str, str]:
    """One fact: ``(sentence, questions, answer, key)``; the key names what the question is about.

    ``kinds`` weights the kinds of :data:`FACT_KINDS` (missing ones weigh 0); default: uniform.
    """
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    if kinds is None:
        kind = int(rng.integers(len(FACT_KINDS)))
    else:
        kind = int(rng.choice(len(FACT_KINDS), p=_cached_kind_probs(tuple(sorted(kinds.items())))))
    if kind == 0:
        topic = pick(["special magic number", "secret number", "access number", "lucky number"])
        n = str(int(rng.integers(10000, 100000)))
        return (f"The {topic} is {n}.", [f"What is the {topic}?", f"Which number is the {topic}?",
                                          f"Tell me the {topic}."], n, topic)
    if kind == 1:
        thing = pick(_THING)
        c = _code(rng)
        return (f"The access code for {thing} is {c}.", [f"What is the access code for {thing}?",
                                                          f"Which code opens {thing}?"], c, thing)
    if kind == 2:
        role, org = pick(_ROLE), pick(_ORG)
        name = f"{pick(_FIRST)} {pick(_LAST)}"
        return (f"The {role} of {org} is {name}.", [f"Who is the {role} of {org}?",
                                                    f"Who serves as {role} of {org}?"], name, f"{role} {org}")
    if kind == 3:
        ev = pick(_EVENT)
        date = f"{pick(_MONTH)} {int(rng.integers(1, 29))}"
        return (f"This year {ev} takes place on {date}.", [f"When does {ev} take place?",
                                                           f"On what date is {ev}?"], date, ev)
    if kind == 4:
        thing, city = pick(_THING), pick(_CITY)
        return (f"{thing[0].upper()}{thing[1:]} is kept in {city}.", [f"Where is {thing} kept?",
                                                                       f"In which city is {thing} kept?"], city, thing)
    if kind == 5:
        item, color = pick(_ITEM), pick(_COLOR)
        owner = pick(_FIRST)
        return (f"{owner}'s {item} is painted {color}.",
                [f"What color is {owner}'s {item}?", f"Which color is {owner}'s {item} painted?"],
                color, f"{owner} {item}")
    name = f"{pick(_FIRST)} {pick(_LAST)}"
    year = str(int(rng.integers(1800, 2020)))
    return (f"{name} was born in {year}.", [f"In what year was {name} born?", f"When was {name} born?"], year, name)


# ---------------------------------------------------------------------------------------------
class FillerBank:
    """Filler sentences with cached token counts (natural speeches and synthetic sentences)."""

    def __init__(self, tokenizer: Any, part: str = "train", root: Path | None = None) -> None:
        self.tokenizer = tokenizer
        self.natural = speech_sentences(part, root)
        self.natural_len = [len(x) for x in tokenizer(self.natural, add_special_tokens=False)["input_ids"]] \
            if self.natural else []

    def sentences(self, rng: np.random.Generator, target_tokens: int, natural: bool) -> list[str]:
        out: list[str] = []
        total = 0
        if natural and self.natural:
            i = int(rng.integers(len(self.natural)))
            while total < target_tokens:
                out.append(self.natural[i % len(self.natural)])
                total += self.natural_len[i % len(self.natural)] + 1
                i += 1
        else:
            while total < target_tokens:
                s = synthetic_sentence(rng)
                out.append(s)
                total += max(1, len(s) // 4)
        return out


def needle_document(rng: np.random.Generator, filler: FillerBank, target_tokens: int, n_facts: int,
                    n_questions: int, natural: bool | None = None,
                    fact_kinds: dict[str, float] | None = None) -> TrainDoc:
    """Filler of about ``target_tokens`` tokens with ``n_facts`` facts at uniform depths
    (their kinds weighted by ``fact_kinds``, see :func:`make_fact`)."""
    if natural is None:
        natural = bool(rng.random() < 0.7)
    sents = filler.sentences(rng, target_tokens, natural)
    facts: list[tuple[str, list[str], str, str]] = []
    keys: set[str] = set()
    while len(facts) < n_facts:
        f = make_fact(rng, fact_kinds)
        if f[3] not in keys:
            keys.add(f[3])
            facts.append(f)
    for f in facts:
        sents.insert(int(rng.integers(len(sents) + 1)), f[0])
    qas = []
    order = rng.permutation(len(facts))
    for j in range(n_questions):
        sent, questions, answer, _ = facts[int(order[j % len(facts)])]
        qas.append(QA(questions[int(rng.integers(len(questions)))], answer, "fact"))
    return TrainDoc(" ".join(sents), qas, "needle")


# ---------------------------------------------------------------------------------------------
SQUAD_FILE = "squad-v1.1-dev-40articles.json"
"""The SQuAD v1.1 dev articles in the evaluation-data folder (:func:`evaldata_dir`)."""


def has_squad(root: Path | None = None) -> bool:
    """Whether the SQuAD file is in the evaluation-data folder (tests skip without it)."""
    return ((root or evaldata_dir()) / SQUAD_FILE).is_file()


def load_squad(part: str, root: Path | None = None) -> list[dict[str, Any]]:
    """SQuAD articles of a split part (``train`` or ``validation``): ``[{title, paragraphs}]``."""
    root = root or evaldata_dir()
    data = json.loads((root / SQUAD_FILE).read_text())
    titles = set(load_splits()["squad"][part])
    return [a for a in data["data"] if a["title"] in titles]


def squad_paragraphs(part: str, root: Path | None = None) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """``[(context, [(question, answers)])]`` for every paragraph of a split part."""
    out = []
    for article in load_squad(part, root):
        for p in article["paragraphs"]:
            qas = [(q["question"], [a["text"] for a in q["answers"]]) for q in p["qas"] if q["answers"]]
            if qas:
                out.append((p["context"], qas))
    return out


def squad_document(rng: np.random.Generator, paragraphs: list[tuple[str, list[tuple[str, list[str]]]]],
                   n_questions: int, n_paragraphs: int = 1) -> TrainDoc:
    """One or more consecutive SQuAD paragraphs with questions about them."""
    i = int(rng.integers(len(paragraphs)))
    chosen = [paragraphs[(i + k) % len(paragraphs)] for k in range(n_paragraphs)]
    pool = [(q, a) for _, qas in chosen for q, a in qas]
    picks = rng.permutation(len(pool))[:n_questions]
    qas = [QA(pool[int(j)][0], min(pool[int(j)][1], key=len), "squad") for j in picks]
    return TrainDoc("\n\n".join(c for c, _ in chosen), qas, "squad")


def answer_sentence(sentences: list[str], answers: list[str]) -> tuple[int, str] | None:
    """``(index, answer)``: the first sentence holding one of ``answers`` (the shortest that
    occurs), or ``None`` when no single sentence holds any of them (an answer cut by the split)."""
    for i, sentence in enumerate(sentences):
        found = [a for a in answers if a and a in sentence]
        if found:
            return i, min(found, key=len)
    return None


def squad_run_document(rng: np.random.Generator, paragraphs: list[tuple[str, list[tuple[str, list[str]]]]],
                       n_questions: int, max_sentences: int) -> TrainDoc:
    """A run of 1 to ``max_sentences`` consecutive sentences of a SQuAD paragraph around the
    answer of one of its gold questions, asked that question and up to ``n_questions - 1`` more
    whose answers the run holds: SQuAD's own paraphrased questions on short documents (the length
    curriculum of the needles and the cloze runs, applied to real questions)."""
    from .cloze import split_cloze_sentences

    for _ in range(100):
        context, qas = paragraphs[int(rng.integers(len(paragraphs)))]
        sentences = split_cloze_sentences(context)
        anchored = [(q, hit) for q, answers in qas if (hit := answer_sentence(sentences, answers))]
        if not anchored:
            continue
        question, (at, answer) = anchored[int(rng.integers(len(anchored)))]
        k = min(len(sentences), int(rng.integers(1, max_sentences + 1)))
        start = int(rng.integers(max(0, at - k + 1), min(at, len(sentences) - k) + 1))
        text = " ".join(sentences[start:start + k])
        picked = [QA(question, answer, "squad")]
        others = [(q, answers) for q, answers in qas if q != question]
        for j in rng.permutation(len(others)):
            if len(picked) >= n_questions:
                break
            q, answers = others[int(j)]
            if hit := answer_sentence([text], answers):
                picked.append(QA(q, hit[1], "squad"))
        return TrainDoc(text, picked, "squad")
    raise ValueError("no SQuAD paragraph has a gold answer inside one sentence (is the SQuAD file there?)")


def speech_passages(part: str = "train", root: Path | None = None, words: int = 150) -> list[str]:
    """Consecutive speech sentences (digits kept) grouped into passages of about ``words`` words."""
    out: list[str] = []
    current: list[str] = []
    count = 0
    for s in speech_sentences(part, root, digits=True):
        current.append(s)
        count += len(s.split())
        if count >= words:
            out.append(" ".join(current))
            current, count = [], 0
    return out


CLOZE_SQUAD_SHARE = 0.6
"""Share of cloze documents drawn from SQuAD paragraphs (Wikipedia); the rest are speech passages."""


def cloze_document(rng: np.random.Generator, squad_texts: list[str], speech_texts: list[str],
                   n_questions: int, n_passages: int = 1, max_sentences: int = 0) -> TrainDoc:
    """Consecutive passages (SQuAD paragraphs or speech passages) with cloze-translated questions
    (:mod:`.cloze`) about them; passages without any cloze question are skipped.

    With ``max_sentences`` > 0 the document is instead a run of 1 to ``max_sentences`` consecutive
    sentences of one passage (short natural documents: the first step from templated needles to
    reading ordinary text)."""
    from .cloze import pick_cloze, split_cloze_sentences

    for _ in range(100):
        texts = squad_texts if (rng.random() < CLOZE_SQUAD_SHARE or not speech_texts) else speech_texts
        if not texts:
            break
        i = int(rng.integers(len(texts)))
        if max_sentences > 0:
            sentences = split_cloze_sentences(texts[i])
            k = min(len(sentences), int(rng.integers(1, max_sentences + 1)))
            start = int(rng.integers(len(sentences) - k + 1))
            text = " ".join(sentences[start:start + k])
        else:
            text = "\n\n".join(texts[(i + k) % len(texts)] for k in range(n_passages))
        picked = pick_cloze(rng, text, n_questions)
        if picked:
            return TrainDoc(text, [QA(q.question, q.answer, "cloze") for q in picked], "cloze")
    raise ValueError("no passage yields a cloze question (are the SQuAD and speech files there?)")


# General-knowledge questions for interference control. None of them is a question of the
# held-out interference set (d2l_haystack/data/general_qa.jsonl); general_questions() checks it.
_GENERAL_TEMPLATES: list[tuple[str, list[str]]] = [
    ("What is the capital of {}?", ("Portugal Greece Kenya Peru Norway Sweden Poland Turkey Argentina Thailand "
                                    "Vietnam India Australia Ireland Austria Chile Cuba Morocco Nigeria").split()),
    ("How many legs does a {} have?", "dog cat bird horse ant octopus cow chicken".split()),
    ("What is the chemical symbol for {}?", "iron silver oxygen sodium carbon helium copper".split()),
    ("Who wrote {}?", ["Hamlet", "Macbeth", "Pride and Prejudice", "War and Peace", "Don Quixote",
                       "The Odyssey", "Oliver Twist", "Moby-Dick"]),
    ("What language is spoken in {}?", "France Germany Italy Portugal Argentina Japan Sweden Greece".split()),
    ("What color is {}?", ["grass", "snow", "coal", "a ripe tomato", "milk", "a lemon"]),
    ("What is the plural of {}?", "mouse child goose tooth foot woman".split()),
    ("How many {} are there?", ["minutes in an hour", "seconds in a minute", "days in a leap year",
                                "weeks in a year", "players in a football team", "strings on a violin"]),
    ("Which planet is {}?", ["closest to the Sun", "famous for its rings", "the third from the Sun"]),
    ("What is the opposite of {}?", "happy up open wet young loud".split()),
]


def held_out_general_questions() -> set[str]:
    """The questions of the held-out interference set (never used in training)."""
    path = DATA_DIR / "general_qa.jsonl"
    return {json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()}


def general_question(rng: np.random.Generator, held_out: set[str]) -> str:
    """A general-knowledge question (templates or arithmetic) that is not in ``held_out``."""
    while True:
        if rng.random() < 0.75:
            template, fills = _GENERAL_TEMPLATES[int(rng.integers(len(_GENERAL_TEMPLATES)))]
            q = template.format(fills[int(rng.integers(len(fills)))])
        else:
            a, b = int(rng.integers(2, 20)), int(rng.integers(2, 20))
            q = str(rng.choice([f"What is {a} times {b}?", f"What is {a + b} minus {b}?", f"What is {a} plus {b}?"]))
        if q not in held_out:
            return q


def unrelated_questions(rng: np.random.Generator, n: int, squad_pool: list[str],
                        general_share: float = 0.0) -> list[str]:
    """Questions for interference control (answered later by the base model without adapter).

    ``general_share`` of them are general-knowledge questions (:func:`general_question`); with
    0 the pool is exactly the one earlier checkpoints were trained with.
    """
    out = []
    held_out = held_out_general_questions() if general_share > 0 else set()
    for _ in range(n):
        if general_share > 0 and rng.random() < general_share:
            out.append(general_question(rng, held_out))
            continue
        r = rng.random()
        if r < 0.5 and squad_pool:
            out.append(squad_pool[int(rng.integers(len(squad_pool)))])
        elif r < 0.75:
            out.append(make_fact(rng)[1][0])  # a fact question about something NOT in the document
        else:
            a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
            region = rng.choice(["Europe", "Asia", "Africa"])
            out.append(rng.choice([f"What is {a} plus {b}?", f"Name a country in {region}.",
                                   f"Write one sentence about the {rng.choice(_NOUN)}.",
                                   f"What is the opposite of {rng.choice(['big', 'fast', 'early', 'light'])}?"]))
    return out
