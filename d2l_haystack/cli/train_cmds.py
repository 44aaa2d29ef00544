"""``d2l train``, ``d2l average`` and ``d2l memory`` (the reading memory)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .options import (
    CHUNKING_CHOICES,
    LONG_DOCUMENTS_CHOICES,
    PHRASINGS_CHOICES,
    ROW_USE_CHOICES,
    add_device_option,
)


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="meta-train a hypernetwork (resumable)")
    p.add_argument("--config", required=True, help="training config (YAML or JSON), e.g. configs/shipped.yaml")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/state.pt")
    p.add_argument("--out-dir", help="override the config's out_dir")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--time-budget", type=float, help="stop (and checkpoint) after this many seconds")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="stop (and checkpoint) at this step without changing the schedule (max_steps)")
    add_device_option(p)
    p.add_argument("--init-from", help="start from this checkpoint folder")
    p.add_argument("--evaluate", metavar="CHECKPOINT",
                   help="train nothing: score this checkpoint folder on the config's held-out set (the "
                        "documents the run itself evaluates on) and print the metrics as one JSON line")
    p.add_argument("--eval-step", type=int, metavar="STEP",
                   help="with --evaluate: take the documents of the phase at this step (default: max_steps)")
    p.set_defaults(handler=_train)

    p = sub.add_parser("average", help="average hypernetwork checkpoints of one lineage (model soup)")
    p.add_argument("checkpoints", nargs="+", help="checkpoint folders (at least two)")
    p.add_argument("--out", required=True, help="folder for the averaged checkpoint")
    p.add_argument("--weights", help="comma-separated weights, one per checkpoint (default: equal)")
    p.set_defaults(handler=_average)

    p = sub.add_parser("memory", help="fit a reading memory for a checkpoint (d2l_haystack.training.memory)")
    msub = p.add_subparsers(dest="memory_cmd", required=True)
    c = msub.add_parser("collect", help="cache the states of generated training-part documents")
    c.add_argument("--docs", type=int, default=450, help="documents to read (default 450)")
    c.add_argument("--seed", type=int, default=21)
    c.add_argument("--layer", type=int, default=29, help="the layer whose down_proj gets the rows (default 29)")
    c.add_argument("--match-layer", type=int,
                   help="the layer whose down_proj inputs the match reads (below --layer, the last; default: "
                        "--layer itself)")
    c.add_argument("--squad-share", type=float, default=0.4, help="share of SQuAD training runs (default 0.4)")
    c.add_argument("--needle-share", type=float, default=0.0,
                   help="share of fact needles in training-part filler (default 0)")
    c.add_argument("--phrasings", choices=PHRASINGS_CHOICES,
                   help="the realistic documents' training templates: base, or more (two more statements and "
                        "questions per fact, training.realistic_more; default: training.realistic.DEFAULT_PHRASINGS)")
    c.add_argument("--checkpoint", default="default", help="the hypernetwork checkpoint (default: shipped)")
    c.add_argument("--chunking", choices=CHUNKING_CHOICES, default="auto", help="the adapters' chunking (default auto)")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("-o", "--out", required=True, help="cache file to write")
    c.set_defaults(handler=_memory_collect)
    f = msub.add_parser("fit", help="fit the memory on caches; write a checkpoint with it")
    f.add_argument("caches", nargs="+")
    f.add_argument("--checkpoint", default="default", help="the base checkpoint (default: shipped)")
    f.add_argument("--out", help="checkpoint folder to write (the base's files plus memory.safetensors)")
    f.add_argument("--hold-kinds", help="comma-separated training-part kinds kept out of the fit; they choose "
                                        "the step (default: training.memory.DEFAULT_HOLD_KINDS)")
    f.add_argument("--rank", type=int, default=128)
    f.add_argument("--steps", type=int, default=1500)
    f.add_argument("--lr", type=float, default=3e-3)
    f.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="the learning rate: constant, or cosine down to a tenth of --lr (default: constant)")
    f.add_argument("--weight-decay", type=float, default=0.0)
    f.add_argument("--bind-weight", type=float, default=1.0)
    f.add_argument("--batch", type=int, default=32, help="questions per step (default 32)")
    f.add_argument("--init", help="a checkpoint folder whose memory the fit goes on from (a fit continued)")
    f.add_argument("--yield-above", type=_probability_or_none,
                   help="the memory yields when the adapter alone gives the answer's first token at least this "
                        "probability; 'none': never (default: core.memory.DEFAULT_YIELD_ABOVE)")
    f.add_argument("--override", type=_override_or_none,
                   help="where the adapter alone is sure, the memory's answer is still taken when its mean token "
                        "log-probabilities own,rejects,form pass this rule (core.memory.OverrideRule; written "
                        "--override=-0.15,-1,-2); 'none': never (default: core.memory.DEFAULT_OVERRIDE)")
    f.add_argument("--row-use", choices=ROW_USE_CHOICES,
                   help="how the rows fire while an answer is generated: all (as fitted), once (a row that gave "
                        "a token is spent), next (spent, and the document's next position goes on), value (next, "
                        "stopped where the copied value ends) (default: "
                        "core.memory.DEFAULT_ROW_USE, or --init's)")
    f.add_argument("--firm-carry", type=_firm_factor,
                   help="with --row-use value, inside one word or number each carried step fires this many times "
                        "as strongly as the one before; 1: none (default: core.memory.DEFAULT_FIRM_CARRY, or --init's)")
    f.add_argument("--follow-on-yield", choices=("on", "off"),
                   help="where the memory yields, let the answer go on as the document goes on after a token "
                        "the document has (default: core.memory.DEFAULT_FOLLOW_ON_YIELD, or --init's)")
    f.add_argument("--long-documents", choices=LONG_DOCUMENTS_CHOICES,
                   help="documents over the memory's max_tokens: none (no rows), follow (the chosen chunks' rows "
                        "are made per question and only follow), read (they read as a short document's) "
                        "(default: core.memory.DEFAULT_LONG_DOCUMENTS, or --init's)")
    f.add_argument("--eval-every", type=int, default=250, help="steps between choosing evaluations (default 250)")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--json", help="write the report here")
    f.set_defaults(handler=_memory_fit)


def _override_or_none(text: str) -> Any:
    """An :class:`~d2l_haystack.core.memory.OverrideRule` as ``own,rejects,form``, or ``"none"``."""
    from d2l_haystack.core.memory import OverrideRule

    if text.lower() == "none":
        return "none"
    try:
        return OverrideRule.from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _probability_or_none(text: str) -> float | str:
    """A probability in (0, 1], or ``"none"``."""
    if text.lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1] or 'none', got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int:
    from d2l_haystack.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig.from_file(args.config, out_dir=args.out_dir, max_steps=args.max_steps,
                                time_budget_seconds=args.time_budget, device=args.device,
                                init_from=args.evaluate or args.init_from, stop_at_step=args.stop_at)
    if args.evaluate:
        import json

        trainer = Trainer(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
        trainer.step = cfg.max_steps if args.eval_step is None else args.eval_step
        metrics = {k: round(v, 4) for k, v in trainer.evaluate().items()}
        print(json.dumps({"checkpoint": args.evaluate, "config": args.config, "step": trainer.step, **metrics}))
        return 0
    result = Trainer(cfg, resume=args.resume, log=lambda s: print(s, flush=True)).train()
    print(f"stopped at step {result['step']} (best held-out score {result['best_score']:.3f}); "
          f"checkpoints in {cfg.out_dir}/checkpoint and {cfg.out_dir}/best")
    return 0


def _average(args: argparse.Namespace) -> int:
    from d2l_haystack.training.average import average_checkpoints

    try:
        weights = [float(x) for x in args.weights.split(",")] if args.weights else None
    except ValueError:
        print(f"d2l average: error: --weights must be comma-separated numbers, got {args.weights!r}",
              file=sys.stderr)
        return 2
    try:
        ckpt_id = average_checkpoints(args.checkpoints, args.out, weights)
    except ValueError as exc:  # too few checkpoints, weights that do not fit
        print(f"d2l average: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (checkpoint id {ckpt_id}) from {len(args.checkpoints)} checkpoints")
    return 0


def _firm_factor(text: str) -> float:
    """A firming factor (:func:`~d2l_haystack.core.memory.check_firm_carry`)."""
    from d2l_haystack.core.memory import check_firm_carry

    try:
        return check_firm_carry(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a factor from 1 to 10") from exc


def _memory_collect(args: argparse.Namespace) -> int:
    import torch

    from d2l_haystack.core import D2LEngine
    from d2l_haystack.training.memory import collect
    from d2l_haystack.training.realistic import DEFAULT_PHRASINGS

    torch.set_num_threads(args.threads)
    engine = D2LEngine(checkpoint=args.checkpoint, chunking=args.chunking, autocast="off", keys=None, device="cpu",
                       reading_memory=False)  # the states are the network's alone, whatever memory it has
    try:
        out = collect(engine, args.docs, args.seed, args.out, layer=args.layer, squad_share=args.squad_share,
                      needle_share=args.needle_share, match_layer=args.match_layer,
                      phrasings=args.phrasings or DEFAULT_PHRASINGS,
                      log=lambda s: print(s, file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"d2l memory collect: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _memory_fit(args: argparse.Namespace) -> int:
    import json

    import torch

    from d2l_haystack.core.engine import default_checkpoint
    from d2l_haystack.core.errors import CheckpointError
    from d2l_haystack.core.hypernet import load_checkpoint, read_checkpoint_id
    from d2l_haystack.core.memory import MEMORY_FILE, ReadingMemory
    from d2l_haystack.core.models import DEFAULT_MODEL, get_model
    from d2l_haystack.training.memory import DEFAULT_HOLD_KINDS, fit, print_report, write_checkpoint

    torch.set_num_threads(args.threads)
    base = default_checkpoint(DEFAULT_MODEL) if args.checkpoint == "default" else args.checkpoint
    if base is None:
        print(f"d2l memory fit: error: no checkpoint is shipped for {DEFAULT_MODEL}", file=sys.stderr)
        return 2
    try:
        _, payload = load_checkpoint(base)
        network = read_checkpoint_id(base)  # the hypernetwork's own id, which collect records
    except CheckpointError as exc:
        print(f"d2l memory fit: error: {exc}", file=sys.stderr)
        return 2
    loaded = get_model(payload["hypernet"]["base_model"], device="cpu")
    try:
        init = ReadingMemory.load(args.init) if args.init else None
    except CheckpointError as exc:
        print(f"d2l memory fit: error: {exc}", file=sys.stderr)
        return 2
    if args.init and init is None:
        print(f"d2l memory fit: error: {args.init} has no {MEMORY_FILE}", file=sys.stderr)
        return 2
    try:
        hold = tuple(args.hold_kinds.split(",")) if args.hold_kinds else DEFAULT_HOLD_KINDS
        memory, report = fit(args.caches, loaded.model, hold, rank=args.rank,
                             steps=args.steps, lr=args.lr, weight_decay=args.weight_decay,
                             bind_weight=args.bind_weight, batch=args.batch, eval_every=args.eval_every, init=init,
                             log=lambda s: print(s, file=sys.stderr, flush=True), checkpoint_id=network,
                             schedule=args.schedule)
    except ValueError as exc:
        print(f"d2l memory fit: error: {exc}", file=sys.stderr)
        return 2
    if args.yield_above is not None:
        memory.yield_above = None if args.yield_above == "none" else float(args.yield_above)
    if args.override is not None:
        memory.override = None if args.override == "none" else args.override
    if args.row_use is not None:
        memory.row_use = args.row_use
    if args.firm_carry is not None:
        memory.firm_carry = args.firm_carry
    if args.follow_on_yield is not None:
        memory.follow_on_yield = args.follow_on_yield == "on"
    if args.long_documents is not None:
        memory.long_documents = args.long_documents
    print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.out:
        print(f"wrote {write_checkpoint(memory, base, args.out, report)}")
    return 0
