"""Exceptions raised by the d2l-haystack core.

Every error carries a one-line message naming the problem and, where there is one, the file.
"""

from __future__ import annotations


class D2LError(Exception):
    """Base class of every error raised on purpose by d2l-haystack."""


class ModelNotFoundError(D2LError):
    """A base model name is neither embedded, a local folder, nor a reachable hub id."""


class CheckpointError(D2LError):
    """A hypernetwork checkpoint is missing, damaged, or made for another base model."""


class AdapterError(D2LError):
    """An adapter file is missing, damaged, or incompatible with the loaded model."""


class InputError(D2LError):
    """A document or question cannot be used (empty, binary, not text...)."""


class ConfigError(D2LError, ValueError):
    """A training configuration file is missing, unreadable, or has an unknown or bad field."""
