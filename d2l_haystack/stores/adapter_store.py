"""A persistent store of generated adapters, keyed by document id.

Layout of a store folder::

    manifest.json                       every entry (JSON, replaced atomically)
    objects/<key>.<sha>.safetensors     one adapter (fp16 LoRA factors + metadata)
    objects/<key>.<sha>.routing.safetensors   the document's routing embeddings (optional)
    .lock                               inter-process lock file

``<key>`` is derived from the document id (a hash, so any id is a safe file name) and
``<sha>`` is the start of the file's SHA-256: a new version of an adapter is a new file, the
manifest switches to it in one atomic rename, and only then is the old file deleted. A reader
therefore never sees a half-written adapter, and a crash leaves at most an orphan file
(:meth:`AdapterStore.verify` reports it, :meth:`AdapterStore.gc` removes it).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from d2l_haystack.core.adapter import Adapter
from d2l_haystack.core.errors import AdapterError

from .files import atomic_write_json, file_signature, sha256_file, shared_lock, writable

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT = "d2l-adapter-store/1"

_REGISTRY: dict[str, AdapterStore] = {}
_REGISTRY_LOCK = threading.Lock()


def entry_chunking(entry: dict[str, Any]) -> str:
    """How the adapter of a manifest entry was chunked (``meta["chunking"]``; entries written
    before chunking was recorded were made with ``"tokens"``)."""
    return str((entry.get("meta") or {}).get("chunking") or "tokens")


class AdapterStore:
    """Adapters on disk (safetensors + a JSON manifest) with checksums, an LRU cache and locking.

    Each entry remembers the document's source, content hash, base model, hypernetwork
    checkpoint id, creation time and how many queries used the adapter. Every file's SHA-256 is
    checked when it is loaded: a damaged adapter raises :class:`AdapterError` and is never
    served. Thread-safe; two processes may open the same folder (manifest updates are
    read-modify-write cycles under an exclusive file lock, and every write is atomic).

    Stores with the same folder are shared within a process: :meth:`open` and :meth:`from_dict`
    return the same instance, so every component of every pipeline that names the folder sees
    the same adapters and cache.

    Usage example::

        from d2l_haystack.stores import AdapterStore
        from d2l_haystack.core import get_engine

        store = AdapterStore("kb/adapters")
        engine = get_engine()
        store.put("manual.md", engine.internalize(open("manual.md").read()), source="manual.md")
        adapter = store.get("manual.md")
        print(store.list()[0]["queries"], store.count())

    :param path: the store folder (created on the first write).
    :param cache_size: adapters kept loaded in memory (least recently used are dropped).
    """

    def __init__(self, path: str, cache_size: int = 16) -> None:
        self.path = str(path)
        self.cache_size = cache_size
        self._root = Path(path).expanduser()
        self._objects = self._root / "objects"
        self._manifest_path = self._root / MANIFEST
        self._lock = shared_lock(self._root / ".lock")
        self._entries: dict[str, dict[str, Any]] = {}
        self._signature: tuple[int, int, int] | None = None
        self._cache: OrderedDict[str, tuple[str, Adapter]] = OrderedDict()
        self._routing_cache: dict[str, tuple[str, np.ndarray]] = {}
        self.generation = 0
        """Increases whenever the entries change (here or in another process)."""
        self._refresh(force=True)

    # -- sharing, serialization -----------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, cache_size: int = 16) -> AdapterStore:
        """The process-wide shared store for ``path`` (created on first use)."""
        key = os.path.realpath(os.path.expanduser(str(path)))
        with _REGISTRY_LOCK:
            store = _REGISTRY.get(key)
            if store is None:
                store = cls(str(path), cache_size=cache_size)
                _REGISTRY[key] = store
            return store

    def to_dict(self) -> dict[str, Any]:
        """Serialize (the folder and cache size; the adapters stay on disk)."""
        return {"type": f"{type(self).__module__}.{type(self).__name__}",
                "init_parameters": {"path": self.path, "cache_size": self.cache_size}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterStore:
        """The shared store of the serialized folder (see :meth:`open`)."""
        params = data.get("init_parameters", data)
        if "path" not in params:
            raise AdapterError("serialized AdapterStore has no 'path'")
        return cls.open(params["path"], cache_size=int(params.get("cache_size", 16)))

    @staticmethod
    def resolve(store: AdapterStore | str | Path | dict[str, Any] | None) -> AdapterStore | None:
        """Accept a store, its folder or its serialized form (what components take as ``store``)."""
        if store is None or isinstance(store, AdapterStore):
            return store
        if isinstance(store, dict):
            return AdapterStore.from_dict(store)
        return AdapterStore.open(store)

    def __repr__(self) -> str:
        return f"AdapterStore(path={self.path!r}, adapters={len(self._entries)})"

    # -- manifest -------------------------------------------------------------------------
    def _refresh(self, force: bool = False) -> None:
        """Reload the manifest if another instance or process replaced it."""
        sig = file_signature(self._manifest_path)
        if not force and sig == self._signature:
            return
        if sig is None:
            entries: dict[str, dict[str, Any]] = {}
        else:
            try:
                data = json.loads(self._manifest_path.read_text(encoding="utf-8"))
                if data.get("format") != STORE_FORMAT or not isinstance(data.get("entries"), dict):
                    raise ValueError(f"unknown format {data.get('format')!r}")
                entries = data["entries"]
            except (OSError, ValueError) as exc:
                raise AdapterError(f"damaged adapter store manifest {self._manifest_path}: {exc}") from exc
        self._entries = entries
        self._signature = sig
        self.generation += 1

    def _write_manifest(self) -> None:
        atomic_write_json(self._manifest_path, {"format": STORE_FORMAT, "entries": self._entries})
        self._signature = file_signature(self._manifest_path)
        self.generation += 1

    @staticmethod
    def _key(doc_id: str) -> str:
        return hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:24]

    def _file(self, name: str) -> Path:
        return self._objects / name

    # -- reading --------------------------------------------------------------------------
    def info(self, doc_id: str) -> dict[str, Any] | None:
        """The manifest entry of ``doc_id`` (a copy), or ``None``."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(doc_id)
            return json.loads(json.dumps(entry)) if entry is not None else None

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every entry (copies), sorted by document id."""
        with self._lock:
            self._refresh()
            return [json.loads(json.dumps(self._entries[k])) for k in sorted(self._entries)]

    def ids(self) -> builtins.list[str]:
        with self._lock:
            self._refresh()
            return sorted(self._entries)

    def count(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, doc_id: object) -> bool:
        with self._lock:
            self._refresh()
            return doc_id in self._entries

    def find(self, content_hash: str, base_model: str | None = None,
             checkpoint_id: str | None = None, chunking: str | None = None) -> dict[str, Any] | None:
        """An entry with this content hash (and model, checkpoint and chunking, when given), or ``None``."""
        with self._lock:
            self._refresh()
            for entry in self._entries.values():
                if entry["content_hash"] != content_hash:
                    continue
                if base_model is not None and entry["base_model"] != base_model:
                    continue
                if checkpoint_id is not None and entry["checkpoint_id"] != checkpoint_id:
                    continue
                if chunking is not None and entry_chunking(entry) != chunking:
                    continue
                return json.loads(json.dumps(entry))
            return None

    def is_current(self, doc_id: str, content_hash: str, base_model: str, checkpoint_id: str,
                   chunking: str | None = None) -> bool:
        """Whether ``doc_id`` has an adapter of exactly this content, model and checkpoint (and
        chunking, when given: ``meta["chunking"]`` of the entry, ``"tokens"`` when absent)."""
        entry = self.info(doc_id)
        return bool(entry and entry["content_hash"] == content_hash and entry["base_model"] == base_model
                    and entry["checkpoint_id"] == checkpoint_id
                    and (chunking is None or entry_chunking(entry) == chunking))

    def _verified(self, doc_id: str, entry: dict[str, Any], role: str) -> Path:
        name, expected = entry["files"][role][:2]
        path = self._file(name)
        if not path.is_file():
            raise AdapterError(f"adapter of '{doc_id}' is missing its file {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise AdapterError(f"adapter of '{doc_id}' is damaged: checksum mismatch in {path} "
                               f"(expected {expected[:12]}, found {actual[:12]}); re-index the document")
        return path

    def get(self, doc_id: str) -> Adapter:
        """Load the adapter of ``doc_id`` (checksum verified; cached).

        :raises AdapterError: unknown id, missing or damaged file.
        """
        for attempt in range(2):
            with self._lock:
                self._refresh()
                entry = self._entries.get(doc_id)
                if entry is None:
                    raise AdapterError(f"no adapter for '{doc_id}' in the adapter store {self.path}")
                sha = entry["files"]["adapter"][1]
                cached = self._cache.get(doc_id)
                if cached is not None and cached[0] == sha:
                    self._cache.move_to_end(doc_id)
                    return cached[1]
                try:
                    path = self._verified(doc_id, entry, "adapter")
                except AdapterError:
                    # another process may have just replaced this adapter: re-read once
                    if attempt == 0 and file_signature(self._manifest_path) != self._signature:
                        continue
                    raise
                adapter = Adapter.load(path)
                self._cache[doc_id] = (sha, adapter)
                self._cache.move_to_end(doc_id)
                while len(self._cache) > max(0, self.cache_size):
                    self._cache.popitem(last=False)
                return adapter
        raise AdapterError(f"adapter of '{doc_id}' changed while it was being loaded")  # pragma: no cover

    def get_routing(self, doc_id: str) -> np.ndarray | None:
        """The routing embeddings of ``doc_id`` (``(sections, dim)`` float32), or ``None``."""
        from safetensors.numpy import load_file

        with self._lock:
            self._refresh()
            entry = self._entries.get(doc_id)
            if entry is None or "routing" not in entry["files"]:
                return None
            sha = entry["files"]["routing"][1]
            cached = self._routing_cache.get(doc_id)
            if cached is not None and cached[0] == sha:
                return cached[1]
            path = self._verified(doc_id, entry, "routing")
            matrix = load_file(str(path))["sections"].astype(np.float32)
            self._routing_cache[doc_id] = (sha, matrix)
            return matrix

    # -- writing --------------------------------------------------------------------------
    def _write_object(self, tmp: Path, key: str, suffix: str) -> tuple[str, str, int]:
        """Move a finished temporary file into ``objects/``: ``(name, sha256, size)`` for the manifest."""
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        name = f"{key}.{sha[:16]}{suffix}"
        os.replace(tmp, self._file(name))
        return name, sha, size

    def put(self, doc_id: str, adapter: Adapter, *, source: str | None = None,
            routing: np.ndarray | None = None, title: str | None = None,
            meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store (or replace) the adapter of ``doc_id``; returns its manifest entry.

        :param routing: optional ``(sections, dim)`` embeddings used by the query router.
        :param meta: small JSON-serializable extras kept in the entry.
        """
        from safetensors.numpy import save_file

        if not doc_id:
            raise AdapterError("an adapter needs a non-empty document id")
        self._objects.mkdir(parents=True, exist_ok=True)
        key = self._key(doc_id)
        tmp_adapter = self._objects / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp.safetensors"
        tmp_routing = tmp_adapter.with_suffix(".routing.tmp")
        try:
            adapter.save(tmp_adapter)
            files = {"adapter": list(self._write_object(tmp_adapter, key, ".safetensors"))}
            if routing is not None:
                matrix = np.ascontiguousarray(np.asarray(routing, dtype=np.float32).reshape(len(routing), -1))
                save_file({"sections": matrix}, str(tmp_routing))
                files["routing"] = list(self._write_object(tmp_routing, key, ".routing.safetensors"))
        finally:
            tmp_adapter.unlink(missing_ok=True)
            tmp_routing.unlink(missing_ok=True)
        now = time.time()
        with self._lock:
            self._refresh()
            old = self._entries.get(doc_id)
            entry = {
                "id": doc_id, "source": source if source is not None else doc_id, "title": title or "",
                "content_hash": adapter.content_hash, "base_model": adapter.base_model,
                "checkpoint_id": adapter.checkpoint_id, "created": now,
                "queries": old["queries"] if old else 0, "last_query": old.get("last_query") if old else None,
                "num_tokens": adapter.num_tokens, "num_chunks": adapter.num_chunks, "rank": adapter.total_rank,
                "nbytes": adapter.nbytes, "files": files, "meta": dict(meta or {}), "kind": adapter.kind,
            }
            self._entries[doc_id] = entry
            self._write_manifest()
            # served adapters always come from disk (fp16), so answers do not change after a restart
            self._cache.pop(doc_id, None)
            if old:
                self._remove_files(old, keep=entry)
            return json.loads(json.dumps(entry))

    def _remove_files(self, entry: dict[str, Any], keep: dict[str, Any] | None = None) -> None:
        keep_names = {f[0] for f in (keep or {}).get("files", {}).values()}
        for name, *_ in entry.get("files", {}).values():
            if name not in keep_names:
                self._file(name).unlink(missing_ok=True)

    def delete(self, doc_id: str) -> bool:
        """Remove the adapter of ``doc_id``; ``False`` if there was none."""
        with self._lock:
            self._refresh()
            entry = self._entries.pop(doc_id, None)
            if entry is None:
                return False
            self._write_manifest()
            self._cache.pop(doc_id, None)
            self._routing_cache.pop(doc_id, None)
            self._remove_files(entry)
            return True

    def rename(self, old_id: str, new_id: str, source: str | None = None) -> bool:
        """Move an entry to a new document id (files are kept); ``False`` if ``old_id`` is unknown."""
        with self._lock:
            self._refresh()
            entry = self._entries.pop(old_id, None)
            if entry is None:
                return False
            replaced = self._entries.get(new_id)
            entry["id"] = new_id
            entry["source"] = source if source is not None else new_id
            self._entries[new_id] = entry
            self._write_manifest()
            self._cache.pop(old_id, None)
            self._routing_cache.pop(old_id, None)
            if replaced:
                self._remove_files(replaced, keep=entry)
            return True

    def record_query(self, doc_ids: builtins.list[str]) -> None:
        """Count one query for each of ``doc_ids`` (unknown ids are ignored; nothing is counted in a
        read-only store)."""
        if not doc_ids or not writable(self.path):
            return
        with self._lock:
            self._refresh()
            now = time.time()
            changed = False
            for doc_id in dict.fromkeys(doc_ids):
                entry = self._entries.get(doc_id)
                if entry is not None:
                    entry["queries"] = int(entry.get("queries", 0)) + 1
                    entry["last_query"] = now
                    changed = True
            if changed:
                self._write_manifest()

    # -- maintenance ----------------------------------------------------------------------
    def check(self, doc_id: str) -> str | None:
        """The problem with the files of ``doc_id`` (missing, damaged), or ``None`` when healthy."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(doc_id)
            if entry is None:
                return f"no adapter for '{doc_id}'"
            try:
                for role in entry["files"]:
                    self._verified(doc_id, entry, role)
            except AdapterError as exc:
                return str(exc)
            return None

    def quick_check(self, doc_id: str) -> str | None:
        """:meth:`check` without reading the files: each one present with its recorded size
        (manifests written before sizes were recorded: present). ``None`` when nothing is wrong."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(doc_id)
            if entry is None:
                return f"no adapter for '{doc_id}'"
            for name, _sha, *size in entry["files"].values():
                path = self._file(name)
                try:
                    actual = path.stat().st_size
                except FileNotFoundError:
                    return f"adapter of '{doc_id}' is missing its file {path}"
                if size and actual != size[0]:
                    return f"adapter of '{doc_id}' is damaged: {path} has {actual} bytes, {size[0]} were written"
            return None

    def verify(self) -> builtins.list[str]:
        """Check every file against its checksum; returns one line per problem (empty: healthy)."""
        problems: builtins.list[str] = []
        with self._lock:
            self._refresh()
            referenced = set()
            for doc_id, entry in sorted(self._entries.items()):
                for role in entry["files"]:
                    referenced.add(entry["files"][role][0])
                    try:
                        self._verified(doc_id, entry, role)
                    except AdapterError as exc:
                        problems.append(str(exc))
            if self._objects.is_dir():
                for path in sorted(self._objects.iterdir()):
                    if path.name not in referenced and not path.name.startswith("."):
                        problems.append(f"orphan file {path} (not in the manifest)")
        return problems

    def gc(self) -> int:
        """Delete files the manifest does not reference (left by interrupted writes)."""
        removed = 0
        with self._lock:
            self._refresh()
            referenced = {f[0] for e in self._entries.values() for f in e["files"].values()}
            if self._objects.is_dir():
                cutoff = time.time() - 3600  # temporary files of a write in progress elsewhere
                for path in self._objects.iterdir():
                    if path.name in referenced or (path.name.startswith(".") and path.stat().st_mtime > cutoff):
                        continue
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def total_bytes(self) -> int:
        with self._lock:
            self._refresh()
            return sum(int(e.get("nbytes", 0)) for e in self._entries.values())
