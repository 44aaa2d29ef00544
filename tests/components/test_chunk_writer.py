from __future__ import annotations

from pathlib import Path

from haystack import Document

from d2l_haystack.components import ChunkWriter
from d2l_haystack.stores import AdapterStore, PersistentFAISSDocumentStore

from .conftest import make_adapter, unit


def _chunks(path: str, texts: list[str]) -> list[Document]:
    return [Document(content=t, embedding=unit([i + 1, 1]).tolist(), meta={"file_path": path})
            for i, t in enumerate(texts)]


class TestChunkWriter:
    def test_replaces_chunks_of_the_same_source(self, tmp_path: Path):
        faiss = PersistentFAISSDocumentStore(str(tmp_path / "index"))
        writer = ChunkWriter(document_store=faiss)
        assert writer.run(documents=_chunks("/a.md", ["one", "two"]) + _chunks("/b.md", ["bee"]))[
            "documents_written"] == 3
        out = writer.run(documents=_chunks("/a.md", ["one, edited"]))
        assert out == {"documents_written": 1, "sources": ["/a.md"]}
        contents = sorted(d.content for d in PersistentFAISSDocumentStore(str(tmp_path / "index")).filter_documents())
        assert contents == ["bee", "one, edited"]
        assert writer.run(documents=[]) == {"documents_written": 0, "sources": []}

    def test_removes_adapters_of_written_sources(self, tmp_path: Path):
        adapters = AdapterStore(str(tmp_path / "adapters"))
        adapters.put("/a.md", make_adapter())
        adapters.put("/b.md", make_adapter())
        writer = ChunkWriter(document_store=PersistentFAISSDocumentStore(), adapter_store=adapters)
        writer.run(documents=_chunks("/a.md", ["x"]))
        assert adapters.ids() == ["/b.md"]

    def test_to_dict_from_dict(self, tmp_path: Path):
        faiss = PersistentFAISSDocumentStore.open(tmp_path / "index")
        writer = ChunkWriter(document_store=faiss, adapter_store=str(tmp_path / "adapters"), policy="SKIP")
        data = writer.to_dict()
        assert data["type"] == "d2l_haystack.components.chunk_writer.ChunkWriter"
        assert data["init_parameters"]["policy"] == "SKIP"
        assert data["init_parameters"]["document_store"]["init_parameters"]["index_path"] == str(tmp_path / "index")
        again = ChunkWriter.from_dict(data)
        assert again.document_store is faiss and again.to_dict() == data
