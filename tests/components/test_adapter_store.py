from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from d2l_haystack.core.errors import AdapterError
from d2l_haystack.stores import AdapterStore

from .conftest import make_adapter


def _bump(path: str, n: int) -> None:
    store = AdapterStore(path)
    for _ in range(n):
        store.record_query(["doc"])


class TestAdapterStore:
    def test_put_get_list_delete(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path / "s"))
        assert store.count() == 0 and store.list() == []
        adapter = make_adapter(1, content_hash="abc")
        entry = store.put("docs/a.md", adapter, source="/abs/docs/a.md", title="A", meta={"x": 1})
        for key in ("source", "content_hash", "base_model", "checkpoint_id", "created", "queries", "nbytes"):
            assert key in entry
        assert entry["source"] == "/abs/docs/a.md" and entry["content_hash"] == "abc" and entry["queries"] == 0
        assert "docs/a.md" in store and len(store) == 1
        loaded = store.get("docs/a.md")
        assert torch.allclose(loaded.factors["down_proj"][0], adapter.factors["down_proj"][0].half().float())
        assert store.find("abc", "tiny", "ck")["id"] == "docs/a.md"
        assert store.find("abc", "other-model") is None
        assert store.is_current("docs/a.md", "abc", "tiny", "ck")
        assert not store.is_current("docs/a.md", "abc", "tiny", "ck2")
        assert store.delete("docs/a.md") is True
        assert store.delete("docs/a.md") is False
        assert store.count() == 0
        assert list((tmp_path / "s" / "objects").iterdir()) == []

    def test_unknown_id(self, tmp_path: Path):
        with pytest.raises(AdapterError, match="no adapter for 'nope'"):
            AdapterStore(str(tmp_path)).get("nope")

    def test_replace_removes_old_file_and_keeps_query_count(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path))
        store.put("d", make_adapter(1, "h1"))
        store.record_query(["d", "unknown"])
        first = set((tmp_path / "objects").iterdir())
        store.put("d", make_adapter(2, "h2"))
        second = set((tmp_path / "objects").iterdir())
        assert len(first) == len(second) == 1 and first != second
        assert store.info("d")["queries"] == 1 and store.info("d")["content_hash"] == "h2"
        assert not [p for p in tmp_path.rglob("*.tmp*")]

    def test_routing_embeddings(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path))
        routing = np.eye(3, 5, dtype=np.float32)
        store.put("d", make_adapter(), routing=routing)
        assert np.allclose(store.get_routing("d"), routing)
        store.put("e", make_adapter())
        assert store.get_routing("e") is None and store.get_routing("missing") is None

    def test_damaged_file_is_detected_never_served(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path), cache_size=0)
        store.put("d", make_adapter())
        path = next((tmp_path / "objects").iterdir())
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(AdapterError, match="damaged: checksum mismatch"):
            store.get("d")
        problems = store.verify()
        assert len(problems) == 1 and "'d'" in problems[0]

    def test_missing_file_and_orphans(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path), cache_size=0)
        store.put("d", make_adapter())
        next((tmp_path / "objects").iterdir()).unlink()
        with pytest.raises(AdapterError, match="missing its file"):
            store.get("d")
        (tmp_path / "objects" / "stray.safetensors").write_bytes(b"x")
        assert any("orphan" in p for p in store.verify())
        assert store.gc() == 1

    def test_damaged_manifest(self, tmp_path: Path):
        (tmp_path / "manifest.json").write_text("{not json")
        with pytest.raises(AdapterError, match="damaged adapter store manifest"):
            AdapterStore(str(tmp_path))

    def test_lru_cache(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path), cache_size=1)
        store.put("a", make_adapter(1))
        store.put("b", make_adapter(2))
        b1 = store.get("b")
        assert store.get("b") is b1
        store.get("a")
        assert store.get("b") is not b1  # evicted, reloaded

    def test_two_instances_see_each_other(self, tmp_path: Path):
        one, two = AdapterStore(str(tmp_path)), AdapterStore(str(tmp_path))
        one.put("d", make_adapter(1, "h1"))
        assert two.count() == 1
        two.record_query(["d"])
        assert one.info("d")["queries"] == 1
        two.put("d", make_adapter(2, "h2"))  # replaced elsewhere: the cache of `one` must not serve the old one
        assert one.get("d").content_hash == "h2"
        two.rename("d", "e", source="/new/e")
        assert one.ids() == ["e"] and one.info("e")["source"] == "/new/e"

    def test_thread_safety(self, tmp_path: Path):
        store = AdapterStore(str(tmp_path))
        store.put("doc", make_adapter())
        threads = [threading.Thread(target=lambda: [store.record_query(["doc"]) for _ in range(20)])
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.info("doc")["queries"] == 80

    def test_two_processes(self, tmp_path: Path):
        AdapterStore(str(tmp_path)).put("doc", make_adapter())
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=_bump, args=(str(tmp_path), 15)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        assert AdapterStore(str(tmp_path)).info("doc")["queries"] == 30
        json.loads((tmp_path / "manifest.json").read_text())  # never half-written

    def test_to_dict_from_dict_shares_by_path(self, tmp_path: Path):
        store = AdapterStore.open(tmp_path / "shared", cache_size=3)
        data = store.to_dict()
        assert data == {"type": "d2l_haystack.stores.adapter_store.AdapterStore",
                        "init_parameters": {"path": str(tmp_path / "shared"), "cache_size": 3}}
        assert AdapterStore.from_dict(data) is store
        assert AdapterStore.resolve(str(tmp_path / "shared")) is store
        assert AdapterStore.resolve(store) is store and AdapterStore.resolve(None) is None
