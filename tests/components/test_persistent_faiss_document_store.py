from __future__ import annotations

import logging
from pathlib import Path

import pytest
from haystack import Document
from haystack.document_stores.errors import DocumentStoreError
from haystack_integrations.components.retrievers.faiss import FAISSEmbeddingRetriever
from haystack_integrations.document_stores.faiss import FAISSDocumentStore

from d2l_haystack.core.errors import D2LError
from d2l_haystack.stores import PersistentFAISSDocumentStore

from .conftest import unit


def _doc(text: str, vec: list[float], path: str = "a.md") -> Document:
    return Document(content=text, embedding=unit(vec).tolist(), meta={"file_path": path})


class TestPersistentFAISSDocumentStore:
    def test_autosave_and_reload(self, tmp_path: Path):
        index = str(tmp_path / "faiss" / "index")
        store = PersistentFAISSDocumentStore(index)
        store.write_documents([_doc("alpha", [1, 0]), _doc("beta", [0, 1], "b.md")])
        assert (tmp_path / "faiss" / "index.faiss").is_file() and (tmp_path / "faiss" / "index.json").is_file()
        again = PersistentFAISSDocumentStore(index)
        assert again.count_documents() == 2
        assert again.search(unit([1, 0.1]).tolist(), top_k=1)[0].content == "alpha"
        assert again.delete_by_filter({"field": "meta.file_path", "operator": "==", "value": "a.md"}) == 1
        assert PersistentFAISSDocumentStore(index).count_documents() == 1

    def test_plain_faiss_store_reads_the_files(self, tmp_path: Path):
        index = str(tmp_path / "index")
        PersistentFAISSDocumentStore(index).write_documents([_doc("alpha", [1, 0])])
        assert FAISSDocumentStore(index_path=index, embedding_dim=384).count_documents() == 1

    def test_mismatched_faiss_file_is_rebuilt_and_written_back(self, tmp_path: Path, caplog):
        index = str(tmp_path / "index")
        store = PersistentFAISSDocumentStore(index)
        store.write_documents([_doc("alpha", [1, 0])])
        (tmp_path / "index.faiss").write_bytes(b"garbage")  # a crash between the two renames, or damage
        json_before = (tmp_path / "index.json").read_bytes()
        with caplog.at_level(logging.WARNING):
            again = PersistentFAISSDocumentStore(index)
        assert again.search(unit([1, 0]).tolist(), top_k=1)[0].content == "alpha"
        assert "rebuilt it from the documents" in caplog.text
        # written back once (same checksum as recorded): the next open is silent and reads it as it is
        assert (tmp_path / "index.faiss").read_bytes() != b"garbage"
        assert (tmp_path / "index.json").read_bytes() == json_before
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            third = PersistentFAISSDocumentStore(index)
        assert "rebuilt" not in caplog.text and third.count_documents() == 1

    def test_damaged_json_is_a_clear_error(self, tmp_path: Path):
        index = str(tmp_path / "index")
        PersistentFAISSDocumentStore(index).write_documents([_doc("alpha", [1, 0])])
        (tmp_path / "index.json").write_text("{")
        with pytest.raises(DocumentStoreError, match="damaged FAISS document file") as err:
            PersistentFAISSDocumentStore(index)
        assert isinstance(err.value, D2LError) and "\n" not in str(err.value)  # one line at the CLI
        assert (tmp_path / "index.json").read_text() == "{"  # left as it is, for `d2l repair`

    def test_other_instance_changes_are_seen(self, tmp_path: Path):
        index = str(tmp_path / "index")
        one, two = PersistentFAISSDocumentStore(index), PersistentFAISSDocumentStore(index)
        one.write_documents([_doc("alpha", [1, 0])])
        assert two.count_documents() == 1
        two.write_documents([_doc("beta", [0, 1], "b.md")])
        assert len(one.search(unit([0, 1]).tolist(), top_k=5)) == 2

    def test_batch_saves_once_and_rolls_back_on_error(self, tmp_path: Path):
        index = str(tmp_path / "index")
        store = PersistentFAISSDocumentStore(index)
        store.write_documents([_doc("alpha", [1, 0])])
        with pytest.raises(RuntimeError), store.batch():
            store.delete_by_filter({"field": "meta.file_path", "operator": "==", "value": "a.md"})
            assert store.documents == {}
            raise RuntimeError("boom")
        assert store.count_documents() == 1
        assert PersistentFAISSDocumentStore(index).count_documents() == 1

    def test_serializes_as_plain_faiss_store_and_shares_by_path(self, tmp_path: Path):
        store = PersistentFAISSDocumentStore.open(tmp_path / "index")
        data = store.to_dict()
        assert data["type"] == "haystack_integrations.document_stores.faiss.document_store.FAISSDocumentStore"
        assert data["init_parameters"] == {"index_path": str(tmp_path / "index"), "index_string": "Flat",
                                           "embedding_dim": 384}
        assert PersistentFAISSDocumentStore.from_dict(data) is store
        retriever = FAISSEmbeddingRetriever.from_dict(FAISSEmbeddingRetriever(document_store=store).to_dict())
        assert type(retriever.document_store) is FAISSDocumentStore
        assert PersistentFAISSDocumentStore.resolve(retriever.document_store) is store
        memory = FAISSDocumentStore(embedding_dim=384)
        assert PersistentFAISSDocumentStore.resolve(memory) is memory

    def test_in_memory(self):
        store = PersistentFAISSDocumentStore()
        store.write_documents([_doc("alpha", [1, 0])])
        assert store.count_documents() == 1
