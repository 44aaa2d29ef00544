"""``d2l index --ray``: the hypernetwork passes in a Ray Data actor pool on a real local Ray
cluster (2 CPUs, started by the tests and stopped by them), the commits in the workspace.

Fixtures (tiny random Llama, sample documents) live in ``tests/components/conftest.py``.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests/components/conftest.py)

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from components.conftest import (  # noqa: F401  (fixtures shared with tests/components)
    docs_dir,
    samples_dir,
    tiny_model,
    workspace_factory,
)

from d2l_haystack.kb.ray_index import index_with_ray
from d2l_haystack.kb.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("path", "route", "reason", "override", "title", "adapter_bytes", "chunks", "tokens", "changes",
            "checkpoint_id")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _view(ws: Workspace, root: Path) -> list[dict]:
    return [{k: (str(Path(d[k]).relative_to(root)) if k == "path" else d[k]) for k in COMPARED}
            for d in ws.status()["documents"]]


def test_the_same_workspace_as_sequential_indexing(ray_cluster, workspace_factory, docs_dir: Path, tmp_path: Path):
    sequential, parallel = workspace_factory("seq"), workspace_factory("ray")
    sequential.index_paths([docs_dir])
    report = index_with_ray(parallel, [docs_dir], workers=2, progress=False)
    assert report.workers == 2 and report.internalized_on_workers == 4 and not report.failures
    assert parallel.components.get("converter").loaded_engine is None  # the driver only committed: no model loaded
    assert _view(parallel, docs_dir) == _view(sequential, docs_dir)
    # equal up to float rounding: a worker's matrix products may use another thread count than the
    # driver's (other summation orders), so the stored fp16 values can differ in their last bit
    for entry in sequential.adapters.list():
        a, b = sequential.adapters.get(entry["id"]), parallel.adapters.get(entry["id"])
        assert a.factors.keys() == b.factors.keys() and a.total_rank == b.total_rank
        for m in a.factors:
            for x, y in zip(a.factors[m], b.factors[m]):
                torch.testing.assert_close(y, x, rtol=2e-3, atol=1e-4)
        torch.testing.assert_close(b.keys, a.keys, rtol=2e-3, atol=1e-4)
        assert torch.equal(a.key_chunks, b.key_chunks)
    assert parallel.verify() == []
    again = index_with_ray(parallel, [docs_dir], progress=False)  # nothing changed: no worker starts
    assert again.unchanged == 4 and again.results == [] and again.workers == 0


def test_bad_files_are_reported_and_the_rest_indexed(ray_cluster, workspace_factory, docs_dir: Path,
                                                     tmp_path: Path):
    folder = tmp_path / "mixed"
    shutil.copytree(docs_dir, folder)
    (folder / "empty.md").write_text("   ")
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    ws = workspace_factory(router={"max_tokens": 200})  # the changelog and the policy go to RAG
    lines: list = []
    report = index_with_ray(ws, [folder], workers=1, on_result=lines.append, progress=False)
    assert sorted(Path(f.split(":")[0]).name for f in report.failures) == ["blob.txt", "empty.md"]
    assert {r.route for r in report.results} == {"d2l", "rag"} and len(report.results) == 4
    assert len(lines) == 6 and ws.verify() == []


def test_a_killed_driver_leaves_old_or_new_and_a_second_run_finishes(workspace_factory, tmp_path: Path, request):
    """``d2l index --ray`` (its own local cluster) killed with SIGKILL after its first commit."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"note{i}.md").write_text(f"# Note {i}\nLocker {i} holds the spare key number {i * 7}.\n")
    ws = workspace_factory()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    cmd = [sys.executable, "-m", "d2l_haystack", "index", str(docs), "-w", str(ws.path), "--ray", "--workers", "1"]
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None)
    deadline = time.monotonic() + 240
    while not ws.status()["documents"]:
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no commit within 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the cluster it started
    proc.wait(30)
    log.close()
    again = Workspace.open(ws.path)  # an update killed mid-commit is finished or rolled back here
    assert 1 <= again.status()["totals"]["documents"] < 6 and again.verify() == []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = Workspace.open(ws.path)
    assert final.status()["totals"]["documents"] == 6 and final.verify() == []
    assert "unchanged" in done.stdout and json.dumps(final.status()["totals"])
