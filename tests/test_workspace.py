"""Workspace (the knowledge base on disk) and the ``d2l index/query/status/remove/demo`` commands.

Fixtures (tiny random Llama, sample documents) live in ``tests/components/conftest.py``.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests/components/conftest.py)

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from components.conftest import (  # noqa: F401  (fixtures shared with tests/components)
    adapter_factory,
    docs_dir,
    engine_params,
    samples_dir,
    tiny_model,
    workspace_factory,
)

from d2l_haystack.core.errors import InputError
from d2l_haystack.core.textio import content_hash
from d2l_haystack.kb.workspace import Workspace, WorkspaceError

KETTLE_Q = "How long is the warranty of the Aurora K2 kettle?"
UNRELATED_Q = "Who wrote the novel Pride and Prejudice?"


def _snapshot(ws: Workspace) -> tuple[str, bytes]:
    """The records (as a fresh process reads them, wherever they are kept) and the adapter manifest."""
    again = Workspace.open(ws.path)
    with again._locked():
        records = json.dumps(again._files, sort_keys=True)
    again.close()
    return records, (ws.path / "adapters" / "manifest.json").read_bytes()


def _edit(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def _crash_mid_commit(ws: Workspace, doc: Path, monkeypatch) -> None:
    """Index ``doc``, edit it, and let the re-index die after the adapter was written, before the
    record (the journal says ``phase: commit``); the monkeypatch is undone."""
    ws.index_file(doc)
    _edit(doc, "The kettle is also available in red.")
    store_it = ws.components.get("converter").commit

    def crash(*a, **kw):
        store_it(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(ws.components.get("converter"), "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        ws.index_file(doc)
    monkeypatch.undo()


class TestWorkspaceIndexing:
    def test_index_route_and_reindex_unchanged(self, workspace_factory, docs_dir: Path, count_internalize):
        ws = workspace_factory()
        calls = count_internalize(ws.components.get("converter").engine)
        results = ws.index_paths([docs_dir])
        assert len(results) == 4 and {r.action for r in results} == {"internalized"}
        assert {r.route for r in results} == {"d2l"} and len(calls) == 4
        assert all(r.reason.startswith("cost model") for r in results)
        again = ws.index_paths([docs_dir])
        assert {r.action for r in again} == {"unchanged"} and len(calls) == 4
        st = ws.status()
        assert st["totals"]["documents"] == 4 and st["totals"]["d2l"] == 4 and st["totals"]["adapter_bytes"] > 0
        doc = st["documents"][0]
        for key in ("path", "route", "reason", "adapter_bytes", "queries", "last_change", "changes"):
            assert key in doc

    def test_frequent_edits_move_a_document_to_rag_and_back(self, workspace_factory, docs_dir: Path, monkeypatch):
        ws = workspace_factory()
        log = docs_dir / "app-changelog.md"
        assert ws.index_file(log).route == "d2l"
        _edit(log, "## 2.5.0\n- New: descaling reminder.")
        assert ws.index_file(log).route == "d2l"  # one change is not a history yet
        _edit(log, "## 2.5.1\n- Fixed: reminder language.")
        moved = ws.index_file(log)
        assert (moved.route, moved.previous_route, moved.action) == ("rag", "d2l", "indexed")
        assert "changed 2 times" in moved.reason and moved.chunks >= 1
        doc_id = str(log.resolve())
        assert doc_id not in ws.adapters
        chunks = ws.document_store.filter_documents({"field": "meta.file_path", "operator": "==", "value": doc_id})
        assert len(chunks) == moved.chunks and all(c.meta["d2l_route"] == "rag" for c in chunks)
        # editing again replaces the chunks (no stale ones)
        _edit(log, "## 2.5.2\n- Fixed: typo.")
        assert ws.index_file(log).route == "rag"
        chunks2 = ws.document_store.filter_documents({"field": "meta.file_path", "operator": "==", "value": doc_id})
        assert "2.5.2" in " ".join(c.content for c in chunks2) and not {c.id for c in chunks} & {c.id for c in chunks2}
        # an explicit override moves it back and removes the chunks
        back = ws.index_file(log, route="d2l")
        assert back.route == "d2l" and back.reason.startswith("override") and doc_id in ws.adapters
        assert ws.document_store.count_documents_by_filter({"field": "meta.file_path", "operator": "==",
                                                   "value": doc_id}) == 0
        assert ws.index_file(log).action == "unchanged"  # the override is remembered
        assert ws.record(log)["route_override"] == "d2l"

    def test_bad_input_leaves_the_workspace_untouched(self, workspace_factory, tmp_path: Path, docs_dir: Path):
        ws = workspace_factory()
        ws.index_file(docs_dir / "kettle-manual.md")
        before = _snapshot(ws)
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "empty.md").write_text("  ")
        (bad / "blob.txt").write_bytes(b"\x00\x01\x02")
        (bad / "photo.jpg").write_bytes(b"\xff\xd8")
        for name, match in (("empty.md", "empty"), ("blob.txt", "binary"), ("photo.jpg", "unsupported"),
                            ("missing.md", "no such file")):
            with pytest.raises(InputError, match=match) as info:
                ws.index_file(bad / name)
            assert name in str(info.value)
        with pytest.raises(InputError, match="blob.txt"):
            ws.index_paths([bad])
        errors: list = []
        assert ws.index_paths([bad], skip_errors=True, on_result=errors.append) == []
        assert len(errors) == 2  # the .jpg is not a supported type, so folders skip it silently
        assert _snapshot(ws) == before
        with pytest.raises(InputError, match="route must be"):
            ws.index_file(docs_dir / "kettle-manual.md", route="sometimes")

    def test_remove_and_rename(self, workspace_factory, docs_dir: Path, count_internalize):
        ws = workspace_factory()
        manual, log = docs_dir / "kettle-manual.md", docs_dir / "app-changelog.md"
        ws.index_file(manual)
        ws.index_file(log, route="rag")
        calls = count_internalize(ws.components.get("converter").engine)
        # rename a D2L document: the adapter moves, nothing is internalized again
        new_manual = docs_dir / "manual-v2.md"
        manual.rename(new_manual)
        result = ws.rename_file(manual, new_manual)
        assert result.action == "renamed" and result.route == "d2l" and calls == []
        assert str(new_manual.resolve()) in ws.adapters and str(manual.resolve()) not in ws.adapters
        assert ws.index_file(new_manual).action == "unchanged"
        # rename a RAG document: chunks follow
        new_log = docs_dir / "changes.md"
        log.rename(new_log)
        ws.rename_file(log, new_log)
        moved = ws.document_store.filter_documents({"field": "meta.file_path", "operator": "==",
                                           "value": str(new_log.resolve())})
        assert moved and ws.record(new_log)["route"] == "rag" and ws.record(log) is None
        # rename to an unsupported name = removal
        assert ws.rename_file(new_log, docs_dir / "changes.md.bak") is None
        assert ws.document_store.count_documents() == 0
        # removal
        assert ws.remove_file(new_manual) is True and ws.remove_file(new_manual) is False
        assert ws.status()["totals"]["documents"] == 0 and ws.adapters.count() == 0

    def test_reroute_follows_query_counts(self, workspace_factory, docs_dir: Path):
        ws = workspace_factory()
        log = docs_dir / "app-changelog.md"
        ws.index_file(log)
        for line in ("## 2.5.0", "## 2.5.1"):
            _edit(log, line)
            ws.index_file(log)
        assert ws.record(log)["route"] == "rag"
        assert ws.reroute() == []  # nothing changed
        with ws._locked():
            ws._files[str(log.resolve())]["queries"] = 10**9  # popular enough even for edits 1 ms apart
            ws._save_files()
        moved = ws.reroute()
        assert [(r.route, r.previous_route) for r in moved] == [("d2l", "rag")]
        assert str(log.resolve()) in ws.adapters and ws.document_store.count_documents() == 0

    def test_index_text(self, workspace_factory):
        ws = workspace_factory()
        r = ws.index_text("The meeting room is called Kestrel.", "note:rooms")
        assert r.route == "d2l" and ws.record("note:rooms")["path"] == "note:rooms"
        assert ws.index_text("The meeting room is called Kestrel.", "note:rooms").action == "unchanged"
        with pytest.raises(InputError, match="note:empty"):
            ws.index_text("", "note:empty")
        assert ws.remove_file("note:rooms")

    def test_sentence_chunking_setting(self, workspace_factory):
        ws = workspace_factory(chunking="sentences")
        text = "The meeting room is called Kestrel. It seats twelve people. Book it at the desk."
        r = ws.index_text(text, "note:rooms")
        entry = ws.adapters.info("note:rooms")
        assert r.route == "d2l" and entry["num_chunks"] == 3 and entry["meta"]["chunking"] == "sentences"
        assert Workspace.open(ws.path).settings["chunking"] == "sentences"
        assert ws.index_text(text, "note:rooms").action == "unchanged"
        ws.close()
        ws = workspace_factory(chunking="tokens")  # the setting changes: the adapter is remade by it
        assert ws.index_text(text, "note:rooms").action != "unchanged"
        assert ws.adapters.info("note:rooms")["meta"]["chunking"] == "tokens"
        assert ws.index_text(text, "note:rooms").action == "unchanged"

    def test_threads_index_concurrently(self, workspace_factory, docs_dir: Path):
        ws = workspace_factory()
        files = sorted(docs_dir.iterdir())
        errors: list[Exception] = []

        def work(f: Path) -> None:
            try:
                ws.index_file(f, route="rag" if f.suffix == ".md" else None)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(f,)) for f in files]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert ws.status()["totals"]["documents"] == 4
        assert ws.verify() == []

    def test_an_indexer_that_read_an_old_version_never_overwrites_a_newer_one(self, workspace_factory, tmp_path: Path,
                                                                            monkeypatch):
        """The file changes right after one indexer read it, and a second indexer (another workspace
        object, as another process would be) indexes the new version at once: the old one must not
        be committed over it."""
        from d2l_haystack.kb import sources as sources_module  # where index_file reads a file

        ws = workspace_factory()
        other = Workspace.open(ws.path)
        doc = tmp_path / "room.md"
        v1, v2 = "The meeting room is called Kestrel.\n", "The meeting room is called Osprey now.\n"
        doc.write_text(v1)
        read_source, racers = sources_module.read_source, []

        def racing(path):
            text, meta = read_source(path)
            if not racers:  # once: v2 lands and another indexer starts while this one holds v1
                doc.write_text(v2)
                racers.append(threading.Thread(target=other.index_file, args=(doc,)))
                racers[0].start()
                time.sleep(1.0)
            return text, meta

        monkeypatch.setattr(sources_module, "read_source", racing)
        ws.index_file(doc)
        racers[0].join(60)
        for view in (ws, other, Workspace.open(ws.path)):
            assert view.record(doc)["hash"] == content_hash(v2)
            assert view.adapters.info(str(doc.resolve()))["content_hash"] == content_hash(v2)


class TestWorkspacePersistence:
    def test_reopen_restores_state(self, workspace_factory, docs_dir: Path, tmp_path: Path):
        ws = workspace_factory()
        ws.index_paths([docs_dir])
        ws.index_file(docs_dir / "app-changelog.md", route="rag")
        status = ws.status()
        again = Workspace.open(tmp_path / "ws")
        assert again.settings["model"] == ws.settings["model"] and again.settings["checkpoint"] is None
        assert again.status()["documents"] == status["documents"]

    def test_interrupted_run_is_redone(self, workspace_factory, docs_dir: Path, tmp_path: Path, monkeypatch):
        ws = workspace_factory()
        manual = docs_dir / "kettle-manual.md"
        _crash_mid_commit(ws, manual, monkeypatch)
        assert ws.pending_update
        assert ws.status()["pending_recovery"] is True
        again = Workspace(tmp_path / "ws", device="cpu")
        assert not again.pending_update
        rec = again.record(manual)
        assert rec["changes"] and again.adapters.info(str(manual.resolve()))["content_hash"] == rec["hash"]
        assert again.index_file(manual).action == "unchanged"

    def test_interrupted_internalization_is_rolled_back_not_replayed(self, workspace_factory, docs_dir: Path,
                                                                     tmp_path: Path, monkeypatch, count_internalize):
        """Killed while internalizing (before any store changed): reopening rolls the update back
        without loading a model or redoing the work; the old adapter and record stay."""
        ws = workspace_factory()
        manual = docs_dir / "kettle-manual.md"
        ws.index_file(manual)
        before = ws.record(manual)
        _edit(manual, "The kettle is also available in red.")

        def killed(*a, **kw):
            raise KeyboardInterrupt

        monkeypatch.setattr(ws.components.get("converter"), "prepare", killed)
        with pytest.raises(KeyboardInterrupt):
            ws.index_file(manual)
        assert ws._journal.read()["phase"] == "prepare"
        monkeypatch.undo()
        again = Workspace(tmp_path / "ws", device="cpu")
        assert not again.pending_update and again.components.built == ()  # no model loaded
        assert again.record(manual)["hash"] == before["hash"] and again.verify() == []
        calls = count_internalize(again.components.get("converter").engine)
        assert again.index_file(manual).action == "internalized" and len(calls) == 1

    def test_status_and_verify_leave_an_interrupted_commit_to_the_next_writer(self, workspace_factory, docs_dir: Path,
                                                                             tmp_path: Path, monkeypatch):
        ws = workspace_factory()
        _crash_mid_commit(ws, docs_dir / "kettle-manual.md", monkeypatch)
        reader = Workspace(tmp_path / "ws", device="cpu", recover=False)  # as `d2l status` opens it
        assert reader.status()["pending_recovery"] is True and reader.components.built == ()  # no model loaded
        assert any("interrupted update" in p for p in reader.verify()) and reader.components.built == ()
        assert reader.pending_update
        writer = Workspace(tmp_path / "ws", device="cpu")
        assert not writer.pending_update and writer.verify() == []

    def test_read_only_workspace_answers_and_refuses_updates_in_one_line(self, workspace_factory, docs_dir: Path,
                                                                          tmp_path: Path):
        """On a read-only mount (a private mount namespace) status and query work and count
        nothing; index, remove and a watcher fail with one line naming the workspace."""
        import subprocess
        import sys

        ws = workspace_factory()
        ws.index_paths([docs_dir])
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {tmp_path} {tmp_path} && "
                                f"mount -o remount,bind,ro {tmp_path}"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip("no private mount namespace here (unshare -m): " + probe.stderr.decode().strip())
        script = f"""
import json, sys
from d2l_haystack.kb.workspace import Workspace, WorkspaceError
from d2l_haystack.kb.watcher import DocumentWatcher
ws = Workspace.open({str(ws.path)!r}, device="cpu")
out = {{"read_only": ws.read_only, "documents": len(ws.status()["documents"])}}
out["route"] = ws.query({KETTLE_Q!r}).route
errors = []
for attempt in (lambda: ws.index_file({str(docs_dir / "kettle-manual.md")!r}, force=True),
                lambda: ws.remove_file({str(docs_dir / "kettle-manual.md")!r}),
                lambda: DocumentWatcher(ws, [{str(docs_dir)!r}]).start()):
    try:
        attempt()
        errors.append(None)
    except WorkspaceError as exc:
        errors.append(str(exc))
out["errors"] = errors
print(json.dumps(out))
"""
        run = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {tmp_path} {tmp_path} && "
                              f"mount -o remount,bind,ro {tmp_path} && exec {sys.executable} -c \"$0\"", script],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out["read_only"] is True and out["documents"] == len(ws.status()["documents"])
        assert out["route"] in ("d2l", "rag", "hybrid")
        assert all(e and "is read-only" in e and str(ws.path) in e and "\n" not in e for e in out["errors"]), out
        assert Workspace.open(ws.path).status()["queries"] == ws.status()["queries"]  # nothing counted

    def test_missing_damaged_and_foreign_folders(self, tmp_path: Path, workspace_factory):
        with pytest.raises(WorkspaceError, match="no workspace at"):
            Workspace.open(tmp_path / "nowhere")
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("mine")
        with pytest.raises(WorkspaceError, match="not empty and is not a d2l workspace"):
            Workspace(foreign)
        ws = workspace_factory("damaged")
        (ws.path / "files.json").write_text("{oops")
        with pytest.raises(WorkspaceError, match="damaged workspace file records"):
            Workspace.open(ws.path)
        (ws.path / "workspace.json").write_text("[]")
        with pytest.raises(WorkspaceError, match="damaged workspace settings"):
            Workspace.open(ws.path)
        with pytest.raises(WorkspaceError, match="unknown workspace setting"):
            Workspace(tmp_path / "x", colour="blue")
        with pytest.raises(WorkspaceError, match="chunking must be one of tokens, sentences, auto, got 'words'"):
            Workspace(tmp_path / "x", chunking="words")
        assert not (tmp_path / "x").exists()

    def test_a_damaged_adapter_fails_only_its_own_document(self, workspace_factory, docs_dir: Path, capsys):
        """Bytes of an adapter file overwritten: the question is still answered (without it, and the
        reply says so), verify names it, index does not call it unchanged, repair re-internalizes it."""
        from d2l_haystack.cli import main

        ws = workspace_factory()
        manual = docs_dir / "kettle-manual.md"
        ws.index_file(manual)
        ws.adapters._cache.clear()
        obj = next(p for p in (ws.path / "adapters" / "objects").iterdir()
                   if not p.name.endswith("routing.safetensors"))
        obj.write_bytes(obj.read_bytes()[:-10] + b"0123456789")  # same size: only a checksum sees it
        assert any("checksum mismatch" in p for p in ws.verify())
        answer = ws.query(KETTLE_Q, mode="d2l")
        assert answer.meta["damaged_adapters"] == [str(manual.resolve())] and answer.route == "base"
        obj.write_bytes(obj.read_bytes()[:-100])  # a truncated file: status sees it without reading it
        row = next(d for d in ws.status()["documents"] if d["path"] == str(manual.resolve()))
        assert "damaged" in row["problem"]
        assert main(["verify", "-w", str(ws.path)]) == 1 and "checksum mismatch" in capsys.readouterr().out
        assert main(["repair", "-w", str(ws.path)]) == 0
        out = capsys.readouterr().out
        assert "re-indexed" in out and "healthy" in out and ws.verify() == []
        assert ws.index_file(manual).action == "unchanged"

    def test_a_damaged_rag_index_is_kept_aside_and_rebuilt(self, workspace_factory, docs_dir: Path, capsys):
        from d2l_haystack.cli import main

        ws = workspace_factory()
        ws.index_paths([docs_dir])
        log = docs_dir / "app-changelog.md"
        ws.index_file(log, route="rag")
        chunks = ws.document_store.count_documents()
        json_file = ws.path / "faiss" / "index.json"
        json_file.write_bytes(json_file.read_bytes()[:100])
        reopened = Workspace.open(ws.path)
        assert reopened.status()["rag_index_problem"] and "damaged FAISS document file" in reopened.verify()[0]
        assert reopened.query(KETTLE_Q).answer is not None  # adapters still answer
        with pytest.raises(WorkspaceError, match="run `d2l repair"):
            reopened.index_file(log, force=True)
        assert main(["repair", "-w", str(ws.path)]) == 0
        assert "rebuilt from the sources" in capsys.readouterr().out
        healed = Workspace.open(ws.path)
        assert healed.verify() == [] and healed.document_store.count_documents() == chunks
        assert healed.query("What changed in version 2.0?", mode="rag").chunks
        aside = [p for p in ws.path.iterdir() if p.name.startswith("faiss.damaged-")]
        assert len(aside) == 1 and len((aside[0] / "index.json").read_bytes()) == 100  # kept, not deleted

    def test_repair_forgets_vanished_files_and_orphans(self, workspace_factory, docs_dir: Path, tmp_path: Path):
        ws = workspace_factory()
        extra = tmp_path / "extra.md"
        extra.write_text("# Extra\nThe garden gate is painted green every spring.\n")
        ws.index_paths([docs_dir, extra])
        extra.unlink()
        assert any("the file is gone" in p for p in ws.verify())
        done = ws.repair()
        assert any("forgot" in line and "extra.md" in line for line in done)
        assert ws.verify() == [] and ws.record(extra) is None and ws.repair() == []

    def test_repair_keeps_instructions_adapters(self, workspace_factory, docs_dir: Path, tiny_model: str):
        """An instructions adapter has no file record on purpose: neither a problem nor an orphan."""
        from d2l_haystack.components import InstructionsToLoRA

        ws = workspace_factory()
        ws.index_paths([docs_dir])
        InstructionsToLoRA(store=ws.adapters, model=tiny_model, checkpoint=None, instructions_checkpoint=None,
                           device="cpu").run(text="Answer in at most ten words.")
        document = next(e["id"] for e in ws.adapters.list() if e["kind"] == "document")
        ws.adapters.put("stray", ws.adapters.get(document))  # a document adapter's orphan beside it, for contrast
        problems = ws.verify()
        assert "stray: an adapter without a record" in problems
        assert not any(p.startswith("instructions:") for p in problems)
        ws.repair()
        assert "instructions" in ws.adapters and "stray" not in ws.adapters and ws.verify() == []


class TestWorkspaceQuery:
    def test_internalized_document_takes_the_adapter_path(self, workspace_factory, docs_dir: Path):
        ws = workspace_factory()
        ws.index_paths([docs_dir])
        ws.index_file(docs_dir / "app-changelog.md", route="rag")
        answer = ws.query(KETTLE_Q, explain=True)
        manual_id = str((docs_dir / "kettle-manual.md").resolve())
        assert answer.route == "d2l" and [a["id"] for a in answer.adapters] == [manual_id]
        assert answer.meta["adapters"] == [manual_id] and answer.chunks == []
        assert answer.seconds > 0 and answer.explanation["candidates"][0]["id"] == manual_id
        assert ws.record(docs_dir / "kettle-manual.md")["queries"] == 1
        assert ws.status()["queries"] == {"d2l": 1}

    def test_unrelated_query_never_takes_an_adapter(self, workspace_factory, docs_dir: Path):
        """Nothing applied and nothing retrieved is reported as the base model answering."""
        ws = workspace_factory()
        ws.index_paths([docs_dir])
        ws.index_file(docs_dir / "app-changelog.md", route="rag")
        answer = ws.query(UNRELATED_Q, explain=True)
        assert answer.adapters == [] and answer.meta["adapters"] == []
        assert (answer.route, bool(answer.chunks)) in (("base", False), ("rag", True))
        assert "retrieved" in answer.explanation
        rag = ws.query("What is new in version 2.4.0 of the Aurora Home app?")
        assert rag.route == "rag" and rag.chunks and rag.adapters == []
        assert rag.chunks[0]["path"] == str((docs_dir / "app-changelog.md").resolve())
        with pytest.raises(InputError):
            ws.query("  ")

    def test_forced_modes_and_streaming(self, workspace_factory, docs_dir: Path):
        ws = workspace_factory()
        ws.index_file(docs_dir / "kettle-manual.md")
        chunks: list = []
        answer = ws.query(KETTLE_Q, mode="rag", streaming_callback=chunks.append)
        assert chunks and answer.chunks == [] and answer.route == "base"  # RAG forced, nothing to retrieve
        assert ws.query(UNRELATED_Q, mode="d2l").adapters == []


class TestKnowledgeBaseCli:
    def test_index_query_status_remove(self, tmp_path: Path, docs_dir: Path, tiny_model: str, capsys):
        from d2l_haystack.cli import main

        ws = str(tmp_path / "kb")
        common = ["--workspace", ws]
        assert main(["index", str(docs_dir), *common, "--model", tiny_model, "--checkpoint", "none",
                     "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert out.count("internalized") >= 4 and "why: cost model" in out
        assert main(["index", str(docs_dir / "app-changelog.md"), *common, "--route", "rag"]) == 0
        assert "indexed      rag" in capsys.readouterr().out
        assert main(["query", KETTLE_Q, *common, "--explain", "--max-new-tokens", "3", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        assert "[route: d2l" in out and "relevance of internalized documents" in out
        assert main(["query", UNRELATED_Q, *common, "--json", "--max-new-tokens", "2"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["route"] == ("rag" if data["chunks"] else "base") and data["adapters"] == []
        assert main(["status", *common]) == 0
        out = capsys.readouterr().out
        assert "4 documents: 3 internalized" in out and "why:" in out and "kettle-manual.md" in out
        assert main(["status", *common, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["totals"]["rag"] == 1
        assert main(["remove", str(docs_dir / "kettle-manual.md"), *common]) == 0
        assert "removed" in capsys.readouterr().out

    def test_errors_are_one_line(self, tmp_path: Path, tiny_model: str, capsys):
        from d2l_haystack.cli import main

        assert main(["status", "--workspace", str(tmp_path / "none")]) == 2
        assert "no workspace at" in capsys.readouterr().err
        (tmp_path / "e.md").write_text("")
        assert main(["index", str(tmp_path / "e.md"), "--workspace", str(tmp_path / "kb"), "--model", tiny_model,
                     "--checkpoint", "none"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "e.md" in err and "empty" in err

    def test_demo_with_the_tiny_model(self, tmp_path: Path, tiny_model: str, capsys):
        from d2l_haystack.cli import main
        from d2l_haystack.cli.kb_cmds import DEMO_QUESTIONS

        assert main(["demo", "--workspace", str(tmp_path / "demo"), "--model", tiny_model, "--checkpoint", "none",
                     "--device", "cpu", "--max-new-tokens", "2"]) == 0
        out = capsys.readouterr().out
        assert "(was d2l)" in out and "[route: d2l" in out and "[route: rag" in out
        assert "app-changelog.md: unchanged" in out and "no trained hypernetwork" in out
        # every answer is scored against the sample documents, and the tally counts all of them
        assert out.count("   expected: ") == len(DEMO_QUESTIONS)
        tally = re.search(r"right answers by route: (.*) \(", out)
        assert tally and sum(int(m) for m in re.findall(r"\d+/(\d+)", tally.group(1))) == len(DEMO_QUESTIONS)
        # beside every adapter answer: the same question with the document in the prompt, both timed
        adapter_answers = out.count("[route: d2l")
        assert out.count("   document in the prompt instead: ") == adapter_answers
        n = adapter_answers
        assert re.search(rf"questions answered by adapters: \d+/{n} right; the same questions with the document "
                         rf"in the prompt: \d+/{n} right", out)
        shutil.rmtree(tmp_path / "demo")


class TestWorkspaceEdges:
    def test_folder_walk_skips_the_workspace_and_survives_a_vanishing_file(self, workspace_factory, tmp_path: Path,
                                                                           monkeypatch):
        root = tmp_path / "project"
        (root / "docs").mkdir(parents=True)
        for name in ("a.md", "b.md", "c.md"):
            (root / "docs" / name).write_text(f"# {name}\nThe {name} room opens at nine.\n")
        ws = workspace_factory("project/kb")  # the workspace lives inside the folder indexed
        (ws.path / "notes.md").write_text("# Not a document\nA file at the workspace's top level.\n")
        original = ws.index_file
        seen: list = []

        def index_then_delete_the_next(path, **kw):
            result = original(path, **kw)
            if Path(path).name == "a.md":
                (root / "docs" / "b.md").unlink()  # vanishes between the folder listing and its turn
            return result

        monkeypatch.setattr(ws, "index_file", index_then_delete_the_next)
        results = ws.index_paths([root], on_result=seen.append)
        assert sorted(Path(r.path).name for r in results) == ["a.md", "c.md"]
        assert any(isinstance(x, InputError) and "b.md" in str(x) for x in seen)
        assert not any(str(ws.path) in r.path for r in results)  # its own files are not documents

    def test_a_newline_in_a_file_name_stays_on_one_status_row(self, tmp_path: Path, tiny_model: str, capsys):
        from d2l_haystack.cli import main

        odd = tmp_path / "two\nlines.md"
        odd.write_text("# Odd\nThe odd file is about lamps.\n")
        common = ["-w", str(tmp_path / "kb"), "--model", tiny_model, "--checkpoint", "none", "--device", "cpu"]
        assert main(["index", str(odd), *common]) == 0
        capsys.readouterr()
        assert main(["status", "-w", str(tmp_path / "kb")]) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if "lines.md" in line]
        assert len(rows) == 1 and "two\\nlines.md" in rows[0]

    def test_bad_generation_settings_are_one_line_input_errors(self, workspace_factory, docs_dir: Path):
        ws = workspace_factory()
        ws.index_file(docs_dir / "kettle-manual.md")
        for bad in (-1, 0, 2.5):
            with pytest.raises(InputError, match="max_new_tokens must be a whole number"):
                ws.query(KETTLE_Q, max_new_tokens=bad)
