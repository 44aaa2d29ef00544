"""The ``d2l`` command line.

Sub-commands live in sibling modules, each exposing ``register(subparsers)``; every handler
receives the parsed arguments and returns an exit code. Errors raised on purpose
(:class:`~d2l_haystack.core.errors.D2LError`) are printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

_COMMAND_MODULES = ["core_cmds", "train_cmds", "eval_cmds", "kb_cmds", "bench_cmds", "watch_cmds", "serve_cmds",
                    "store_cmds"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d2l", description="Doc-to-LoRA internalization and RAG for Haystack.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 1
    from d2l_haystack.core.errors import D2LError

    try:
        return int(args.handler(args) or 0)
    except D2LError as exc:
        print(f"d2l {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"d2l {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
