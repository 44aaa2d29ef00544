"""The ML core of d2l-haystack: models, hypernetwork, LoRA application, adapters, engine.

Never imports Haystack.
"""

from .adapter import Adapter, compose
from .engine import D2LEngine, GenerationResult, ReaderAnswers, get_engine
from .errors import AdapterError, CheckpointError, D2LError, InputError, ModelNotFoundError
from .hypernet import HypernetConfig, Hypernetwork, config_for_model, load_checkpoint, save_checkpoint
from .models import DEFAULT_MODEL, get_model, resolve_model

__all__ = [
    "DEFAULT_MODEL", "Adapter", "AdapterError", "CheckpointError", "D2LEngine", "D2LError",
    "GenerationResult", "HypernetConfig", "Hypernetwork", "InputError", "ModelNotFoundError",
    "ReaderAnswers", "compose", "config_for_model", "get_engine", "get_model", "load_checkpoint", "resolve_model",
    "save_checkpoint",
]
