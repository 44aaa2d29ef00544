"""How much of a generated adapter depends on the document, and in how many directions.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_adapter_span.py CHECKPOINT [CHECKPOINT ...] \\
        [--docs 48] [--json benchmarks/results/reading/adapter_span.json]

For each checkpoint, ``--docs`` held-out realistic documents (``part="heldout"``, seed 0: the same
documents for every checkpoint) are internalized as one chunk each. Per layer, the generated
factors ``A`` (rank x d_in) and ``B`` (rank x d_out) of all documents are compared:

* **document share**: the share of the factors' energy that varies from document to document
  (sum of squares around the mean over documents, over the total sum of squares); the rest is one
  template every document gets;
* **90 % rank**: how many directions hold 90 % of the energy of that varying part (singular values
  of the documents' rank rows, centred), out of d_in or d_out; **participation ratio**: the same
  as a smooth count, ``(sum s^2)^2 / sum s^4``.

An adapter that can write a document's own VALUES (a name, a time, a price) into the model needs
many document-specific output directions; a few shared ones write only a value's TYPE. Prints a
table (means over layers) and writes the per-layer figures as JSON. One thread; about a minute
per checkpoint on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def span(x: torch.Tensor) -> dict[str, list[float]]:
    """Per layer of ``x`` ``(docs, layers, rank, d)``: document share, 90 % rank, participation ratio."""
    share, rank90, ratio = [], [], []
    for layer in range(x.shape[1]):
        y = x[:, layer].double()
        varying = y - y.mean(0, keepdim=True)
        share.append(float(varying.pow(2).sum() / y.pow(2).sum()))
        rows = varying.reshape(-1, y.shape[-1])
        energy = torch.linalg.svdvals(rows).pow(2)
        cum = torch.cumsum(energy / energy.sum(), 0)
        rank90.append(int((cum < 0.9).sum()) + 1)
        ratio.append(float(energy.sum() ** 2 / energy.pow(2).sum()))
    return {"document_share": share, "rank90": rank90, "participation_ratio": ratio}


def measure(checkpoint: str, n_docs: int) -> dict[str, object]:
    from d2l_haystack.core.engine import D2LEngine
    from d2l_haystack.training.realistic import realistic_document

    engine = D2LEngine(checkpoint=checkpoint, device="cpu")
    cfg = engine.config
    rng = np.random.default_rng(0)
    texts = [realistic_document(rng, 2, part="heldout").text for _ in range(n_docs)]
    module = cfg.target_modules[0]
    parts: dict[str, list[torch.Tensor]] = {"A": [], "B": []}
    with torch.no_grad():
        for i in range(0, n_docs, 8):  # one chunk per document, through the engine's own routine
            wrapped = [engine.format.wrap_chunk(engine.format.document_ids(t)) for t in texts[i:i + 8]]
            a, b = engine.chunk_factors(wrapped)[module]
            parts["A"].append(a)
            parts["B"].append(b)
    out: dict[str, object] = {"checkpoint": checkpoint, "checkpoint_id": engine.checkpoint_id,
                              "module": module, "docs": n_docs, "d_in": cfg.module_in[0], "d_out": cfg.module_out[0]}
    for side, xs in parts.items():
        out[side] = span(torch.cat(xs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--json", default="benchmarks/results/reading/adapter_span.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(c, args.docs) for c in args.checkpoints]
    print("| checkpoint | side | document share | 90 % rank | participation ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        for side, width in (("A", r["d_in"]), ("B", r["d_out"])):
            s = r[side]
            assert isinstance(s, dict)
            print(f"| {r['checkpoint_id']} | {side} | {np.mean(s['document_share']):.3f} | "
                  f"{np.mean(s['rank90']):.1f} of {width} | {np.mean(s['participation_ratio']):.1f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
