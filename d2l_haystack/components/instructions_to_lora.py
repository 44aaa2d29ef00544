"""Internalize a system prompt or task instructions into an adapter kept in an :class:`AdapterStore`."""

from __future__ import annotations

import logging
from typing import Any

from haystack import component, default_from_dict, default_to_dict

from d2l_haystack.core.models import DEFAULT_DTYPE, DEFAULT_MODEL
from d2l_haystack.core.textio import content_hash, validate_text
from d2l_haystack.stores.adapter_store import AdapterStore

logger = logging.getLogger(__name__)


@component
class InstructionsToLoRA:
    """Turn instructions ("answer in one sentence", "reply as JSON with the keys ...") into an
    adapter once, so that no query pays for their tokens again (the Text-to-LoRA variant).

    The adapter is stored under ``name`` in the store without routing embeddings (the
    :class:`QueryRouter` never routes to it); :class:`AdapterGenerator` applies it to every
    request through its ``instruction_ids`` (init or input), composed along rank with the
    documents' adapters. Unchanged instructions (same text, model and instructions checkpoint)
    are not internalized again.

    Usage example::

        from d2l_haystack.components import AdapterGenerator, InstructionsToLoRA

        ids = InstructionsToLoRA(store="kb/adapters").run(text="Answer in at most ten words.")["instruction_ids"]
        generator = AdapterGenerator(store="kb/adapters", instruction_ids=ids)

    :param store: an :class:`AdapterStore`, its folder, or its serialized form.
    :param name: the id the adapter is stored under (``run(name=...)`` overrides it).
    :param model: base model (embedded name, local folder or hub id).
    :param checkpoint: the documents' hypernetwork checkpoint (part of the shared engine's key).
    :param instructions_checkpoint: the instructions hypernetwork (``"default"``: the one shipped for
        the model; a folder; ``None``: untrained, zero adapters).
    :param device: ``cpu``/``cuda`` (default: CUDA when available).
    :param dtype: base model dtype.
    """

    def __init__(self, store: AdapterStore | str, name: str = "instructions", model: str = DEFAULT_MODEL,
                 checkpoint: str | None = "default", instructions_checkpoint: str | None = "default",
                 device: str | None = None, dtype: str = DEFAULT_DTYPE) -> None:
        self.store = store
        self.name = name
        self.model = model
        self.checkpoint = checkpoint
        self.instructions_checkpoint = instructions_checkpoint
        self.device = device
        self.dtype = dtype
        self._store: AdapterStore | None = None
        self._engine: Any = None

    def warm_up(self) -> None:
        """Load the shared base model and the instructions hypernetwork; open the store. Idempotent."""
        if self._store is None:
            self._store = AdapterStore.resolve(self.store)
        if self._engine is None:
            from d2l_haystack.core import get_engine

            engine = get_engine(self.model, self.checkpoint, self.device, self.dtype)
            # its own checkpoint per call: the shared engine's setting stays as other components left it
            engine.reader("instructions", self.instructions_checkpoint)  # fails here without a checkpoint
            self._engine = engine

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, store=self.store, name=self.name, model=self.model, checkpoint=self.checkpoint,
                               instructions_checkpoint=self.instructions_checkpoint, device=self.device,
                               dtype=self.dtype)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstructionsToLoRA:
        params = dict(data.get("init_parameters", {}))
        if isinstance(params.get("store"), dict):
            params["store"] = AdapterStore.from_dict(params["store"])
        return default_from_dict(cls, {**data, "init_parameters": params})

    @component.output_types(instruction_ids=list[str], internalized=bool)
    def run(self, text: str, name: str | None = None) -> dict[str, Any]:
        """Internalize ``text`` (unless stored unchanged) and return its id.

        :param text: the instructions, as one would write them into a system prompt.
        :param name: store id (default: the init's ``name``).
        :returns: ``instruction_ids`` (the one id, for :class:`AdapterGenerator`) and
            ``internalized`` (False when the stored adapter was current).
        :raises InputError: empty or binary text; nothing is stored.
        """
        key = name or self.name
        validate_text(text, f"instructions {key!r}")
        self.warm_up()
        store, engine = self._store, self._engine
        assert store is not None
        reader = engine.reader("instructions", self.instructions_checkpoint)
        if store.is_current(key, content_hash(text), engine.loaded.name, reader.checkpoint_id):
            return {"instruction_ids": [key], "internalized": False}
        adapter = engine.internalize(text, source=key, kind="instructions", progress=False,
                                     instructions_checkpoint=self.instructions_checkpoint)
        store.put(key, adapter, source=key)  # the entry records the adapter's kind
        logger.info("InstructionsToLoRA: internalized %s (%d tokens)", key, adapter.num_tokens)
        return {"instruction_ids": [key], "internalized": True}
