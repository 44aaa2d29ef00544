"""Core benchmark: internalization speed, and answering with an adapter versus the document in context.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_core.py            # writes benchmarks/results/core.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_core.py --quick    # smaller sizes, for a smoke test

What is measured (one process, one loaded base model, greedy decoding):

* **Internalization**: seconds per chunk for one chunk of 256 / 512 / 1024 tokens, in both encoder
  modes (``early_exit``: the shipped checkpoint's hypernetwork, or an untrained one if none is
  shipped; ``per_layer``: an untrained hypernetwork built with ``encoder_mode='per_layer'``;
  the timing of a forward pass does not depend on the weights' values). Median and minimum of
  ``--repeats`` runs after one warm-up run (the minimum is the least disturbed by other processes).
* **Answering** one question about documents of about 1k, 4k and 7.5k tokens (7.5k keeps the
  question and the answer inside the 8192-token window): with the document's adapter and no
  document in the prompt, versus with the document in the prompt. Time to first token (prefill
  plus the first decoding step), total seconds for ``--max-new-tokens`` new tokens (greedy; a
  reply may end earlier at the end-of-turn token, the token count is recorded), and the one-time
  internalization cost of the adapter. With the adapter: the run with the lowest time to first
  token of ``--answer-repeats``; with the document in context: one run (it is the slow side, so
  any disturbance only narrows the gap).
* **Peak memory**: the growth of the process's resident set during one call. Before the call,
  freed heap pages are handed back to the system (``gc.collect()`` and glibc's ``malloc_trim(0)``,
  else the call would silently reuse memory kept from earlier calls), the kernel's peak-RSS
  counter is reset (``echo 5 > /proc/self/clear_refs``) and ``VmRSS`` is read; after the call,
  ``VmHWM`` (the peak since the reset) is read. The difference counts every allocation (torch's
  CPU tensors, tokenizers, Python) and is not fooled by memory freed before the call ends.
  Where ``clear_refs`` cannot be written, a thread samples ``VmRSS`` every millisecond instead
  (the method used is recorded in the JSON).
* **Precision**: each internalization row in float32 and, where the engine uses it
  (``autocast="auto"``: a CPU with AMX, a CUDA GPU with bf16), under bf16 autocast.
* **A long document** (``--long-tokens``, default 43,000) through the user's path,
  :class:`DocToLoRAConverter` and the adapter store, with the seconds of each stage (chunking,
  encoder, hypernetwork, chunk keys, assembly, routing embeddings, store write) in both precisions,
  and how far the bf16 adapter is from the float32 one (factors' relative error, keys' cosine).
* **Instructions** of 100 / 500 / 2,000 tokens: in the system prompt versus internalized
  (``kind="instructions"``): prompt tokens saved per query and time to first token.
* **Sizes**: the adapter's stored bytes (fp16 tensors) versus the KV cache the document would
  need in the prompt: ``2 * layers * kv_heads * head_dim * tokens * bytes_per_value``, given for
  the model's dtype and for 16-bit values.

The filler text is the NLTK ``state_union`` corpus (public domain), read from
``$D2L_EVALDATA/state_union.zip`` (default: ``../shared/evaldata`` beside the repository); it is
never copied into the repository. Timings depend on the machine and on other processes running
at the same time: the load average at the start and at the end is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from d2l_haystack.bench.measure import PeakRSS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What did the President say about the budget and taxes?"


# -- memory: the project's one peak-RSS meter (d2l_haystack.bench.measure) --------------------


# -- documents ------------------------------------------------------------------------------------
def evaldata_dir(arg: str | None) -> Path:
    folder = Path(arg or os.environ.get("D2L_EVALDATA") or REPO.parent / "shared" / "evaldata")
    if not (folder / "state_union.zip").is_file():
        sys.exit(f"bench_core: {folder / 'state_union.zip'} not found (set D2L_EVALDATA or --evaldata)")
    return folder


def filler_text(folder: Path) -> str:
    with zipfile.ZipFile(folder / "state_union.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".txt"))
        return "\n\n".join(zf.read(n).decode("latin-1") for n in names)


def document(engine: Any, filler_ids: list[int], tokens: int) -> tuple[str, int]:
    """A document of about ``tokens`` tokens cut from the filler; returns (text, exact token count)."""
    text = engine.tokenizer.decode(filler_ids[:tokens], skip_special_tokens=True)
    return text, len(engine.format.document_ids(text))


# -- measurements ---------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.delta_bytes


def precisions(engine: Any) -> list[bool]:
    """The internalization precisions to measure: float32, and bf16 autocast where the engine uses it."""
    return [False, True] if engine.autocast else [False]


def _label(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


def bench_internalization(engines: dict[str, Any], filler_ids: list[int], sizes: list[int],
                          repeats: int) -> list[dict[str, Any]]:
    rows = []
    for mode, engine in engines.items():
        default = engine.autocast
        for bf16 in precisions(engine):
            engine.autocast = bf16
            for size in sizes:
                text, n = document(engine, filler_ids, size)
                engine.chunk_tokens = n  # exactly one chunk
                engine.internalize(text, progress=False)  # warm-up
                runs, peaks, stages = [], [], []
                for _ in range(repeats):
                    t: dict[str, float] = {}
                    adapter, seconds, peak = timed(lambda: engine.internalize(text, progress=False, timings=t))  # noqa: B023
                    assert adapter.num_chunks == 1
                    runs.append(seconds)
                    peaks.append(peak)
                    stages.append(t)
                best = stages[runs.index(min(runs))]
                rows.append({"encoder_mode": mode, "precision": _label(bf16), "tokens": n,
                             "seconds_per_chunk": statistics.median(runs), "min_seconds_per_chunk": min(runs),
                             "runs": runs, "stages_of_min_run": best, "peak_rss_delta_bytes": max(peaks),
                             "checkpoint_id": engine.checkpoint_id})
                print(f"  internalize {mode:10s} {_label(bf16)} {n:5d} tokens: {statistics.median(runs):.3f} s/chunk "
                      f"(min {min(runs):.3f})", flush=True)
        engine.autocast = default
    return rows


def bench_long_document(engine: Any, model: str, filler_ids: list[int], tokens: int) -> dict[str, Any]:
    """One long document through the user's path (:class:`DocToLoRAConverter`: the engine's
    stages, the routing embeddings, then the adapter store's write), per precision, with the
    seconds of each stage, and how far the bf16 adapter is from the float32 one."""
    import tempfile

    import torch

    from d2l_haystack.components import DocToLoRAConverter
    from d2l_haystack.stores import AdapterStore

    text, n = document(engine, filler_ids, tokens)
    default = engine.autocast
    rows, adapters = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        store = AdapterStore(tmp)
        converter = DocToLoRAConverter(store=store, model=model, device=str(engine.device))
        converter.warm_up()
        assert converter.engine is engine, "the converter shares the benchmark's engine (get_engine's cache)"
        converter.internalize(text[:4000], "warm-up")
        for bf16 in precisions(engine):
            engine.autocast = bf16
            stages: dict[str, float] = {}
            start = time.perf_counter()
            adapter, routing = converter.internalize(text, "long", timings=stages)
            t = time.perf_counter()
            store.put(f"long-{_label(bf16)}", adapter, source="long", routing=routing)
            stages["store"] = time.perf_counter() - t
            total = time.perf_counter() - start
            adapters[bf16] = adapter
            rows.append({"precision": _label(bf16), "seconds": total, "stages": stages,
                         "seconds_per_chunk": total / adapter.num_chunks})
            print(f"  long document {n} tokens, {adapter.num_chunks} chunks, {_label(bf16)}: {total:.1f} s "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()), flush=True)
    engine.autocast = default
    report: dict[str, Any] = {"doc_tokens": n, "chunks": adapters[False].num_chunks, "runs": rows}
    if True in adapters:
        a, b = adapters[False], adapters[True]
        errors = [float((x - y).norm() / x.norm()) for m in a.factors for x, y in zip(a.factors[m], b.factors[m],
                                                                                    strict=True)]
        cos = (a.keys * b.keys).sum(-1) if a.keys is not None and b.keys is not None else torch.ones(1)
        report["bf16_vs_fp32"] = {"max_factor_relative_error": max(errors), "min_key_cosine": float(cos.min())}
    return report


def kv_cache_bytes(config: Any, tokens: int, bytes_per_value: int) -> int:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * tokens * bytes_per_value


def _answer(engine: Any, adapter: Any, context: str | None, max_new_tokens: int) -> dict[str, Any]:
    result, _, peak = timed(lambda: engine.generate(QUESTION, adapter, context=context,
                                                    max_new_tokens=max_new_tokens))
    return {"time_to_first_token": result.time_to_first_token, "seconds": result.seconds,
            "new_tokens": result.num_tokens, "prompt_tokens": result.prompt_tokens,
            "peak_rss_delta_bytes": peak, "text": result.text}


def bench_answering(engine: Any, filler_ids: list[int], sizes: list[int], repeats: int,
                    max_new_tokens: int, chunk_tokens: int) -> list[dict[str, Any]]:
    engine.chunk_tokens = chunk_tokens
    engine.generate("Hello!", max_new_tokens=2)  # warm-up
    cfg = engine.model.config
    value_bytes = engine.model.dtype.itemsize
    rows = []
    for size in sizes:
        text, n = document(engine, filler_ids, size)
        adapter, internalize_s, internalize_peak = timed(lambda: engine.internalize(text, progress=False))  # noqa: B023
        with_adapter = [_answer(engine, adapter, None, max_new_tokens) for _ in range(repeats)]
        adapter_row = min(with_adapter, key=lambda r: r["time_to_first_token"])
        adapter_row["runs_time_to_first_token"] = [r["time_to_first_token"] for r in with_adapter]
        in_context = _answer(engine, None, text, max_new_tokens)
        row = {
            "doc_tokens": n, "chunks": adapter.num_chunks, "adapter_rank": adapter.total_rank,
            "internalize_seconds": internalize_s, "internalize_peak_rss_delta_bytes": internalize_peak,
            "adapter": adapter_row, "in_context": in_context,
            "adapter_bytes": adapter.nbytes,
            "kv_cache_bytes": kv_cache_bytes(cfg, n, value_bytes),
            "kv_cache_bytes_16bit": kv_cache_bytes(cfg, n, 2),
            "ttft_speedup": in_context["time_to_first_token"] / adapter_row["time_to_first_token"],
            "total_speedup": in_context["seconds"] / adapter_row["seconds"],
        }
        rows.append(row)
        print(f"  answer {n:5d}-token doc: adapter TTFT {adapter_row['time_to_first_token']:.3f} s, "
              f"in context {in_context['time_to_first_token']:.3f} s ({row['ttft_speedup']:.0f}x)", flush=True)
    return rows


_POLICY = ("Answer in at most ten words.", "Be polite and precise.", "Never reveal internal ticket numbers.",
           "Refer customers to the help page for billing questions.", "Prefer metric units.",
           "Say so when you do not know an answer.", "Do not promise delivery dates.",
           "Use the customer's name when they give it.")


def instructions_text(engine: Any, tokens: int) -> tuple[str, int]:
    """A system prompt of about ``tokens`` tokens: policy lines, repeated and numbered."""
    lines, i = [], 0
    while True:
        line = f"Rule {i + 1}: {_POLICY[i % len(_POLICY)]}"
        text = "\n".join([*lines, line])
        if len(engine.format.document_ids(text)) > tokens:
            break
        lines.append(line)
        i += 1
    text = "\n".join(lines)
    return text, len(engine.format.document_ids(text))


def bench_instructions(engine: Any, sizes: list[int], repeats: int, max_new_tokens: int) -> list[dict[str, Any]]:
    """Instructions of several lengths: in the system prompt versus internalized (time to first
    token and prompt tokens per query; the internalization once). The instructions hypernetwork's
    weights do not change these timings: an untrained one is used when none is shipped."""
    from d2l_haystack.core.engine import default_checkpoint
    from d2l_haystack.core.prompts import system_messages

    if default_checkpoint(engine.loaded.name, "instructions") is None:
        engine.set_instructions_checkpoint(None)
    question = "What is the capital of France?"
    rows = []
    for size in sizes:
        text, n = instructions_text(engine, size)
        adapter, internalize_s, _ = timed(lambda: engine.internalize(text, kind="instructions", progress=False))  # noqa: B023
        messages = system_messages(text, question)
        system = [engine.generate(messages, max_new_tokens=max_new_tokens) for _ in range(repeats)]
        internal = [engine.generate(question, adapter, max_new_tokens=max_new_tokens) for _ in range(repeats)]
        s_best = min(system, key=lambda r: r.time_to_first_token)
        a_best = min(internal, key=lambda r: r.time_to_first_token)
        rows.append({"instruction_tokens": n, "internalize_seconds": internalize_s, "chunks": adapter.num_chunks,
                     "system_prompt_tokens": s_best.prompt_tokens, "adapter_prompt_tokens": a_best.prompt_tokens,
                     "prompt_tokens_saved": s_best.prompt_tokens - a_best.prompt_tokens,
                     "ttft_system": s_best.time_to_first_token, "ttft_adapter": a_best.time_to_first_token,
                     "instructions_checkpoint": engine.reader("instructions").checkpoint_id})
        print(f"  instructions {n:5d} tokens: TTFT system prompt {s_best.time_to_first_token:.3f} s, "
              f"adapter {a_best.time_to_first_token:.3f} s, {s_best.prompt_tokens - a_best.prompt_tokens} "
              f"prompt tokens saved per query", flush=True)
    return rows


# -- report ---------------------------------------------------------------------------------------
def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def table(report: dict[str, Any]) -> str:
    lines = ["Internalization (one chunk):", "",
             "| encoder mode | precision | chunk tokens | seconds per chunk (median) | (min) | peak RSS growth (MiB) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["internalization"]:
        lines.append(f"| {r['encoder_mode']} | {r.get('precision', 'fp32')} | {r['tokens']} | "
                     f"{r['seconds_per_chunk']:.3f} | {r['min_seconds_per_chunk']:.3f} | "
                     f"{_mib(r['peak_rss_delta_bytes'])} |")
    long = report.get("long_document")
    if long:
        names = list(long["runs"][0]["stages"])
        lines += ["", f"One {long['doc_tokens']}-token document ({long['chunks']} chunks) through DocToLoRAConverter "
                      "and the adapter store, seconds per stage:", "",
                  "| precision | total (s) | s per chunk | " + " | ".join(names) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
        for r in long["runs"]:
            lines.append(f"| {r['precision']} | {r['seconds']:.1f} | {r['seconds_per_chunk']:.3f} | "
                         + " | ".join(f"{r['stages'].get(k, 0.0):.1f}" for k in names) + " |")
        if "bf16_vs_fp32" in long:
            d = long["bf16_vs_fp32"]
            lines += ["", f"bf16 against float32: largest relative error of a factor "
                          f"{d['max_factor_relative_error']:.4f}, smallest chunk-key cosine {d['min_key_cosine']:.5f}."]
    lines += ["", f"Answering one question ({report['settings']['max_new_tokens']} new tokens max, greedy):", "",
              "| document tokens | internalize (s, once) | TTFT adapter (s) | TTFT in context (s) | TTFT speed-up "
              "| total adapter (s) | total in context (s) | peak RSS growth adapter / in context (MiB) "
              "| adapter (MiB) | KV cache fp32 / 16-bit (MiB) |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["answering"]:
        a, c = r["adapter"], r["in_context"]
        lines.append(
            f"| {r['doc_tokens']} | {r['internalize_seconds']:.2f} | {a['time_to_first_token']:.3f} | "
            f"{c['time_to_first_token']:.2f} | {r['ttft_speedup']:.0f}x | {a['seconds']:.2f} | {c['seconds']:.2f} | "
            f"{_mib(a['peak_rss_delta_bytes'])} / {_mib(c['peak_rss_delta_bytes'])} | {_mib(r['adapter_bytes'])} | "
            f"{_mib(r['kv_cache_bytes'])} / {_mib(r['kv_cache_bytes_16bit'])} |")
    if report.get("instructions"):
        lines += ["", "Instructions in the system prompt versus internalized (one question, best of the runs):", "",
                  "| instruction tokens | internalize (s, once) | prompt tokens saved per query | "
                  "TTFT system prompt (s) | TTFT adapter (s) |", "| ---: | ---: | ---: | ---: | ---: |"]
        for r in report["instructions"]:
            lines.append(f"| {r['instruction_tokens']} | {r['internalize_seconds']:.2f} | {r['prompt_tokens_saved']} | "
                         f"{r['ttft_system']:.3f} | {r['ttft_adapter']:.3f} |")
    t = report["targets"]
    lines += ["", f"Targets: internalize a 512-token chunk (early_exit) in under 0.5 s: "
                  f"{'met' if t['internalize_512_early_exit_under_0_5s'] else 'NOT met'} "
                  f"({t['internalize_512_early_exit_seconds']:.3f} s); adapter at least 10x faster to first token "
                  f"than a ~4k-token document in context: {'met' if t['ttft_speedup_4k_at_least_10x'] else 'NOT met'} "
                  f"({t['ttft_speedup_4k']:.0f}x)."]
    if "long_document_seconds" in t:
        lines.append(f"The long document ({long['doc_tokens'] if long else '?'} tokens) internalized and stored in "
                     f"at most 20 s: {'met' if t['long_document_under_20s'] else 'NOT met'} "
                     f"({t['long_document_seconds']:.1f} s, {t['long_document_seconds_per_chunk']:.3f} s per chunk).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "core.json"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--evaldata", default=None, help="folder with state_union.zip (default: $D2L_EVALDATA)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per internalization size (median and min)")
    parser.add_argument("--answer-repeats", type=int, default=3, help="runs of answering with an adapter (min TTFT)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--chunk-tokens", type=int, default=512, help="chunk size of the answering adapters")
    parser.add_argument("--long-tokens", type=int, default=43000, help="size of the long document")
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    args = parser.parse_args(argv)

    import torch

    from d2l_haystack.core import D2LEngine, get_engine

    chunk_sizes = [128, 256] if args.quick else [256, 512, 1024]
    doc_sizes = [256, 1024] if args.quick else [1000, 4000, 7500]
    load_start = os.getloadavg()
    started = time.time()
    print(f"bench_core: model {args.model} on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {load_start[0]:.2f}", flush=True)
    engines = {
        "early_exit": get_engine(args.model, "default", device=args.device),  # the one DocToLoRAConverter gets
        "per_layer": D2LEngine(args.model, checkpoint=None, device=args.device,
                               hypernet_widths={"encoder_mode": "per_layer"}),
    }
    engine = engines["early_exit"]
    if engine.config.encoder_mode != "early_exit":  # a shipped checkpoint in the other mode
        engines["early_exit"] = D2LEngine(args.model, checkpoint=None, device=args.device)
    filler_ids = engine.format.document_ids(filler_text(evaldata_dir(args.evaldata)))

    internalization = bench_internalization(engines, filler_ids, chunk_sizes, args.repeats)
    engines["early_exit"].chunk_tokens = args.chunk_tokens
    instructions = bench_instructions(engines["early_exit"], [100, 500] if args.quick else [100, 500, 2000],
                                      args.answer_repeats, 4)
    long_document = bench_long_document(engines["early_exit"], args.model, filler_ids,
                                        4000 if args.quick else args.long_tokens)
    answering = bench_answering(engines["early_exit"], filler_ids, doc_sizes, args.answer_repeats,
                                args.max_new_tokens, args.chunk_tokens)

    default_precision = "bf16" if engines["early_exit"].autocast else "fp32"  # what a user gets
    ee512 = next((r for r in internalization if r["encoder_mode"] == "early_exit" and 480 <= r["tokens"] <= 540
                  and r.get("precision", "fp32") == default_precision), None)
    mid = min(answering, key=lambda r: abs(r["doc_tokens"] - 4000))
    report = {
        "benchmark": "core",
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_core.py"
                   + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.time() - started,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": args.device, "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "model": engine.describe(portable=True),
        "settings": {"repeats": args.repeats, "answer_repeats": args.answer_repeats,
                     "max_new_tokens": args.max_new_tokens,
                     "answer_chunk_tokens": args.chunk_tokens, "question": QUESTION,
                     "filler": "NLTK state_union (D2L_EVALDATA/state_union.zip)", "memory_method": PeakRSS.method},
        "internalization": internalization,
        "answering": answering,
        "long_document": long_document,
        "instructions": instructions,
        "targets": {
            "internalize_512_early_exit_seconds": ee512["seconds_per_chunk"] if ee512 else float("nan"),
            "internalize_512_early_exit_under_0_5s": bool(ee512 and ee512["seconds_per_chunk"] < 0.5),
            "ttft_speedup_4k": mid["ttft_speedup"],
            "ttft_speedup_4k_at_least_10x": mid["ttft_speedup"] >= 10,
            "long_document_seconds": long_document["runs"][-1]["seconds"],
            "long_document_under_20s": long_document["runs"][-1]["seconds"] <= 20,
            "long_document_seconds_per_chunk": long_document["runs"][-1]["seconds_per_chunk"],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report))
    print(f"\nwrote {out} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
