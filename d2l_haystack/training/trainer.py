"""Meta-training of a D2L hypernetwork (context distillation on generated and SQuAD data).

Per step: ``batch_docs`` documents are generated (seeded by ``(seed, step)`` so a resumed run is
exact), each split into 1..8 chunks (the reference's chunk-count mix in stage 2), every chunk is
wrapped in the chat template (:mod:`d2l_haystack.core.prompts`) and read by the frozen base model
(early exit), the hypernetwork turns each chunk into rank-``r`` LoRA factors, a document's chunks
are concatenated along rank plus the bias block, and the student (base model + that adapter, no
document in the prompt) answers several questions per document. Loss: cross-entropy on the answer
tokens plus the end-of-turn token, averaged per question then per document, plus an L1 penalty on
the generated factors. Unrelated questions (target: the base model's own answer without adapter)
teach the adapter to leave other questions alone.

Checkpoints: ``state.pt`` (full training state, for ``--resume``) at a fixed wall-clock interval,
``checkpoint/`` (fp16 safetensors + config, what the engine loads) and ``best/`` (best held-out
score). Metrics are appended to ``metrics.jsonl``; ``loss.png`` plots them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.encoder import ContextEncoder, decoder_of, left_pad_batch, pad_batch
from ..core.errors import ConfigError
from ..core.hypernet import (
    HypernetConfig,
    Hypernetwork,
    config_for_model,
    extended,
    load_checkpoint,
    save_checkpoint,
)
from ..core.lora import document_factors, encode_chunks, get_hooks, length_groups
from ..core.models import DEFAULT_MODEL, get_model
from ..core.prompts import ChatFormat, chunk_text_ids, chunk_token_ids
from ..core.textio import CHUNKINGS, DEFAULT_CHUNKING
from . import data as D
from .instructions import Instruction, instructions_document
from .realistic import DEFAULT_PHRASINGS, check_phrasings, realistic_document
from .recall import recall_question
from .swap import AnswerPool, swap_document, swap_run_document
from .teacher import TeacherCache, TeacherTarget, soft_cross_entropy

DOC_KINDS = ("needle", "squad", "cloze", "swap", "realistic", "instructions")
"""Document kinds of :attr:`Phase.mix`: fact needles in filler, SQuAD paragraphs with their gold
questions, passages with cloze-translated questions (:mod:`.cloze`), SQuAD paragraphs with their
gold questions' answers swapped in text and target (:mod:`.swap`), generated everyday documents
with fresh values (:mod:`.realistic`; held-out kinds and templates in evaluation), and system
prompts of checkable instructions answered by the teacher WITH them (:mod:`.instructions`: the
Text-to-LoRA variant; needs ``distill_top_k``)."""
QA_KINDS = ("fact", "squad", "cloze", "swap", "realistic", "instructions", "recall", "unrelated")
READ_KINDS = ("fact", "squad", "cloze", "swap", "realistic", "instructions", "recall")
"""Kinds whose ``eval_read_<kind>`` the held-out evaluation reports: the answer cross-entropy with
another document's adapter minus with the document's own (> 0: the adapter carries what was
read, not only the answer's shape)."""
RECALL_DOC_KINDS = ("squad", "cloze", "swap", "realistic")
"""Document kinds that :attr:`Phase.recall_prob` gives recall questions (not needles: their filler
is not worth the adapter's room; not instructions: they hold no facts)."""
SCORE_KINDS = ("fact", "squad", "realistic")
"""The held-out accuracies whose mean is ``eval_score`` (those the evaluation documents have)."""
"""Question kinds (:attr:`.data.QA.kind`); each gets ``ce_<kind>`` and ``acc_<kind>`` in the metrics."""


@dataclass
class Phase:
    """A stretch of training with its own document lengths and chunk counts."""

    until_step: int
    min_tokens: int = 32
    max_tokens: int = 256
    chunk_mix: dict[str, float] = field(default_factory=lambda: {"1": 1.0})
    mix: dict[str, float] = field(default_factory=lambda: {"needle": 1.0})
    max_facts: int = 3
    fact_kinds: dict[str, float] | None = None
    """Weights of the fact kinds (:data:`.data.FACT_KINDS`) in needle documents; default uniform."""
    cloze_sentences: int = 0
    """Cloze documents of this phase are runs of 1 to this many sentences of one passage (0: whole
    passages, ``chunk_mix`` of them)."""
    chunking: str = DEFAULT_CHUNKING
    """How single-chunk documents of this phase are cut into adapter chunks: ``"tokens"``: one chunk;
    ``"sentences"`` or ``"auto"``: as the engine with that chunking cuts them (one chunk per
    sentence), so training sees the layout a workspace with ``chunking: auto`` serves."""
    max_chunks: int = 0
    """With sentence chunks: apply at most this many chunks per document, as the engine does at
    question time (it applies the ``max_chunks`` chunks the question is about): every chunk that
    holds an answer to one of the document's questions, then others drawn at random, in document
    order (0: all). Only the kept chunks are encoded."""
    squad_sentences: int = 0
    """SQuAD documents (gold and swapped) of this phase are runs of 1 to this many sentences of a
    paragraph around a gold answer, asked their gold questions (:func:`.data.squad_run_document`,
    :func:`.swap.swap_run_document`; 0: whole paragraphs, ``chunk_mix`` of them)."""
    recall_prob: float = 0.0
    """The chance that a document of :data:`RECALL_DOC_KINDS` gets one recall question beside its
    questions: continue one of its sentences from the first words (:mod:`.recall`), a target on
    every token of the continuation rather than on a two-token answer."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mix) - set(DOC_KINDS))
        if unknown:
            raise ValueError(f"unknown document kinds {unknown} in mix; known: {', '.join(DOC_KINDS)}")
        if self.fact_kinds is not None:
            D.fact_kind_probs(self.fact_kinds)  # fail at load time, not at the first document
        if self.max_chunks < 0:
            raise ValueError(f"max_chunks must be 0 (all) or more, got {self.max_chunks}")
        if self.chunking not in CHUNKINGS:
            raise ValueError(f"chunking must be one of {', '.join(CHUNKINGS)}, got {self.chunking!r}")
        if not 0.0 <= self.recall_prob <= 1.0:
            raise ValueError(f"recall_prob must be within [0, 1], got {self.recall_prob}")
        for name in ("cloze_sentences", "squad_sentences"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (whole passages) or more, got {getattr(self, name)}")


DISTILL_MODES = ("greedy", "gold")
INSTRUCTIONS_TARGETS = ("teacher", "compliant")


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    out_dir: str = "runs/default"
    init_from: str | None = None
    seed: int = 0
    device: str | None = None
    hypernet: dict[str, Any] = field(default_factory=dict)
    batch_docs: int = 8
    questions_per_doc: int = 2
    unrelated_prob: float = 0.3
    unrelated_pool: int = 256
    unrelated_general_share: float = 0.0
    """Share of the unrelated pool that is general-knowledge questions (:func:`.data.general_question`)."""
    unrelated_seed: int | None = None
    """Seed of the unrelated pool (default: ``seed``); a later stage can keep an earlier stage's pool
    (and copy its ``unrelated.jsonl`` instead of answering the questions again) with fresh documents."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 1000
    grad_clip: float = 1.0
    grad_accum: int = 1
    l1: float = 0.1
    distill_top_k: int = 0
    """> 0: questions of the kinds in ``distill_kinds`` are trained by top-k context distillation
    (targets: the base model's greedy answer WITH the document and its top-k probabilities,
    :mod:`.teacher`) instead of cross-entropy on the gold answer."""
    distill_kinds: list[str] = field(default_factory=lambda: ["squad"])
    distill_mode: str = "greedy"
    """``"greedy"``: the target is the teacher's own greedy answer and its top-k (the reference);
    ``"gold"``: the gold answer, with the teacher's top-k distribution along it mixed in
    (:meth:`.TeacherCache.forced_many`): the gold form with the teacher's soft reading."""
    distill_gold_weight: float = 0.5
    """``distill_mode: gold``: the one-hot gold share of each target (the rest is the teacher's)."""
    teacher_max_new_tokens: int = 32
    instructions_target: str = "teacher"
    """Instructions documents: ``"teacher"``: the base model's reply WITH the system prompt and its
    top-k (the reference); ``"compliant"``: that reply, rewritten by the instruction's rule where it
    does not follow it (:meth:`.Instruction.comply`; a small model often ignores its system prompt),
    with the teacher's top-k along it mixed in at ``distill_gold_weight``."""
    instructions_plain_share: float = 0.0
    """``instructions_target: compliant``: the share of instructions requests whose reply is the base
    model's WITHOUT the instructions (what it answers unprompted, so the request's content keeps the
    base model's quality), rewritten by the rule; the teacher with the instructions still gives the
    soft part. Kinds without a rewrite (``min_words``) keep the instructed reply."""
    realistic_phrasings: str = DEFAULT_PHRASINGS
    """The training part's templates of generated realistic documents (:data:`.realistic.PHRASINGS`):
    ``base``, or ``more`` (two more statements and questions per fact); the held-out part is the same
    with either."""
    bias_trainable_from: int = 0
    phases: list[Phase] = field(default_factory=lambda: [Phase(until_step=10**9)])
    checkpoint_seconds: float = 300.0
    eval_every: int = 100
    eval_docs: int = 48
    log_every: int = 10
    time_budget_seconds: float | None = None
    stop_at_step: int | None = None
    """Stop (with a checkpoint) at this step; unlike ``max_steps`` it leaves the schedule unchanged."""
    autocast: str = "auto"
    threads: int | None = None
    copy_lr_scale: float = 1.0
    """Learning-rate multiplier of the copy path's parameters (``hypernet: {copy_path: true}``): they
    start neutral (gates at 0) beside a trained network and must grow from nothing."""
    copy_gate_init: float = 0.0
    """Where the copy path's new gates start (a new network, or the copy path added to ``init_from``;
    never a checkpoint's trained gates, never on resume). At 0 the pointer gets no gradient until a
    gate has grown (stages R, S); a small value (the shipped network's rows of ``B`` have norm
    ~0.015, a pointer read ~17) trains the pointer from step 1 at the price of a small first change
    to the adapters."""

    def __post_init__(self) -> None:
        if self.distill_mode not in DISTILL_MODES:
            raise ValueError(f"distill_mode must be one of {', '.join(DISTILL_MODES)}, got {self.distill_mode!r}")
        if not 0.0 <= self.distill_gold_weight <= 1.0:
            raise ValueError(f"distill_gold_weight must be within [0, 1], got {self.distill_gold_weight}")
        if self.instructions_target not in INSTRUCTIONS_TARGETS:
            raise ValueError(f"instructions_target must be one of {', '.join(INSTRUCTIONS_TARGETS)}, "
                             f"got {self.instructions_target!r}")
        if self.copy_lr_scale <= 0:
            raise ValueError(f"copy_lr_scale must be > 0, got {self.copy_lr_scale}")
        if self.copy_gate_init and not self.hypernet.get("copy_path"):
            raise ValueError("copy_gate_init needs hypernet: {copy_path: true} (the gates it starts)")
        check_phrasings(self.realistic_phrasings, "realistic_phrasings")
        if not 0.0 <= self.instructions_plain_share <= 1.0:
            raise ValueError(f"instructions_plain_share must be within [0, 1], got {self.instructions_plain_share}")
        if self.distill_top_k <= 0 and any(isinstance(p, Phase) and p.mix.get("instructions") for p in self.phases):
            raise ValueError("a phase mixes in instructions documents: they are trained against the teacher's "
                             "replies, so distill_top_k must be > 0")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML (or ``.json``) config; ``overrides`` that are not ``None`` win.

        :raises ConfigError: (a ``ValueError``) naming the file and the problem: missing or
            unreadable file, not a mapping, unknown field, bad phase.
        """
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from None
        is_json = str(path).endswith(".json")
        try:
            raw = json.loads(text) if is_json else _yaml(text)
        except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
            kind = "JSON" if is_json else "YAML"
            raise ConfigError(f"training config {path} is not valid {kind}: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"training config {path} must be a mapping of fields, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"training config {path}: unknown fields {unknown}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        phases = []
        for i, p in enumerate(raw.get("phases") or []):
            try:
                phases.append(Phase(**p))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"training config {path}: phase {i + 1}: {exc}") from None
        raw["phases"] = phases or [Phase(until_step=10**9)]
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"training config {path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _yaml(text: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(text) or {}


def _phase_at(phases: list[Phase], step: int) -> Phase:
    for p in phases:
        if step < p.until_step:
            return p
    return phases[-1]


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over the rows that have the key (a data kind absent from some steps, even
    the last one, is still logged)."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return {k: float(np.mean([row[k] for row in rows if k in row])) for k in keys}


def _share_hit(key: str, share: float) -> bool:
    """Whether ``key`` falls in a ``share`` of all keys (a stable hash: the same on every resume)."""
    return share > 0 and zlib.crc32(key.encode("utf-8")) % 10_000 < share * 10_000


def _draw(rng: np.random.Generator, mix: dict[str, float]) -> str:
    keys = list(mix)
    probs = np.array([mix[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=probs / probs.sum()))]


class Trainer:
    """Resumable trainer; ``Trainer(cfg).train()``."""

    def __init__(self, config: TrainConfig, resume: bool = False, log: Any = print) -> None:
        self.cfg = config
        self.log = log
        if config.threads:
            torch.set_num_threads(config.threads)
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.loaded = get_model(config.model, device=config.device)
        self.device = self.loaded.device
        self.model, self.tok = self.loaded.model, self.loaded.tokenizer
        self.fmt = ChatFormat(self.tok)
        torch.manual_seed(config.seed)
        state_file = self.out / "state.pt"
        saved = torch.load(state_file, map_location=self.device, weights_only=False) \
            if resume and state_file.is_file() else None
        if saved is not None:  # the state holds the weights: init_from is not needed again
            self.hypernet = Hypernetwork(HypernetConfig.from_dict(saved["hypernet_config"])).to(self.device)
        elif config.init_from:
            self.hypernet, _ = load_checkpoint(config.init_from, expected_base_model=self.loaded.name,
                                               map_location=self.device)
            if config.copy_gate_init and self.hypernet.config.copy_path:
                raise ConfigError(f"init_from {config.init_from} has trained copy gates: copy_gate_init would "
                                  f"overwrite them (it starts new gates only)")
            changes = {k: v for k, v in config.hypernet.items() if getattr(self.hypernet.config, k, None) != v}
            if changes:  # e.g. the copy path added to a trained network (it starts neutral)
                try:
                    self.hypernet = extended(self.hypernet, **changes)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"init_from {config.init_from}: hypernet {changes}: {exc}") from None
        else:
            hcfg = config_for_model(self.model, self.loaded.name, **config.hypernet)
            self.hypernet = Hypernetwork(hcfg).to(self.device)
        if saved is None and config.copy_gate_init:  # new gates (validated: the config has copy_path)
            with torch.no_grad():
                self.hypernet.copy_gate.fill_(config.copy_gate_init)
        self.hypernet.train()
        hc = self.hypernet.config
        self.encoder = ContextEncoder(self.model, hc.encoder_mode, hc.exit_layer)
        self.hooks = get_hooks(self.model, hc.target_modules)
        self.teacher = TeacherCache(self.model, self.fmt, config.distill_top_k, config.teacher_max_new_tokens,
                                    path=self.out / "teacher.pt") if config.distill_top_k > 0 else None
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        copy: list[torch.nn.Parameter] = []
        for name, p in self.hypernet.named_parameters():
            plain = p.dim() < 2 or any(k in name for k in ("scale_", "norm", "latents", "layer_embed", "bias_"))
            (copy if name.startswith("copy_") else no_decay if plain else decay).append(p)
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": config.weight_decay},
                                        {"params": no_decay, "weight_decay": 0.0}]
        if copy:  # a third group only where there is a copy path: older runs' optimizer states still load
            groups.append({"params": copy, "weight_decay": 0.0, "lr": config.lr * config.copy_lr_scale})
        self.opt = torch.optim.AdamW(groups, lr=config.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.step = 0
        self.best_score = -1.0
        self.elapsed = 0.0
        if saved is not None:
            self._load_state(saved)
        use_cuda = self.device.startswith("cuda")
        self.amp = (config.autocast == "bf16") or (config.autocast == "auto" and use_cuda)
        self._prepare_data()

    # -- schedule / state -------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        warm = max(1, self.cfg.warmup_steps)
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, self.cfg.max_steps - warm))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def _save_state(self) -> None:
        state = {"hypernet": self.hypernet.state_dict(), "opt": self.opt.state_dict(),
                 "sched": self.sched.state_dict(), "step": self.step, "best_score": self.best_score,
                 "elapsed": self.elapsed, "config": self.cfg.to_dict(),
                 "hypernet_config": self.hypernet.config.to_dict()}
        tmp = self.out / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "state.pt")
        save_checkpoint(self.hypernet, self.out / "checkpoint", info=self._info())
        if self.teacher is not None:
            self.teacher.save()
        self._plot()

    def _load_state(self, state: dict[str, Any]) -> None:
        """Continue from a ``state.pt`` (read once, in ``__init__``)."""
        self.hypernet.load_state_dict(state["hypernet"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.step, self.best_score, self.elapsed = state["step"], state["best_score"], state["elapsed"]
        self.log(f"resumed from {self.out / 'state.pt'} at step {self.step}")

    def _info(self) -> dict[str, Any]:
        return {"step": self.step, "train_seconds": round(self.elapsed, 1), "best_score": self.best_score,
                "train_config": self.cfg.to_dict(), "device": self.device,
                "torch": torch.__version__}

    # -- data -------------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        t = time.perf_counter()
        self.filler = D.FillerBank(self.tok, "train")
        self.filler_eval = D.FillerBank(self.tok, "heldout")
        self.squad = D.squad_paragraphs("train")
        self.squad_eval = D.squad_paragraphs("validation")
        self._cloze_texts: dict[bool, tuple[list[str], list[str]]] = {}
        self._answer_pools: dict[bool, AnswerPool] = {}
        squad_questions = [q for _, qas in self.squad for q, _ in qas]
        cache = self.out / "unrelated.jsonl"
        if cache.is_file():
            self.unrelated = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
        else:
            pool_seed = self.cfg.seed if self.cfg.unrelated_seed is None else self.cfg.unrelated_seed
            rng = np.random.default_rng([pool_seed, 7])
            questions = D.unrelated_questions(rng, self.cfg.unrelated_pool, squad_questions,
                                              self.cfg.unrelated_general_share)
            answers = self.base_answers(questions)
            self.unrelated = [{"question": q, "answer": a} for q, a in zip(questions, answers)]
            with open(cache, "w") as fh:
                for row in self.unrelated:
                    fh.write(json.dumps(row) + "\n")
        self.log(f"data ready in {time.perf_counter() - t:.1f}s: {len(self.filler.natural)} filler sentences, "
                 f"{len(self.squad)} SQuAD train paragraphs, {len(self.unrelated)} unrelated questions")

    @torch.no_grad()
    def base_answers(self, questions: list[str], max_new_tokens: int = 32, batch: int = 64) -> list[str]:
        """Greedy answers of the base model WITHOUT adapter (left-padded batches)."""
        out: list[str] = []
        pad = self.fmt.pad_id
        for i in range(0, len(questions), batch):
            prompts = [self.fmt.question_ids(q) for q in questions[i:i + batch]]
            ids, mask = left_pad_batch(prompts, pad, self.device)
            width = ids.shape[1]
            gen = self.model.generate(input_ids=ids, attention_mask=mask,
                                      max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                      eos_token_id=self.fmt.stop_ids,
                                      temperature=None, top_p=None, top_k=None)
            for row in gen[:, width:]:
                out.append(self.tok.decode(row, skip_special_tokens=True).strip())
        return out

    def cloze_texts(self, held_out: bool = False) -> tuple[list[str], list[str]]:
        """``(SQuAD paragraphs, speech passages)`` of cloze documents (training or held-out part),
        read on first use."""
        if held_out not in self._cloze_texts:
            squad = self.squad_eval if held_out else self.squad
            self._cloze_texts[held_out] = ([c for c, _ in squad],
                                           D.speech_passages("heldout" if held_out else "train"))
        return self._cloze_texts[held_out]

    def answer_pool(self, held_out: bool = False) -> AnswerPool:
        """Replacement answers of swapped SQuAD documents (from the same part's paragraphs)."""
        if held_out not in self._answer_pools:
            self._answer_pools[held_out] = AnswerPool(self.squad_eval if held_out else self.squad)
        return self._answer_pools[held_out]

    def make_docs(self, rng: np.random.Generator, phase: Phase, n: int, held_out: bool = False) -> list[D.TrainDoc]:
        docs = []
        filler = self.filler_eval if held_out else self.filler
        squad = self.squad_eval if held_out else self.squad
        for _ in range(n):
            chunks = int(_draw(rng, phase.chunk_mix))
            kind = _draw(rng, phase.mix)
            runs = phase.squad_sentences  # > 0: SQuAD documents are runs of 1 to this many sentences
            if kind == "squad" and squad:
                doc = (D.squad_run_document(rng, squad, self.cfg.questions_per_doc, runs) if runs else
                       D.squad_document(rng, squad, self.cfg.questions_per_doc, n_paragraphs=chunks))
            elif kind == "swap" and squad:
                pool = self.answer_pool(held_out)
                doc = (swap_run_document(rng, squad, pool, self.cfg.questions_per_doc, runs) if runs else
                       swap_document(rng, squad, pool, self.cfg.questions_per_doc, n_paragraphs=chunks))
            elif kind == "realistic":
                doc = realistic_document(rng, self.cfg.questions_per_doc, part="heldout" if held_out else "train",
                                         phrasings=self.cfg.realistic_phrasings)
            elif kind == "instructions":  # applies to every request: one chunk, no unrelated question
                # held-out phrasings of the training kinds: the held-out KINDS stay unseen until evaluation
                doc = instructions_document(rng, self.cfg.questions_per_doc,
                                            part="validation" if held_out else "train")
                docs.append(doc)
                continue
            elif kind == "cloze":
                doc = D.cloze_document(rng, *self.cloze_texts(held_out), self.cfg.questions_per_doc,
                                       n_passages=chunks, max_sentences=phase.cloze_sentences)
            else:
                per_chunk = int(rng.integers(phase.min_tokens, phase.max_tokens + 1))
                n_facts = int(rng.integers(1, phase.max_facts + 1))
                doc = D.needle_document(rng, filler, per_chunk * chunks, n_facts, self.cfg.questions_per_doc,
                                          fact_kinds=phase.fact_kinds)
            if phase.recall_prob and doc.source in RECALL_DOC_KINDS and rng.random() < phase.recall_prob:
                recall = recall_question(rng, doc.text, part="heldout" if held_out else "train")
                if recall is not None:
                    doc.qas.append(recall)
            doc.num_chunks = chunks
            doc.chunking = phase.chunking if chunks == 1 else "tokens"
            if doc.chunking != "tokens" and phase.max_chunks:
                doc.chunks = self._kept_chunks(rng, doc, phase.max_chunks)
            if self.unrelated and rng.random() < self.cfg.unrelated_prob:
                u = self.unrelated[int(rng.integers(len(self.unrelated)))]
                doc.qas.append(D.QA(u["question"], u["answer"], "unrelated"))
            docs.append(doc)
        return docs

    def _kept_chunks(self, rng: np.random.Generator, doc: D.TrainDoc, max_chunks: int) -> list[list[int]]:
        """The chunks of ``doc`` an engine would apply (see :attr:`Phase.max_chunks`)."""
        chunks = chunk_text_ids(self.fmt, doc.text, doc.chunking, self.hypernet.config.chunk_tokens)
        if len(chunks) <= max_chunks:
            return chunks
        answers = [qa.answer.lower() for qa in doc.qas if qa.kind != "unrelated" and qa.answer.strip()]
        texts = [self.tok.decode(c).lower() for c in chunks]
        holding = [i for i, t in enumerate(texts) if any(a in t for a in answers)][:max_chunks]
        others = [i for i in range(len(chunks)) if i not in holding]
        fill: Any = rng.choice(len(others), size=max_chunks - len(holding), replace=False) if others else []
        keep = sorted(holding + [others[int(j)] for j in fill])
        return [chunks[i] for i in keep]

    # -- the loss ---------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.amp:
            return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def doc_factors(self, docs: list[D.TrainDoc]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Per-document factors ``(docs, L, K*r + rb, d)`` and the L1 penalty of the generated part."""
        wrapped: list[list[int]] = []
        counts: list[int] = []
        for doc in docs:
            if doc.chunks is not None:
                chunks = doc.chunks
            elif doc.chunking == "tokens":
                ids = self.fmt.document_ids(doc.text)
                chunks = chunk_token_ids(ids, max(1, -(-len(ids) // doc.num_chunks)))
            else:
                chunks = chunk_text_ids(self.fmt, doc.text, doc.chunking, self.hypernet.config.chunk_tokens)
            counts.append(len(chunks))
            wrapped.extend(self.fmt.wrap_chunk(c) for c in chunks)
        factors = encode_chunks(self.encoder, self.hypernet, wrapped, self.tok.pad_token_id, self.device,
                                self._autocast)
        k_max = max(counts)
        bias = self.hypernet.bias_block()
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        l1 = torch.zeros((), device=self.device)
        bias_on = self.step >= self.cfg.bias_trainable_from
        for m, (a, b) in factors.items():
            a, b = a.float(), b.float()
            l1 = l1 + a.abs().mean() + b.abs().mean()
            ba, bb = bias[m]
            if not bias_on:
                ba, bb = ba.detach(), bb.detach()
            per_a, per_b, start = [], [], 0
            for c in counts:  # each document laid out as the engine lays it out, padded to k_max chunks
                da, db = document_factors(a[start:start + c], b[start:start + c], (ba, bb), pad_chunks=k_max - c)
                per_a.append(da)
                per_b.append(db)
                start += c
            out[m] = (torch.stack(per_a), torch.stack(per_b))
        return out, l1

    def loss(self, docs: list[D.TrainDoc], other_adapters: bool = False,
             factors: tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Training loss of a batch and its statistics per question kind.

        :param other_adapters: answer every document's questions with the NEXT document's adapter
            (a reading control: what the adapter adds beyond the answer's shape is the loss
            difference to this; evaluation only).
        :param factors: :meth:`doc_factors` of ``docs`` when already computed (the evaluation
            scores the same adapters twice).
        """
        adapters, l1 = factors if factors is not None else self.doc_factors(docs)
        if other_adapters:
            adapters = {m: (a.roll(1, 0), b.roll(1, 0)) for m, (a, b) in adapters.items()}
        seqs, labels_start, q_doc, kinds = [], [], [], []
        soft_ids, soft_probs = [], []  # per question: (answer length, k) targets
        k_top = max(1, self.cfg.distill_top_k)
        distilled = [(doc.text, qa.question, qa.answer) for doc in docs for qa in doc.qas
                     if self.teacher is not None and qa.kind in self.cfg.distill_kinds and qa.kind != "instructions"]
        system_teacher = iter(self._instructions_targets(docs))
        if self.teacher is None:
            teacher: Iterator[TeacherTarget] = iter([])
        elif self.cfg.distill_mode == "gold":
            with self._autocast():  # the teacher's pass runs at the student's precision
                teacher = iter(self.teacher.forced_many([(d, q, self.fmt.answer_ids(a)) for d, q, a in distilled],
                                                        self.cfg.distill_gold_weight))
        else:
            with self._autocast():
                teacher = iter(self.teacher.get_many([(d, q) for d, q, _ in distilled]))
        for d, doc in enumerate(docs):
            for qa in doc.qas:
                prompt = self.fmt.question_ids(qa.question)
                if qa.kind == "instructions":
                    t = next(system_teacher)
                    ans, t_ids, t_probs = t.ids, t.top_ids, t.top_probs
                elif self.teacher is not None and qa.kind in self.cfg.distill_kinds:
                    t = next(teacher)
                    ans, t_ids, t_probs = t.ids, t.top_ids, t.top_probs
                else:  # one-hot on the gold answer
                    ans = self.fmt.answer_ids(qa.answer)
                    t_ids = torch.tensor(ans, dtype=torch.long)[:, None].expand(-1, k_top)
                    t_probs = torch.zeros(len(ans), k_top)
                    t_probs[:, 0] = 1.0
                soft_ids.append(t_ids)
                soft_probs.append(t_probs)
                seqs.append(prompt + ans)
                labels_start.append(len(prompt))
                q_doc.append(d)
                kinds.append(qa.kind)
        q_loss, correct = self._student(adapters, seqs, labels_start, q_doc, soft_ids, soft_probs)
        idx = torch.tensor(q_doc, device=self.device)
        doc_loss = torch.zeros(len(docs), device=self.device).index_add(0, idx, q_loss)
        doc_n = torch.zeros(len(docs), device=self.device).index_add(0, idx, torch.ones_like(q_loss))
        ce = (doc_loss / doc_n).mean()
        total = ce + self.cfg.l1 * l1
        stats: dict[str, Any] = {"loss": total.item(), "ce": ce.item(), "l1": l1.item()}
        for kind in QA_KINDS:
            sel = [i for i, k in enumerate(kinds) if k == kind]
            if sel:
                stats[f"ce_{kind}"] = q_loss[sel].mean().item()
                stats[f"acc_{kind}"] = correct[sel].mean().item()
        return total, stats

    def _instructions_targets(self, docs: list[D.TrainDoc]) -> list[TeacherTarget]:
        """Targets of the instructions requests of ``docs``, in order: the base model's replies WITH
        the system prompt (``instructions_target: compliant``: rewritten where they do not comply)."""
        instructed = [(doc, qa.question) for doc in docs for qa in doc.qas if qa.kind == "instructions"]
        if not instructed:
            return []
        assert self.teacher is not None  # TrainConfig refuses instructions without distill_top_k
        with self._autocast():  # the base model's replies WITH the system prompt
            targets = self.teacher.get_many([(doc.text, q) for doc, q in instructed], system=True)
        if self.cfg.instructions_target == "teacher":
            return targets
        plain_at = [i for i, (doc, q) in enumerate(instructed) if _share_hit(doc.text + "\n" + q,
                                                                               self.cfg.instructions_plain_share)]
        with self._autocast():  # no instructions: cached across steps (the requests repeat)
            plain = dict(zip(plain_at, self.teacher.get_many([("", instructed[i][1]) for i in plain_at], system=True)))
        fixes: list[tuple[int, tuple[str, str, list[int]]]] = []
        for i, ((doc, q), t) in enumerate(zip(instructed, targets)):
            inst = Instruction.from_dict(doc.meta["instruction"])
            reply = self.fmt.tokenizer.decode(t.ids, skip_special_tokens=True).strip()
            fixed = inst.comply(reply)
            from_plain = False
            if i in plain:  # the unprompted reply, rewritten, where the rule can make it comply
                unprompted = inst.comply(self.fmt.tokenizer.decode(plain[i].ids, skip_special_tokens=True).strip())
                from_plain = inst.check(unprompted)
                fixed = unprompted if from_plain else fixed
            if from_plain or fixed != reply:
                fixes.append((i, (doc.text, q, self.fmt.answer_ids(fixed))))
        if fixes:
            with self._autocast():
                forced = self.teacher.forced_many([f for _, f in fixes], self.cfg.distill_gold_weight, system=True)
            for (i, _), t in zip(fixes, forced):
                targets[i] = t
        return targets

    def _student(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], seqs: list[list[int]],
                 starts: list[int], q_doc: list[int], soft_ids: list[torch.Tensor],
                 soft_probs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-question mean answer loss and all-tokens-right flags of the student (no document).

        Questions are run in (at most two) groups of similar length: long unrelated answers would
        otherwise pad every short fact question of the batch.
        """
        groups = length_groups([len(x) for x in seqs])
        order = [i for g in groups for i in g]
        losses, hits = [], []
        for group in groups:
            ids, mask = pad_batch([seqs[i] for i in group], self.tok.pad_token_id, self.device)
            # hidden state at position p predicts token p + 1: answer tokens are starts[i]..len - 1
            rows = torch.cat([torch.full((len(seqs[i]) - starts[i],), j) for j, i in enumerate(group)]).to(self.device)
            cols = torch.cat([torch.arange(starts[i] - 1, len(seqs[i]) - 1) for i in group]).to(self.device)
            doc_idx = torch.tensor([q_doc[i] for i in group], device=self.device)
            qf = {m: (a[doc_idx], b[doc_idx]) for m, (a, b) in factors.items()}
            with self._autocast(), self.hooks.apply(qf, scale=self.hypernet.config.alpha):
                hidden = decoder_of(self.model)(input_ids=ids, attention_mask=mask).last_hidden_state
                # the vocabulary projection only at answer positions (answers are a few tokens)
                picked = self.model.get_output_embeddings()(hidden[rows, cols])
            picked = picked.float()
            target = ids[rows, cols + 1]
            flat_loss = soft_cross_entropy(picked, torch.cat([soft_ids[i] for i in group]).to(self.device),
                                           torch.cat([soft_probs[i] for i in group]).to(self.device))
            n_tok = torch.zeros(len(group), device=self.device).index_add(0, rows, torch.ones_like(flat_loss))
            losses.append(torch.zeros(len(group), device=self.device).index_add(0, rows, flat_loss) / n_tok)
            good = (picked.argmax(-1) == target).float()
            right = torch.zeros(len(group), device=self.device).index_add(0, rows, good)
            hits.append(right == n_tok)
        inverse = torch.empty(len(seqs), dtype=torch.long, device=self.device)
        inverse[torch.tensor(order, device=self.device)] = torch.arange(len(seqs), device=self.device)
        return torch.cat(losses)[inverse], torch.cat(hits).float()[inverse]

    # -- loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Teacher-forced held-out score on a fixed set (held-out filler, SQuAD validation)."""
        self.hypernet.eval()
        rng = np.random.default_rng([self.cfg.seed, 999_999])
        phase = _phase_at(self.cfg.phases, self.step)
        sums: dict[str, list[float]] = {}
        bs = self.cfg.batch_docs
        for i in range(0, self.cfg.eval_docs, bs):
            docs = self.make_docs(rng, phase, min(bs, self.cfg.eval_docs - i), held_out=True)
            factors = self.doc_factors(docs)
            _, stats = self.loss(docs, factors=factors)
            for k, v in stats.items():
                sums.setdefault(k, []).append(v)
            if len(docs) > 1:  # the same questions with another document's adapter (same factors)
                _, other = self.loss(docs, other_adapters=True, factors=factors)
                for kind in READ_KINDS:
                    if f"ce_{kind}" in other and f"ce_{kind}" in stats:
                        sums.setdefault(f"read_{kind}", []).append(other[f"ce_{kind}"] - stats[f"ce_{kind}"])
        self.hypernet.train()
        result = {f"eval_{k}": float(np.mean(v)) for k, v in sums.items()}
        # fact and squad always count (0 when absent), as for every earlier checkpoint
        scored = [result.get(f"eval_acc_{k}", 0.0) for k in SCORE_KINDS
                  if k in ("fact", "squad") or f"eval_acc_{k}" in result]
        result["eval_score"] = float(np.mean(scored))
        if "eval_ce_instructions" in result and not any(f"eval_acc_{k}" in result
                                                         for k in READ_KINDS if k != "instructions"):
            # instructions alone: replies of dozens of tokens are rarely all right, so the score is the
            # geometric mean probability of the teacher's tokens (higher is better, as for the others)
            result["eval_score"] = float(np.exp(-result["eval_ce_instructions"]))
        return result

    def _write_metrics(self, row: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def _plot(self) -> None:
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        train = [r for r in rows if "ce" in r]
        evals = [r for r in rows if "eval_score" in r]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for key in ("ce", *(f"ce_{k}" for k in QA_KINDS)):
            pts = [(r["step"], r[key]) for r in train if key in r]
            if pts:
                ax1.plot(*zip(*pts), label=key, lw=1)
        ax1.set_xlabel("step")
        ax1.set_ylabel("cross-entropy")
        ax1.set_yscale("log")
        ax1.legend()
        for key in (f"eval_acc_{k}" for k in QA_KINDS):
            pts = [(r["step"], r[key]) for r in evals if key in r]
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=key)
        ax2.set_xlabel("step")
        ax2.set_ylabel("held-out answer accuracy (teacher forced)")
        ax2.set_ylim(0, 1)
        if evals:
            ax2.legend()
        fig.tight_layout()
        fig.savefig(self.out / "loss.png", dpi=90)
        plt.close(fig)

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        self.log(f"training {self.hypernet.num_parameters() / 1e6:.2f}M-parameter hypernetwork on {self.device} "
                 f"from step {self.step} to {cfg.stop_at_step or cfg.max_steps} (schedule: {cfg.max_steps} steps) "
                 f"-> {self.out}")
        (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        session_start = time.perf_counter()
        last_ckpt = time.perf_counter()
        window: list[dict[str, Any]] = []
        last_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        while self.step < last_step:
            t0 = time.perf_counter()
            phase = _phase_at(cfg.phases, self.step)
            self.opt.zero_grad(set_to_none=True)
            stats_acc: dict[str, list[float]] = {}
            for micro in range(cfg.grad_accum):
                rng = np.random.default_rng([cfg.seed, self.step, micro])
                docs = self.make_docs(rng, phase, cfg.batch_docs)
                loss, stats = self.loss(docs)
                (loss / cfg.grad_accum).backward()
                for k, v in stats.items():
                    stats_acc.setdefault(k, []).append(v)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.hypernet.parameters(), cfg.grad_clip).item()
            self.opt.step()
            self.sched.step()
            self.step += 1
            dt = time.perf_counter() - t0
            self.elapsed += dt
            row = {k: float(np.mean(v)) for k, v in stats_acc.items()}
            row.update(step=self.step, lr=float(self.sched.get_last_lr()[0]), grad_norm=grad_norm, seconds=dt,
                       scale_B=self.hypernet.scale_B.abs().mean().item())
            window.append(row)
            out_of_time = cfg.time_budget_seconds is not None and \
                time.perf_counter() - session_start > cfg.time_budget_seconds
            if self.step % cfg.log_every == 0 or self.step == last_step or out_of_time:
                avg = _mean_rows(window)
                avg["step"] = self.step
                avg["elapsed"] = round(self.elapsed, 1)
                self._write_metrics(avg)
                self.log(f"step {self.step}/{cfg.max_steps} loss {avg['loss']:.3f} ce {avg['ce']:.3f} "
                         + " ".join(f"{k} {avg[k]:.2f}" for k in (f"acc_{q}" for q in QA_KINDS) if k in avg)
                         + f" |B| {avg['scale_B']:.3f} {avg['seconds']:.2f}s/step")
                window = []
            if self.step % cfg.eval_every == 0 or self.step == last_step:
                ev = self.evaluate()
                ev["step"] = self.step
                self._write_metrics(ev)
                self.log("eval " + " ".join(f"{k[5:]} {v:.3f}" for k, v in ev.items() if k.startswith("eval_")))
                if ev["eval_score"] > self.best_score:
                    self.best_score = ev["eval_score"]
                    save_checkpoint(self.hypernet, self.out / "best", info=self._info())
            if time.perf_counter() - last_ckpt > cfg.checkpoint_seconds or out_of_time:
                self._save_state()
                last_ckpt = time.perf_counter()
            if out_of_time:
                self.log(f"time budget reached at step {self.step}; resume with --resume")
                break
        self._save_state()
        return {"step": self.step, "best_score": self.best_score, "elapsed": self.elapsed}
