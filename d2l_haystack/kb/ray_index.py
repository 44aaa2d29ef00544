"""Indexing a corpus on a Ray cluster: ``d2l index DIR -w KB --ray [ADDRESS]``.

The heavy step, the hypernetwork pass (and the routing passages' embeddings), runs in a Ray Data
actor pool: each worker loads the engine once (one GPU per worker where the cluster has GPUs)
and documents stream through it one at a time. Everything that decides or writes stays on the
driver, in the :class:`~d2l_haystack.kb.workspace.Workspace`: which files changed, their routes,
the commit of each adapter (journal, commit gate, atomic files) as its worker finishes, and the
RAG documents (split and embedded on the driver). So the result is the sequential one: the same
adapters, the same records.

* Resumable: a file whose content already has a current adapter or chunks is skipped (the plan
  is made again on every run), and a driver killed mid-run leaves every document old or new (the
  workspace's journal); running again finishes the rest.
* A bad file (binary, empty, vanished, too large) is reported per document and the run goes on.
* Workers get the text from the driver (they read no files and write nothing), so a remote
  cluster only needs the package installed; ``ADDRESS`` is what ``ray.init`` takes (``auto``,
  ``ray://head:10001``); without it a local cluster is started for the run and stopped after.

    from d2l_haystack.kb.ray_index import index_with_ray
    from d2l_haystack.kb.workspace import Workspace

    report = index_with_ray(Workspace("kb"), ["docs/"], workers=2)
    report.results, report.failures, report.docs_per_second
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d2l_haystack.core.errors import D2LError, InputError
from d2l_haystack.kb.workspace import IndexResult, Workspace


@dataclass
class RayIndexReport:
    """What :func:`index_with_ray` did."""

    results: list[IndexResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """One line per file that could not be indexed (path: why)."""
    unchanged: int = 0
    internalized_on_workers: int = 0
    seconds: float = 0.0
    workers: int = 0

    @property
    def docs_per_second(self) -> float:
        done = len(self.results)
        return round(done / self.seconds, 3) if self.seconds > 0 else 0.0


class _Internalizer:
    """A Ray Data actor: loads the engine and the embedder once, internalizes one document per call."""

    def __init__(self, params: dict[str, Any], threads: int, autocast: str | None = None) -> None:
        import torch

        from d2l_haystack.components import DocToLoRAConverter

        if autocast:  # the driver's choice of precision (D2L_AUTOCAST), whatever the worker's environment
            os.environ["D2L_AUTOCAST"] = autocast
        torch.set_num_threads(max(1, threads))
        self.converter = DocToLoRAConverter(store=None, **params)  # type: ignore[arg-type]  # no store: writes nothing
        self.converter.warm_up()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"path": [], "adapter": [], "routing": [], "routing_rows": [], "seconds": [],
                                     "error": []}
        for path, text, title in zip(batch["path"], batch["text"], batch["title"]):
            start = time.perf_counter()
            try:
                adapter, routing = self.converter.internalize(str(text), str(path), str(title))
                with tempfile.TemporaryDirectory() as tmp:
                    adapter.save(tmp)
                    blob = (Path(tmp) / "adapter.safetensors").read_bytes()
                out["adapter"].append(blob)
                out["routing"].append(routing.astype("float32").tobytes())
                out["routing_rows"].append(int(routing.shape[0]))
                out["error"].append("")
            except D2LError as exc:
                out["adapter"].append(b"")
                out["routing"].append(b"")
                out["routing_rows"].append(0)
                out["error"].append(str(exc))
            out["path"].append(str(path))
            out["seconds"].append(time.perf_counter() - start)
        return out


def _prepared(row: dict[str, Any], title: str) -> Any:
    import numpy as np

    from d2l_haystack.components.doc_to_lora_converter import PreparedAdapter
    from d2l_haystack.core import Adapter

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "adapter.safetensors").write_bytes(row["adapter"])
        adapter = Adapter.load(tmp)
    routing = np.frombuffer(row["routing"], dtype=np.float32).reshape(int(row["routing_rows"]), -1)
    return PreparedAdapter(key=row["path"], action="internalized", start=time.perf_counter(), adapter=adapter,
                           routing=routing, title=title, seconds=float(row["seconds"]))


def index_with_ray(ws: Workspace, paths: Iterable[str | Path], *, address: str | None = None,
                   workers: int | None = None, gpus_per_worker: float | None = None, route: str | None = None,
                   force: bool = False, recursive: bool = True,
                   on_result: Callable[[IndexResult | str], None] | None = None,
                   progress: bool = True) -> RayIndexReport:
    """Index ``paths`` into ``ws`` with the internalization on Ray workers (module docstring).

    :param address: a running cluster (``ray.init(address)``); ``None`` starts a local one.
    :param workers: actors in the pool (default: the cluster's GPUs, else its CPUs, at most the
        documents to internalize).
    :param gpus_per_worker: default 1 when the cluster has GPUs, else 0.
    :param route: force a route for every file (as ``d2l index --route``).
    :param force: redo unchanged files.
    :param on_result: receives each :class:`IndexResult`, or ``"path: why"`` for a failure.
    :raises InputError: a missing path (nothing is indexed).
    """
    import ray
    from tqdm.auto import tqdm

    report = RayIndexReport()
    started = time.perf_counter()
    files = ws.collect_files(paths, recursive=recursive)

    def fail(path: Path | str, why: str) -> None:
        line = why if str(why).startswith(str(path)) else f"{path}: {why}"
        report.failures.append(line)
        if on_result:
            on_result(line)

    def done(result: IndexResult) -> None:
        report.results.append(result)
        if on_result:
            on_result(result)

    to_d2l: list[dict[str, str]] = []
    to_rag: list[Path] = []
    titles: dict[str, str] = {}
    for f in files:  # the plan: what changed, and where it goes
        try:
            plan = ws.plan(f, route=route, force=force)
        except InputError as exc:
            fail(f, str(exc))
            continue
        if plan is None:
            report.unchanged += 1
            continue
        kind, text, meta = plan
        if kind == "d2l":
            doc_id = meta["d2l_doc_id"]
            titles[doc_id] = str(meta.get("title") or "")
            to_d2l.append({"path": doc_id, "text": text, "title": titles[doc_id]})
        else:
            to_rag.append(f)
    bar = tqdm(total=len(to_d2l) + len(to_rag), desc="d2l index --ray", unit="doc", disable=not progress)

    def tick() -> None:
        bar.update(1)
        bar.set_postfix(failures=len(report.failures), refresh=False)

    own_cluster = False
    if to_d2l:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            own_cluster = address is None
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            per_gpu = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus else 0.0)
            pool = workers or (gpus if gpus and per_gpu else int(resources.get("CPU", 1)))
            pool = max(1, min(pool, len(to_d2l)))
            report.workers = pool
            cpus = max(1, int(resources.get("CPU", 1)) // pool)  # torch threads per worker
            claim = 0.5 * int(resources.get("CPU", 1)) / pool  # half the CPUs reserved: Ray Data's own tasks need some
            params = ws.components.engine_params()
            params["device"] = None if per_gpu else "cpu"  # a GPU worker uses its GPU
            params.update(embedding_model=ws.settings["embedding_model"])
            ds = ray.data.from_items(to_d2l, override_num_blocks=len(to_d2l))
            out = ds.map_batches(_Internalizer, fn_constructor_kwargs={"params": params, "threads": cpus,
                                                                     "autocast": os.environ.get("D2L_AUTOCAST")},
                                 batch_size=1, compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=claim,
                                 num_gpus=per_gpu or None)
            for row in out.iter_rows():  # as workers finish; each document committed on its own
                path = str(row["path"])
                if row["error"]:
                    fail(path, str(row["error"]))
                    tick()
                    continue
                try:
                    result = ws.index_file(path, route=route, force=force,
                                           prepared=_prepared(row, titles.get(path, "")))
                except InputError as exc:  # vanished or changed into something unreadable since the plan
                    fail(path, str(exc))
                else:
                    report.internalized_on_workers += 1
                    done(result)
                tick()
        finally:
            if own_cluster:
                ray.shutdown()
    for f in to_rag:  # split and embedded here: the embedder is light next to the hypernetwork
        try:
            done(ws.index_file(f, route=route, force=force))
        except InputError as exc:
            fail(f, str(exc))
        tick()
    bar.close()
    report.seconds = time.perf_counter() - started
    return report

