"""The cache of rows made for long documents' questions (:mod:`d2l_haystack.core.rowcache`)."""

from __future__ import annotations

import threading

import pytest
import torch

from d2l_haystack.core.rowcache import MadeRows, chunk_key


def test_made_rows_keeps_the_most_recently_used_within_its_bytes() -> None:
    cache = MadeRows(max_bytes=3 * 400)  # three float32 tensors of 100 values
    values = {k: torch.full((100,), float(k)) for k in range(4)}
    for k in range(3):
        assert cache.put(k, values[k]) is values[k]
    assert cache.nbytes == 1200 and len(cache) == 3
    assert cache.get(0) is values[0]  # 0 is now the most recently used: 1 goes first
    cache.put(3, values[3])
    assert cache.get(1) is None and [cache.get(k) is values[k] for k in (0, 2, 3)] == [True] * 3
    assert (cache.hits, cache.misses) == (4, 1)
    pair = (torch.zeros(50), torch.zeros(50, dtype=torch.long))  # tuples count every tensor: 200 + 400 bytes
    cache.put("pair", pair)
    assert cache.get("pair") is pair and cache.nbytes <= cache.max_bytes and len(cache) == 2
    cache.put("pair", values[0])  # a key stored again replaces its value and its size
    assert cache.get("pair") is values[0] and cache.nbytes == 800
    cache.put("huge", torch.zeros(1000))  # alone over the limit: not kept, nothing else dropped for it
    assert cache.get("huge") is None and len(cache) == 2
    made: list[int] = []
    cache.clear()
    assert cache.get_or_make("m", lambda: made.append(1) or values[1]) is values[1]
    assert cache.get_or_make("m", lambda: made.append(1) or values[2]) is values[1] and made == [1]
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    assert len(MadeRows(0).put("x", values[0])) == 100 and len(MadeRows(0)) == 0
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        MadeRows(-1)


def test_made_rows_is_safe_across_threads() -> None:
    cache = MadeRows(max_bytes=40 * 400)

    def work(offset: int) -> None:
        for i in range(200):
            cache.put((offset, i % 30), torch.zeros(100))
            cache.get((offset, (i * 7) % 30))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.nbytes == 400 * len(cache) <= cache.max_bytes


def test_chunk_key_names_the_tokens_and_their_order() -> None:
    assert chunk_key([1, 2, 3]) == chunk_key([1, 2, 3])
    assert len({chunk_key([1, 2, 3]), chunk_key([3, 2, 1]), chunk_key([1, 2]), chunk_key([])}) == 4
