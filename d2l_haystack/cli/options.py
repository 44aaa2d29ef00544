"""Command-line options shared by several command groups (one definition each)."""

from __future__ import annotations

import argparse

DEVICE_HELP = "cpu or cuda (default: cuda when available)"

UNTRAINED_CHOICES = ("none", "untrained")


def checkpoint_arg(value: str) -> str | None:
    """A ``--checkpoint`` value: ``none``/``untrained`` (any case) is ``None`` (an untrained hypernetwork)."""
    return None if value.lower() in UNTRAINED_CHOICES else value


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def add_chunking_option(p: argparse.ArgumentParser) -> None:
    from d2l_haystack.core.textio import CHUNKINGS

    p.add_argument("--chunking", choices=CHUNKINGS, default=CHUNKINGS[0],
                   help="chunks of --chunk-tokens tokens (default), or one chunk per sentence: better answers "
                        "on short factual text, an adapter with as many chunks as sentences")
