"""Serve a workspace over HTTP with Hayhooks: REST and OpenAI-compatible chat (``d2l serve``).

See :mod:`d2l_haystack.serve.app` for the endpoints.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
