"""Where a knowledge base keeps what it knows: adapters, chunks, and the file helpers under both.

* :class:`AdapterStore`: internalized adapters (safetensors + manifest, checksummed).
* :class:`PersistentFAISSDocumentStore`: the FAISS document store, saved atomically and shared
  per path in a process.
* :mod:`.files`: atomic writes, checksums and inter-process locks.

Stores import the core only; components and the knowledge base use them.
"""

from .adapter_store import AdapterStore
from .faiss_document_store import PersistentFAISSDocumentStore

__all__ = ["AdapterStore", "PersistentFAISSDocumentStore"]
