"""``d2l train`` and ``d2l average``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .options import add_device_option


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
