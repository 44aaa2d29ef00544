"""Every Python example of the README runs as written (in a scratch folder beside the samples).

The examples are the README's ```python blocks, run one after the other in one namespace (a
later block may use what an earlier one made), in a temporary working directory where
``d2l_haystack/samples`` is reachable by the same relative path as in a checkout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples():
    blocks = python_blocks(REPO / "README.md")
    assert len(blocks) >= 3 and all(b.strip() for b in blocks)
    for block in blocks:
        compile(block, "README.md", "exec")  # at least valid Python, even without the model


@pytest.mark.integration
def test_readme_python_examples_run_as_written(tmp_path, monkeypatch, embedded_model_dir, capsys):
    (tmp_path / "d2l_haystack").mkdir()
    os.symlink(REPO / "d2l_haystack" / "samples", tmp_path / "d2l_haystack" / "samples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    server = None
    try:
        for i, block in enumerate(python_blocks(REPO / "README.md")):
            if "127.0.0.1:1416" in block:  # the serving example: `d2l serve -w kb --token s3cret`, for real
                port = _free_port()
                server = _start_server(tmp_path / "kb", port, "s3cret")
                block = block.replace("127.0.0.1:1416", f"127.0.0.1:{port}")
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    assert server is not None, "the README's serving example was not run"
    out = capsys.readouterr().out
    assert (tmp_path / "adapters" / "manual" / "adapter.safetensors").is_file()
    assert (tmp_path / "peft" / "manual").is_dir() and (tmp_path / "kb" / "workspace.json").is_file()
    assert out.strip()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(workspace: Path, port: int, token: str):
    import subprocess
    import sys
    import time

    import httpx

    log = workspace.parent / "serve.log"
    with open(log, "wb") as out:  # a file, not a pipe: the server's log never blocks it
        proc = subprocess.Popen([sys.executable, "-m", "d2l_haystack", "serve", "-w", str(workspace), "--port",
                                 str(port), "--token", token], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/status", headers={"Authorization": f"Bearer {token}"},
                         timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("d2l serve did not start: " + log.read_text()[-2000:])


DOC_PAGES = sorted(p.name for p in (REPO / "docs").glob("*.md") if python_blocks(p))


@pytest.mark.parametrize("page", DOC_PAGES)
def test_every_docs_python_example_is_valid_python(page: str):
    for i, block in enumerate(python_blocks(REPO / "docs" / page)):
        compile(block, f"docs/{page} python block {i + 1}", "exec")


def test_the_docs_pages_with_examples_are_found():
    assert {"haystack.md", "instructions.md", "postgres.md", "serving.md", "watching.md"} <= set(DOC_PAGES)


@pytest.mark.integration
def test_the_haystack_page_python_examples_run_as_written(tmp_path, monkeypatch, embedded_model_dir, capsys):
    """docs/haystack.md's blocks (workspace, YAML pipelines, builders, store, converter, generator) in
    order, in a scratch folder beside the samples, on the embedded model."""
    (tmp_path / "d2l_haystack").mkdir()
    os.symlink(REPO / "d2l_haystack" / "samples", tmp_path / "d2l_haystack" / "samples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "doc"}
    blocks = python_blocks(REPO / "docs" / "haystack.md")
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/haystack.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["reply"].meta["route"] in ("d2l", "hybrid", "base", "rag")  # type: ignore[attr-defined]
    assert (tmp_path / "kb" / "workspace.json").is_file() and capsys.readouterr().out.strip()


def test_relative_links_in_the_docs_point_at_files_that_exist():
    pages = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "d2l_haystack" / "checkpoints").rglob("*.md")),
             *sorted((REPO / "benchmarks" / "results").rglob("README.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


@pytest.mark.integration
def test_the_postgres_page_python_example_runs_as_written(tmp_path, monkeypatch, embedded_model_dir, capsys):
    """docs/postgres.md's Python block (a local server, a shared workspace, a question), for real."""
    from d2l_haystack.kb.postgres import stop_local_server

    (tmp_path / "d2l_haystack").mkdir()
    os.symlink(REPO / "d2l_haystack" / "samples", tmp_path / "d2l_haystack" / "samples")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(REPO / "docs" / "postgres.md")
    assert blocks
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/postgres.md python block {i + 1}", "exec"), {"__name__": "doc"})  # noqa: S102
    finally:
        stop_local_server(tmp_path / "pg")
    assert capsys.readouterr().out.strip().splitlines()[-1] in ("d2l", "rag", "hybrid", "base")
    assert '"store": "postgresql://' in (tmp_path / "kb-shared" / "workspace.json").read_text()
