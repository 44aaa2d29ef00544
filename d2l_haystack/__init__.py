"""d2l-haystack: Doc-to-LoRA internalization and RAG for Haystack."""

__version__ = "0.1.0"
