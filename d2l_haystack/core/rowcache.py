"""A bounded cache of the reading-memory rows the engine makes when a question is answered.

A document over the memory's ``max_tokens`` keeps its token ids instead of rows
(:data:`~d2l_haystack.core.memory.LONG_DOCUMENTS`); each question's chosen chunks then cost a pass
of the model up to the memory's layer and an embedding of their sentences (about 1.4 s per
512-token chunk on two CPU cores). The rows of a set of chunks, and the sentence keys of a chunk,
depend only on the document's tokens and the engine, so repeated or similar questions about one
document take them from here. Entries are dropped least recently used first once their tensors
exceed ``max_bytes``; a cached value is the tensors a fresh pass gives, bit for bit.

Usage example::

    cache = MadeRows(max_bytes=64 * 2**20)
    key = ("rows", chunk_key(chunk_ids))
    rows = cache.get_or_make(key, make_rows)   # made once, then taken from the cache
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

DEFAULT_MADE_ROWS_BYTES = 256 * 2**20
"""The most bytes of made rows and sentence keys an engine keeps (:class:`MadeRows`): about 60
512-token chunks of the embedded model's rows (4.3 MB each in float32)."""


def chunk_key(ids: list[int]) -> str:
    """A digest of one chunk's token ids: what its made rows and sentence keys depend on (beside
    the engine, which owns the cache)."""
    return hashlib.sha256(torch.tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class MadeRows:
    """A thread-safe least-recently-used cache of tensors (or tuples of them), bounded in bytes.

    :param max_bytes: the most bytes of tensors kept; 0 keeps nothing.
    """

    def __init__(self, max_bytes: int = DEFAULT_MADE_ROWS_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held now."""
        return self._bytes

    def get(self, key: Hashable) -> Any:
        """The value stored under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> Any:
        """Keep ``value`` under ``key`` (unless it alone exceeds ``max_bytes``); returns ``value``."""
        size = _nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size <= self.max_bytes:
                self._items[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                self._bytes -= self._items.popitem(last=False)[1][1]
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value under ``key``, or ``make()`` kept under it (:meth:`put`) and returned."""
        made = self.get(key)
        return made if made is not None else self.put(key, make())

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self._bytes = 0
