"""d2l-haystack: Doc-to-LoRA internalization and RAG, routed per document, for Haystack.

The package's layers, each importing only those below it::

    cli/            the ``d2l`` command, one module per command group
    bench/          the comparative latency/accuracy benchmark
    evaluation/     metrics, case files, the methods compared, the runner of ``d2l eval``
    kb/             a knowledge base: settings, workspace, pipelines, watcher
    components/     the Haystack components (thin over the core)
    stores/         adapter store, persistent FAISS store, atomic files and locks
    training/       meta-training of the hypernetwork (data, trainer; never Haystack)
    core/           the ML engine: models, hypernetwork, LoRA, adapters (never Haystack)

The most used names are importable from here (loaded on first use, so ``import
d2l_haystack.core`` stays free of Haystack)::

    from d2l_haystack import D2LEngine, Workspace, load_pipeline
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "D2LEngine": "d2l_haystack.core.engine",
    "get_engine": "d2l_haystack.core.engine",
    "Adapter": "d2l_haystack.core.adapter",
    "Workspace": "d2l_haystack.kb.workspace",
    "DocumentWatcher": "d2l_haystack.kb.watcher",
    "load_pipeline": "d2l_haystack.kb.pipelines",
    "AdapterStore": "d2l_haystack.stores.adapter_store",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'd2l_haystack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
