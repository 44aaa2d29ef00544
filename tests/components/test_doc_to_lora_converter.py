from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from haystack import Document

from d2l_haystack.components import DocToLoRAConverter
from d2l_haystack.core.errors import InputError
from d2l_haystack.stores import AdapterStore, PersistentFAISSDocumentStore

from .conftest import unit

TEXT_A = "The Aurora K2 kettle holds 1.7 litres and has a 3-year warranty. Error E4 means dry boil."
TEXT_B = "The Lumen Labs office opens at 8:00. Lunch is catered every Thursday at 12:30."


@pytest.fixture
def converter(tmp_path: Path, engine_params: dict) -> DocToLoRAConverter:
    return DocToLoRAConverter(store=str(tmp_path / "adapters"), **engine_params)


class TestDocToLoRAConverter:
    def test_internalizes_and_skips_unchanged(self, converter: DocToLoRAConverter, count_internalize):
        calls = count_internalize(converter.engine)
        docs = [Document(content=TEXT_A, meta={"file_path": "/a.md", "title": "Kettle"}),
                Document(content=TEXT_B, meta={"d2l_doc_id": "office"})]
        out = converter.run(documents=docs)
        assert (out["internalized"], out["skipped"]) == (2, 0) and len(calls) == 2
        assert [d.meta["adapter_id"] for d in out["documents"]] == ["/a.md", "office"]
        assert all(d.meta["d2l_route"] == "d2l" for d in out["documents"])
        store = converter._store
        entry = store.info("/a.md")
        assert entry["title"] == "Kettle" and entry["checkpoint_id"] == converter.engine.checkpoint_id
        routing = store.get_routing("/a.md")
        assert routing.shape[1] == 384 and np.allclose(np.linalg.norm(routing, axis=1), 1, atol=1e-3)
        files = sorted(p.name for p in (Path(store.path) / "objects").iterdir())
        again = converter.run(documents=docs)
        assert (again["internalized"], again["skipped"]) == (0, 2) and len(calls) == 2
        assert sorted(p.name for p in (Path(store.path) / "objects").iterdir()) == files
        changed = converter.run(documents=[Document(content=TEXT_A + " New.", meta={"file_path": "/a.md"})])
        assert changed["internalized"] == 1 and len(calls) == 3

    def test_copy_of_a_stored_document_reuses_its_adapter(self, converter: DocToLoRAConverter, count_internalize):
        calls = count_internalize(converter.engine)
        converter.run(documents=[Document(content=TEXT_A, meta={"file_path": "/a.md"})])
        out = converter.run(documents=[Document(content=TEXT_A, meta={"file_path": "/copy-of-a.md"})])
        assert (out["internalized"], out["skipped"], len(calls)) == (0, 1, 1)
        assert out["documents"][0].meta["d2l_action"] == "copied"
        assert converter._store.count() == 2

    def test_changing_the_chunking_internalizes_again(self, converter: DocToLoRAConverter, engine_params: dict,
                                                      count_internalize):
        doc = Document(content=TEXT_A, meta={"file_path": "/a.md"})
        converter.run(documents=[doc])
        assert converter._store.info("/a.md")["meta"]["chunking"] == "tokens"
        per_sentence = DocToLoRAConverter(store=converter.store, **{**engine_params, "chunking": "sentences"})
        calls = count_internalize(per_sentence.engine)
        out = per_sentence.run(documents=[doc])
        assert (out["internalized"], out["skipped"], len(calls)) == (1, 0, 1)
        entry = converter._store.info("/a.md")
        assert entry["meta"]["chunking"] == "sentences" and entry["num_chunks"] == 2  # two sentences
        # a copy under another key reuses only an adapter made the same way
        copy = per_sentence.run(documents=[Document(content=TEXT_A, meta={"file_path": "/b.md"})])
        assert copy["documents"][0].meta["d2l_action"] == "copied" and len(calls) == 1
        assert per_sentence.run(documents=[doc])["skipped"] == 1 and len(calls) == 1
        assert converter.run(documents=[doc])["internalized"] == 1

    @pytest.mark.parametrize("content", ["", "   \n\t", "\x00\x01binary\x02"])
    def test_bad_document_is_a_clear_error_and_store_untouched(self, converter, content):
        docs = [Document(content=TEXT_A, meta={"file_path": "/good.md"}),
                Document(content=content, meta={"file_path": "/bad.md"})]
        with pytest.raises(InputError, match="/bad.md"):
            converter.run(documents=docs)
        assert AdapterStore.resolve(converter.store).count() == 0

    def test_skip_invalid(self, tmp_path: Path, engine_params: dict, caplog):
        conv = DocToLoRAConverter(store=str(tmp_path / "s"), skip_invalid=True, **engine_params)
        out = conv.run(documents=[Document(content="", meta={"file_path": "/bad.md"}),
                                  Document(content=TEXT_B, meta={"file_path": "/ok.md"})])
        assert [d.meta["adapter_id"] for d in out["documents"]] == ["/ok.md"]
        assert "/bad.md" in caplog.text

    def test_removes_chunks_of_internalized_documents(self, tmp_path: Path, engine_params: dict):
        faiss = PersistentFAISSDocumentStore(str(tmp_path / "index"))
        faiss.write_documents([Document(content="old chunk", embedding=unit([1]).tolist(),
                                        meta={"file_path": "/a.md"})])
        conv = DocToLoRAConverter(store=str(tmp_path / "s"), document_store=faiss, **engine_params)
        conv.run(documents=[Document(content=TEXT_A, meta={"file_path": "/a.md"})])
        assert faiss.count_documents() == 0

    def test_shares_the_engine(self, converter: DocToLoRAConverter, engine_params: dict, tmp_path: Path):
        from d2l_haystack.components import AdapterGenerator

        assert AdapterGenerator(store=converter.store, **engine_params).engine is converter.engine

    def test_to_dict_from_dict(self, tmp_path: Path, engine_params: dict):
        faiss = PersistentFAISSDocumentStore.open(tmp_path / "index")
        conv = DocToLoRAConverter(store=AdapterStore.open(tmp_path / "s"), document_store=faiss, **engine_params)
        data = conv.to_dict()
        params = data["init_parameters"]
        assert data["type"] == "d2l_haystack.components.doc_to_lora_converter.DocToLoRAConverter"
        assert params["store"]["init_parameters"]["path"] == str(tmp_path / "s")
        assert params["document_store"]["init_parameters"]["index_path"] == str(tmp_path / "index")
        assert params["model"] == engine_params["model"] and params["checkpoint"] is None
        again = DocToLoRAConverter.from_dict(data)
        assert again.store is conv.store and again.document_store is faiss
        assert again.to_dict() == data
        by_path = DocToLoRAConverter(store=str(tmp_path / "s"), **engine_params)
        assert DocToLoRAConverter.from_dict(by_path.to_dict()).store == str(tmp_path / "s")
        assert params["chunking"] == "tokens"
        per_sentence = DocToLoRAConverter(store=str(tmp_path / "s"), **{**engine_params, "chunking": "sentences"})
        again = DocToLoRAConverter.from_dict(per_sentence.to_dict())
        assert again.chunking == "sentences" and again.engine.chunking == "sentences"
        assert again.engine is not conv.engine


def test_prepare_writes_nothing_and_commit_stores_it(converter: DocToLoRAConverter, count_internalize):
    """The two steps of run(): a workspace runs prepare outside its commit gate, commit inside."""
    calls = count_internalize(converter.engine)
    doc = Document(content=TEXT_A, meta={"d2l_doc_id": "kettle"})
    prepared = converter.prepare(doc)
    assert prepared.action == "internalized" and prepared.adapter is not None and len(calls) == 1
    assert converter._store.info("kettle") is None  # nothing stored yet
    out = converter.commit(doc, prepared)
    assert out.meta["d2l_action"] == "internalized" and converter._store.info("kettle") is not None
    assert converter.prepare(doc).action == "unchanged" and len(calls) == 1
    copy = Document(content=TEXT_A, meta={"d2l_doc_id": "kettle-copy"})
    twin = converter.prepare(copy)
    assert twin.action == "copied" and len(calls) == 1  # same content: the stored adapter is reused
    assert converter.prepare(doc, force=True).action == "internalized" and len(calls) == 2
    with pytest.raises(InputError):
        converter.prepare(Document(content="", meta={"d2l_doc_id": "empty"}))
