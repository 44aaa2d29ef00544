"""``d2l serve``: a real server (Hayhooks + uvicorn, its own process) on a free 127.0.0.1 port,
asked with httpx and with the OpenAI client; stopped by the tests.

Fixtures: a workspace over the tiny random Llama holding the sample documents (the kettle manual
and the others internalized, the changelog forced to RAG).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TOKEN = "test-token"
KETTLE_Q = "How long is the warranty of the Aurora K2 kettle?"
SAMPLES = Path(__file__).resolve().parents[1] / "d2l_haystack" / "samples" / "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["folder", "postgresql"])
def server(request, tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[dict]:
    """Every test runs against a folder workspace and against one on PostgreSQL (the session's server)."""
    from d2l_haystack.kb.workspace import Workspace

    store = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None

    tmp = tmp_path_factory.mktemp("serve")
    docs, root = tmp / "docs", tmp / "shared"
    docs.mkdir()
    root.mkdir()
    for f in SAMPLES.iterdir():
        shutil.copy(f, docs / f.name)
    (root / "hours.md").write_text("# Hours\nThe Lyon office opens at nine.\n")
    ws = Workspace(tmp / "kb", device="cpu", model=str(tiny_llama_dir), checkpoint=None, chunk_tokens=64,
                   max_new_tokens=4, store=store)
    ws.index_paths([docs])
    ws.index_file(docs / "app-changelog.md", route="rag")
    port = _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "d2l_haystack", "serve", "-w", str(ws.path), "--port", str(port),
                             "--index-root", str(root), "--device", "cpu"],
                            env={**os.environ, "D2L_SERVE_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"},
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the server exited: " + (tmp / "server.log").read_text()[-3000:])
            try:
                if client.get("/status").json().get("pipelines"):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start: " + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.3)
        yield {"base": base, "client": client, "workspace": ws.path, "docs": docs, "root": root, "proc": proc}
    finally:
        client.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_ask_over_rest_with_the_route_in_the_answer(server):
    reply = server["client"].post("/d2l/run", json={"question": KETTLE_Q})
    assert reply.status_code == 200
    result = reply.json()["result"]
    assert result["route"] == "d2l" and result["adapters"][0]["path"].endswith("kettle-manual.md")
    assert isinstance(result["answer"], str) and result["seconds"] > 0
    rag = server["client"].post("/d2l/run", json={"question": "What is new in version 2.4.0?", "mode": "rag"})
    assert rag.json()["result"]["chunks"] and rag.json()["result"]["route"] == "rag"


def test_the_openai_client_asks_and_streams(server):
    from openai import OpenAI

    client = OpenAI(base_url=server["base"] + "/v1", api_key=TOKEN)
    assert "d2l" in [m.id for m in client.models.list().data]
    completion = client.chat.completions.create(model="d2l", messages=[{"role": "user", "content": KETTLE_Q}])
    assert completion.choices[0].message.content
    info = completion.model_extra["d2l"]
    assert info["route"] == "d2l" and info["adapters"][0]["path"].endswith("kettle-manual.md")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="d2l", messages=[{"role": "user", "content": KETTLE_Q}], stream=True) if c.choices]
    assert len([p for p in pieces if p]) >= 2  # token by token, not one block
    assert "".join(pieces).strip() == completion.choices[0].message.content.strip()  # greedy: same answer


def test_a_token_is_required(server):
    bare = httpx.post(server["base"] + "/d2l/run", json={"question": KETTLE_Q}, timeout=60)
    wrong = httpx.post(server["base"] + "/d2l/run", json={"question": KETTLE_Q}, timeout=60,
                       headers={"Authorization": "Bearer nope"})
    assert bare.status_code == wrong.status_code == 401
    assert "bearer token" in bare.json()["detail"]


@pytest.mark.parametrize(("path", "body", "status", "detail"), [
    ("/d2l/run", {}, 422, "question"),
    ("/d2l/run", {"question": "   "}, 400, "question is empty"),
    ("/d2l/run", {"question": KETTLE_Q, "max_new_tokens": -1}, 400, "max_new_tokens"),
    ("/d2l/run", {"question": KETTLE_Q, "mode": "psychic"}, 400, "mode"),
    ("/d2l_index/run", {"name": "notes.md"}, 400, "content is missing"),
    ("/d2l_index/run", {"name": "tool.exe", "content": "hello there"}, 415, "unsupported file type"),
    ("/d2l_index/run", {"name": "bin.md", "content": "a\u0000b"}, 400, "binary"),
    ("/d2l_index/run", {"path": "/etc/passwd"}, 403, "outside the server's index root"),
    ("/d2l_index/run", {"path": "../kb/workspace.json"}, 403, "outside the server's index root"),
    ("/d2l_index/run", {"path": "missing.md"}, 404, "no such file"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(server, path, body, status, detail):
    reply = server["client"].post(path, json=body)
    assert reply.status_code == status, reply.text
    assert detail in str(reply.json()["detail"])
    assert server["client"].get("/status").status_code == 200  # and the server keeps serving


def test_huge_and_non_utf8_bodies_are_refused(server):
    huge = server["client"].post("/d2l_index/run", content=b"x" * (33 * 1024 * 1024),
                                 headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "byte limit" in huge.json()["detail"]
    big = server["client"].post("/d2l_index/run", json={"name": "big.md", "content": "word " * 1_800_000})
    assert big.status_code == 413 and "max_file_bytes" in big.json()["detail"]  # the workspace's limit
    assert not (server["workspace"] / "uploads" / "big.md").exists()  # refused before anything is written
    latin = server["client"].post("/d2l_index/run", content='{"name": "a.md", "content": "caf\xe9"}'.encode("latin-1"),
                                  headers={"content-type": "application/json"})
    assert 400 <= latin.status_code < 500


def test_uploads_are_indexed_inside_the_workspace_only(server):
    client, ws = server["client"], server["workspace"]
    reply = client.post("/d2l_index/run", json={"name": "../../../tmp/escape.md",
                                                "content": "# Escape\nThe garden gate is painted green.\n"})
    assert reply.status_code == 200, reply.text
    indexed = Path(reply.json()["result"]["path"])
    assert indexed == ws / "uploads" / "escape.md" and indexed.is_file()
    assert not Path("/tmp/escape.md").exists() or Path("/tmp/escape.md").read_text() != indexed.read_text()
    under_root = client.post("/d2l_index/run", json={"path": "hours.md"})
    assert under_root.status_code == 200 and under_root.json()["result"]["path"] == str(server["root"] / "hours.md")
    assert client.post("/d2l/run", json={"question": KETTLE_Q}).status_code == 200
    status = client.get("/kb/status").json()
    paths = {d["path"] for d in status["documents"]}
    assert str(indexed) in paths and str(server["root"] / "hours.md") in paths
    assert status["queries"]  # the questions asked are counted (this one at least, whatever ran before)
