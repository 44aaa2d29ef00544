"""Haystack components of d2l-haystack (thin layers over :mod:`d2l_haystack.core`).

* :class:`DocToLoRAConverter` -- documents -> adapters in an
  :class:`~d2l_haystack.stores.AdapterStore`;
* :class:`AdapterGenerator` -- chat generator: base model + per-request adapters and/or chunks;
* :class:`RemoteAdapterGenerator` -- the same inputs, answered by an OpenAI-compatible LoRA server (vLLM);
* :class:`InstructionsToLoRA` -- a system prompt / task instructions -> an adapter applied to every request;
* :class:`InternalizationRouter` -- per document: internalize (D2L) or index (RAG);
* :class:`QueryRouter` -- per query: adapter, RAG or hybrid;
* :class:`ChunkWriter` -- write chunks, replacing a source's earlier chunks;
* :class:`SourceFileConverter` -- text/Markdown/HTML/PDF files -> documents keyed by path;

The stores they read and write live in :mod:`d2l_haystack.stores`.
"""

from .adapter_generator import AdapterGenerator
from .chunk_writer import ChunkWriter
from .doc_to_lora_converter import DocToLoRAConverter
from .instructions_to_lora import InstructionsToLoRA
from .internalization_router import InternalizationRouter
from .query_router import QueryRouter
from .remote_adapter_generator import RemoteAdapterGenerator
from .source_file_converter import SourceFileConverter

__all__ = [
    "AdapterGenerator", "ChunkWriter", "DocToLoRAConverter", "InstructionsToLoRA", "InternalizationRouter",
    "QueryRouter",
    "RemoteAdapterGenerator", "SourceFileConverter",
]
