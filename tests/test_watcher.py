"""DocumentWatcher (d2l_haystack/watcher.py) and ``d2l watch``, on the tiny random Llama.

Each consistency guarantee of the watcher has its own test:

1. a query running during an update gets the old or the new adapter/chunks, never a mix, and
   never fails (``TestConsistency.test_queries_during_updates_see_old_or_new``);
2. after an edit no chunk of the old version is retrievable (``test_edit_leaves_no_old_chunk``);
3. ``kill -9`` in the middle of an update leaves old-or-new state and the next start repairs and
   finishes it (``TestProcess.test_kill_9_mid_update_then_restart_repairs_and_sigterm_finishes``);
4. bad files never stop the watcher (``TestBadFiles``).

Fixtures (tiny random Llama, sample documents) live in ``tests/components/conftest.py``.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests/components/conftest.py)

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from components.conftest import (  # noqa: F401  (fixtures shared with tests/components)
    docs_dir,
    samples_dir,
    tiny_model,
    workspace_factory,
)

from d2l_haystack.bench.churn import OPERATIONS, Churn, mismatches
from d2l_haystack.core.textio import content_hash
from d2l_haystack.kb.watcher import DocumentWatcher
from d2l_haystack.kb.workspace import Workspace

DEBOUNCE = 0.15
REPO = Path(__file__).resolve().parents[1]


def _watch(ws: Workspace, *paths: Path, **kw) -> DocumentWatcher:
    kw.setdefault("debounce", DEBOUNCE)
    return DocumentWatcher(ws, list(paths), **kw)


def _idle(watcher: DocumentWatcher, timeout: float = 60.0) -> None:
    assert watcher.wait_idle(timeout), f"watcher not idle after {timeout} s: {watcher.stats}"


def _chunks_of(ws: Workspace, path: Path) -> list:
    return ws.document_store.filter_documents({"field": "meta.file_path", "operator": "==",
                                               "value": str(path.resolve())})


def assert_in_step(ws: Workspace, watcher: DocumentWatcher) -> None:
    """The workspace matches the watched folders exactly; every adapter and chunk is current content."""
    assert mismatches(ws, watcher) == []


class TestWatcher:
    def test_create_edit_rename_move_over_delete_and_folders(self, workspace_factory, tmp_path: Path,
                                                              count_internalize):
        ws = workspace_factory()
        docs = tmp_path / "docs"
        (docs / "drafts").mkdir(parents=True)
        (docs / "a.md").write_text("# Alpha\nThe alpha kettle has a two-year warranty.\n")
        (docs / "b.txt").write_text("Beta: the office opens at nine every weekday.\n")
        (docs / "drafts" / "wip.md").write_text("Work in progress, not for the knowledge base.\n")
        (docs / "notes.rst").write_text("Not included by the glob.\n")
        calls = count_internalize(ws.components.get("converter").engine)
        with _watch(ws, docs, include=["*.md", "*.txt"], exclude=["drafts"]) as w:
            _idle(w)
            assert sorted(Path(p).name for p in ws.sources()) == ["a.md", "b.txt"] and len(calls) == 2
            # edit: re-internalized, one more change in the history
            (docs / "a.md").write_text("# Alpha\nThe alpha kettle has a three-year warranty.\n")
            (docs / "c.md").write_text("# Gamma\nGamma is a new document about gardens.\n")
            _idle(w)
            assert ws.record(docs / "a.md")["num_changes"] == 2 and len(calls) == 4
            # rename: the record follows, nothing is recomputed
            first_seen = ws.record(docs / "b.txt")["first_seen"]
            (docs / "b.txt").rename(docs / "b-renamed.txt")
            _idle(w)
            rec = ws.record(docs / "b-renamed.txt")
            assert rec["first_seen"] == first_seen and ws.record(docs / "b.txt") is None and len(calls) == 4
            # a move onto an indexed file replaces it (one record, its adapter gone)
            (docs / "c.md").rename(docs / "a.md")
            _idle(w)
            assert ws.record(docs / "c.md") is None and "Gamma" in ws.record(docs / "a.md")["title"]
            assert ws.adapters.count() == 2 and len(calls) == 4
            # a folder moved in, renamed, then deleted
            (tmp_path / "outside").mkdir()
            (tmp_path / "outside" / "d.md").write_text("Delta lives in a sub-folder.\n")
            (tmp_path / "outside").rename(docs / "sub")
            _idle(w)
            assert ws.record(docs / "sub" / "d.md") is not None
            (docs / "sub").rename(docs / "sub2")
            _idle(w)
            assert ws.record(docs / "sub2" / "d.md") is not None and ws.record(docs / "sub" / "d.md") is None
            assert len(calls) == 5
            for f in (docs / "sub2").iterdir():
                f.unlink()
            (docs / "sub2").rmdir()
            (docs / "b-renamed.txt").unlink()
            _idle(w)
            assert sorted(Path(p).name for p in ws.sources()) == ["a.md"]
            assert_in_step(ws, w)
        assert not w.running and w.stats["errors"] == 0

    def test_debounce_collapses_a_burst_into_one_change(self, workspace_factory, tmp_path: Path, count_internalize):
        ws = workspace_factory()
        docs = tmp_path / "docs"
        docs.mkdir()
        calls = count_internalize(ws.components.get("converter").engine)
        with _watch(ws, docs, debounce=0.4) as w:
            _idle(w)
            for i in range(15):  # an editor saving in small writes
                (docs / "burst.md").write_text(f"# Burst\nSaved {i} times.\n" + "More text. " * i)
                time.sleep(0.02)
            _idle(w)
        rec = ws.record(docs / "burst.md")
        assert rec["num_changes"] == 1 and len(calls) == 1 and "Saved 14 times" in calls[0]

    def test_reconcile_on_start(self, workspace_factory, tmp_path: Path, count_internalize, capsys):
        ws = workspace_factory()
        docs = tmp_path / "docs"
        docs.mkdir()
        for name, text in (("keep.md", "Keep: unchanged."), ("edit.md", "Edit: version one."),
                           ("gone.md", "Gone: deleted while stopped."), ("move.md", "Move: renamed while stopped.")):
            (docs / name).write_text(text + "\n")
        with _watch(ws, docs) as w:
            _idle(w)
        first_seen = ws.record(docs / "move.md")["first_seen"]
        (docs / "edit.md").write_text("Edit: version two.\n")
        (docs / "gone.md").unlink()
        (docs / "move.md").rename(docs / "moved.md")
        (docs / "new.md").write_text("New: added while stopped.\n")
        calls = count_internalize(ws.components.get("converter").engine)
        w2 = _watch(ws, docs)
        events = w2.reconcile()  # the same pass start() runs (here without starting)
        actions = {Path(e.path).name: e.action for e in events}
        assert actions == {"moved.md": "renamed", "new.md": "internalized", "edit.md": "internalized",
                           "keep.md": "unchanged", "gone.md": "removed"}
        assert sorted(calls) == ["Edit: version two.\n", "New: added while stopped.\n"]
        assert ws.record(docs / "moved.md")["first_seen"] == first_seen
        assert_in_step(ws, w2)
        # the CLI does the same with --once
        from d2l_haystack.cli import main

        (docs / "keep.md").unlink()
        assert main(["watch", str(docs), "--workspace", str(ws.path), "--once"]) == 0
        out = capsys.readouterr()
        assert "removed" in out.out and "keep.md" in out.out and "in step with" in out.err
        assert ws.record(docs / "keep.md") is None

    def test_routes_follow_behaviour_and_are_logged(self, workspace_factory, tmp_path: Path, caplog, capsys):
        # no prior queries: a new document is indexed (RAG) until it is asked about; 2 edits within a
        # minute make it volatile
        ws = workspace_factory(router={"prior_queries_per_day": 0.0, "volatile_changes": 2,
                                       "volatile_window_seconds": 600.0, "min_changes_for_history": 100})
        docs = tmp_path / "docs"
        docs.mkdir()
        doc = docs / "lighthouse.md"
        doc.write_text("# Marlow lighthouse\nThe Marlow lighthouse was built in 1873 by Ada Finch. "
                       "It stands 41 metres tall on the northern cliff.\n")
        caplog.set_level(logging.INFO, logger="d2l_haystack")
        with _watch(ws, docs, reroute_check=0.2) as w:
            _idle(w)
            assert ws.record(doc)["route"] == "rag"
            for _ in range(2):  # asked about (from another thread): the idle watcher reroutes it
                answer = ws.query("When was the Marlow lighthouse built?", mode="rag")
                assert answer.chunks and answer.chunks[0]["path"] == str(doc.resolve())
            deadline = time.monotonic() + 20
            while not any(e.action == "rerouted" for e in w.events) and time.monotonic() < deadline:
                time.sleep(0.1)
            rerouted = [e for e in w.events if e.action == "rerouted"]
            assert [(e.previous_route, e.route) for e in rerouted] == [("rag", "d2l")], list(w.events)
            assert ws.record(doc)["route"] == "d2l" and "cost model" in rerouted[0].reason
            for i in range(2):  # it keeps changing: back to RAG
                doc.write_text(doc.read_text() + f"\nUpdate {i}: the lamp was replaced.\n")
                _idle(w)
            rec = ws.record(doc)
            assert rec["route"] == "rag" and rec["reason"].startswith("volatile")
        changes = ws.status()["documents"][0]["route_changes"]
        assert [(c["from"], c["to"]) for c in changes] == [("rag", "d2l"), ("d2l", "rag")]
        assert changes[0]["reason"].startswith("cost model") and changes[1]["reason"].startswith("volatile")
        logged = [r.getMessage() for r in caplog.records if r.name == "d2l_haystack.kb.watcher"]
        assert sum("route change" in m and "lighthouse.md" in m for m in logged) == 2
        from d2l_haystack.cli import main

        capsys.readouterr()
        assert main(["status", "--workspace", str(ws.path)]) == 0
        out = capsys.readouterr().out
        assert "moved rag -> d2l" in out and "moved d2l -> rag" in out and "volatile" in out


class TestConsistency:
    def test_queries_during_updates_see_old_or_new(self, workspace_factory, tmp_path: Path, monkeypatch):
        """Guarantee 1. The commit windows are widened (0.3 s sleeps between the store changes of an
        update); a thread queries all along. Every answer must come from one state of the document."""
        ws = workspace_factory()
        docs = tmp_path / "docs"
        docs.mkdir()
        doc = docs / "kettle.md"

        def version(n: int) -> str:
            return (f"Version {n}. The Aurora K{n} kettle manual: the warranty of the Aurora kettle is {n} years "
                    f"and error code E{n} means the kettle is empty.\n")

        hashes = {content_hash(version(n)): n for n in range(1, 9)}
        doc.write_text(version(1))
        windows: list[tuple[float, float]] = []  # when an update was between two of its store changes
        faiss_delete, adapter_delete = ws.document_store.delete_by_filter, ws.adapters.delete

        def slow(fn):
            def wrapped(*a, **kw):
                start = time.monotonic()
                time.sleep(0.3)
                try:
                    return fn(*a, **kw)
                finally:
                    windows.append((start, time.monotonic()))
            return wrapped

        served = threading.local()
        adapter_get = ws.adapters.get

        def recording_get(doc_id):
            adapter = adapter_get(doc_id)
            getattr(served, "hashes", []).append(adapter.content_hash)
            return adapter

        with _watch(ws, docs) as w:
            _idle(w)
            ws.query("warm up", max_new_tokens=1)
            monkeypatch.setattr(ws.document_store, "delete_by_filter", slow(faiss_delete))
            monkeypatch.setattr(ws.adapters, "delete", slow(adapter_delete))
            monkeypatch.setattr(ws.adapters, "get", recording_get)
            stop, seen, errors = threading.Event(), [], []

            def ask() -> None:
                while not stop.is_set():
                    served.hashes = []
                    start = time.monotonic()
                    try:
                        a = ws.query("What is the warranty of the Aurora kettle?", explain=True, mode="hybrid",
                                     max_new_tokens=2)
                    except Exception as exc:  # noqa: BLE001 - any failure fails the test
                        errors.append(exc)
                        continue
                    seen.append(((start, time.monotonic()), a, list(served.hashes)))

            askers = [threading.Thread(target=ask) for _ in range(3)]  # one may wait to record its counts
            for asker in askers:
                asker.start()
            try:
                for n in range(2, 5):  # edits through the watcher: d2l, then volatile -> rag
                    doc.write_text(version(n))
                    _idle(w)
                for n, route in ((5, "d2l"), (6, "rag"), (7, "d2l")):  # explicit moves between the sides
                    doc.write_text(version(n))
                    _idle(w)
                    ws.index_file(doc, route=route)
            finally:
                stop.set()
                for asker in askers:
                    asker.join(60)
        assert not errors, errors
        overlapped = [q for q, _, _ in seen if any(q[0] < w_end and w_start < q[1] for w_start, w_end in windows)]
        assert len(seen) >= 10 and len(windows) >= 6 and len(overlapped) >= 3, "queries did not overlap updates"
        doc_id = str(doc.resolve())
        for _, answer, adapter_hashes in seen:
            candidates = {c["id"] for c in answer.explanation["candidates"]}
            retrieved = [r for r in answer.explanation["retrieved"] if r["source"] == doc_id]
            assert not (doc_id in candidates and retrieved), "adapter and chunks of one document in one answer"
            versions = {hashes[h] for h in adapter_hashes}
            versions |= {int(r["text"].split(".")[0].split()[-1]) for r in retrieved}
            assert len(versions) <= 1, f"versions mixed in one answer: {versions}"

    def test_a_query_repairs_an_abandoned_update_first(self, workspace_factory, tmp_path: Path, monkeypatch):
        ws = workspace_factory()
        doc = tmp_path / "note.md"
        doc.write_text("The meeting room is called Kestrel.\n")
        ws.index_file(doc)
        doc.write_text("The meeting room is called Osprey.\n")

        store_it = ws.components.get("converter").commit

        def crash(*a, **kw):
            store_it(*a, **kw)
            raise KeyboardInterrupt  # the process dies after the adapter was written, before the record

        monkeypatch.setattr(ws.components.get("converter"), "commit", crash)
        with pytest.raises(KeyboardInterrupt):
            ws.index_file(doc)
        monkeypatch.undo()
        assert ws.pending_update and ws.record(doc)["hash"] != content_hash(doc.read_text())
        ws.query("What is the meeting room called?", max_new_tokens=1)
        assert not ws.pending_update
        assert ws.record(doc)["hash"] == ws.adapters.info(str(doc.resolve()))["content_hash"] == content_hash(
            doc.read_text())

    def test_edit_leaves_no_old_chunk(self, workspace_factory, tmp_path: Path):
        """Guarantee 2 (RAG side and adapter side)."""
        ws = workspace_factory()
        docs = tmp_path / "docs"
        docs.mkdir()
        rag, d2l = docs / "rag.md", docs / "d2l.md"
        words = " ".join(f"word{i}" for i in range(150))
        rag.write_text(f"The zebra lighthouse keeper counts seagulls. {words}\n")
        d2l.write_text("The zebra kettle is striped.\n")
        ws.index_file(rag, route="rag")
        with _watch(ws, docs) as w:
            _idle(w)
            before = _chunks_of(ws, rag)
            assert len(before) >= 3 and any("zebra" in c.content for c in before)
            old_objects = {p.name for p in (ws.path / "adapters" / "objects").iterdir()}
            rag.write_text(f"The giraffe lighthouse keeper counts pelicans. {words}\n")
            d2l.write_text("The giraffe kettle is spotted.\n")
            _idle(w)
        after = _chunks_of(ws, rag)
        assert after and not any("zebra" in c.content for c in ws.document_store.filter_documents())
        assert not {c.id for c in before} & {c.id for c in after}
        assert len(after) == ws.record(rag)["chunks"] == ws.document_store.count_documents()
        answer = ws.query("Who counts seagulls at the zebra lighthouse?", explain=True, mode="rag")
        retrieved = answer.explanation["retrieved"]
        assert retrieved and not any("zebra" in r["text"] for r in retrieved)
        entry = ws.adapters.info(str(d2l.resolve()))
        assert entry["content_hash"] == content_hash(d2l.read_text())
        objects = {p.name for p in (ws.path / "adapters" / "objects").iterdir()}
        assert not objects & old_objects and len(objects) == 2  # the old adapter files are gone
        assert_in_step(ws, w)


class TestBadFiles:
    def test_bad_files_do_not_stop_the_watcher(self, workspace_factory, tmp_path: Path, monkeypatch, caplog):
        """Guarantee 4: one clear log line per bad file, the file skipped, the service running."""
        ws = workspace_factory()
        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "good.md").write_text("A good document about kettles.\n")
        (docs / "turns-bad.md").write_text("This one is fine until it becomes binary.\n")
        caplog.set_level(logging.INFO, logger="d2l_haystack.kb.watcher")
        w = _watch(ws, docs, max_file_bytes=50_000).start()
        try:
            _idle(w)
            assert len(ws.sources()) == 2
            caplog.clear()
            (docs / "binary.txt").write_bytes(b"\x00\x01\x02binary")
            (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
            (docs / "empty.md").write_text("   \n")
            (docs / "huge.md").write_text("big " * 20_000)
            os.mkfifo(docs / "pipe.md")
            (docs / "folder.md").mkdir()  # a directory named like a file
            os.symlink("loop.md", docs / "loop.md")  # a symbolic link loop
            os.symlink(docs, docs / "self-link")  # a link to a folder (a cycle if followed)
            (docs / "locked.md").write_text("Unreadable for this process.\n")
            (docs / "turns-bad.md").write_bytes(b"\x00\x00 now binary")
            original_read = Path.read_bytes

            def read_bytes(self):
                if self.name == "locked.md":
                    raise PermissionError(13, "Permission denied", str(self))
                return original_read(self)

            monkeypatch.setattr(Path, "read_bytes", read_bytes)
            original_index = ws.index_file

            def vanishing(path, **kw):  # the file disappears between the event and the read
                if Path(path).name == "vanish.md":
                    Path(path).unlink(missing_ok=True)
                return original_index(path, **kw)

            monkeypatch.setattr(ws, "index_file", vanishing)
            (docs / "vanish.md").write_text("Here for a moment.\n")
            _idle(w)
            lines = [r.getMessage() for r in caplog.records]
            expected = {"binary.txt": "binary", "latin1.txt": "not UTF-8", "empty.md": "empty",
                        "huge.md": "too large", "pipe.md": "FIFO", "loop.md": "symbolic link loop",
                        "locked.md": "Permission denied", "turns-bad.md": "binary", "vanish.md": "no such file"}
            for name, words in expected.items():
                mine = [m for m in lines if f"/{name}:" in m or f"/{name} " in m]
                assert len(mine) == 1 and words in mine[0], (name, mine)
            assert "removed" in next(m for m in lines if "turns-bad.md" in m)
            assert w.running and w.stats["errors"] == 0
            # the service keeps working
            (docs / "after.md").write_text("Written after the bad files.\n")
            _idle(w)
            assert sorted(Path(p).name for p in ws.sources()) == ["after.md", "good.md"]
            assert ws.verify() == []
        finally:
            w.stop()


HOOK = """
import os, sys, time
from pathlib import Path
from d2l_haystack.components import doc_to_lora_converter as m

ctl = Path(os.environ["D2L_TEST_HOOK"])
original = m.DocToLoRAConverter.commit

def commit(self, doc, prepared):
    out = original(self, doc, prepared)  # the adapter is written; the record is not yet
    if "SLOW" in (doc.content or "") and ctl.exists():
        (ctl.parent / "in-hook").write_text(str(os.getpid()))
        time.sleep(float(ctl.read_text()))
    return out

m.DocToLoRAConverter.commit = commit
from d2l_haystack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _raw(ws_path: Path, doc: Path) -> tuple[dict | None, dict | None, list]:
    """A document's record, adapter entry and chunks, read from the files (no Workspace: no recovery)."""
    doc_id = str(doc.resolve())
    files = json.loads((ws_path / "files.json").read_text())["files"]
    manifest = json.loads((ws_path / "adapters" / "manifest.json").read_text())["entries"]
    index = ws_path / "faiss" / "index.json"
    chunks = [d for d in json.loads(index.read_text())["documents"]
              if d["meta"].get("file_path") == doc_id] if index.exists() else []
    return files.get(doc_id), manifest.get(doc_id), chunks


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class TestProcess:
    def test_kill_9_mid_update_then_restart_repairs_and_sigterm_finishes(self, workspace_factory, tmp_path: Path,
                                                                         request):
        """Guarantee 3, and a clean SIGTERM: real ``d2l watch`` processes."""
        # long files go to RAG, short ones to D2L (edits do not make it volatile)
        ws = workspace_factory(router={"max_tokens": 100, "min_changes_for_history": 100})
        docs = tmp_path / "docs"
        docs.mkdir()
        doc = docs / "manual.md"
        v1 = "# Manual v1\n" + " ".join(f"Step {i}: turn the dial." for i in range(60)) + "\n"
        v2, v3 = "# Manual v2\nSLOW: the dial was removed.\n", "# Manual v3\nSLOW: there is a button.\n"
        doc.write_text(v1)
        assert ws.index_file(doc).route == "rag"
        ctl = tmp_path / "hook-seconds"
        env = {**os.environ, "D2L_TEST_HOOK": str(ctl), "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-c", HOOK, "watch", str(docs), "--workspace", str(ws.path), "--debounce", "0.1"]

        started: list[subprocess.Popen] = []

        def start(n: int) -> subprocess.Popen:
            out, err = (open(tmp_path / f"watch{n}.{k}", "w") for k in ("out", "err"))  # noqa: SIM115
            started.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True))
            return started[-1]

        request.addfinalizer(lambda: [p.kill() for p in started if p.poll() is None])  # a failure leaks none

        # 1. a watcher is killed with SIGKILL while it commits v2 (adapter written, record not yet)
        ctl.write_text("120")
        proc = start(1)  # changes made before its watch is in place are found by its reconciliation
        doc.write_text(v2)
        _wait(lambda: (tmp_path / "in-hook").exists(), 60, "the update to start", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert (ws.path / "journal.json").exists()
        record, adapter, chunks = _raw(ws.path, doc)
        assert record["hash"] == content_hash(v1) and record["route"] == "rag"  # the record: old
        assert adapter is not None and adapter["content_hash"] == content_hash(v2) and chunks == []  # data: new
        # 2. the next start repairs and finishes it
        (tmp_path / "in-hook").unlink()
        ctl.write_text("2")
        proc = start(2)
        _wait(lambda: not (ws.path / "journal.json").exists() and _raw(ws.path, doc)[0]["hash"] == content_hash(v2),
              60, "the repair", proc)
        (tmp_path / "in-hook").unlink(missing_ok=True)
        # 3. SIGTERM in the middle of the next update: it is finished, then the process exits 0
        doc.write_text(v3)
        _wait(lambda: (tmp_path / "in-hook").exists(), 60, "the second update to start", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        out, err = (tmp_path / "watch2.out").read_text(), (tmp_path / "watch2.err").read_text()
        assert proc.returncode == 0, err
        assert "stopping" in err and "internalized" in out
        again = Workspace.open(ws.path)
        assert again.status()["pending_recovery"] is False
        record, adapter, chunks = _raw(ws.path, doc)
        assert record["hash"] == adapter["content_hash"] == content_hash(v3) and record["route"] == "d2l"
        assert chunks == [] and again.verify() == []


def test_index_and_the_watcher_share_the_workspace_file_limit(workspace_factory, tmp_path: Path, capsys):
    """``max_file_bytes`` is one workspace setting: ``d2l index`` refuses a larger file with a
    one-line message naming the setting, the watcher skips it, and ``--max-file-size`` raises it."""
    from d2l_haystack.cli import main
    from d2l_haystack.core.errors import InputError

    ws = workspace_factory(max_file_bytes=2_000)
    big = tmp_path / "docs" / "big.md"
    big.parent.mkdir()
    big.write_text("# Big\n" + "The kettle boils water quickly. " * 100)
    with pytest.raises(InputError, match="over the workspace's 2,000-byte limit .*max_file_bytes"):
        ws.index_file(big)
    assert ws.record(big) is None and not ws.pending_update
    assert DocumentWatcher(ws, [big.parent]).scope.inspect(str(big)).startswith("too large")
    assert main(["index", str(big), "-w", str(ws.path)]) == 2
    err = capsys.readouterr().err
    assert "2,000-byte limit" in err and len(err.strip().splitlines()) == 1
    assert main(["index", str(big), "-w", str(ws.path), "--max-file-size", "100000"]) == 0
    assert Workspace.open(ws.path).settings["max_file_bytes"] == 100_000 and ws.record(big) is not None


def test_random_churn_keeps_the_workspace_equal_to_the_folder(workspace_factory, tmp_path: Path):
    """Bursts of random operations (every kind: rename chains, renames over existing files, moves
    between folders, folder renames and deletions, all within one debounce window), and after
    each quiet period the workspace equals the folder: no stale record, adapter or chunk."""
    import random

    ws = workspace_factory()
    docs = tmp_path / "docs"
    churn = Churn(docs, seed=7, max_files=25)
    for _ in range(8):
        churn.step()
    rng = random.Random(3)
    operations = periods = 0
    with _watch(ws, docs) as w:
        _idle(w)
        while operations < 1000:
            burst = [churn.step() for _ in range(rng.randint(1, 15))]
            operations += len(burst)
            _idle(w)
            problems = mismatches(ws, w)
            assert problems == [], {"operations": burst, "problems": problems}
            periods += 1
    assert set(churn.counts) == set(OPERATIONS) and periods > 80


def test_a_rename_chain_in_one_debounce_window_leaves_no_stale_record(workspace_factory, tmp_path: Path):
    """mv A B (over B); mv B C: B's old record goes, A's record follows the file to C."""
    ws = workspace_factory()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "chainA.txt").write_text("Chain A: the boat leaves at noon.\n")
    (docs / "chainB.txt").write_text("Chain B: the train leaves at six.\n")
    with _watch(ws, docs, debounce=0.5) as w:
        _idle(w)
        first_seen = ws.record(docs / "chainA.txt")["first_seen"]
        os.replace(docs / "chainA.txt", docs / "chainB.txt")
        os.replace(docs / "chainB.txt", docs / "chainC.txt")
        _idle(w)
        assert sorted(Path(p).name for p in ws.sources()) == ["chainC.txt"]
        assert ws.record(docs / "chainC.txt")["first_seen"] == first_seen
        assert_in_step(ws, w)


def test_changes_the_events_missed_are_found_by_the_sweep_after_a_burst(workspace_factory, tmp_path: Path,
                                                                        monkeypatch):
    """Events lost (here: dropped on purpose) are caught by the sweep that follows the next burst:
    the folder is compared with the records by stat, without reading unchanged files."""
    ws = workspace_factory()
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("keep.md", "gone.md", "edited.md"):
        (docs / name).write_text(f"# {name}\nThe {name} note says the room is {len(name)}.\n")
    with _watch(ws, docs) as w:
        _idle(w)
        handler = w._on_fs_event
        monkeypatch.setattr(w, "_on_fs_event", lambda event: None)  # every event lost
        (docs / "gone.md").unlink()
        (docs / "edited.md").write_text("# edited\nThe edited note now says the room is 99.\n")
        (docs / "new.md").write_text("# new\nA note nobody was told about.\n")
        time.sleep(0.5)
        monkeypatch.setattr(w, "_on_fs_event", handler)
        (docs / "trigger.md").write_text("# trigger\nOne event that does arrive.\n")
        _idle(w)
        assert_in_step(ws, w)
        assert w.stats["swept"] == 3  # gone, edited, new: the trigger came through its own event
