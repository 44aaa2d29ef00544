"""Command-line options shared by several command groups (one definition each)."""

from __future__ import annotations

import argparse

DEVICE_HELP = "cpu or cuda (default: cuda when available)"
CHUNKING_CHOICES = ("tokens", "sentences", "auto")
"""The values of ``core.textio.CHUNKINGS`` (not imported: keeps ``d2l --help`` fast; a test holds them equal)."""

ROW_USE_CHOICES = ("all", "once", "next", "value")
"""The values of ``core.memory.ROW_USES`` (not imported, as above; a test holds them equal)."""

LONG_DOCUMENTS_CHOICES = ("none", "follow", "read")
"""The values of ``core.memory.LONG_DOCUMENTS`` (not imported, as above; a test holds them equal)."""

PHRASINGS_CHOICES = ("base", "more")
"""The values of ``training.realistic.PHRASINGS`` (not imported, as above; a test holds them equal)."""

UNTRAINED_CHOICES = ("none", "untrained")


def checkpoint_arg(value: str) -> str | None:
    """A ``--checkpoint`` value: ``none``/``untrained`` (any case) is ``None`` (an untrained hypernetwork)."""
    return None if value.lower() in UNTRAINED_CHOICES else value


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def add_chunking_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chunking", choices=CHUNKING_CHOICES, default=CHUNKING_CHOICES[0],
                   help="chunks of --chunk-tokens tokens (default); one chunk per sentence (better answers on "
                        "short factual text, an adapter with as many chunks as sentences); or auto (sentences "
                        "for a document that fits in one chunk, tokens for a longer one)")


READING_MEMORY_HELP = ("document adapters without the checkpoint's reading-memory rows: faster to internalize and "
                       "smaller, reading ordinary documents less well")


def add_reading_memory_option(p: argparse.ArgumentParser) -> None:
    """``--no-reading-memory``: the engine without its checkpoint's reading memory (``args.reading_memory``)."""
    p.add_argument("--no-reading-memory", dest="reading_memory", action="store_false", help=READING_MEMORY_HELP)
