"""The comparative benchmark: cost arithmetic, the report writer, the CLI and a tiny end-to-end run."""

from __future__ import annotations

import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from d2l_haystack.bench import costs  # noqa: E402
from d2l_haystack.bench.measure import PeakRSS, kv_cache_bytes, median, percentile  # noqa: E402
from d2l_haystack.bench.report import load_report, summarize, write_report  # noqa: E402
from d2l_haystack.bench.runner import BenchConfig, estimate_seconds, run_benchmark  # noqa: E402
from d2l_haystack.bench.workloads import BenchDoc, Question, Workload, zipf_weights  # noqa: E402

METHODS = ["base", "icl", "rag", "d2l", "hybrid", "routed"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- cost arithmetic -------------------------------------------------------------------------------
class TestCosts:
    def test_total_cost_and_curve(self):
        assert costs.total_cost(2.0, 0.5, 10) == 7.0
        assert costs.cost_curve(1.0, 2.0, [0, 1, 3]) == [1.0, 3.0, 7.0]

    def test_break_even_where_internalizing_pays_off(self):
        # d2l: 3 s once + 0.5 s/query; icl: nothing once + 2 s/query -> 3 / 1.5 = 2 questions
        assert costs.break_even(3.0, 0.5, 0.0, 2.0) == pytest.approx(2.0)
        # versus rag: (3 - 1) / (1.5 - 0.5) = 2
        assert costs.break_even(3.0, 0.5, 1.0, 1.5) == pytest.approx(2.0)
        assert costs.break_even_questions(2.0) == 2
        assert costs.break_even_questions(2.01) == 3
        assert costs.break_even_questions(None) is None

    def test_break_even_edge_cases(self):
        assert costs.break_even(0.5, 0.5, 1.0, 2.0) == 0.0       # cheaper both ways
        assert costs.break_even(3.0, 2.0, 0.0, 1.0) is None      # dearer both ways: never
        assert costs.break_even(3.0, 1.0, 0.0, 1.0) is None      # same per query, dearer once: never
        assert costs.break_even(1.0, 3.0, 1.0, 2.0) is None      # same once, dearer per query: never
        assert costs.break_even(0.0, 3.0, 1.0, 2.0) is None      # cheaper once but loses it per question
        assert costs.break_even(0.5, 1.0, 1.0, 1.0) == 0.0       # same per query, cheaper once
        assert costs.break_even(math.nan, 1.0, 0.0, 2.0) is None

    def test_router_verdicts(self):
        v = costs.router_verdict({"cost": 40.0, "accuracy": 0.79}, {"cost": 100.0, "accuracy": 0.80})
        assert v["verdict"] == "beats" and v["cost_saving_pct"] == pytest.approx(60.0)
        assert v["accuracy_delta_points"] == pytest.approx(-1.0) and v["matches_self_route"]
        v = costs.router_verdict({"cost": 80.0, "accuracy": 0.80}, {"cost": 100.0, "accuracy": 0.80})
        assert v["verdict"] == "beats" and not v["matches_self_route"]  # only 20% cheaper
        assert costs.router_verdict({"cost": 40.0, "accuracy": 0.5}, {"cost": 100.0, "accuracy": 0.8})["verdict"] \
            == "cheaper-less-accurate"
        assert costs.router_verdict({"cost": 140.0, "accuracy": 0.9}, {"cost": 100.0, "accuracy": 0.8})["verdict"] \
            == "better-costlier"
        assert costs.router_verdict({"cost": 140.0, "accuracy": 0.8}, {"cost": 100.0, "accuracy": 0.81})["verdict"] \
            == "equal-accuracy-costlier"
        assert costs.router_verdict({"cost": 140.0, "accuracy": 0.5}, {"cost": 100.0, "accuracy": 0.8})["verdict"] \
            == "worse"

    def test_accuracy_ratio(self):
        assert costs.accuracy_ratio(0.4, 0.5) == pytest.approx(0.8)
        assert costs.accuracy_ratio(0.4, 0.0) is None


class TestMeasure:
    def test_percentiles(self):
        xs = [1.0, 2.0, 3.0, 4.0, 100.0]
        assert median(xs) == 3.0
        assert percentile(xs, 95) == pytest.approx(80.8)
        assert math.isnan(percentile([], 50))

    def test_kv_cache_bytes(self):
        cfg = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, hidden_size=576, num_hidden_layers=30)
        # 2 (K and V) * 30 layers * 3 heads * 64 dims * 1000 tokens * 2 bytes
        assert kv_cache_bytes(cfg, 1000, 2) == 2 * 30 * 3 * 64 * 1000 * 2

    def test_peak_rss_sees_an_allocation(self):
        with PeakRSS() as mem:
            block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
            del block
        assert mem.delta_bytes >= 48 * 2**20
        with PeakRSS(enabled=False) as off:
            pass
        assert off.delta_bytes == 0


def test_zipf_weights_are_skewed():
    w = zipf_weights(8, 1.1)
    assert w.sum() == pytest.approx(1.0) and w[0] > 2.5 * w[2] and np.all(np.diff(w) < 0)


# -- a synthetic result ----------------------------------------------------------------------------
SPEED = {  # method: (prepare seconds per document, seconds per query, accuracy)
    "base": (0.0, 1.0, 0.1), "icl": (0.0, 2.5, 0.8), "rag": (0.2, 1.3, 0.6), "d2l": (1.0, 0.5, 0.64),
    "hybrid": (1.2, 1.4, 0.7), "routed": (0.6, 0.7, 0.79),
}


def _query(method, workload, doc, tokens, acc, seconds, **extra):
    return {"workload": workload, "method": method, "doc_id": doc, "doc_tokens": tokens, "question": "q?",
            "answers": ["a"], "reply": "a" if acc else "b", "exact_match": acc, "f1": acc, "contains": acc,
            "seconds": seconds, "generation_seconds": seconds, "ttft": seconds / 2, "prompt_tokens": 50,
            "new_tokens": 3, "kv_prompt_bytes": 1000, "peak_answer_bytes": 2**20,
            "truncated": extra.pop("trunc", False),
            "route": method if method != "routed" else "d2l", "right_document": True if method == "routed" else None,
            "error": None, "beyond_window": tokens > 8192, "meta": {}, **extra}


def _doc(method, workload, doc, tokens, prep, kind="initial", **extra):
    return {"workload": workload, "method": method, "doc_id": doc, "kind": kind, "version": 0, "doc_tokens": tokens,
            "prepare_seconds": prep, "prepare_wall_seconds": prep, "peak_prepare_bytes": 3 * 2**20,
            "kv_doc_bytes": tokens * 92160, "kv_doc_bytes_16bit": tokens * 46080, "beyond_window": tokens > 8192,
            "state_bytes": 2 * 2**20 if method in ("d2l", "hybrid", "routed") else 0,
            "adapter_bytes": 2 * 2**20 if method in ("d2l", "hybrid", "routed") else 0,
            **({"route": "d2l"} if method == "routed" else {}), **extra}


def fake_raw() -> dict:
    workloads: dict = {}
    # reading comprehension: 2 paragraph documents, 2 questions each; accuracy 1 on a fraction of questions
    q, d = [], []
    for m in METHODS:
        prep, sec, acc = SPEED[m]
        for doc in ("p1", "p2"):
            d.append(_doc(m, "squad_paragraphs", doc, 150, prep, unit="paragraph"))
            for _ in range(2):
                q.append(_query(m, "squad_paragraphs", doc, 150, acc, sec, unit="paragraph"))
    workloads["squad_paragraphs"] = {"workload": {"name": "squad_paragraphs", "kind": "per_document",
                                                  "description": "paragraphs", "primary_metric": "f1",
                                                  "documents": 2, "questions": 4, "min_tokens": 150,
                                                  "max_tokens": 150, "settings": {}},
                                     "documents": d, "queries": q, "events": []}
    # needle: two lengths, one beyond the window; icl truncated there
    q, d = [], []
    for m in METHODS:
        prep, sec, acc = SPEED[m]
        for length in (256, 16384):
            for depth in (0.1, 0.9):
                doc = f"n-{length}-{depth}"
                hit = 1.0 if (m != "icl" or length < 8192) and m != "base" else 0.0
                d.append(_doc(m, "niah", doc, length, prep * length / 256, length=length, depth=depth))
                q.append(_query(m, "niah", doc, length, hit, sec * (length / 256 if m == "icl" else 1),
                                length=length, depth=depth, trunc=(m == "icl" and length > 8192)))
    workloads["niah"] = {"workload": {"name": "niah", "kind": "per_document", "description": "needles",
                                      "primary_metric": "contains", "documents": 4, "questions": 4,
                                      "min_tokens": 256, "max_tokens": 16384, "settings": {}},
                         "documents": d, "queries": q, "events": []}
    # mixed stream: 2 documents, one edit, 3 queries
    q, d = [], []
    for m in METHODS:
        prep, sec, acc = SPEED[m]
        d += [_doc(m, "mixed", "m1", 300, prep, unit="mixed"), _doc(m, "mixed", "m2", 300, prep, unit="mixed"),
              _doc(m, "mixed", "m1", 320, prep, kind="edit", unit="mixed")]
        q += [_query(m, "mixed", "m1", 300, acc, sec, about="squad", unit="mixed"),
              _query(m, "mixed", "m1", 320, acc, sec, about="update", unit="mixed"),
              _query(m, "mixed", "m2", 300, acc, sec, about="squad", unit="mixed")]
    workloads["mixed"] = {"workload": {"name": "mixed", "kind": "stream", "description": "stream",
                                       "primary_metric": "f1", "documents": 2, "questions": 3, "edits": 1,
                                       "min_tokens": 300, "max_tokens": 300, "settings": {}},
                          "documents": d, "queries": q, "events": []}
    return {"benchmark": "compare", "date": "2026-01-01T00:00:00+00:00", "wall_seconds": 60.0,
            "workload_seconds": {k: 20.0 for k in workloads}, "config": BenchConfig.quick().to_dict(),
            "engine": {"base_model": "tiny", "checkpoint": "untrained", "checkpoint_id": "x", "trained": False,
                       "chunk_tokens": 512, "device": "cpu"},
            "window_tokens": 8192,
            "machine": {"cpu_count": 2, "torch": "x", "torch_threads": 2, "load_average_start": [0.1, 0, 0],
                        "load_average_end": [0.2, 0, 0]},
            "workloads": workloads}


class TestReport:
    def test_summary_numbers(self):
        rep = summarize(fake_raw())
        s = rep["summary"]["squad_paragraphs"]["methods"]
        assert s["d2l"]["n"] == 4 and s["d2l"]["prepare_seconds_total"] == pytest.approx(2.0)
        assert s["d2l"]["total_cost_seconds"] == pytest.approx(2.0 + 4 * 0.5)
        assert s["icl"]["query_seconds_median"] == pytest.approx(2.5)
        be = rep["analysis"]["break_even"]["squad_paragraphs"]["paragraph"]
        assert be["vs_icl"] == pytest.approx(1.0 / 2.0)          # (1.0 - 0) / (2.5 - 0.5)
        assert be["vs_rag"] == pytest.approx((1.0 - 0.2) / (1.3 - 0.5))
        assert be["vs_icl_questions"] == 1 and be["vs_rag_questions"] == 1
        ratio = rep["analysis"]["d2l_icl_ratio"]["squad_paragraphs"]
        assert ratio["ratio"] == pytest.approx(0.64 / 0.8)
        assert rep["analysis"]["speedup"]["squad_paragraphs"]["paragraph"]["query_median"] == pytest.approx(5.0)
        router = rep["analysis"]["router"]["squad_paragraphs"]["vs"]
        assert router["icl"]["verdict"] == "beats"                 # 0.79 vs 0.80 at a fraction of the cost
        assert router["d2l"]["verdict"] == "better-costlier"
        assert rep["summary"]["niah"]["methods"]["icl"]["truncated"] == 2
        assert rep["summary"]["niah"]["needle_grid"]["icl"]["16384"]["0.9"] == 0.0
        assert rep["summary"]["mixed"]["methods"]["d2l"]["prepare_events"] == 3
        assert rep["summary"]["mixed"]["accuracy_by_question_kind"]["d2l"]["update"] == pytest.approx(0.64)
        kv = rep["analysis"]["kv_vs_adapter"]["niah"]["16384"]
        assert kv["ratio_16bit"] == pytest.approx(16384 * 46080 / (2 * 2**20))

    def test_writes_json_markdown_and_plots(self, tmp_path: Path):
        report = write_report(fake_raw(), tmp_path / "out")
        out = tmp_path / "out"
        data = json.loads((out / "results.json").read_text())
        assert {"summary", "analysis", "workloads", "config", "engine"} <= set(data)
        md = (out / "results.md").read_text()
        for text in ("## squad_paragraphs", "## niah", "## mixed", "Break-even", "Router versus each single method",
                     "KV cache of the document", "beyond window", "2 truncated", "published D2L on SQuAD: 0.81",
                     "Self-Route"):
            assert text in md, text
        pngs = ["accuracy_vs_length.png", "latency_vs_length.png", "cost_vs_questions.png", "cost_vs_accuracy.png"]
        for name in pngs:
            assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert report["files"] == ["results.json", "results.md", *pngs]
        # the saved JSON re-renders to the same analysis
        again = write_report(load_report(out), tmp_path / "again")
        assert again["analysis"]["break_even"] == data["analysis"]["break_even"]

    def test_nan_is_written_as_null(self, tmp_path: Path):
        raw = fake_raw()
        for row in raw["workloads"]["mixed"]["queries"]:
            if row["method"] == "icl":
                row["f1"] = 0.0
        for name in ("squad_paragraphs", "niah"):
            raw["workloads"][name]["queries"] = [r for r in raw["workloads"][name]["queries"] if r["method"] != "rag"]
        write_report(raw, tmp_path)
        text = (tmp_path / "results.json").read_text()
        assert "NaN" not in text and "Infinity" not in text
        data = json.loads(text)
        assert data["summary"]["niah"]["methods"]["rag"]["f1"] is None  # documents but no questions
        assert data["analysis"]["d2l_icl_ratio"]["mixed"]["ratio"] is None


# -- the CLI --------------------------------------------------------------------------------------
class TestCLI:
    def test_parses_and_builds_the_config(self):
        from d2l_haystack.cli import build_parser
        from d2l_haystack.cli.bench_cmds import config_from_args

        args = build_parser().parse_args(["bench", "--quick", "--out", "x", "--checkpoint", "ck", "--methods",
                                          "rag,d2l", "--niah-lengths", "256,512", "--niah-depths", "0.5",
                                          "--router", '{"max_tokens": 100}', "--no-memory",
                                          "--accuracy-metric", "contains"])
        assert args.command == "bench" and args.checkpoint == "ck"
        cfg = config_from_args(args)
        assert cfg.preset == "quick" and cfg.methods == ["rag", "d2l"] and cfg.niah_lengths == [256, 512]
        assert cfg.niah_depths == [0.5] and cfg.router == {"max_tokens": 100} and not cfg.measure_memory
        assert cfg.accuracy_metric == "contains"
        full = config_from_args(build_parser().parse_args(["bench", "--out", "x"]))
        assert full.preset == "full" and max(full.niah_lengths) >= 5 * 8192 and full.methods == METHODS

    def test_bad_arguments(self, capsys):
        from d2l_haystack.cli import build_parser, main

        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--router", "[1, 2]"])
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "--niah-lengths", "a,b"])
        assert main(["bench"]) == 2
        assert "--out" in capsys.readouterr().err

    def test_render_rewrites_a_saved_report(self, tmp_path: Path):
        from d2l_haystack.cli import main

        write_report(fake_raw(), tmp_path)
        (tmp_path / "results.md").unlink()
        assert main(["bench", "--render", str(tmp_path)]) == 0
        assert (tmp_path / "results.md").is_file()

    def test_estimate_grows_with_the_preset(self):
        docs = [BenchDoc("a", "x", [Question("q", ["a"])] * 2, tokens=40000),
                BenchDoc("b", "x", [Question("q", ["a"])], tokens=200)]
        w = Workload("niah", "per_document", docs, "contains", "d")
        full = estimate_seconds([w], BenchConfig.full())
        quick = estimate_seconds([w], BenchConfig.quick(methods=["d2l"]))
        assert full["niah"] > quick["niah"] > 0


# -- end to end on the tiny model -----------------------------------------------------------------
def _tiny_workloads(tokenizer) -> list[Workload]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    para = "Ada Finch built the Marlow lighthouse in 1873. It stands on the northern cliff."
    # beyond the tiny model's 2048-token window in few words (digits are single tokens), so that
    # embedding its passages stays cheap
    long_text = " ".join(f"k{i * 7919 % 100000:05d}q" for i in range(330)) + " The special magic number is 4821."
    docs = [BenchDoc("p1", para, [Question("Who built the Marlow lighthouse?", ["Ada Finch"])],
                     {"unit": "paragraph"}, count(para))]
    needle = [BenchDoc("n-64", "The special magic number is 4821. The sky was grey.",
                       [Question("What is the special magic number?", ["4821"], {"length": 64, "depth": 0.0})],
                       {"length": 64, "depth": 0.0}, 14),
              BenchDoc("n-2100", long_text,
                       [Question("What is the special magic number?", ["4821"], {"length": 2100, "depth": 1.0})],
                       {"length": 2100, "depth": 1.0}, count(long_text))]
    m1, m2 = "The bakery sells rye bread on Saturdays.", "The harbour has twelve fishing boats."
    edited = m1 + "\n\nUpdate 1: The bakery now opens at six."
    events = [{"kind": "query", "doc": "m1", "question": "What does the bakery sell?", "answers": ["rye bread"],
               "about": "squad", "version": 0},
              {"kind": "edit", "doc": "m1", "text": edited, "version": 1, "tokens": count(edited)},
              {"kind": "query", "doc": "m1", "question": "When does the bakery open?", "answers": ["six"],
               "about": "update", "version": 1},
              {"kind": "query", "doc": "m2", "question": "How many fishing boats?", "answers": ["twelve"],
               "about": "squad", "version": 0}]
    mixed_docs = [BenchDoc("m1", m1, [], {"unit": "mixed"}, count(m1)), BenchDoc("m2", m2, [], {"unit": "mixed"},
                                                                                   count(m2))]
    return [Workload("squad_paragraphs", "per_document", docs, "f1", "paragraphs"),
            Workload("niah", "per_document", needle, "contains", "needles"),
            Workload("mixed", "stream", mixed_docs, "f1", "stream", events=events)]


def test_run_benchmark_end_to_end_on_the_tiny_model(tiny_engine, tmp_path: Path):
    cfg = BenchConfig.quick(max_new_tokens=2)
    raw = run_benchmark(tiny_engine, cfg, progress=False, workloads=_tiny_workloads(tiny_engine.tokenizer))
    assert set(raw["workloads"]) == {"squad_paragraphs", "niah", "mixed"}
    window = raw["window_tokens"]
    assert window == 2048  # the tiny model's window: the long needle document is beyond it
    niah = raw["workloads"]["niah"]["queries"]
    icl_long = [r for r in niah if r["method"] == "icl" and r["doc_tokens"] > window]
    assert icl_long and all(r["truncated"] and r["beyond_window"] for r in icl_long)
    assert all(r["prompt_tokens"] <= window for r in niah)
    mixed = raw["workloads"]["mixed"]
    assert {r["method"] for r in mixed["queries"]} == set(METHODS)
    edits = [d for d in mixed["documents"] if d["kind"] == "edit"]
    assert len(edits) == len(METHODS)
    assert all(d["prepare_seconds"] > 0 for d in edits if d["method"] in ("rag", "d2l", "hybrid", "routed"))
    hybrid_docs = [d for d in raw["workloads"]["squad_paragraphs"]["documents"] if d["method"] == "hybrid"]
    assert hybrid_docs[0]["adapter_reused"]  # the d2l adapter was shared, its cost still charged
    routed = [r for r in raw["workloads"]["squad_paragraphs"]["queries"] if r["method"] == "routed"]
    assert routed[0]["route"] in ("d2l", "rag", "hybrid")
    assert all(r["peak_answer_bytes"] is not None for r in raw["workloads"]["squad_paragraphs"]["queries"])
    report = write_report(raw, tmp_path)
    assert (tmp_path / "results.md").is_file() and (tmp_path / "accuracy_vs_length.png").is_file()
    be = report["analysis"]["break_even"]["niah"]["2100"]["vs_icl"]
    assert be is None or be >= 0
    from d2l_haystack.evaluation.haystack_methods import ADAPTERS

    assert len(ADAPTERS) == 0  # nothing left behind


@pytest.mark.requires_squad
def test_workloads_from_the_evaluation_data(tokenizer_dir):
    from transformers import AutoTokenizer

    from d2l_haystack.bench.workloads import mixed_workload, squad_article_workload

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    w = mixed_workload(tok, n_docs=5, n_queries=60, volatile_docs=2, edits_per_volatile=2, seed=3)
    queries = [e for e in w.events if e["kind"] == "query"]
    edits = [e for e in w.events if e["kind"] == "edit"]
    assert len(queries) == 60 and len(edits) == 4 and w.events[0]["kind"] == "query"
    counts = sorted((sum(q["doc"] == d.id for q in queries) for d in w.docs), reverse=True)
    assert counts[0] >= 2 * counts[-1] + 1  # skewed
    for e in edits:  # the newest update is in the edited text
        assert f"Update {e['version']}:" in e["text"]
    for q in queries:
        if q["about"] == "update":
            latest = [e for e in w.events[: w.events.index(q)] if e["kind"] == "edit" and e["doc"] == q["doc"]][-1]
            assert any(a in latest["text"] for a in q["answers"])
    arts = squad_article_workload(tok, n_docs=2, questions_per_doc=2)
    assert len(arts.docs) == 2 and arts.docs[0].tokens < arts.docs[1].tokens and arts.docs[0].tokens > 4000
