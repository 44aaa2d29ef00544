from __future__ import annotations

import json
import time
from pathlib import Path

from haystack import Document

from d2l_haystack.components import InternalizationRouter
from d2l_haystack.components.internalization_router import human_duration, parse_route

NOW = 1_800_000_000.0
DAY = 86400.0


def _router(**kw) -> InternalizationRouter:
    return InternalizationRouter(model=None, **kw)


class TestInternalizationRouter:
    def test_fresh_stable_document_is_internalized(self):
        route, reason, numbers = _router().decide(300, None, now=NOW)
        assert route == "d2l" and reason.startswith("cost model: stable") and reason.endswith("D2L")
        assert numbers["expected_queries"] > 10

    def test_override_wins(self):
        assert _router().decide(10**6, None, override="d2l", now=NOW)[0] == "d2l"
        route, reason, _ = _router().decide(100, None, override="rag", now=NOW)
        assert route == "rag" and reason.startswith("override")
        assert _router().decide(100, {"route_override": "rag"}, now=NOW)[0] == "rag"
        assert _router().decide(100, None, override="auto", now=NOW)[0] == "d2l"

    def test_too_long_goes_to_rag(self):
        route, reason, _ = _router(max_tokens=1000).decide(5000, None, now=NOW)
        assert route == "rag" and "too long" in reason

    def test_frequent_changes_go_to_rag(self):
        record = {"first_seen": NOW - 30, "changes": [NOW - 30, NOW - 20, NOW - 10], "queries": 0}
        route, reason, numbers = _router().decide(300, record, now=NOW)
        assert route == "rag" and "changed 2 times" in reason and reason.endswith("RAG")
        assert numbers["expected_queries"] < 1

    def test_volatility_rule(self):
        record = {"first_seen": NOW - 90 * DAY, "changes": [NOW - 90 * DAY] + [NOW - h * 3600 for h in (5, 3, 1)]}
        route, reason, _ = _router().decide(300, record, now=NOW)
        assert route == "rag" and reason.startswith("volatile: changed 3 times")
        assert _router(volatile_changes=0).decide(300, record, now=NOW)[1].startswith("cost model")

    def test_queries_make_a_changing_document_worth_internalizing(self):
        # changes daily: with the prior query rate it is not worth it, with 200 queries a day it is
        record = {"first_seen": NOW - 10 * DAY, "changes": [NOW - d * DAY for d in range(10, -1, -1)]}
        assert _router(volatile_changes=0).decide(300, {**record, "queries": 0}, now=NOW)[0] == "rag"
        route, _, numbers = _router(volatile_changes=0).decide(300, {**record, "queries": 2000}, now=NOW)
        assert route == "d2l" and numbers["queries_per_day"] > 100

    def test_cost_margin(self):
        assert _router(cost_margin=1e9).decide(300, None, now=NOW)[0] == "rag"

    def test_run_routes_and_annotates(self):
        docs = [Document(content="word " * 40, meta={"file_path": "/a.md"}),
                Document(content="word " * 40, meta={"file_path": "/b.md", "d2l_route": "rag"}),
                Document(content="x " * 5000, meta={"file_path": "/c.md"})]
        out = _router(max_tokens=1000).run(documents=docs)
        assert [d.meta["file_path"] for d in out["internalize"]] == ["/a.md"]
        assert [d.meta["file_path"] for d in out["index"]] == ["/b.md", "/c.md"]
        for d in out["internalize"] + out["index"]:
            assert d.meta["d2l_route"] in ("d2l", "rag") and d.meta["d2l_route_reason"] and d.meta["d2l_num_tokens"]

    def test_history_input_and_workspace_file(self, tmp_path: Path):
        now = time.time()
        history = {"/a.md": {"first_seen": now - 20, "changes": [now - 20, now - 10, now - 5], "queries": 0}}
        doc = Document(content="some text here", meta={"file_path": "/a.md"})
        assert _router().run(documents=[doc], history=history)["index"]
        (tmp_path / "files.json").write_text(json.dumps({"files": history}))
        assert _router(workspace=str(tmp_path)).run(documents=[doc])["index"]
        assert _router(workspace=str(tmp_path / "none")).run(documents=[doc])["internalize"]

    def test_token_count_with_tokenizer(self, tiny_model: str):
        router = InternalizationRouter(model=tiny_model)
        assert router.count_tokens("hello world, hello world") < len("hello world, hello world")

    def test_helpers(self):
        assert parse_route("RAG") == "rag" and parse_route("internalize") == "d2l" and parse_route("auto") is None
        assert human_duration(5) == "5 s" and human_duration(3 * DAY) == "3 d"

    def test_to_dict_from_dict(self):
        router = InternalizationRouter(workspace="kb", model=None, max_tokens=123, prior_queries_per_day=0.5)
        data = router.to_dict()
        assert data["type"] == "d2l_haystack.components.internalization_router.InternalizationRouter"
        assert data["init_parameters"]["max_tokens"] == 123 and data["init_parameters"]["workspace"] == "kb"
        again = InternalizationRouter.from_dict(data)
        assert again.init_parameters() == router.init_parameters()
