"""Measurement helpers: peak resident memory of a block, KV-cache sizes, summary statistics."""

from __future__ import annotations

import gc
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _status_kb(name: str) -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:  # pragma: no cover - not Linux
        return 0
    match = re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> Callable[[], Any]:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return lambda: None


_TRIM = _malloc_trim()


class PeakRSS:
    """How much the process's resident set grew at its peak during a ``with`` block (``delta_bytes``).

    Before the block, freed heap pages are returned to the system (``gc.collect(1)`` and glibc's
    ``malloc_trim(0)``), the kernel's peak counter is reset (``/proc/self/clear_refs``) and
    ``VmRSS`` is read; after it, ``VmHWM`` is read. Where the counter cannot be reset, a thread
    samples ``VmRSS`` every millisecond instead (``method`` says which).
    """

    method = "hwm-reset" if _can_reset_peak() else "sampling-1ms"

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.delta_bytes = 0

    def __enter__(self) -> PeakRSS:
        if not self.enabled:
            return self
        gc.collect(1)  # the young generations hold the last call's cycles; a full collection takes ~0.4 s here
        _TRIM()
        if self.method == "hwm-reset":
            Path("/proc/self/clear_refs").write_text("5")
            self.start = _status_kb("VmRSS")
        else:
            self.start = _status_kb("VmRSS")
            self._peak, self._stop = self.start, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kb("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        if not self.enabled:
            return
        if self.method == "hwm-reset":
            peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _status_kb("VmRSS"))
        self.delta_bytes = max(0, peak - self.start) * 1024


def rss_bytes() -> int:
    """The process's current resident set (bytes)."""
    return _status_kb("VmRSS") * 1024


def kv_cache_bytes(config: Any, tokens: int, bytes_per_value: int) -> int:
    """Bytes of the key/value cache for ``tokens`` tokens: ``2 * layers * kv_heads * head_dim * tokens * bytes``."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * int(tokens) * bytes_per_value


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of ``values``; NaN when empty."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Iterable[float]) -> float:
    xs = [float(v) for v in values]
    return sum(xs) / len(xs) if xs else math.nan


def median(values: Iterable[float]) -> float:
    return percentile(values, 50)
