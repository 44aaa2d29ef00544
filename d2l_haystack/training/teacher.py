"""Top-k context-distillation targets: the base model reading the document (computed once, cached).

The reference D2L trains its QA samples by context distillation: the teacher is the frozen base
model WITH the document in the prompt; its greedy answer and the top-``k`` next-token
probabilities along that answer are stored, and the student (base model + generated adapter, no
document) minimises the cross-entropy against them. Soft targets carry more signal per token
than a one-hot gold answer and ask the student for what the base model can actually do with the
document.

:class:`TeacherCache` computes a target the first time a ``(document, question)`` pair is seen
and keeps it (greedy decoding is deterministic, so a resumed run sees the same targets whether
they are recomputed or loaded). ``save()`` writes the cache atomically beside the training state.

Usage::

    cache = TeacherCache(model, ChatFormat(tokenizer), top_k=16, path=run_dir / "teacher.pt")
    target = cache.get(document, question)   # TeacherTarget(ids, top_ids, top_probs)
    cache.save()
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.encoder import left_pad_batch
from ..core.prompts import ChatFormat, system_messages


@dataclass
class TeacherTarget:
    """The teacher's greedy answer and its top-k distribution at every answer position."""

    ids: list[int]
    """Answer token ids (ending with the end-of-turn token when the teacher stopped)."""
    top_ids: torch.Tensor
    """``(len(ids), k)`` int64: the k most likely tokens at each position (column 0 = ``ids``)."""
    top_probs: torch.Tensor
    """``(len(ids), k)`` float32: their probabilities renormalised over the k tokens (rows sum to 1)."""


def _key(document: str, question: str, system: bool = False) -> str:
    tag = "\x01system" if system else ""
    return hashlib.sha1(f"{document}\x00{question}{tag}".encode()).hexdigest()


class TeacherCache:
    """Greedy answers and top-k distributions of the base model with the document in the prompt."""

    def __init__(self, model: Any, fmt: ChatFormat, top_k: int = 16, max_new_tokens: int = 32,
                 max_prompt_tokens: int | None = None, path: str | Path | None = None) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.model, self.fmt, self.top_k = model, fmt, top_k
        self.max_new_tokens = max_new_tokens
        window = getattr(model.config, "max_position_embeddings", None) or 8192
        self.max_prompt_tokens = max_prompt_tokens or window - max_new_tokens
        self.path = Path(path) if path else None
        self._entries: dict[str, dict[str, Any]] = {}
        self.computed = 0
        if self.path and self.path.is_file():
            saved = torch.load(self.path, weights_only=True)
            if saved.get("top_k") == top_k and saved.get("max_new_tokens") == max_new_tokens:
                self._entries = saved["entries"]

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, document: str, question: str) -> TeacherTarget:
        """The target of one pair (computed now if it is not cached)."""
        return self.get_many([(document, question)])[0]

    def get_many(self, pairs: list[tuple[str, str]], batch_size: int = 32, system: bool = False) -> list[TeacherTarget]:
        """Targets of ``(document, question)`` pairs; missing ones are computed in left-padded batches.

        :param system: the "document" is a system prompt (instructions): the teacher answers the
            question with it as the system message instead of reading it as a context.
        """
        keys = [_key(d, q, system) for d, q in pairs]
        missing: dict[str, tuple[str, str]] = {}
        for key, pair in zip(keys, pairs):
            if key not in self._entries:
                missing.setdefault(key, pair)
        todo = list(missing.items())
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            for (key, _), entry in zip(batch, self._compute([pair for _, pair in batch], system)):
                self._entries[key] = entry
                self.computed += 1
        return [TeacherTarget(self._entries[k]["ids"].tolist(), self._entries[k]["top_ids"].long(),
                              self._entries[k]["top_probs"].float()) for k in keys]

    def forced_many(self, triples: list[tuple[str, str, list[int]]], gold_weight: float = 0.5,
                    batch_size: int = 16, system: bool = False) -> list[TeacherTarget]:
        """Targets along GIVEN answers: the teacher, reading the document, teacher-forced on them.

        One forward pass per batch (no generation). At each answer position the target keeps the
        given token in column 0 and the teacher's ``k - 1`` most likely other tokens beside it; the
        probabilities are ``gold_weight`` on the given token plus ``1 - gold_weight`` times the
        teacher's distribution renormalised over those ``k`` tokens. The answer's form stays the
        gold one (a word, not the teacher's sentence) while the soft part carries what the teacher
        reads in the document. Not cached: generated documents are new every step.

        :param triples: ``(document, question, answer token ids)`` (the ids as the student sees them,
            ending with the end-of-turn token).
        :param system: the "document" is a system prompt, as in :meth:`get_many`.
        """
        if not 0.0 <= gold_weight <= 1.0:
            raise ValueError(f"gold_weight must be within [0, 1], got {gold_weight}")
        out: list[TeacherTarget] = []
        for i in range(0, len(triples), batch_size):
            out.extend(self._forced(triples[i:i + batch_size], gold_weight, system))
        return out

    @torch.no_grad()
    def _forced(self, triples: list[tuple[str, str, list[int]]], gold_weight: float,
                system: bool = False) -> list[TeacherTarget]:
        ids, mask, _ = self._left_padded([self._prompt(d, q, system) + list(a) for d, q, a in triples])
        # left padding: every answer ends at the last column, so only the last (longest answer + 1)
        # positions are projected onto the vocabulary (not the whole document's)
        keep = max(len(a) for _, _, a in triples) + 1
        logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        k = min(self.top_k, logits.shape[-1])
        targets = []
        for j, (_, _, answer) in enumerate(triples):
            n = len(answer)  # kept position p predicts token p + 1: answer token t is predicted at keep - n - 1 + t
            logp = torch.log_softmax(logits[j, keep - n - 1: keep - 1].float(), dim=-1)
            gold = torch.tensor(answer, dtype=torch.long, device=logp.device)
            others = logp.scatter(1, gold[:, None], float("-inf")).topk(k - 1, dim=-1).indices if k > 1 \
                else gold[:, None][:, :0]
            top_ids = torch.cat([gold[:, None], others], dim=1)
            probs = torch.softmax(logp.gather(1, top_ids), dim=-1) * (1.0 - gold_weight)
            probs[:, 0] += gold_weight
            targets.append(TeacherTarget(list(answer), top_ids.cpu(), probs.cpu()))
        return targets

    def _left_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(ids, mask, pad id)`` of left-padded sequences on the model's device."""
        pad = self.fmt.pad_id
        ids, mask = left_pad_batch(seqs, pad, next(self.model.parameters()).device)
        return ids, mask, pad

    def _prompt(self, document: str, question: str, system: bool = False) -> list[int]:
        if system:  # an empty system prompt is no instructions: the question as the student sees it
            return self.fmt.messages_ids(system_messages(document, question)) if document \
                else self.fmt.question_ids(question)
        prompt = self.fmt.question_ids(question, context=document)
        overflow = len(prompt) - self.max_prompt_tokens
        if overflow > 0:  # keep the question and the template: shorten the document's end
            doc_ids = self.fmt.document_ids(document)
            document = self.fmt.tokenizer.decode(doc_ids[: max(0, len(doc_ids) - overflow - 16)])
            prompt = self.fmt.question_ids(question, context=document)
        return prompt

    @torch.no_grad()
    def _compute(self, pairs: list[tuple[str, str]], system: bool = False) -> list[dict[str, Any]]:
        prompts = [self._prompt(d, q, system) for d, q in pairs]
        ids, mask, pad = self._left_padded(prompts)
        width = ids.shape[1]  # left padding: every answer starts at this column
        out = self.model.generate(input_ids=ids, attention_mask=mask,
                                  max_new_tokens=self.max_new_tokens, do_sample=False,
                                  eos_token_id=self.fmt.stop_ids, pad_token_id=pad,
                                  output_logits=True, return_dict_in_generate=True,
                                  temperature=None, top_p=None, top_k=None)
        logits_all = torch.stack([step.float() for step in out.logits], dim=1)  # (B, T, V)
        stops = set(self.fmt.stop_ids)
        entries = []
        for j in range(len(prompts)):
            answer = self.fmt.until_stop(out.sequences[j, width:].tolist())
            logits = logits_all[j, :len(answer)]
            if answer and answer[-1] in stops and self.fmt.end_of_turn_id is not None:
                answer[-1] = self.fmt.end_of_turn_id  # one end token for every answer
            logp = torch.log_softmax(logits, dim=-1)
            top_lp, top_ids = logp.topk(min(self.top_k, logp.shape[-1]), dim=-1)
            top_ids[:, 0] = torch.tensor(answer)  # greedy: column 0 is the chosen token
            entries.append({"ids": torch.tensor(answer, dtype=torch.int32),
                            "top_ids": top_ids.to(torch.int32).cpu(),
                            "top_probs": torch.softmax(top_lp, dim=-1).to(torch.float16).cpu()})
        return entries

    def save(self) -> None:
        """Write the cache atomically (``path`` given at construction)."""
        if not self.path:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        torch.save({"top_k": self.top_k, "max_new_tokens": self.max_new_tokens, "entries": self._entries}, tmp)
        os.replace(tmp, self.path)


def soft_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of ``logits (N, V)`` against sparse targets ``(N, k)``.

    A one-hot target (probability 1 in column 0) gives the ordinary cross-entropy.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(target_probs * logp.gather(1, target_ids)).sum(-1)
