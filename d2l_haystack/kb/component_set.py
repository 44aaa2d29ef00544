"""The Haystack components a workspace indexes with, built from its settings on first use.

The same components the indexing pipeline (:func:`~d2l_haystack.kb.pipelines.build_indexing_pipeline`)
runs: the internalization router, the D2L converter (prepare and commit steps), the splitter, the
document embedder and the chunk writer, sharing the workspace's adapter store and document store.

Usage example::

    from d2l_haystack.kb.component_set import WorkspaceComponents

    parts = WorkspaceComponents(settings, adapters=store, document_store=chunks)
    routed = parts.get("router").run(documents=[doc])
"""

from __future__ import annotations

from typing import Any

from d2l_haystack.components import ChunkWriter, DocToLoRAConverter, InternalizationRouter
from d2l_haystack.core.keys import resolve_embedding_model

NAMES = ("router", "converter", "splitter", "embedder", "writer")


class WorkspaceComponents:
    """Lazily built, warmed-up components of one workspace.

    :param settings: the workspace's settings (:func:`~d2l_haystack.kb.settings.settings_of`).
    :param adapters: its adapter store; ``document_store``: its RAG chunks.
    :param device: ``cpu``/``cuda`` for the models (``None``: the engine's choice).
    """

    def __init__(self, settings: dict[str, Any], *, adapters: Any, document_store: Any,
                 device: str | None = None) -> None:
        self.settings = settings
        self.adapters = adapters
        self.document_store = document_store
        self.device = device
        self._built: dict[str, Any] = {}

    @property
    def built(self) -> tuple[str, ...]:
        """The names of the components built so far (empty: no model has been loaded)."""
        return tuple(self._built)

    def loaded_checkpoint_id(self) -> str | None:
        """The checkpoint id of the converter's engine, if it has loaded one (``None``: not loaded)."""
        converter = self._built.get("converter")
        engine = converter.loaded_engine if converter is not None else None
        return None if engine is None else str(engine.checkpoint_id)

    def engine_params(self) -> dict[str, Any]:
        """The D2L engine's parameters from the settings (for the converter and Ray workers)."""
        s = self.settings
        return {"model": s["model"], "checkpoint": s["checkpoint"], "device": self.device, "dtype": s["dtype"],
                "chunk_tokens": s["chunk_tokens"], "chunking": s["chunking"], "reading_memory": s["reading_memory"]}

    def get(self, name: str) -> Any:
        """The component ``name`` (one of :data:`NAMES`), built and warmed up on first use; the
        converter loads its models on its first prepare step (a Ray driver that only commits
        workers' adapters never loads them)."""
        if name in self._built:
            return self._built[name]
        s = self.settings
        if name == "router":
            comp: Any = InternalizationRouter(model=s["model"], **s["router"])
        elif name == "converter":
            comp = DocToLoRAConverter(store=self.adapters, embedding_model=s["embedding_model"],
                                      document_store=self.document_store, **self.engine_params())
        elif name == "splitter":
            from haystack.components.preprocessors import DocumentSplitter

            comp = DocumentSplitter(split_by="word", split_length=s["split_length"], split_overlap=s["split_overlap"])
        elif name == "embedder":
            from haystack_integrations.components.embedders.sentence_transformers import (
                SentenceTransformersDocumentEmbedder,
            )

            comp = SentenceTransformersDocumentEmbedder(
                model=resolve_embedding_model(s["embedding_model"]), normalize_embeddings=True,
                progress_bar=False, local_files_only=True)
        elif name == "writer":
            comp = ChunkWriter(document_store=self.document_store, adapter_store=self.adapters)
        else:
            raise KeyError(f"unknown workspace component {name!r}; known: {', '.join(NAMES)}")
        if hasattr(comp, "warm_up") and name != "converter":
            comp.warm_up()
        self._built[name] = comp
        return comp
