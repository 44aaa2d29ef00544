"""The workspace on PostgreSQL + pgvector (``store: postgresql://...``), against a real server.

The server is the PostgreSQL 16 + pgvector of the ``pgserver`` wheel, started for the session by
the ``postgres_url`` fixture (``tests/conftest.py``) on a Unix socket and stopped at the end.

1. The workspace, consistency and watcher tests of the folder workspace run again on the
   database (the ``Pg*`` subclasses below, with this module's ``workspace_factory``).
2. The guarantees of a shared knowledge base, each with its own test: two indexers and a watcher
   (three processes) on one workspace lose no update and leave no stale chunk or adapter record;
   ``kill -9`` of an indexer mid-update leaves the old or the new state, repaired by the next
   start; the database going away gives a one-line error and no half-written state once it is
   back.
3. ``d2l workspace copy`` (no re-internalization), YAML pipelines on the database, the CLI.
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
import test_watcher as watcher_tests
import test_workspace as workspace_tests
from components.conftest import (  # noqa: F401  (fixtures shared with tests/components)
    docs_dir,
    samples_dir,
    tiny_model,
)

from d2l_haystack.core.textio import content_hash
from d2l_haystack.kb.postgres import DatabaseError, redact, start_local_server, stop_local_server
from d2l_haystack.kb.workspace import Workspace, WorkspaceError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace_factory(tmp_path: Path, tiny_model: str, postgres_url: str):
    """``workspace_factory(name="ws", **settings)``: a PostgreSQL workspace over the tiny model."""
    opened: list[Workspace] = []

    def make(name: str = "ws", **settings):
        params = {"model": tiny_model, "checkpoint": None, "chunk_tokens": 64, "max_new_tokens": 4,
                  "store": postgres_url, **settings}
        ws = Workspace(tmp_path / name, device="cpu", **params)
        opened.append(ws)
        return ws

    yield make
    for ws in opened:
        ws.close()


# -- 1. the folder workspace's tests, on the database -----------------------------------------
class TestPgWorkspaceIndexing(workspace_tests.TestWorkspaceIndexing):
    pass


class TestPgWorkspacePersistence(workspace_tests.TestWorkspacePersistence):
    @pytest.mark.skip(reason="the read-only mount test is about a folder's files")
    def test_read_only_workspace_answers_and_refuses_updates_in_one_line(self):
        pass

    @pytest.mark.skip(reason="damaged files.json: a database workspace has none (see test_database_goes_away)")
    def test_missing_damaged_and_foreign_folders(self):
        pass

    @pytest.mark.skip(reason="the FAISS index files: a database workspace keeps its chunks in pgvector")
    def test_a_damaged_rag_index_is_kept_aside_and_rebuilt(self):
        pass


class TestPgWorkspaceQuery(workspace_tests.TestWorkspaceQuery):
    pass


class TestPgConsistency(watcher_tests.TestConsistency):
    pass


class TestPgWatcher(watcher_tests.TestWatcher):
    pass


def test_the_records_and_chunks_live_in_the_database(workspace_factory, docs_dir: Path, postgres_url: str):
    import psycopg

    ws = workspace_factory()
    ws.index_paths([docs_dir])
    ws.index_file(docs_dir / "app-changelog.md", route="rag")
    assert not (ws.path / "files.json").exists() and not (ws.path / "faiss").exists()
    assert ws.status()["store"].startswith("postgresql://") and type(ws.document_store).__name__ == \
        "PgvectorDocumentStore"
    name = ws.settings["store_name"]
    with psycopg.connect(postgres_url) as conn:
        records = dict(conn.execute("SELECT doc_id, record->>'route' FROM d2l_records WHERE ws = %s",
                                    (name,)).fetchall())
        chunks = conn.execute(f"SELECT count(*) FROM d2l_chunks_{name}").fetchone()[0]
    assert records == {r["path"]: r["route"] for r in ws.status()["documents"]} and len(records) == 4
    assert chunks == ws.record(docs_dir / "app-changelog.md")["chunks"] > 0
    # a second process (here: a second Workspace object) sees the same knowledge base, counters included
    ws.query(workspace_tests.KETTLE_Q)
    other = Workspace.open(ws.path)
    assert other.status()["documents"] == ws.status()["documents"] and other.status()["queries"] == \
        ws.status()["queries"] == {"d2l": 1}
    other.query(workspace_tests.KETTLE_Q)  # counted elsewhere: this process re-reads the changed counters
    kettle = str((docs_dir / "kettle-manual.md").resolve())
    assert {d["path"]: d["queries"] for d in ws.status()["documents"]}[kettle] == 2
    assert ws.status()["queries"] == {"d2l": 2}
    other.close()


def test_the_store_setting_cannot_change(workspace_factory, docs_dir: Path, postgres_url: str, capsys):
    from d2l_haystack.cli import main

    ws = workspace_factory()
    with pytest.raises(WorkspaceError, match="cannot change .*d2l workspace copy"):
        Workspace(ws.path, store="postgresql://elsewhere/db")
    assert main(["index", str(docs_dir / "kettle-manual.md"), "-w", str(ws.path), "--store",
                 "postgresql://elsewhere/db"]) == 2
    assert "cannot change" in capsys.readouterr().err
    with pytest.raises(WorkspaceError, match="store must be a postgresql:// URL"):
        Workspace(ws.path.parent / "other", store="mysql://x")


# -- 2. guarantees of a shared knowledge base ------------------------------------------------
HOOK = watcher_tests.HOOK  # d2l with DocToLoRAConverter.commit sleeping D2L_TEST_HOOK seconds on "SLOW" documents


def _db_rows(url: str, name: str) -> tuple[dict, dict | None, dict]:
    """Records, the journal and chunk sources, read from the database (no Workspace: no recovery)."""
    import psycopg

    with psycopg.connect(url) as conn:
        records = {d: r for d, r in conn.execute("SELECT doc_id, record FROM d2l_records WHERE ws = %s",
                                                (name,)).fetchall()}
        journal = conn.execute("SELECT op FROM d2l_journal WHERE ws = %s", (name,)).fetchone()
        chunks: dict[str, int] = {}
        for (meta,) in conn.execute(f"SELECT meta FROM d2l_chunks_{name}").fetchall():
            chunks[meta["file_path"]] = chunks.get(meta["file_path"], 0) + 1
    return records, journal[0] if journal else None, chunks


def _assert_consistent(ws: Workspace, files: list[Path]) -> None:
    """Every file has one current record; D2L files an adapter of this content and no chunk; RAG
    files chunks and no adapter; nothing else is stored."""
    again = Workspace.open(ws.path)
    try:
        status = {d["path"]: d for d in again.status()["documents"]}
        assert sorted(status) == sorted(str(f.resolve()) for f in files)
        records, journal, chunks = _db_rows(again._state.url, again.settings["store_name"])
        assert journal is None
        for f in files:
            doc_id = str(f.resolve())
            rec = records[doc_id]
            assert rec["hash"] == content_hash(f.read_text()), f"stale record of {f.name}"
            entry = again.adapters.info(doc_id)
            if rec["route"] == "d2l":
                assert entry is not None and entry["content_hash"] == rec["hash"] and doc_id not in chunks
            else:
                assert entry is None and chunks.get(doc_id) == rec["chunks"] > 0
        assert set(chunks) <= set(status) and {e["id"] for e in again.adapters.list()} <= set(status)
        assert again.verify() == []
    finally:
        again.close()


def _start(cmd: list[str], tmp_path: Path, name: str, env: dict | None = None) -> subprocess.Popen:
    out = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen([sys.executable, "-c", HOOK, *cmd], stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "D2L_TEST_HOOK": str(tmp_path / "no-hook"),
                                 **(env or {})})


def test_two_indexers_and_a_watcher_lose_no_update(workspace_factory, tmp_path: Path, request):
    """Three processes on one knowledge base at once: a watcher following edits of one folder, two
    ``d2l index`` runs over two overlapping folders (each file of the overlap indexed by both), while
    the test keeps editing; afterwards every file has exactly its current content stored once."""
    ws = workspace_factory(router={"max_tokens": 120, "min_changes_for_history": 100})
    a, b, shared = tmp_path / "a", tmp_path / "b", tmp_path / "shared"
    for folder in (a, b, shared):
        folder.mkdir()
    for i in range(4):
        (a / f"a{i}.md").write_text(f"# A{i}\nLocker {i} of hall A holds the spare keys {i * 11}.\n")
        (b / f"b{i}.md").write_text(f"# B{i}\n" + " ".join(f"Row {j}: crate {j * i} goes to bay {j}."
                                                            for j in range(40)) + "\n")  # long: RAG
    for i in range(3):
        (shared / f"s{i}.md").write_text(f"# S{i}\nShared note {i}: the bus leaves at {i + 6} o'clock.\n")
    procs = []
    request.addfinalizer(lambda: [p.kill() for p in procs if p.poll() is None])
    watch = _start(["watch", str(shared), "-w", str(ws.path), "--debounce", "0.1"], tmp_path, "watch")
    procs.append(watch)
    time.sleep(3)  # the watcher's imports; changes before its watch is in place are found by its reconciliation
    idx1 = _start(["index", str(a), str(shared), "-w", str(ws.path)], tmp_path, "index1")
    idx2 = _start(["index", str(b), str(shared), "-w", str(ws.path)], tmp_path, "index2")
    procs += [idx1, idx2]
    for round_ in range(3):  # edits while all three run
        for i in range(3):
            (shared / f"s{i}.md").write_text(f"# S{i}\nShared note {i}, edit {round_}: the bus leaves at "
                                             f"{i + 7 + round_} o'clock.\n")
        (a / "a0.md").write_text(f"# A0\nLocker 0 of hall A, edit {round_}, holds the spare keys {round_}.\n")
        time.sleep(1.0)
    for proc, name in ((idx1, "index1"), (idx2, "index2")):
        assert proc.wait(240) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    # the last edit of a0.md may have come after index1 read it: a final index picks it up (the watcher does not
    # watch a/); the shared folder is the watcher's
    deadline = time.monotonic() + 120
    files = sorted(a.iterdir()) + sorted(b.iterdir()) + sorted(shared.iterdir())
    ws.index_paths([a])
    while True:
        records, journal, _ = _db_rows(ws._state.url, ws.settings["store_name"])
        current = all(records.get(str(f.resolve()), {}).get("hash") == content_hash(f.read_text()) for f in files)
        if current and journal is None:
            break
        assert watch.poll() is None, (tmp_path / "watch.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"updates lost: {(tmp_path / 'watch.log').read_text()[-2000:]}"
        time.sleep(0.5)
    watch.send_signal(signal.SIGTERM)
    assert watch.wait(60) == 0, (tmp_path / "watch.log").read_text()[-3000:]
    _assert_consistent(ws, files)
    routes = {r["route"] for r in ws.status()["documents"]}
    assert routes == {"d2l", "rag"}


def test_kill_9_mid_update_leaves_old_or_new_and_the_next_start_repairs(workspace_factory, tmp_path: Path,
                                                                        request):
    ws = workspace_factory()
    doc = tmp_path / "docs" / "manual.md"
    doc.parent.mkdir()
    v1, v2 = "# Manual v1\nThe dial has three settings.\n", "# Manual v2\nSLOW: the dial was removed.\n"
    doc.write_text(v1)
    ws.index_file(doc)
    doc.write_text(v2)
    hook = tmp_path / "hook-seconds"
    hook.write_text("120")
    proc = _start(["index", str(doc), "-w", str(ws.path)], tmp_path, "killed", env={"D2L_TEST_HOOK": str(hook)})
    request.addfinalizer(lambda: proc.kill() if proc.poll() is None else None)
    watcher_tests._wait(lambda: (tmp_path / "in-hook").exists(), 120, "the update to reach its commit", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    records, journal, _ = _db_rows(ws._state.url, ws.settings["store_name"])
    doc_id = str(doc.resolve())
    assert journal is not None and journal["phase"] == "commit" and journal["doc_id"] == doc_id
    assert records[doc_id]["hash"] == content_hash(v1)  # the record is still the old one
    # a query (here in this process, which holds no lock) finishes it before answering: old or new, never a mix
    ws.query("What does the dial have?", max_new_tokens=1)
    records, journal, _ = _db_rows(ws._state.url, ws.settings["store_name"])
    assert journal is None and records[doc_id]["hash"] == ws.adapters.info(doc_id)["content_hash"] == \
        content_hash(v2)
    _assert_consistent(ws, [doc])


def test_the_database_going_away_is_one_line_and_leaves_no_half_state(tmp_path: Path, tiny_model: str):
    """A server of its own (stopping the session's would stop the other tests)."""
    data = tmp_path / "pg"
    url = start_local_server(data)
    try:
        ws = Workspace(tmp_path / "kb", device="cpu", model=tiny_model, checkpoint=None, chunk_tokens=64,
                       max_new_tokens=2, store=url)
        doc, log = tmp_path / "note.md", tmp_path / "log.md"
        doc.write_text("# Note\nThe meeting room is called Kestrel.\n")
        log.write_text("# Log\n" + " ".join(f"Line {i}: the pump ran {i} minutes." for i in range(80)))
        ws.index_file(doc)
        ws.index_file(log, route="rag")
        doc.write_text("# Note\nThe meeting room is called Osprey.\n")
        assert stop_local_server(data)
        for action in (lambda: ws.index_file(doc), lambda: ws.query("What is the meeting room called?"),
                       lambda: ws.status(), lambda: Workspace.open(ws.path)):
            with pytest.raises(DatabaseError) as info:
                action()
            message = str(info.value)
            assert "unreachable" in message and "\n" not in message and redact(url) in message
        start_local_server(data)  # back
        again = Workspace.open(ws.path)
        rec = again.record(doc)
        assert rec["hash"] in (content_hash("# Note\nThe meeting room is called Kestrel.\n"),
                               content_hash(doc.read_text()))
        assert again.adapters.info(str(doc.resolve()))["content_hash"] in (rec["hash"], content_hash(doc.read_text()))
        assert again.index_file(doc).action == "internalized" and again.verify() == []
        _assert_consistent(again, [doc, log])
        # the database goes away in the middle of an update: after the hypernetwork pass, before the commit
        doc.write_text("# Note\nThe meeting room is called Heron.\n")
        converter = again.components.get("converter")
        prepare = converter.prepare

        def prepare_then_lose_the_database(*a, **kw):
            out = prepare(*a, **kw)
            assert stop_local_server(data)
            return out

        converter.prepare = prepare_then_lose_the_database
        with pytest.raises(DatabaseError, match="unreachable"):
            again.index_file(doc, route="d2l")  # forced: three edits in seconds would make it volatile (RAG)
        converter.prepare = prepare
        start_local_server(data)
        back = Workspace.open(again.path)  # the update that died before its commit changed nothing
        assert back.record(doc)["hash"] == content_hash("# Note\nThe meeting room is called Osprey.\n")
        assert back.verify() == [] and not back.pending_update
        assert back.index_file(doc, route="d2l").action == "internalized"
        _assert_consistent(back, [doc, log])
        back.close()
        again.close()
        ws.close()
    finally:
        stop_local_server(data)


# -- 3. copy, pipelines, command line ---------------------------------------------------------
def test_workspace_copy_moves_a_folder_workspace_without_reinternalizing(tmp_path: Path, tiny_model: str,
                                                                         docs_dir: Path, postgres_url: str,
                                                                         capsys):
    from d2l_haystack.cli import main

    src = Workspace(tmp_path / "kb", device="cpu", model=tiny_model, checkpoint=None, chunk_tokens=64,
                    max_new_tokens=2)
    src.index_paths([docs_dir])
    src.index_file(docs_dir / "app-changelog.md", route="rag")
    src.query(workspace_tests.KETTLE_Q)
    before = src.status()
    assert main(["workspace", "copy", str(src.path), postgres_url, "--to", str(tmp_path / "shared-kb")]) == 0
    out = capsys.readouterr().out
    assert "nothing re-internalized" in out and "verify: healthy" in out
    dest = Workspace.open(tmp_path / "shared-kb")
    after = dest.status()
    assert dest.settings["store"] == postgres_url and dest.components.built == ()  # no model was loaded
    assert after["documents"] == [{**d, "path": d["path"]} for d in before["documents"]]
    assert after["queries"] == before["queries"] and after["totals"] == before["totals"]
    assert dest.query(workspace_tests.KETTLE_Q).route == "d2l"
    assert dest.query("What is new in version 2.4.0?", mode="rag").chunks
    dest.close()
    # in place: the folder's state moves into the database, kept aside in .folder-state/
    assert main(["workspace", "copy", str(src.path), postgres_url]) == 0
    moved = Workspace.open(src.path)
    assert moved.settings["store"] == postgres_url and not (src.path / "files.json").exists()
    assert (src.path / ".folder-state" / "files.json").is_file()
    assert moved.status()["documents"] == before["documents"] and moved.verify() == []
    assert main(["workspace", "copy", str(src.path), postgres_url]) == 2  # already in a database
    assert "already in" in capsys.readouterr().err
    moved.close()


def test_yaml_pipelines_use_the_database_store(workspace_factory, docs_dir: Path):
    from haystack_integrations.components.retrievers.pgvector import PgvectorEmbeddingRetriever

    from d2l_haystack.kb.pipelines import load_pipeline, query_inputs

    ws = workspace_factory()
    ws.index_file(docs_dir / "app-changelog.md", route="rag")
    pipe = load_pipeline("query", workspace=ws)  # the same YAML file as a folder workspace's
    retriever = pipe.get_component("retriever")
    assert isinstance(retriever, PgvectorEmbeddingRetriever) and retriever.document_store is ws.document_store
    indexing = load_pipeline("indexing", workspace=ws)
    assert indexing.get_component("writer").document_store is ws.document_store
    data = query_inputs(pipe, "What is new in version 2.4.0?", {"max_new_tokens": 2})
    data["query_router"]["mode"] = "rag"
    result = pipe.run(data)
    reply = result["answer_joiner"]["value"][0]
    assert reply.meta["chunks"] and reply.meta["chunks"][0]["source"].endswith("app-changelog.md")


def test_postgres_commands_start_and_stop_a_local_server(tmp_path: Path, capsys):
    from d2l_haystack.cli import main

    data = tmp_path / "pg"
    assert main(["postgres", "start", str(data)]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("postgresql://") and str(data.resolve()) in url
    assert main(["postgres", "start", str(data)]) == 0 and capsys.readouterr().out.strip() == url  # running
    import psycopg

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert main(["postgres", "stop", str(data)]) == 0
    assert main(["postgres", "stop", str(data)]) == 1
    shutil.rmtree(data, ignore_errors=True)


def test_a_store_url_from_the_environment(tmp_path: Path, tiny_model: str, postgres_url: str, monkeypatch):
    monkeypatch.setenv("D2L_TEST_STORE", postgres_url)
    ws = Workspace(tmp_path / "kb", model=tiny_model, checkpoint=None, store="$D2L_TEST_STORE")
    assert json.loads((ws.path / "workspace.json").read_text())["settings"]["store"] == "$D2L_TEST_STORE"
    ws.close()
    monkeypatch.delenv("D2L_TEST_STORE")
    with pytest.raises(WorkspaceError, match=r"\$D2L_TEST_STORE, and that environment variable is not set"):
        Workspace.open(tmp_path / "kb")
