"""The workspace's pure parts: file records (kb.records), query inputs (kb.answers), source rules (kb.sources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from d2l_haystack.core.errors import InputError
from d2l_haystack.kb import records as R
from d2l_haystack.kb.answers import pipeline_inputs
from d2l_haystack.kb.sources import SourceFiles


def test_a_change_is_counted_only_when_the_content_hash_differs():
    rec = R.changed_record(None, "h1", None, 10.0)
    assert rec["num_changes"] == 1 and rec["changes"] == [10.0] and rec["first_seen"] == 10.0
    rec["hash"] = "h1"
    same = R.changed_record(rec, "h1", "rag", 20.0)
    assert same["num_changes"] == 1 and same["route_override"] == "rag"
    assert rec["route_override"] is None  # the old record is left as it was
    changed = R.changed_record(rec, "h2", None, 30.0)
    assert changed["num_changes"] == 2 and changed["last_change"] == 30.0


def test_histories_are_capped():
    rec = R.changed_record(None, "h0", None, 0.0)
    for t in range(1, 2 * R.MAX_HISTORY):
        rec["hash"] = f"h{t - 1}"
        rec = R.changed_record(rec, f"h{t}", None, float(t))
    assert len(rec["changes"]) == R.MAX_HISTORY and rec["changes"][-1] == 2 * R.MAX_HISTORY - 1
    assert rec["num_changes"] == 2 * R.MAX_HISTORY


def test_a_route_change_is_kept_with_its_reason():
    rec = R.changed_record(None, "h", None, 1.0)
    meta = {"d2l_route_reason": "static", "d2l_num_tokens": 12}
    common = dict(doc_id="/a.md", meta={"file_path": "/a.md"}, text="abc", digest="h", routed_meta=meta,
                  chunks=0, now=1.0, seconds=0.5, model="m", checkpoint="c", file_stat=None)
    assert R.commit_record(rec, to_d2l=True, **common) is None
    assert rec["route"] == "d2l" and rec["adapter_id"] == "/a.md" and "route_history" not in rec
    meta["d2l_route_reason"] = "changes often"
    assert R.commit_record(rec, to_d2l=False, **common) == "d2l"
    assert rec["adapter_id"] is None
    assert rec["route_history"] == [{"at": 1.0, "from": "d2l", "to": "rag", "reason": "changes often"}]
    row = R.status_row("/a.md", rec, None, None)
    assert row["route"] == "rag" and row["route_changes"] == rec["route_history"]
    assert R.totals([row], chunks=3) == {"documents": 1, "d2l": 0, "rag": 1, "adapter_bytes": 0, "chunks": 3}
    assert R.recent_route_changes([row]) == [{"path": "/a.md", **rec["route_history"][0]}]


def test_a_renamed_record_follows_its_file():
    rec = {"route": "d2l", "path": "/a.md", "doc_id": "/a.md", "adapter_id": "/a.md"}
    R.renamed_record(rec, "/a.md", "/b.md", 5.0)
    assert rec["adapter_id"] == "/b.md" and rec["renames"] == [{"at": 5.0, "from": "/a.md"}]


def test_query_inputs_reach_both_generators_and_refuse_an_empty_question():
    data = pipeline_inputs("Why?", max_new_tokens=7, mode="rag")
    assert data["query_router"] == {"query": "Why?", "mode": "rag"}
    assert data["d2l_generator"] == data["rag_generator"] == {"generation_kwargs": {"max_new_tokens": 7}}
    with pytest.raises(InputError, match="question is empty"):
        pipeline_inputs("  ", max_new_tokens=7)


def test_source_files_skip_the_workspace_own_files_and_hidden_ones(tmp_path: Path):
    ws = tmp_path / "kb"
    (ws / "adapters").mkdir(parents=True)
    (ws / "uploads").mkdir()
    (ws / "adapters" / "x.md").write_text("adapter side file")
    (ws / "uploads" / "kept.md").write_text("a document kept inside the workspace")
    (tmp_path / ".hidden.md").write_text("hidden")
    (tmp_path / "a.md").write_text("a document")
    (tmp_path / "b.bin").write_bytes(b"\x00")
    files = SourceFiles(ws, max_file_bytes=5)
    assert files.collect([tmp_path]) == [tmp_path / "a.md", ws / "uploads" / "kept.md"]
    with pytest.raises(InputError, match="over the workspace's 5-byte limit"):
        files.read(tmp_path / "a.md")
    with pytest.raises(InputError, match="no such file or folder"):
        files.collect([tmp_path / "missing"])
