"""The Haystack-side evaluation methods ``rag``, ``hybrid`` and ``routed`` (tiny random model, real MiniLM)."""

from __future__ import annotations

import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from d2l_haystack.core.engine import GenerationResult  # noqa: E402
from d2l_haystack.evaluation import cases as C  # noqa: E402
from d2l_haystack.evaluation import methods as M  # noqa: E402
from d2l_haystack.evaluation import runner as R  # noqa: E402

DOC = ("The Marlow lighthouse was built in 1873 by the engineer Ada Finch on the northern cliff. "
       "Its lamp can be seen from thirty kilometres away and it is painted red and white. " * 3
       + "Completely separately, the village bakery sells rye bread, apple cake and cinnamon buns every "
         "Saturday morning from seven until noon, and the baker is called Tomas Reed. " * 3
       + "The harbour has a fleet of twelve fishing boats that go out for cod and herring in winter. " * 3)


@pytest.fixture(scope="module")
def methods_module():
    from d2l_haystack.evaluation import haystack_methods

    return haystack_methods


class TestRegistry:
    def test_available_methods_include_the_haystack_methods(self, methods_module):
        names = R.available_methods()
        for name in ("base", "icl", "d2l", "rag", "hybrid", "routed"):
            assert name in names
        assert M.METHODS["rag"] is methods_module.RAGMethod
        assert M.METHODS["hybrid"] is methods_module.HybridMethod
        assert M.METHODS["routed"] is methods_module.RoutedMethod

    def test_every_method_follows_the_interface(self, methods_module):
        for cls in (methods_module.RAGMethod, methods_module.HybridMethod, methods_module.RoutedMethod):
            assert issubclass(cls, M.Method)
            for attr in ("prepare", "answer", "release", "update", "doc_info"):
                assert callable(getattr(cls, attr))


class TestBuildContext:
    def test_budget_keeps_the_first_passage_and_stops_in_order(self, tiny_engine, methods_module):
        docs = [SimpleNamespace(content=("word " * 50).strip()), SimpleNamespace(content="second passage"),
                SimpleNamespace(content=""), SimpleNamespace(content="third passage")]
        text, used = methods_module.build_context(tiny_engine, docs, max_tokens=5)
        assert used == 1 and text.startswith("word")  # the first is always kept, even over budget
        text, used = methods_module.build_context(tiny_engine, docs, max_tokens=1000)
        assert used == 3 and text.index("second") < text.index("third")


class TestRAG:
    def test_retrieves_the_relevant_passage_and_times_the_whole_answer(self, tiny_engine, methods_module):
        rag = M.METHODS["rag"](tiny_engine, 3)
        seconds = rag.prepare("d1", DOC)
        assert seconds > 0 and rag.prepare("d1", DOC) == 0.0  # prepared once
        index = rag.indexes["d1"]
        top = index.retrieve("What does the village bakery sell on Saturday?")[0]
        assert "bakery" in top.content
        assert rag.doc_info("d1")["chunks"] == index.num_passages >= 3
        r = rag.answer("d1", DOC, "What does the village bakery sell on Saturday?")
        assert isinstance(r, GenerationResult)
        assert r.meta["route"] == "rag" and r.meta["chunks"] >= 1
        assert r.seconds >= r.meta["generation_seconds"]
        assert r.time_to_first_token >= r.meta["pre_generation_seconds"]
        assert r.prompt_tokens > len(tiny_engine.prompt_ids("What does the village bakery sell on Saturday?"))
        rag.release("d1")
        assert "d1" not in rag.indexes and rag.doc_info("d1")["state_bytes"] == 0

    def test_update_rebuilds_the_passages(self, tiny_engine, methods_module):
        rag = M.METHODS["rag"](tiny_engine, 2)
        rag.prepare("d1", "A short note about cats.")
        assert rag.update("d1", DOC) > 0
        assert rag.indexes["d1"].num_passages >= 3


class TestHybrid:
    def test_reuses_the_shared_adapter_and_charges_its_cost(self, tiny_engine, methods_module, monkeypatch):
        adapter = tiny_engine.internalize(DOC, progress=False)
        methods_module.ADAPTERS.put(tiny_engine, DOC, adapter, 7.5)

        def fail(*a, **k):
            raise AssertionError("hybrid should reuse the cached adapter")

        monkeypatch.setattr(tiny_engine, "internalize", fail)
        hybrid = M.METHODS["hybrid"](tiny_engine, 2)
        seconds = hybrid.prepare("d1", DOC)
        assert seconds >= 7.5
        info = hybrid.doc_info("d1")
        assert info["adapter_reused"] and info["adapter_bytes"] == adapter.nbytes
        assert info["state_bytes"] > info["adapter_bytes"]
        r = hybrid.answer("d1", DOC, "Who built the lighthouse?")
        assert r.meta["route"] == "hybrid" and r.meta["chunks"] >= 1
        hybrid.release("d1")
        assert methods_module.ADAPTERS.get(tiny_engine, DOC) is None  # released with the document

    def test_internalizes_on_a_cache_miss(self, tiny_engine, methods_module):
        methods_module.ADAPTERS.clear()
        hybrid = M.METHODS["hybrid"](tiny_engine, 2)
        assert hybrid.prepare("d2", "Ada Finch built the lighthouse in 1873.") > 0
        assert not hybrid.doc_info("d2")["adapter_reused"]
        hybrid.release("d2")
        assert len(methods_module.ADAPTERS) == 0


class TestRouted:
    def test_routes_documents_and_queries_through_a_workspace(self, tiny_engine, methods_module):
        routed = M.METHODS["routed"](tiny_engine, 2)
        try:
            assert routed.prepare("doc-a", DOC) > 0
            assert routed.prepare("doc-a", DOC) == 0.0
            info = routed.doc_info("doc-a")
            assert info["route"] == "d2l" and info["adapter_bytes"] > 0
            assert routed.workspace.record("doc-a")["route"] == "d2l"
            r = routed.answer("doc-a", DOC, "Who built the Marlow lighthouse?")
            assert isinstance(r, GenerationResult)
            assert r.meta["route"] in ("d2l", "rag", "hybrid") and r.meta["doc_route"] == "d2l"
            assert r.seconds >= r.meta["generation_seconds"] > 0
            # the workspace used the evaluation's engine, not a second copy
            assert routed.workspace.components.get("converter").engine is tiny_engine
            routed.release("doc-a")
            assert routed.workspace.record("doc-a") is None and "doc-a" not in routed.workspace.adapters
        finally:
            routed.close()
        assert not routed.folder.exists()

    def test_long_documents_and_frequent_edits_go_to_rag(self, tiny_engine, methods_module):
        routed = M.METHODS["routed"](tiny_engine, 2, router={"max_tokens": 64})
        try:
            routed.prepare("long", DOC)
            assert routed.routes["long"]["route"] == "rag" and routed.routes["long"]["chunks"] >= 1
            assert "too long" in routed.routes["long"]["reason"]
        finally:
            routed.close()
        routed = M.METHODS["routed"](tiny_engine, 2)
        try:
            text = "Version one of the opening hours: nine to five."
            routed.prepare("v", text)
            assert routed.routes["v"]["route"] == "d2l"
            routed.update("v", text + " Updated: ten to six.")
            routed.update("v", text + " Updated again: eight to four.")
            assert routed.routes["v"]["route"] == "rag"  # changed twice within seconds -> volatile
        finally:
            routed.close()


def test_run_eval_accepts_the_haystack_methods(tiny_engine):
    cases = [C.Case(id="1", document=DOC, question="Who built the lighthouse?", answers=["Ada Finch"], doc_id="a"),
             C.Case(id="2", document=DOC, question="What does the bakery sell?", answers=["rye bread"], doc_id="a")]
    report = R.run_eval(tiny_engine, cases, ["rag", "hybrid", "routed"], max_new_tokens=2, progress=False)
    for name in ("rag", "hybrid", "routed"):
        r = report["results"][name]
        assert r["n"] == 2 and r["documents"] == 1 and r["internalize_seconds"] > 0
    assert {row["meta"].get("route") for row in report["cases"] if row["method"] == "rag"} == {"rag"}
