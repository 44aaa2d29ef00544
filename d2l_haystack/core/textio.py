"""Reading and validating document text (bad input gets a clear, one-line error)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import InputError

MAX_FILE_BYTES = 64 * 1024 * 1024


CHUNKINGS = ("tokens", "sentences", "auto")
"""How a document is cut into chunks when it is internalized: ``tokens`` (chunks of
``chunk_tokens`` tokens), ``sentences`` (one chunk per sentence of :func:`split_text_sentences`;
a sentence longer than ``chunk_tokens`` is cut like a document) or ``auto`` (``sentences`` for a
document that fits in one chunk of ``chunk_tokens``, ``tokens`` for a longer one: the adapter of
a short note holds one chunk per sentence, a long document's stays one chunk per
``chunk_tokens``)."""
DEFAULT_CHUNKING = "tokens"
"""The engine's and the components' chunking when none is given (a workspace's own default is
``auto``, :data:`~d2l_haystack.kb.settings.DEFAULT_SETTINGS`)."""

SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
"""Whitespace after ``.``, ``!`` or ``?`` before a capital, quote or parenthesis: a sentence break
(the cloze rules and sentence chunking cut text here)."""
_BLANK_LINE = re.compile(r"\n\s*\n")


def split_text_sentences(text: str) -> list[str]:
    """Every sentence of ``text``, in order, whitespace normalised; nothing is dropped.

    Text is cut at blank lines (headings, list items and paragraphs stay apart) and at
    :data:`SENTENCE_BREAK`; text without sentence punctuation is one piece.
    """
    out: list[str] = []
    for block in _BLANK_LINE.split(text):
        flat = " ".join(block.split())
        out.extend(s for s in (p.strip() for p in SENTENCE_BREAK.split(flat)) if s)
    return out


def content_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text (hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def validate_text(text: str, source: str = "document") -> str:
    """Return ``text`` if it is usable document text, else raise :class:`InputError`."""
    if not isinstance(text, str):
        raise InputError(f"{source}: expected text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{source}: document is empty or whitespace only")
    sample = text[:65536]
    if "\x00" in sample:
        raise InputError(f"{source}: looks binary (contains NUL bytes), not text")
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    if controls > 0.05 * len(sample):
        raise InputError(f"{source}: looks binary ({controls} control characters), not text")
    return text


def read_text_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """Read a UTF-8 text file with clear errors for missing, huge, binary or non-UTF-8 files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file")
    if not path.is_file():  # a FIFO, socket or device would block or never end
        raise InputError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{path}: file is {size} bytes, over the {max_bytes}-byte limit")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    if b"\x00" in raw[:65536]:
        raise InputError(f"{path}: looks binary (contains NUL bytes), not text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from exc
    return validate_text(text, str(path))
