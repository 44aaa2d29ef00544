"""``d2l train``."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="meta-train a hypernetwork (resumable)")
    p.add_argument("--config", required=True, help="training config (YAML or JSON), e.g. configs/stage1.yaml")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/state.pt")
    p.add_argument("--out-dir", help="override the config's out_dir")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--time-budget", type=float, help="stop (and checkpoint) after this many seconds")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="stop (and checkpoint) at this step without changing the schedule (max_steps)")
    p.add_argument("--device", help="cpu / cuda (default: cuda when available)")
    p.add_argument("--init-from", help="start from this checkpoint folder")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from d2l_haystack.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig.from_file(args.config, out_dir=args.out_dir, max_steps=args.max_steps,
                                time_budget_seconds=args.time_budget, device=args.device,
                                init_from=args.init_from, stop_at_step=args.stop_at)
    result = Trainer(cfg, resume=args.resume, log=lambda s: print(s, flush=True)).train()
    print(f"stopped at step {result['step']} (best held-out score {result['best_score']:.3f}); "
          f"checkpoints in {cfg.out_dir}/checkpoint and {cfg.out_dir}/best")
    return 0
