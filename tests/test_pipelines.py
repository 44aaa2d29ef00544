"""YAML pipelines and their Python builders (fixtures in ``tests/components/conftest.py``)."""
# ruff: noqa: F811  (pytest fixtures imported from tests/components/conftest.py)

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from components.conftest import (  # noqa: F401  (fixtures shared with tests/components)
    docs_dir,
    samples_dir,
    tiny_model,
    workspace_factory,
)
from haystack import Pipeline
from haystack.core.errors import DeserializationError

from d2l_haystack.kb.pipelines import (
    PIPELINE_NAMES,
    PIPELINES_DIR,
    PipelineLoadError,
    answer_of,
    bind_stores,
    build_d2l_pipeline,
    build_indexing_pipeline,
    build_query_pipeline,
    build_rag_pipeline,
    load_pipeline,
    query_inputs,
    render_yaml,
)
from d2l_haystack.kb.settings import DEFAULT_SETTINGS
from d2l_haystack.kb.workspace import Workspace

KETTLE_Q = "How long is the warranty of the Aurora K2 kettle?"
UNRELATED_Q = "Who wrote the novel Pride and Prejudice?"


def _tiny_vars(tiny_model: str) -> dict:
    return {"D2L_MODEL": tiny_model, "D2L_CHECKPOINT": None}


class TestYamlFiles:
    @pytest.mark.parametrize("name", PIPELINE_NAMES)
    def test_yaml_files_match_the_builders(self, name: str):
        assert (PIPELINES_DIR / f"{name}.yaml").read_text(encoding="utf-8") == render_yaml(name)

    @pytest.mark.parametrize("name", PIPELINE_NAMES)
    def test_each_pipeline_loads_with_one_call(self, name: str, tmp_path: Path, tiny_model: str):
        pipe = load_pipeline(name, workspace=tmp_path / "ws", variables=_tiny_vars(tiny_model))
        names = {n for n, _ in pipe.walk()}
        expected = {"indexing": {"converter", "internalization_router", "doc_to_lora", "splitter", "doc_embedder",
                                 "writer"},
                    "query": {"query_embedder", "retriever", "query_router", "d2l_generator", "rag_generator",
                              "answer_joiner"},
                    "rag_only": {"query_embedder", "retriever", "generator"},
                    "d2l_only": {"query_embedder", "query_router", "generator"}}[name]
        assert names == expected
        for _, comp in pipe.walk():
            store = getattr(comp, "document_store", None)
            if store is not None:  # bound to the workspace's shared, auto-saving store
                assert store is Workspace(tmp_path / "ws").document_store

    def test_the_workspace_chunking_reaches_the_yaml_pipelines(self, tmp_path: Path, tiny_model: str):
        ws = Workspace(tmp_path / "ws", chunking="sentences")
        indexing = load_pipeline("indexing", workspace=ws, variables=_tiny_vars(tiny_model))
        assert indexing.get_component("doc_to_lora").chunking == "sentences"
        query = load_pipeline("query", workspace=tmp_path / "other", variables=_tiny_vars(tiny_model))
        assert query.get_component("d2l_generator").chunking == DEFAULT_SETTINGS["chunking"] == "auto"
        chosen = load_pipeline("query", workspace=tmp_path / "other",
                               variables={**_tiny_vars(tiny_model), "D2L_CHUNKING": "sentences"})
        assert chosen.get_component("d2l_generator").chunking == "sentences"

    def test_plain_haystack_needs_the_allowlist(self, tmp_path: Path, monkeypatch):
        text = (PIPELINES_DIR / "rag_only.yaml").read_text().replace("${D2L_WORKSPACE}", str(tmp_path))
        monkeypatch.delenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", raising=False)
        with pytest.raises(DeserializationError, match="d2l_haystack"):
            Pipeline.loads(text)
        monkeypatch.setenv("D2L_EMBEDDING_MODEL", "unused")
        pipe = Pipeline.loads(text, allowed_modules=["d2l_haystack.*"])
        assert pipe.get_component("generator").model == "${D2L_MODEL:-smollm2-135m-instruct}"  # not substituted
        monkeypatch.setenv("HAYSTACK_DESERIALIZATION_ALLOWLIST", "d2l_haystack.*")
        assert Pipeline.loads(text).get_component("generator") is not None


class TestLoadErrors:
    def test_unknown_name_or_file(self, tmp_path: Path):
        with pytest.raises(PipelineLoadError, match="no pipeline 'nonsense'"):
            load_pipeline("nonsense")

    def test_missing_component_is_named(self, tmp_path: Path):
        data = yaml.safe_load((PIPELINES_DIR / "rag_only.yaml").read_text())
        data["components"]["generator"]["type"] = "d2l_haystack.components.NoSuchGenerator"
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(PipelineLoadError, match="NoSuchGenerator") as info:
            load_pipeline(path, workspace=tmp_path / "ws")
        assert "bad.yaml" in str(info.value) and "generator" in str(info.value)
        data["components"]["generator"]["type"] = "evil_module.Thing"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(PipelineLoadError, match="evil_module"):
            load_pipeline(path, workspace=tmp_path / "ws")

    def test_invalid_yaml_and_missing_variable(self, tmp_path: Path, monkeypatch):
        path = tmp_path / "broken.yaml"
        path.write_text("components: [unclosed")
        with pytest.raises(PipelineLoadError, match="broken.yaml: invalid YAML"):
            load_pipeline(path)
        path.write_text("just: text")
        with pytest.raises(PipelineLoadError, match="not a Haystack pipeline"):
            load_pipeline(path)
        monkeypatch.delenv("D2L_WORKSPACE", raising=False)
        with pytest.raises(PipelineLoadError, match=r"\$\{D2L_WORKSPACE\} has no value"):
            load_pipeline("query")

    def test_bad_init_parameter_is_named(self, tmp_path: Path):
        data = yaml.safe_load((PIPELINES_DIR / "d2l_only.yaml").read_text())
        data["components"]["query_router"]["init_parameters"]["mode"] = "sometimes"
        path = tmp_path / "mode.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(PipelineLoadError, match="query_router.*mode must be one of"):
            load_pipeline(path, workspace=tmp_path / "ws")


class TestBuilders:
    def test_builders_round_trip(self, workspace_factory):
        ws = workspace_factory()
        for builder in (build_indexing_pipeline, build_query_pipeline, build_rag_pipeline, build_d2l_pipeline):
            pipe = builder(ws)
            again = bind_stores(Pipeline.loads(pipe.dumps(), allowed_modules=["d2l_haystack.*"])).to_dict()
            original = pipe.to_dict()
            assert again["components"] == original["components"]
            key = lambda c: (c["sender"], c["receiver"])  # noqa: E731
            assert sorted(again["connections"], key=key) == sorted(original["connections"], key=key)

    def test_builders_need_stores(self):
        with pytest.raises(PipelineLoadError, match="needs a workspace"):
            build_rag_pipeline()

    def test_end_to_end_with_the_tiny_model(self, workspace_factory, docs_dir: Path, tmp_path: Path,
                                            tiny_model: str):
        ws = workspace_factory()
        variables = _tiny_vars(tiny_model)
        indexing = load_pipeline("indexing", workspace=ws, variables=variables)
        sources = sorted(docs_dir.iterdir())
        out = indexing.run({"converter": {"sources": sources}})
        assert out["doc_to_lora"]["internalized"] == 4 and out["writer"]["documents_written"] == 0
        again = indexing.run({"converter": {"sources": sources}})
        assert again["doc_to_lora"]["internalized"] == 0 and again["doc_to_lora"]["skipped"] == 4

        query = load_pipeline("query", workspace=ws, variables=variables)
        result = query.run(query_inputs(query, KETTLE_Q, {"max_new_tokens": 2}))
        reply = answer_of(result)
        assert reply.meta["route"] == "d2l"
        assert reply.meta["adapters"] == [str((docs_dir / "kettle-manual.md").resolve())]
        assert reply.meta["routing"]["adapters"][0]["score"] >= 0.35
        reply = answer_of(query.run(query_inputs(query, UNRELATED_Q, {"max_new_tokens": 2})))
        assert reply.meta["route"] == ("rag" if reply.meta["chunks"] else "base") and reply.meta["adapters"] == []

        d2l = load_pipeline("d2l_only", workspace=ws, variables=variables)
        assert answer_of(d2l.run(query_inputs(d2l, KETTLE_Q, {"max_new_tokens": 2}))).meta["route"] == "d2l"
        assert answer_of(d2l.run(query_inputs(d2l, UNRELATED_Q, {"max_new_tokens": 2}))).meta["adapters"] == []
        rag = load_pipeline("rag_only", workspace=ws, variables=variables)
        only_rag = answer_of(rag.run(query_inputs(rag, KETTLE_Q, {"max_new_tokens": 2}))).meta
        assert only_rag["chunks"] == [] and only_rag["route"] == "base"  # every document is internalized

    def test_async_runs_give_the_same_results(self, workspace_factory, docs_dir: Path, tiny_model: str):
        """``Pipeline.run_async``: every component of ours that reads files, writes stores or
        generates has a ``run_async`` (a worker thread), and the answers equal ``run``'s."""
        import asyncio

        from d2l_haystack.components import (
            AdapterGenerator,
            ChunkWriter,
            DocToLoRAConverter,
            QueryRouter,
            SourceFileConverter,
        )

        for cls in (AdapterGenerator, ChunkWriter, DocToLoRAConverter, QueryRouter, SourceFileConverter):
            assert asyncio.iscoroutinefunction(cls.run_async), cls
        ws = workspace_factory()
        variables = _tiny_vars(tiny_model)
        indexing = load_pipeline("indexing", workspace=ws, variables=variables)
        sources = sorted(docs_dir.iterdir())
        out = asyncio.run(indexing.run_async({"converter": {"sources": sources}}))
        assert out["doc_to_lora"]["internalized"] == 4
        query = load_pipeline("query", workspace=ws, variables=variables)
        data = query_inputs(query, KETTLE_Q, {"max_new_tokens": 3})
        assert answer_of(asyncio.run(query.run_async(data))).text == answer_of(query.run(data)).text


@pytest.mark.integration
class TestRealModels:
    """The YAML pipelines end to end on the real embedded SmolLM2-135M and MiniLM."""

    def test_yaml_pipelines_on_the_real_models(self, tmp_path: Path, docs_dir: Path, embedded_model_dir: Path):
        ws = Workspace(tmp_path / "kb", device="cpu", max_new_tokens=4)
        indexing = load_pipeline("indexing", workspace=ws)
        log = str(docs_dir / "app-changelog.md")
        others = [str(p) for p in sorted(docs_dir.iterdir()) if str(p) != log]
        out = indexing.run({"converter": {"sources": others}})
        assert out["doc_to_lora"]["internalized"] == 3
        ws.index_file(log, route="rag")  # a RAG-side document, through the workspace
        assert indexing.run({"converter": {"sources": others}})["doc_to_lora"]["internalized"] == 0

        query = load_pipeline("query", workspace=ws)
        reply = answer_of(query.run(query_inputs(query, KETTLE_Q, {"max_new_tokens": 4})))
        assert reply.meta["route"] == "d2l"
        assert reply.meta["adapters"] == [str((docs_dir / "kettle-manual.md").resolve())]
        assert reply.meta["model"] == "smollm2-135m-instruct" and reply.text
        reply = answer_of(query.run(query_inputs(query, "What is the capital of France?", {"max_new_tokens": 4})))
        assert reply.meta["route"] == ("rag" if reply.meta["chunks"] else "base") and reply.meta["adapters"] == []
        reply = answer_of(query.run(query_inputs(query, "What is new in version 2.4.0 of the Aurora Home app?",
                                                 {"max_new_tokens": 4})))
        assert reply.meta["route"] == "rag" and reply.meta["chunks"]

        rag = load_pipeline("rag_only", workspace=ws)
        reply = answer_of(rag.run(query_inputs(rag, "Which iOS version is required by the app?",
                                               {"max_new_tokens": 4})))
        assert reply.meta["chunks"] and reply.text
        d2l = load_pipeline("d2l_only", workspace=ws)
        reply = answer_of(d2l.run(query_inputs(d2l, "When is lunch catered at the Lumen Labs office?",
                                               {"max_new_tokens": 4})))
        assert reply.meta["adapters"] == [str((docs_dir / "office-handbook.txt").resolve())]


def test_yaml_leaves_the_components_defaults_to_the_code():
    """Thresholds live in one place: a router default is not repeated in the YAML, and a pipeline
    loaded from it has the component's own default."""
    import inspect

    from d2l_haystack.components import QueryRouter

    data = yaml.safe_load((PIPELINES_DIR / "query.yaml").read_text())
    params = data["components"]["query_router"]["init_parameters"]
    assert "threshold" not in params and "adapter_margin" not in params
    default = inspect.signature(QueryRouter.__init__).parameters["threshold"].default
    router = data["components"]["query_router"]
    assert QueryRouter.from_dict({"type": router["type"], "init_parameters": dict(params)}).threshold == default
