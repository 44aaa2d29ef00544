"""Private helpers of the components (not part of the public API).

* :func:`source_key`: the one rule naming the source of a document (adapter id, chunk filter);
* :func:`source_filter`: the Haystack filter of a source's chunks;
* :func:`document_label`: a document's name in error messages;
* :func:`get_tokenizer`: a base model's tokenizer, loaded once per process.
"""

from __future__ import annotations

import threading
from typing import Any


def source_key(meta: dict[str, Any], fallback: str) -> str:
    """The id of the source a document (or chunk) comes from.

    ``meta["d2l_doc_id"]`` if set, else ``meta["file_path"]``, else ``fallback`` (the document id).
    Adapters are stored under this key and a source's chunks are found by it.
    """
    for key in ("d2l_doc_id", "file_path"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return fallback


def source_filter(key: str) -> dict[str, Any]:
    """A Haystack filter matching every chunk of the source ``key``."""
    return {"operator": "OR", "conditions": [
        {"field": "meta.d2l_doc_id", "operator": "==", "value": key},
        {"field": "meta.file_path", "operator": "==", "value": key},
    ]}


def document_label(doc: Any) -> str:
    """A human-readable name of a Haystack document for error messages."""
    meta = getattr(doc, "meta", None) or {}
    return str(meta.get("file_path") or meta.get("d2l_doc_id") or f"document {doc.id[:12]}")


_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def get_tokenizer(model: str) -> Any:
    """The tokenizer of a base model (embedded name, folder or hub id), loaded once per process."""
    with _TOKENIZERS_LOCK:
        if model not in _TOKENIZERS:
            from transformers import AutoTokenizer

            from d2l_haystack.core.models import resolve_model

            _TOKENIZERS[model] = AutoTokenizer.from_pretrained(resolve_model(model))
        return _TOKENIZERS[model]
