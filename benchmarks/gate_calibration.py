"""The relevance gate's threshold on training-side data, with generated everyday documents.

``core.engine.DEFAULT_MIN_RELEVANCE`` (0.4) was chosen on training filler with facts, SQuAD training
paragraphs and the trainer's unrelated questions, before the generated realistic documents existed.
This study adds them: for generated TRAINING-part documents (``training.realistic``, ``part="train"``)
the best key similarity (the chunk keys of ``core.keys``, the engine's key model, the document cut
as ``chunking`` cuts it) of

* each document's own questions (related), and
* general-knowledge questions and SQuAD training questions, which no document answers (unrelated;
  the general questions of the held-out interference set are excluded),

then, per threshold, the share of related questions kept and of unrelated ones gated. Prints the
table and writes ``--out`` (JSON). Only the key model runs (no hypernetwork, no generation).

Usage (training-part data only: a threshold is chosen here, so held-out sets never come near it)::

    HF_HUB_OFFLINE=1 D2L_EVALDATA=../shared/evaldata .venv/bin/python benchmarks/gate_calibration.py \\
        --docs 300 --seed 31 --out benchmarks/results/gate_calibration.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, run_info, write_json  # noqa: E402

THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


def best_relevance(encoder: Any, chunks: list[str], questions: list[str]) -> list[float]:
    """Each question's best cosine similarity to any key of ``chunks``."""
    import torch

    keys, _ = encoder.chunk_keys(chunks)
    if not len(keys):
        return [-1.0] * len(questions)
    q = torch.stack([encoder.query(text) for text in questions])
    return (q.float() @ keys.float().T).max(dim=1).values.tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="generated training-part documents")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--unrelated", type=int, default=2, help="unrelated questions per document")
    parser.add_argument("--chunking", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gate_calibration.json"))
    args = parser.parse_args(argv)
    from d2l_haystack.core.engine import DEFAULT_MIN_RELEVANCE
    from d2l_haystack.core.keys import DEFAULT_KEY_MODEL, get_key_encoder
    from d2l_haystack.core.models import DEFAULT_MODEL, get_model
    from d2l_haystack.core.prompts import ChatFormat, chunk_text_ids
    from d2l_haystack.training.data import general_question, held_out_general_questions, squad_paragraphs
    from d2l_haystack.training.realistic import realistic_document

    loaded = get_model(DEFAULT_MODEL, device="cpu")
    fmt = ChatFormat(loaded.tokenizer)
    encoder = get_key_encoder(DEFAULT_KEY_MODEL)
    rng = np.random.default_rng([args.seed, 5])
    held_out = held_out_general_questions()
    squad = [q for _, qas in squad_paragraphs("train")[:600] for q, _ in qas]  # training questions
    related: list[float] = []
    unrelated: list[float] = []
    for _ in range(args.docs):
        doc = realistic_document(rng, 2, part="train")
        chunks = [loaded.tokenizer.decode(ids) for ids in chunk_text_ids(fmt, doc.text, args.chunking, 512)]
        others = [general_question(rng, held_out) if rng.random() < 0.5 or not squad
                  else squad[int(rng.integers(len(squad)))] for _ in range(args.unrelated)]
        scores = best_relevance(encoder, chunks, [qa.question for qa in doc.qas] + others)
        related += scores[:len(doc.qas)]
        unrelated += scores[len(doc.qas):]
    rows = [{"threshold": t, "related_kept": round(float(np.mean(np.array(related) >= t)), 3),
             "unrelated_gated": round(float(np.mean(np.array(unrelated) < t)), 3),
             "default": "yes" if abs(t - DEFAULT_MIN_RELEVANCE) < 1e-9 else ""} for t in THRESHOLDS]
    print_table(rows, [("threshold", "threshold"), ("related kept", "related_kept"),
                       ("unrelated gated", "unrelated_gated"), ("default", "default")])
    print(f"related {len(related)} (median {np.median(related):.3f}), unrelated {len(unrelated)} "
          f"(median {np.median(unrelated):.3f})")
    path = write_json(args.out, {**run_info("gate_calibration.py", argv), "docs": args.docs, "seed": args.seed,
                                 "chunking": args.chunking, "related": len(related), "unrelated": len(unrelated),
                                 "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
