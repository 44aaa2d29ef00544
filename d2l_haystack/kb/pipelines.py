"""Python builders of the d2l-haystack pipelines, and the one-call YAML loader.

Four pipelines, each available as a Python builder and as YAML in ``pipelines/``:

========================  =====================================================================
``indexing``              files -> :class:`SourceFileConverter` -> :class:`InternalizationRouter`
                          -> ``internalize``: :class:`DocToLoRAConverter` (adapters) /
                          ``index``: ``DocumentSplitter`` -> ``SentenceTransformersDocumentEmbedder``
                          -> :class:`ChunkWriter` (FAISS)
``query``                 ``SentenceTransformersTextEmbedder`` -> ``FAISSEmbeddingRetriever`` ->
                          :class:`QueryRouter` -> ``adapter``: ``d2l_generator`` / ``rag``:
                          ``rag_generator`` -> ``answer_joiner`` (``BranchJoiner``)
``rag_only``              text embedder -> retriever -> ``generator`` (chunks in the prompt)
``d2l_only``              text embedder -> :class:`QueryRouter` (``mode="d2l"``) -> ``generator``
========================  =====================================================================

Loading YAML (Haystack 3 only imports allowlisted modules while deserializing)::

    from d2l_haystack.kb.pipelines import load_pipeline, query_inputs

    pipe = load_pipeline("query", workspace="kb")          # or a path to any YAML file
    result = pipe.run(query_inputs(pipe, "What is the warranty period?"))
    print(result["answer_joiner"]["value"][0].text)

``load_pipeline`` passes ``allowed_modules=["d2l_haystack.*"]`` to ``Pipeline.from_dict`` for
that call only. Loading the YAML with plain Haystack instead needs the same permission, either
``haystack.core.serialization.allow_deserialization_module("d2l_haystack")`` (process-wide) or
the environment variable ``HAYSTACK_DESERIALIZATION_ALLOWLIST="d2l_haystack.*"``, and the
``${...}`` placeholders replaced by hand.

Placeholders in the YAML (``${NAME}`` or ``${NAME:-default}``), filled from ``variables``, then
the workspace, then the environment: ``D2L_WORKSPACE`` (the workspace folder),
``D2L_MODEL``, ``D2L_CHECKPOINT``, ``D2L_EMBEDDING_MODEL`` (default: the packaged MiniLM folder).
A value that is exactly one placeholder keeps the variable's type (``None`` for an untrained
checkpoint). After loading, every persisted FAISS store is bound to the process-wide
:class:`PersistentFAISSDocumentStore` of its path, so the indexing and query pipelines of one
process share one index, and it is saved atomically after each change.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Protocol

import yaml
from haystack import Pipeline
from haystack.components.joiners import BranchJoiner
from haystack.components.preprocessors import DocumentSplitter
from haystack.dataclasses import ChatMessage
from haystack.marshal import YamlMarshaller
from haystack_integrations.components.embedders.sentence_transformers import (
    SentenceTransformersDocumentEmbedder,
    SentenceTransformersTextEmbedder,
)
from haystack_integrations.components.retrievers.faiss import FAISSEmbeddingRetriever
from haystack_integrations.document_stores.faiss import FAISSDocumentStore

from d2l_haystack.components import (
    AdapterGenerator,
    ChunkWriter,
    DocToLoRAConverter,
    InternalizationRouter,
    QueryRouter,
    SourceFileConverter,
)
from d2l_haystack.core.errors import D2LError
from d2l_haystack.core.keys import EMBEDDING_DIM, resolve_embedding_model
from d2l_haystack.kb.settings import DEFAULT_SETTINGS, open_config, settings_of
from d2l_haystack.stores import AdapterStore, PersistentFAISSDocumentStore


class WorkspaceLike(Protocol):
    """What a builder reads of a :class:`~d2l_haystack.kb.workspace.Workspace` (the workspace
    builds its own query pipeline with these builders, so they cannot import it)."""

    path: Path
    device: str | None
    settings: dict[str, Any]
    adapters: AdapterStore
    document_store: Any

PIPELINE_NAMES = ("indexing", "query", "rag_only", "d2l_only")
PIPELINES_DIR = Path(__file__).resolve().parents[2] / "pipelines"
ALLOWED_MODULES = ["d2l_haystack.*"]
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class PipelineLoadError(D2LError):
    """A pipeline YAML cannot be found, parsed or built."""


# -- builders -----------------------------------------------------------------------------
def embedding_retriever(document_store: Any, top_k: int) -> Any:
    """The embedding retriever of a document store: FAISS (a folder workspace) or pgvector (a
    PostgreSQL one); both give the pipelines the same sockets (``query_embedding`` -> ``documents``)."""
    if isinstance(document_store, FAISSDocumentStore):
        return FAISSEmbeddingRetriever(document_store=document_store, top_k=top_k)
    from haystack_integrations.components.retrievers.pgvector import PgvectorEmbeddingRetriever
    from haystack_integrations.document_stores.pgvector import PgvectorDocumentStore

    if isinstance(document_store, PgvectorDocumentStore):
        return PgvectorEmbeddingRetriever(document_store=document_store, top_k=top_k)
    raise PipelineLoadError(f"no embedding retriever for a {type(document_store).__name__} "
                            f"(FAISS and pgvector stores are supported)")


class _Settings:
    """What a builder needs: stores, model settings, embedding model."""

    def __init__(self, workspace: WorkspaceLike | str | None, store: Any, document_store: Any, model: str | None,
                 checkpoint: str | None, device: str | None, embedding_model: str | None,
                 chunk_tokens: int | None, chunking: str | None = None,
                 reading_memory: bool | None = None) -> None:
        self.workspace_path: str | None = None
        if workspace is not None and not isinstance(workspace, str | Path):
            s = workspace.settings
            self.workspace_path = str(workspace.path)
            self.store = store or workspace.adapters
            self.document_store = document_store or workspace.document_store
            # the workspace's model and checkpoint, unless a model is named explicitly
            self.model = model or s["model"]
            self.checkpoint = checkpoint if model else s["checkpoint"]
            self.device = device or workspace.device
            self.embedding_model = embedding_model or s["embedding_model"]
            self.chunk_tokens = chunk_tokens or s["chunk_tokens"]
            self.chunking = chunking or s["chunking"]
            self.reading_memory = bool(s["reading_memory"] if reading_memory is None else reading_memory)
            self.dtype = s["dtype"]
            self.router = dict(s["router"])
            self.query_router = dict(s["query_router"])
            self.split_length, self.split_overlap, self.top_k = s["split_length"], s["split_overlap"], s["top_k"]
            self.generation_kwargs = {"max_new_tokens": s["max_new_tokens"]}
            return
        if isinstance(workspace, str | Path):
            self.workspace_path = str(workspace)
            store = store or f"{workspace}/adapters"
            document_store = document_store or f"{workspace}/faiss/index"
        if store is None or document_store is None:
            raise PipelineLoadError("a pipeline needs a workspace, or both an adapter store and a document store")
        self.store = AdapterStore.resolve(store)
        self.document_store = (PersistentFAISSDocumentStore.open(document_store, embedding_dim=EMBEDDING_DIM)
                               if isinstance(document_store, str | Path) else document_store)
        d = DEFAULT_SETTINGS
        self.model = model or d["model"]
        self.checkpoint = checkpoint
        self.device = device
        self.embedding_model = embedding_model
        self.chunk_tokens = chunk_tokens
        self.chunking = chunking or d["chunking"]
        self.reading_memory = bool(d["reading_memory"] if reading_memory is None else reading_memory)
        self.dtype = d["dtype"]
        self.router, self.query_router = dict(d["router"]), dict(d["query_router"])
        self.split_length, self.split_overlap, self.top_k = d["split_length"], d["split_overlap"], d["top_k"]
        self.generation_kwargs = {"max_new_tokens": d["max_new_tokens"]}

    def engine_params(self) -> dict[str, Any]:
        return {"model": self.model, "checkpoint": self.checkpoint, "device": self.device, "dtype": self.dtype,
                "chunk_tokens": self.chunk_tokens, "chunking": self.chunking, "reading_memory": self.reading_memory}

    def embedding_path(self) -> str:
        name = self.embedding_model
        return name if name and name.startswith("${") else resolve_embedding_model(name)

    def text_embedder(self) -> SentenceTransformersTextEmbedder:
        return SentenceTransformersTextEmbedder(model=self.embedding_path(), normalize_embeddings=True,
                                                progress_bar=False, local_files_only=True)

    def generator(self) -> AdapterGenerator:
        return AdapterGenerator(store=self.store, generation_kwargs=dict(self.generation_kwargs),
                                **self.engine_params())


def _settings(workspace: WorkspaceLike | str | None, store: Any = None, document_store: Any = None,
              model: str | None = None, checkpoint: str | None = "default", device: str | None = None,
              embedding_model: str | None = None, chunk_tokens: int | None = None,
              chunking: str | None = None, reading_memory: bool | None = None) -> _Settings:
    return _Settings(workspace, store, document_store, model, checkpoint, device, embedding_model, chunk_tokens,
                     chunking, reading_memory)


def build_indexing_pipeline(workspace: WorkspaceLike | str | None = None, *, store: Any = None,
                            document_store: Any = None,
                            model: str | None = None, checkpoint: str | None = "default", device: str | None = None,
                            embedding_model: str | None = None, chunk_tokens: int | None = None,
                            chunking: str | None = None, reading_memory: bool | None = None) -> Pipeline:
    """Files -> documents -> per-document route -> adapters or FAISS chunks.

    Run it with ``{"converter": {"sources": [paths]}}``.

    :param workspace: a :class:`~d2l_haystack.kb.workspace.Workspace` (its stores and settings), or a
        workspace folder (``<folder>/adapters`` and ``<folder>/faiss/index``).
    :param store: an :class:`AdapterStore` or folder (instead of the workspace's).
    :param document_store: a FAISS store or index path (instead of the workspace's).
    """
    s = _settings(workspace, store, document_store, model, checkpoint, device, embedding_model, chunk_tokens,
                  chunking, reading_memory)
    pipe = Pipeline(metadata={"d2l_pipeline": "indexing"})
    pipe.add_component("converter", SourceFileConverter())
    pipe.add_component("internalization_router", InternalizationRouter(
        workspace=s.workspace_path, model=s.model, **s.router))
    pipe.add_component("doc_to_lora", DocToLoRAConverter(
        store=s.store, embedding_model=s.embedding_model, document_store=s.document_store, **s.engine_params()))
    pipe.add_component("splitter", DocumentSplitter(split_by="word", split_length=s.split_length,
                                                    split_overlap=s.split_overlap))
    pipe.add_component("doc_embedder", SentenceTransformersDocumentEmbedder(
        model=s.embedding_path(), normalize_embeddings=True, progress_bar=False, local_files_only=True))
    pipe.add_component("writer", ChunkWriter(document_store=s.document_store, adapter_store=s.store))
    pipe.connect("converter.documents", "internalization_router.documents")
    pipe.connect("internalization_router.internalize", "doc_to_lora.documents")
    pipe.connect("internalization_router.index", "splitter.documents")
    pipe.connect("splitter.documents", "doc_embedder.documents")
    pipe.connect("doc_embedder.documents", "writer.documents")
    return pipe


def build_query_pipeline(workspace: WorkspaceLike | str | None = None, *, store: Any = None, document_store: Any = None,
                         model: str | None = None, checkpoint: str | None = "default", device: str | None = None,
                         embedding_model: str | None = None, chunk_tokens: int | None = None,
                         chunking: str | None = None, reading_memory: bool | None = None,
                         router: dict[str, Any] | None = None,
                         top_k: int | None = None) -> Pipeline:
    """Query -> embed -> retrieve -> route (adapter / RAG / hybrid) -> answer.

    Run it with :func:`query_inputs`; the answer is ``result["answer_joiner"]["value"][0]``.

    :param router: :class:`QueryRouter` init parameters (thresholds, ``mode``).
    :param top_k: chunks retrieved per query.
    """
    s = _settings(workspace, store, document_store, model, checkpoint, device, embedding_model, chunk_tokens,
                  chunking, reading_memory)
    pipe = Pipeline(metadata={"d2l_pipeline": "query"})
    pipe.add_component("query_embedder", s.text_embedder())
    pipe.add_component("retriever", embedding_retriever(s.document_store, top_k or s.top_k))
    pipe.add_component("query_router", QueryRouter(store=s.store, **{**s.query_router, **(router or {})}))
    pipe.add_component("d2l_generator", s.generator())
    pipe.add_component("rag_generator", s.generator())
    pipe.add_component("answer_joiner", BranchJoiner(list[ChatMessage]))
    pipe.connect("query_embedder.embedding", "retriever.query_embedding")
    pipe.connect("query_embedder.embedding", "query_router.query_embedding")
    pipe.connect("retriever.documents", "query_router.documents")
    pipe.connect("query_router.adapter", "d2l_generator.messages")
    pipe.connect("query_router.adapter_ids", "d2l_generator.adapter_ids")
    pipe.connect("query_router.routing", "d2l_generator.routing")
    pipe.connect("query_router.rag", "rag_generator.messages")
    pipe.connect("query_router.adapter_ids", "rag_generator.adapter_ids")
    pipe.connect("query_router.documents", "rag_generator.documents")
    pipe.connect("query_router.routing", "rag_generator.routing")
    pipe.connect("d2l_generator.replies", "answer_joiner")
    pipe.connect("rag_generator.replies", "answer_joiner")
    return pipe


def build_rag_pipeline(workspace: WorkspaceLike | str | None = None, *, store: Any = None, document_store: Any = None,
                       model: str | None = None, checkpoint: str | None = "default", device: str | None = None,
                       embedding_model: str | None = None, chunk_tokens: int | None = None,
                       chunking: str | None = None, reading_memory: bool | None = None,
                       top_k: int | None = None) -> Pipeline:
    """RAG only: embed -> retrieve -> the same base model with the chunks in the prompt.

    Run it with :func:`query_inputs`; the answer is ``result["generator"]["replies"][0]``.
    """
    s = _settings(workspace, store, document_store, model, checkpoint, device, embedding_model, chunk_tokens,
                  chunking, reading_memory)
    pipe = Pipeline(metadata={"d2l_pipeline": "rag_only"})
    pipe.add_component("query_embedder", s.text_embedder())
    pipe.add_component("retriever", embedding_retriever(s.document_store, top_k or s.top_k))
    pipe.add_component("generator", s.generator())
    pipe.connect("query_embedder.embedding", "retriever.query_embedding")
    pipe.connect("retriever.documents", "generator.documents")
    return pipe


def build_d2l_pipeline(workspace: WorkspaceLike | str | None = None, *, store: Any = None, document_store: Any = None,
                       model: str | None = None, checkpoint: str | None = "default", device: str | None = None,
                       embedding_model: str | None = None, chunk_tokens: int | None = None,
                       chunking: str | None = None, reading_memory: bool | None = None,
                       router: dict[str, Any] | None = None) -> Pipeline:
    """D2L only: embed -> pick the relevant adapter (if any) -> answer without the document.

    Run it with :func:`query_inputs`; the answer is ``result["generator"]["replies"][0]``.
    """
    s = _settings(workspace, store, document_store, model, checkpoint, device, embedding_model, chunk_tokens,
                  chunking, reading_memory)
    pipe = Pipeline(metadata={"d2l_pipeline": "d2l_only"})
    pipe.add_component("query_embedder", s.text_embedder())
    params = {**s.query_router, **(router or {}), "mode": "d2l"}
    pipe.add_component("query_router", QueryRouter(store=s.store, **params))
    pipe.add_component("generator", s.generator())
    pipe.connect("query_embedder.embedding", "query_router.query_embedding")
    pipe.connect("query_router.adapter", "generator.messages")
    pipe.connect("query_router.adapter_ids", "generator.adapter_ids")
    pipe.connect("query_router.routing", "generator.routing")
    return pipe


BUILDERS = {"indexing": build_indexing_pipeline, "query": build_query_pipeline,
            "rag_only": build_rag_pipeline, "d2l_only": build_d2l_pipeline}


# -- running helpers ----------------------------------------------------------------------
def query_inputs(pipeline: Pipeline, question: str, generation_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``run()`` inputs of any of the three query pipelines for one question."""
    names = set(dict(pipeline.walk()))
    data: dict[str, Any] = {"query_embedder": {"text": question}}
    if "query_router" in names:
        data["query_router"] = {"query": question}
    if "generator" in names and "query_router" not in names:
        data["generator"] = {"messages": question}
    if generation_kwargs:
        for name in ("generator", "d2l_generator", "rag_generator"):
            if name in names:
                data.setdefault(name, {})["generation_kwargs"] = generation_kwargs
    return data


def answer_of(result: dict[str, Any]) -> ChatMessage:
    """The reply of a query pipeline's ``run()`` result, whichever pipeline it was."""
    for name, key in (("answer_joiner", "value"), ("generator", "replies"), ("d2l_generator", "replies"),
                      ("rag_generator", "replies")):
        if name in result and result[name].get(key):
            return result[name][key][0]
    raise PipelineLoadError("the pipeline result has no reply")


# -- YAML ---------------------------------------------------------------------------------
_PLACEHOLDER_DEFAULTS = {
    "D2L_WORKSPACE": "${D2L_WORKSPACE}",
    "D2L_MODEL": "${D2L_MODEL:-" + DEFAULT_SETTINGS["model"] + "}",
    "D2L_CHECKPOINT": "${D2L_CHECKPOINT:-default}",
    "D2L_EMBEDDING_MODEL": "${D2L_EMBEDDING_MODEL:-all-minilm-l6-v2}",
    "D2L_CHUNKING": "${D2L_CHUNKING:-" + DEFAULT_SETTINGS["chunking"] + "}",
    "D2L_READING_MEMORY": "${D2L_READING_MEMORY:-" + str(DEFAULT_SETTINGS["reading_memory"]).lower() + "}",
}


def render_yaml(name: str) -> str:
    """The YAML of a built-in pipeline, with placeholders (this is how ``pipelines/*.yaml`` are made)."""
    if name not in BUILDERS:
        raise PipelineLoadError(f"unknown pipeline '{name}' (built-in: {', '.join(PIPELINE_NAMES)})")
    pipe = BUILDERS[name](_PLACEHOLDER_DEFAULTS["D2L_WORKSPACE"], model=_PLACEHOLDER_DEFAULTS["D2L_MODEL"],
                          checkpoint=_PLACEHOLDER_DEFAULTS["D2L_CHECKPOINT"],
                          embedding_model=_PLACEHOLDER_DEFAULTS["D2L_EMBEDDING_MODEL"],
                          chunking=_PLACEHOLDER_DEFAULTS["D2L_CHUNKING"])
    header = (f"# d2l-haystack '{name}' pipeline (generated by d2l_haystack.kb.pipelines.render_yaml).\n"
              f"# Load it with: d2l_haystack.kb.pipelines.load_pipeline('{name}', workspace='FOLDER')\n"
              "# ${NAME:-default} placeholders are filled from the workspace / environment; parameters left out\n"
              "# take the component's own default (thresholds and sizes live in one place: the code).\n")
    data = pipe.to_dict()
    for comp_name, instance in pipe.walk():
        params = data["components"][comp_name].get("init_parameters", {})
        params = _without_defaults(type(instance), params)
        if hasattr(instance, "reading_memory"):  # a bool: its placeholder goes in after the build
            params["reading_memory"] = _PLACEHOLDER_DEFAULTS["D2L_READING_MEMORY"]
        data["components"][comp_name]["init_parameters"] = params
    return header + YamlMarshaller().marshal(data)


def _without_defaults(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` less those equal to ``cls.__init__``'s own defaults (plain values only), so the
    YAML does not repeat a default that the code defines (``from_dict`` fills them in again)."""
    import inspect

    try:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]  # the class as written, not a subclass
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return params
    out = {}
    for key, value in params.items():
        p = signature.parameters.get(key)
        default = p.default if p is not None else inspect.Parameter.empty
        plain = default is None or isinstance(default, bool | int | float | str)
        if plain and default is not inspect.Parameter.empty and value == default and type(value) is type(default):
            continue
        out[key] = value
    return out


def _substitute(node: Any, variables: dict[str, Any], source: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, variables, source) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, variables, source) for v in node]
    if not isinstance(node, str) or "${" not in node:
        return node

    def value(match: re.Match[str]) -> Any:
        name, default = match.group(1), match.group(2)
        if name in variables:
            return variables[name]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        hint = " (pass workspace=...)" if name == "D2L_WORKSPACE" else ""
        raise PipelineLoadError(f"{source}: placeholder ${{{name}}} has no value{hint}; "
                                f"pass variables={{'{name}': ...}} or set the environment variable")

    whole = _PLACEHOLDER.fullmatch(node)
    if whole:  # a whole value keeps its type; "true"/"false" from the environment or a default are booleans
        got = value(whole)
        return {"true": True, "false": False}.get(got.lower(), got) if isinstance(got, str) else got
    return _PLACEHOLDER.sub(lambda m: "" if (v := value(m)) is None else str(v), node)


def _read(name_or_path: str | Path) -> tuple[dict[str, Any], str]:
    text: str | None = None
    source = str(name_or_path)
    if str(name_or_path) in BUILDERS:
        path = PIPELINES_DIR / f"{name_or_path}.yaml"
        if path.is_file():
            text, source = path.read_text(encoding="utf-8"), str(path)
        else:  # an installed package without the repository's pipelines/ folder
            text = render_yaml(str(name_or_path))
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise PipelineLoadError(f"no pipeline '{name_or_path}': neither a built-in name "
                                    f"({', '.join(PIPELINE_NAMES)}) nor a YAML file")
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineLoadError(f"{source}: invalid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        raise PipelineLoadError(f"{source}: not a Haystack pipeline (no 'components' mapping)")
    return data, source


def _variables(workspace: WorkspaceLike | str | Path | None, s: dict[str, Any] | None,
               extra: dict[str, Any] | None) -> dict[str, Any]:
    """The placeholders' values: ``workspace`` and its settings ``s`` (:func:`_workspace_settings`), then ``extra``."""
    out: dict[str, Any] = {}
    if workspace is not None and s is not None:
        path = Path(workspace).expanduser().resolve() if isinstance(workspace, str | Path) else workspace.path
        out.update(D2L_WORKSPACE=str(path), D2L_MODEL=s["model"], D2L_CHECKPOINT=s["checkpoint"],
                   D2L_EMBEDDING_MODEL=s["embedding_model"], D2L_CHUNKING=s["chunking"],
                   D2L_READING_MEMORY=s["reading_memory"])
    out.update(extra or {})
    embedding = out["D2L_EMBEDDING_MODEL"] if "D2L_EMBEDDING_MODEL" in out else os.environ.get("D2L_EMBEDDING_MODEL")
    out["D2L_EMBEDDING_MODEL"] = resolve_embedding_model(embedding)
    return out


def bind_stores(pipeline: Pipeline, chunks: Any = None) -> Pipeline:
    """Replace every persisted plain ``FAISSDocumentStore`` by the shared persistent one of its path,
    and every ``PgvectorDocumentStore`` of the table of ``chunks`` (a PostgreSQL workspace's store) by it."""
    table = getattr(chunks, "table_name", None)
    for _, instance in pipeline.walk():
        store = getattr(instance, "document_store", None)
        if isinstance(store, FAISSDocumentStore) and not isinstance(store, PersistentFAISSDocumentStore) \
                and store.index_path:
            setattr(instance, "document_store", PersistentFAISSDocumentStore.resolve(store))  # noqa: B010
        elif table and store is not None and store is not chunks and getattr(store, "table_name", None) == table:
            setattr(instance, "document_store", chunks)  # noqa: B010
    return pipeline


_FAISS_RETRIEVER = "haystack_integrations.components.retrievers.faiss.embedding_retriever.FAISSEmbeddingRetriever"
_PG_RETRIEVER = "haystack_integrations.components.retrievers.pgvector.embedding_retriever.PgvectorEmbeddingRetriever"


def _to_postgres(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The pipeline dict with every FAISS store and retriever of the workspace replaced by the
    pgvector ones of its PostgreSQL store (the same YAML serves both kinds of workspace)."""
    from d2l_haystack.kb.postgres import chunk_store_dict

    pg_store = chunk_store_dict(settings)

    def swap(node: Any) -> Any:
        if isinstance(node, dict):
            if str(node.get("type", "")).endswith(".FAISSDocumentStore"):
                return copy.deepcopy(pg_store)
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    out = copy.deepcopy(data)
    for comp in out.get("components", {}).values():
        if comp.get("type") == _FAISS_RETRIEVER:
            params = comp.get("init_parameters", {})
            comp["type"] = _PG_RETRIEVER
            comp["init_parameters"] = {k: v for k, v in params.items() if k in ("filters", "top_k", "filter_policy")}
            comp["init_parameters"]["document_store"] = params.get("document_store")
        comp["init_parameters"] = swap(comp.get("init_parameters", {}))
    return out


def load_pipeline(name_or_path: str | Path, workspace: WorkspaceLike | str | Path | None = None,
                  variables: dict[str, Any] | None = None) -> Pipeline:
    """Load a built-in pipeline (``indexing``, ``query``, ``rag_only``, ``d2l_only``) or a YAML file.

    One call: reads the YAML, fills the ``${...}`` placeholders from ``variables``, the
    workspace (opened or created) and the environment, deserializes with
    ``allowed_modules=["d2l_haystack.*"]`` and binds persisted FAISS stores to their shared,
    auto-saving instances.

    :raises PipelineLoadError: unknown name, missing file, invalid YAML, a missing variable, or
        a component that cannot be imported or built (the message names it).
    """
    data, source = _read(name_or_path)
    settings = _workspace_settings(workspace)
    data = _substitute(data, _variables(workspace, settings, variables), source)
    chunks = None
    if settings is not None and settings.get("store"):
        from d2l_haystack.kb.postgres import chunk_store

        data = _to_postgres(data, settings)
        chunks = workspace.document_store if not isinstance(workspace, str | Path) and workspace is not None \
            else chunk_store(settings)
    try:
        pipe = Pipeline.from_dict(data, allowed_modules=ALLOWED_MODULES)
    except D2LError as exc:
        raise PipelineLoadError(f"{source}: {exc}") from exc
    except Exception as exc:  # Haystack's PipelineError / DeserializationError and friends
        message = str(exc).split("\n")[0]
        if " If you trust" in message:  # the allowlist refusal: keep the first sentence, add our hint
            message = message.split(" If you trust")[0] + (" load_pipeline only allows d2l_haystack and Haystack "
                                                           "modules (see docs/haystack.md)")
        cause = exc.__cause__
        if cause is not None and str(cause) and str(cause) not in message:
            message += f" ({str(cause).splitlines()[0]})"
        raise PipelineLoadError(f"{source}: {message}") from exc
    return bind_stores(pipe, chunks)


def _workspace_settings(workspace: WorkspaceLike | str | Path | None) -> dict[str, Any] | None:
    """A workspace's settings; a folder is opened (or created) like ``Workspace(path)`` does."""
    if workspace is None:
        return None
    if isinstance(workspace, str | Path):
        return settings_of(open_config(workspace, create=True))
    return workspace.settings


def write_yaml_files(folder: str | Path = PIPELINES_DIR) -> list[Path]:
    """(Re)generate ``pipelines/*.yaml`` from the builders."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PIPELINE_NAMES:
        path = folder / f"{name}.yaml"
        path.write_text(render_yaml(name), encoding="utf-8")
        out.append(path)
    return out
