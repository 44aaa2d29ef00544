from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from haystack import Document

from d2l_haystack.components import QueryRouter
from d2l_haystack.core.errors import InputError
from d2l_haystack.stores import AdapterStore

from .conftest import make_adapter, unit


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    store = AdapterStore(str(tmp_path / "adapters"))
    # two internalized documents: "kettle" around axis 0, "office" around axis 1
    store.put("/kettle.md", make_adapter(1), routing=np.stack([unit([1, 0, 0]), unit([1, 0.3, 0])]))
    store.put("/office.txt", make_adapter(2), routing=np.stack([unit([0, 1, 0])]))
    return store


def _chunk(vec: list[float], path: str = "/changelog.md") -> Document:
    return Document(content="chunk", embedding=unit(vec).tolist(), meta={"file_path": path})


class TestQueryRouter:
    def test_relevant_query_takes_the_adapter(self, store: AdapterStore):
        out = QueryRouter(store=store).run(query="kettle?", query_embedding=unit([1, 0.1, 0]).tolist())
        assert out["adapter"] == "kettle?" and "rag" not in out
        assert out["adapter_ids"] == ["/kettle.md"]
        assert out["routing"]["route"] == "d2l" and out["routing"]["adapters"][0]["score"] > 0.9
        assert [c["id"] for c in out["routing"]["candidates"]] == ["/kettle.md", "/office.txt"]

    def test_unrelated_query_never_gets_an_adapter(self, store: AdapterStore):
        docs = [_chunk([0, 0, 0, 1]), _chunk([0, 0, 1, 0.2])]
        out = QueryRouter(store=store).run(query="France?", query_embedding=unit([0, 0, 1]).tolist(), documents=docs)
        assert out["rag"] == "France?" and "adapter" not in out
        assert out["adapter_ids"] == [] and out["routing"]["adapters"] == []
        assert len(out["documents"]) == 1  # the orthogonal chunk is below min_chunk_similarity
        assert "threshold" in out["routing"]["reason"]

    def test_hybrid_when_chunks_are_also_relevant(self, store: AdapterStore):
        docs = [_chunk([1, 0, 0.7])]
        q = unit([1, 0, 0.5]).tolist()
        out = QueryRouter(store=store, rag_margin=None).run(query="q", query_embedding=q, documents=docs)
        assert out["routing"]["route"] == "hybrid" and out["adapter_ids"] == ["/kettle.md"]
        assert out["rag"] == "q" and len(out["documents"]) == 1
        out = QueryRouter(store=store, hybrid_threshold=None, rag_margin=None).run(
            query="q", query_embedding=q, documents=docs)
        assert out["routing"]["route"] == "d2l"

    def test_chunk_much_more_relevant_than_adapter_goes_to_rag(self, store: AdapterStore):
        q = unit([0.5, 0, 1]).tolist()  # kettle relevance ~0.45, chunk ~1.0
        out = QueryRouter(store=store).run(query="q", query_embedding=q, documents=[_chunk([0.5, 0, 1])])
        assert out["routing"]["route"] == "rag" and out["adapter_ids"] == []
        assert "more relevant" in out["routing"]["reason"]

    def test_modes(self, store: AdapterStore):
        q = unit([1, 0, 0]).tolist()
        far = unit([0, 0, 1]).tolist()
        assert QueryRouter(store=store, mode="rag").run(query="q", query_embedding=q)["routing"]["route"] == "rag"
        d2l = QueryRouter(store=store, mode="d2l")
        assert d2l.run(query="q", query_embedding=far)["adapter"] == "q"
        assert d2l.run(query="q", query_embedding=far)["adapter_ids"] == []
        out = QueryRouter(store=store, mode="hybrid").run(query="q", query_embedding=q,
                                                          documents=[_chunk([0, 0, 1, 1])])
        assert out["routing"]["route"] == "hybrid"
        assert QueryRouter(store=store).run(query="q", query_embedding=q, mode="rag")["routing"]["route"] == "rag"
        with pytest.raises(InputError, match="mode"):
            QueryRouter(store=store, mode="sometimes")

    def test_max_adapters_and_margin(self, store: AdapterStore):
        q = unit([1, 1.3, 0]).tolist()  # kettle ~0.81, office ~0.79
        assert len(QueryRouter(store=store, max_adapters=2).run(query="q", query_embedding=q)["adapter_ids"]) == 2
        assert len(QueryRouter(store=store).run(query="q", query_embedding=q)["adapter_ids"]) == 1

    def test_index_follows_the_store(self, store: AdapterStore):
        router = QueryRouter(store=store)
        q = unit([0, 0, 0, 1]).tolist()
        assert router.run(query="q", query_embedding=q)["adapter_ids"] == []
        store.put("/new.md", make_adapter(3), routing=np.stack([unit([0, 0, 0, 1])]))
        assert router.run(query="q", query_embedding=q)["adapter_ids"] == ["/new.md"]
        store.delete("/new.md")
        assert router.run(query="q", query_embedding=q)["adapter_ids"] == []

    def test_empty_store_and_bad_input(self, tmp_path: Path, store: AdapterStore):
        out = QueryRouter(store=str(tmp_path / "empty")).run(query="q", query_embedding=unit([1]).tolist())
        assert out["routing"]["route"] == "rag" and "none internalized" in out["routing"]["reason"]
        with pytest.raises(InputError, match="empty"):
            QueryRouter(store=store).run(query="  ", query_embedding=unit([1]).tolist())
        with pytest.raises(InputError, match="dimensions"):
            QueryRouter(store=store).run(query="q", query_embedding=[1.0, 0.0])

    def test_faiss_score_fallback(self, store: AdapterStore):
        doc = Document(content="c", score=1 / (1 + 0.2), meta={"file_path": "/x"})  # squared L2 0.2 -> cos 0.9
        out = QueryRouter(store=store).run(query="q", query_embedding=unit([0, 0, 1]).tolist(), documents=[doc])
        assert out["routing"]["chunks"][0]["similarity"] == pytest.approx(0.9)

    def test_to_dict_from_dict(self, tmp_path: Path):
        router = QueryRouter(store=str(tmp_path / "a"), threshold=0.5, mode="hybrid")
        data = router.to_dict()
        assert data["init_parameters"]["store"] == str(tmp_path / "a")
        assert data["init_parameters"]["threshold"] == 0.5 and data["init_parameters"]["mode"] == "hybrid"
        assert QueryRouter.from_dict(data).to_dict() == data
        shared = AdapterStore.open(tmp_path / "b")
        data = QueryRouter(store=shared).to_dict()
        assert data["init_parameters"]["store"]["type"].endswith("AdapterStore")
        again = QueryRouter.from_dict(data)
        again.warm_up()
        assert again._store is shared
