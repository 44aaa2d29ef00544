"""What the reading memory costs: internalization seconds and adapter bytes, with and without it.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_memory.py              # the shipped checkpoint
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_memory.py --checkpoint runs/memory_r128 --sizes 256,4000

For documents of ``--sizes`` tokens cut from the NLTK ``state_union`` filler (as ``bench_core.py``;
read from ``$D2L_EVALDATA``, never copied), one engine with the checkpoint's reading memory and one
with ``reading_memory=False``: seconds to internalize (median and minimum of ``--repeats`` runs
after a warm-up), the seconds of the memory's own pass (``timings["memory"]``), the adapter's
stored bytes and its memory rows. Then the seconds to answer (``generate()``, greedy, median of
``--repeats``) a question the adapter alone is sure of (a trained-phrasing needle in the
``--answer-tokens`` document) and one it is not, with the hypernetwork alone, with the memory and
its yield test only (``override=None``, ``follow_on_yield`` off), the yield test with the follow
(a yielded answer goes on as the document goes on), the yield test and the override (the default
before the follow), and the yield test, the override and the follow (the default: where the
adapter is sure, both readers answer, the rule chooses, and a yielded answer is made once more with
the follow); ``meta["memory"]`` is in the table. With ``--long-tokens N``, a document of N tokens
(over the memory's ``max_tokens``) with each ``long_documents`` mode: internalization seconds and
bytes (the token ids it keeps), and the seconds to answer both questions the first time (the
chosen chunks' rows are made then) and asked again (the median of ``--repeats``: the engine keeps
the rows it made, ``D2LEngine.made_rows``). Prints the tables and writes ``--out`` (JSON).
Timings depend on the machine and on other processes: run it alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, run_info, write_json  # noqa: E402
from bench_core import REPO, document, evaldata_dir, filler_text  # noqa: E402


def measure(engine: Any, text: str, repeats: int) -> dict[str, Any]:
    engine.internalize(text, progress=False)  # warm-up
    seconds, memory_seconds = [], []
    adapter = None
    for _ in range(repeats):
        stages: dict[str, float] = {}
        start = time.perf_counter()
        adapter = engine.internalize(text, progress=False, timings=stages)
        seconds.append(time.perf_counter() - start)
        memory_seconds.append(stages.get("memory", 0.0))
    assert adapter is not None
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "memory_pass_s": round(statistics.median(memory_seconds), 3), "bytes": adapter.nbytes,
            "memory_rows": adapter.memory_rows, "chunks": adapter.num_chunks}


NEEDLE = "The special magic number is 48213."
QUESTIONS = {"sure": "What is the special magic number?",  # asked with the relevance gate off
             "unsure": "What did the speaker say about the budget of the government?"}


def timed_answer(engine: Any, question: str, adapter: Any, repeats: int) -> tuple[float, Any]:
    """The median seconds of ``repeats`` greedy answers after a warm-up, and the last answer."""
    engine.generate(question, adapter, max_new_tokens=16, gate=False)  # warm-up
    seconds, result = [], None
    for _ in range(repeats):
        result = engine.generate(question, adapter, max_new_tokens=16, gate=False)
        seconds.append(result.seconds)
    assert result is not None
    return round(statistics.median(seconds), 3), result


def answer_times(alone: Any, engine: Any, filler_ids: list[int], tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Seconds per greedy answer for each question of :data:`QUESTIONS` and each answering policy."""
    text, _ = document(engine, filler_ids, tokens)
    middle = len(text) // 2
    text = f"{text[:middle]} {NEEDLE} {text[middle:]}"
    adapters = {"alone": alone.internalize(text, progress=False), "memory": engine.internalize(text, progress=False)}
    saved = engine.memory.override, engine.memory.follow_on_yield
    rows = []
    try:
        for kind, question in QUESTIONS.items():
            for policy, who, override, follow in (
                    ("hypernetwork alone", alone, None, False), ("memory, yield test", engine, None, False),
                    ("memory, yield test + follow", engine, None, True),
                    ("memory, yield test + override", engine, saved[0], False),
                    ("memory, yield test + override + follow", engine, saved[0], True)):
                engine.memory.override, engine.memory.follow_on_yield = override, follow
                seconds, result = timed_answer(who, question, adapters["alone" if who is alone else "memory"], repeats)
                rows.append({"question": kind, "policy": policy, "answer_s": seconds,
                             "memory": result.meta.get("memory", "-"), "answer": result.text[:40]})
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        engine.memory.override, engine.memory.follow_on_yield = saved
    return rows


def long_document_times(engine: Any, filler_ids: list[int], tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Internalization and answering of one document over ``max_tokens`` per ``long_documents`` mode."""
    text, size = document(engine, filler_ids, tokens)
    middle = len(text) // 2
    text = f"{text[:middle]} {NEEDLE} {text[middle:]}"
    saved = engine.memory.long_documents
    rows = []
    try:
        for mode in ("none", "follow", "read"):
            engine.memory.long_documents = mode
            start = time.perf_counter()
            adapter = engine.internalize(text, progress=False)
            made = time.perf_counter() - start
            for kind, question in QUESTIONS.items():
                engine.made_rows.clear()  # a question's first answer makes its chunks' rows
                first = engine.generate(question, adapter, max_new_tokens=16, gate=False).seconds
                seconds, result = timed_answer(engine, question, adapter, repeats)  # asked again: kept rows
                rows.append({"tokens": size, "long_documents": mode, "internalize_s": round(made, 2),
                             "MiB": round(adapter.nbytes / 2**20, 2), "question": kind,
                             "first_answer_s": round(first, 3), "answer_s": seconds,
                             "rows_made": result.meta.get("memory_rows_made", 0),
                             "memory": result.meta.get("memory", "-"), "answer": result.text[:40]})
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        engine.memory.long_documents = saved
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="default", help="a checkpoint folder with memory.safetensors")
    parser.add_argument("--sizes", default="256,1000,4000", help="document sizes in tokens, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunking", default="auto")
    parser.add_argument("--answer-tokens", type=int, default=500, help="tokens of the answering benchmark's document")
    parser.add_argument("--long-tokens", type=int, default=0,
                        help="also time a document of this many tokens (over max_tokens) per long_documents mode")
    parser.add_argument("--evaldata", default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory_cost.json"))
    args = parser.parse_args(argv)
    from d2l_haystack.core import D2LEngine

    with_memory = D2LEngine(checkpoint=args.checkpoint, chunking=args.chunking, device="cpu")
    if with_memory.memory is None:
        print(f"bench_memory: checkpoint {args.checkpoint!r} has no reading memory", file=sys.stderr)
        return 2
    without = D2LEngine(checkpoint=args.checkpoint, chunking=args.chunking, device="cpu", reading_memory=False)
    filler_ids = with_memory.tokenizer(filler_text(evaldata_dir(args.evaldata)), add_special_tokens=False)["input_ids"]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        text, tokens = document(with_memory, filler_ids, size)
        for label, engine in (("hypernetwork", without), ("hypernetwork + memory", with_memory)):
            row = {"tokens": tokens, "engine": label, **measure(engine, text, args.repeats)}
            row["MiB"] = round(row["bytes"] / 2**20, 2)
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    print_table(rows, [("tokens", "tokens"), ("adapter", "engine"), ("chunks", "chunks"),
                       ("internalize s (median)", "median_s"), ("min s", "min_s"),
                       ("memory pass s", "memory_pass_s"), ("memory rows", "memory_rows"), ("MiB", "MiB")])
    answers = answer_times(without, with_memory, filler_ids, args.answer_tokens, args.repeats)
    print_table(answers, [("question", "question"), ("policy", "policy"), ("answer s (median)", "answer_s"),
                          ("meta memory", "memory"), ("answer", "answer")])
    long_rows = long_document_times(with_memory, filler_ids, args.long_tokens, args.repeats) if args.long_tokens else []
    if long_rows:
        print_table(long_rows, [("tokens", "tokens"), ("long_documents", "long_documents"),
                                ("internalize s", "internalize_s"), ("MiB", "MiB"), ("question", "question"),
                                ("first answer s", "first_answer_s"), ("asked again s (median)", "answer_s"),
                                ("rows made", "rows_made"),
                                ("meta memory", "memory"), ("answer", "answer")])
    path = write_json(args.out, {**run_info("bench_memory.py", argv), "checkpoint": with_memory.checkpoint_id,
                                 "threads": __import__("torch").get_num_threads(), "rows": rows,
                                 "answering": answers, "long_documents": long_rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
