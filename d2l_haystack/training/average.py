"""Checkpoint averaging ("model soup"): the weighted mean of hypernetwork checkpoints.

Checkpoints that continue one another (stages of one training lineage) can be averaged weight by
weight; the mean often keeps what each learned and evens out step-to-step noise (Wortsman et al.
2022, "Model soups"). Every input must have the same hypernetwork configuration.

Usage::

    from d2l_haystack.training.average import average_checkpoints

    ckpt_id = average_checkpoints(["runs/a/checkpoint", "runs/b/checkpoint"], "runs/soup")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..core.errors import CheckpointError
from ..core.hypernet import load_checkpoint, save_checkpoint


def average_checkpoints(folders: Sequence[str | Path], out: str | Path,
                        weights: Sequence[float] | None = None) -> str:
    """Write the weighted mean of checkpoint folders to ``out``; returns the new checkpoint id.

    ``weights`` default to equal; they are normalised to sum to 1. The new ``config.json`` records
    the inputs (folders, checkpoint ids, weights) under ``info.averaged_from``.

    :raises ValueError: fewer than two folders, or weights that do not match them.
    :raises CheckpointError: a folder that is not a checkpoint, or checkpoints of different shape.
    """
    if len(folders) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(folders)}")
    w = [1.0] * len(folders) if weights is None else [float(x) for x in weights]
    if len(w) != len(folders) or min(w) < 0 or sum(w) <= 0:
        raise ValueError(f"need one weight >= 0 per checkpoint with a positive sum, got {list(w)} "
                         f"for {len(folders)} checkpoints")
    total = sum(w)
    w = [x / total for x in w]
    loaded = [load_checkpoint(f) for f in folders]
    first_net, first_payload = loaded[0]
    for folder, (_, payload) in zip(folders[1:], loaded[1:]):
        if payload["hypernet"] != first_payload["hypernet"]:
            raise CheckpointError(f"{folder} has another hypernetwork configuration than {folders[0]}; "
                                  "only checkpoints of one architecture can be averaged")
    states = [net.state_dict() for net, _ in loaded]
    mean = {k: sum(wi * s[k].float() for wi, s in zip(w, states)) for k in states[0]}
    first_net.load_state_dict(mean)
    sources = [{"folder": str(f), "checkpoint_id": p["checkpoint_id"], "weight": round(wi, 6)}
               for f, (_, p), wi in zip(folders, loaded, w)]
    return save_checkpoint(first_net, out, info={"averaged_from": sources})
