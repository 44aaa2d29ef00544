"""Watcher benchmark: a burst of file events, and the latency of a single edit.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_watch.py --part burst --model tiny
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_watch.py --part latency          # the embedded SmolLM2
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_watch.py --model tiny --quick    # smoke test

Writes ``benchmarks/results/watch.json`` (``--out``); a run of one part keeps the other part's
results already in that file.

**Burst** (``--files`` files, ``--events`` file operations): a :class:`DocumentWatcher` (debounce
``--debounce``, default 1 s like ``d2l watch``) watches an empty folder; the script writes the
files at once and waits until they are indexed (reported as the initial indexing), then edits,
renames, deletes and creates files at random, spread evenly over ``--burst-seconds``. Files
over ``--rag-tokens`` tokens (about half) are routed to RAG, the others to adapters. Reported:
the operations' duration; **events per second processed** (file
operations divided by the seconds from the first operation until the workspace matches the
folder exactly; the watcher's raw watchdog events and its debounced updates are counted too);
**seconds from the last event until the workspace matches the folder** (same files, each
record's content hash equal to the file's current content, no pending journal; polled every
50 ms); and a **final check** that every adapter belongs to an existing file and was made from
its current content, and every chunk belongs to an existing RAG file and is a passage of its
current text (counts of good and stale adapters and chunks).

**Latency**: a document of about ``--latency-tokens`` tokens (1k) is watched; it is edited
(``--repeats`` times; a new access code is written into it) and the script measures the seconds
from the save until the workspace holds the new content (**commit**: from then on every query
is answered from the new version), and until a query asked right then has **answered** from it
(its adapter or chunks are the new version's; whether the model's answer contains the new code
is recorded too). Once with the document routed to an adapter (D2L: a hypernetwork pass per
edit) and once to RAG (chunks re-embedded), both with the route forced so that the edits do not
move it.

``--model tiny`` builds a tiny random Llama (4 layers, hidden 64, the real SmolLM2 tokenizer;
untrained hypernetwork) in a temporary folder, so the watcher's own costs can be measured
without the model's. The load average at the start and at the end is recorded: timings depend
on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EMBEDDED = "smollm2-135m-instruct"
TOPICS = ["kettle", "lighthouse", "garden", "office", "bicycle", "library", "harbour", "bakery", "observatory",
          "railway", "museum", "orchard", "clinic", "theatre", "vineyard", "workshop"]
WORDS = ("the a of to and in is was for on with as by at from that this which each every new old small large "
         "north south east west river stone glass iron copper winter summer morning evening council keeper "
         "engineer visitor record ledger season harvest storm lamp bridge tower road market").split()


# -- helpers --------------------------------------------------------------------------------
def tiny_model(folder: Path) -> str:
    """A tiny random Llama with the real SmolLM2 tokenizer (as the tests' fixture builds it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from d2l_haystack.core.models import resolve_model

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True))
    target = folder / "tiny-llama"
    model.save_pretrained(target, safe_serialization=True)
    source = Path(resolve_model(EMBEDDED))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    return str(target)


def model_settings(model: str, checkpoint: str | None, tmp: Path) -> dict[str, Any]:
    if model == "tiny":
        return {"model": tiny_model(tmp), "checkpoint": None, "chunk_tokens": 64, "max_new_tokens": 4}
    return {"model": model, "checkpoint": checkpoint}


def sentence(rng: random.Random, topic: str, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return f"The {topic} " + " ".join(words) + "."


def document(rng: random.Random, i: int, version: int) -> str:
    topic = TOPICS[i % len(TOPICS)]
    lines = [f"# {topic.title()} notes {i}", f"Fact {i}.{version}: the {topic} code is {rng.randint(1000, 9999)}."]
    lines += [sentence(rng, topic, rng.randint(8, 20)) for _ in range(rng.randint(4, 10))]
    return "\n".join(lines) + "\n"


def folder_state(folder: Path) -> dict[str, str]:
    """``{absolute path: content hash}`` of every readable document under ``folder``."""
    from d2l_haystack.components.source_file_converter import read_source
    from d2l_haystack.core.errors import InputError
    from d2l_haystack.core.textio import content_hash

    out = {}
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.startswith(".") or not name.endswith((".md", ".txt")):
                continue
            path = os.path.join(base, name)
            try:
                out[path] = content_hash(read_source(path)[0])
            except (InputError, OSError):  # vanished while reading: the next poll sees the folder again
                pass
    return out


def in_step(ws: Any, folder: Path) -> bool:
    if (ws.path / "journal.json").exists():
        return False
    records = {p: r.get("hash") for p, r in ws.sources(under=[folder]).items()}
    return records == folder_state(folder)


def final_check(ws: Any, folder: Path) -> dict[str, Any]:
    """Every adapter and chunk against the files' current content."""
    from d2l_haystack.components.source_file_converter import read_source

    files = folder_state(folder)
    texts = {p: read_source(p)[0] for p in files}
    records = ws.sources(under=[folder])
    adapters_ok = adapters_bad = chunks_ok = chunks_bad = 0
    for entry in ws.adapters.list():
        good = entry["id"] in files and entry["content_hash"] == files[entry["id"]] \
            and records.get(entry["id"], {}).get("route") == "d2l"
        adapters_ok, adapters_bad = adapters_ok + good, adapters_bad + (not good)
    for chunk in ws.document_store.filter_documents():
        path = chunk.meta.get("file_path")
        good = path in texts and records.get(path, {}).get("route") == "rag" \
            and (chunk.content or "").strip() in texts[path]
        chunks_ok, chunks_bad = chunks_ok + good, chunks_bad + (not good)
    return {
        "files": len(files), "records": len(records),
        "records_matching": sum(records.get(p, {}).get("hash") == h for p, h in files.items()),
        "d2l": sum(r.get("route") == "d2l" for r in records.values()),
        "rag": sum(r.get("route") == "rag" for r in records.values()),
        "adapters_current": adapters_ok, "adapters_stale": adapters_bad,
        "chunks_current": chunks_ok, "chunks_stale": chunks_bad,
        "verify_problems": len(ws.verify()),
    }


def warm_up(ws: Any, folder: Path) -> None:
    """Load the models (hypernetwork, embedder) before timing: index a file, then forget it."""
    warm = folder.parent / "warm-up.md"
    warm.write_text("# Warm-up\nA short text to load the models before the timing starts.\n")
    ws.index_file(warm)
    ws.index_file(warm, route="rag", force=True)
    ws.remove_file(warm)
    warm.unlink()


# -- burst ----------------------------------------------------------------------------------
def _apply(ops: list[tuple[str, ...]], folder: Path, seconds: float, rng: random.Random,
           versions: dict[str, int]) -> tuple[float, float]:
    """Perform the operations spread evenly over ``seconds``; returns the first and last operation's times."""
    gap = seconds / max(1, len(ops))
    t_first = time.perf_counter()
    for k, op in enumerate(ops):
        delay = t_first + k * gap - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if op[0] in ("create", "edit"):
            idx = int("".join(ch for ch in op[1] if ch.isdigit()))
            versions[op[1]] = versions.get(op[1], 0) + 1
            (folder / op[1]).write_text(document(rng, idx, versions[op[1]]))
        elif op[0] == "rename":
            (folder / op[1]).rename(folder / op[2])
        else:
            (folder / op[1]).unlink()
    return t_first, time.perf_counter()


def _until_in_step(ws: Any, folder: Path, timeout: float) -> float | None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if in_step(ws, folder):
            return time.perf_counter()
        time.sleep(0.05)
    return None


def run_burst(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from d2l_haystack.kb.watcher import DocumentWatcher
    from d2l_haystack.kb.workspace import Workspace

    rng = random.Random(args.seed)
    folder = tmp / "burst" / "docs"
    (folder / "sub").mkdir(parents=True)
    model_name = args.burst_model or args.model
    settings = model_settings(model_name, args.checkpoint, tmp)
    # files over --rag-tokens tokens are routed to RAG (size rule), so both sides of the workspace are exercised
    ws = Workspace(tmp / "burst" / "ws", device="cpu", router={"max_tokens": args.rag_tokens}, **settings)
    warm_up(ws, folder)
    watcher = DocumentWatcher(ws, [folder], debounce=args.debounce)
    watcher.start()
    assert watcher.wait_idle(60)
    versions: dict[str, int] = {}
    # 1. the initial files, all at once
    initial = [("create", f"f{i:04d}.md") for i in range(args.files)]
    t0, t1 = _apply(initial, folder, 0.0, rng, versions)
    in_step_initial = _until_in_step(ws, folder, args.timeout)
    assert watcher.wait_idle(120)
    setup = {"files": args.files, "write_seconds": round(t1 - t0, 3),
             "seconds_until_in_step": round(in_step_initial - t1, 3) if in_step_initial else None,
             "files_per_second_indexed": round(args.files / (in_step_initial - t0), 1) if in_step_initial else None}
    stats0 = {k: watcher.stats[k] for k in ("fs_events", "updates", "route_changes", "errors")}
    actions0 = dict(watcher.stats["actions"])
    # 2. the burst: random edits / renames / deletes / creates over those files
    ops: list[tuple[str, ...]] = []
    live = [name for _, name in initial]
    next_id = args.files
    while len(ops) < args.events:
        r = rng.random()
        if r < 0.55 or len(live) < 20:
            ops.append(("edit", rng.choice(live)))
        elif r < 0.75:
            old = rng.choice(live)
            new = f"{'sub/' if rng.random() < 0.5 else ''}r{next_id:04d}.{'md' if rng.random() < 0.7 else 'txt'}"
            next_id += 1
            live[live.index(old)] = new
            ops.append(("rename", old, new))
        elif r < 0.88:
            victim = rng.choice(live)
            live.remove(victim)
            ops.append(("delete", victim))
        else:
            name = f"n{next_id:04d}.md"
            next_id += 1
            live.append(name)
            ops.append(("create", name))
    t_first, t_last = _apply(ops, folder, args.burst_seconds, rng, versions)
    matched = _until_in_step(ws, folder, args.timeout)
    watcher.wait_idle(60)
    watcher.stop()
    check = final_check(ws, folder)
    counts = {k: len([o for o in ops if o[0] == k]) for k in ("create", "edit", "rename", "delete")}
    total = (matched - t_first) if matched else None
    fs_events = watcher.stats["fs_events"] - stats0["fs_events"]
    actions = {k: v - actions0.get(k, 0) for k, v in watcher.stats["actions"].items() if v - actions0.get(k, 0)}
    return {
        "model": model_name if model_name != "tiny" else "tiny random Llama (4 layers, hidden 64)",
        "checkpoint": settings["checkpoint"], "router_max_tokens": args.rag_tokens, "debounce_s": args.debounce,
        "initial_files": setup, "operations": len(ops), "operation_counts": counts,
        "operations_seconds": round(t_last - t_first, 3), "files_touched": len({o[1] for o in ops}),
        "watchdog_events": fs_events, "updates_applied": watcher.stats["updates"] - stats0["updates"],
        "actions": actions, "route_changes": watcher.stats["route_changes"] - stats0["route_changes"],
        "errors": watcher.stats["errors"],
        "seconds_until_in_step_after_last_event": round(matched - t_last, 3) if matched else None,
        "seconds_first_event_to_in_step": round(total, 3) if total else None,
        "events_per_second_processed": round(len(ops) / total, 1) if total else None,
        "watchdog_events_per_second": round(fs_events / total, 1) if total else None,
        "final_check": check,
    }


# -- latency --------------------------------------------------------------------------------
def long_document(code: int, tokens: int, count: Any) -> str:
    rng = random.Random(7)
    head = (f"# Lumen Labs office handbook\nThe access code of the Lumen Labs server room is {code}. "
            f"Only staff on the server rota may use it.\n")
    parts = [head]
    while count("".join(parts)) < tokens:
        parts.append(sentence(rng, rng.choice(TOPICS), rng.randint(10, 20)) + "\n")
    return "".join(parts)


def run_latency(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from d2l_haystack.kb.workspace import Workspace

    folder = tmp / "latency" / "docs"
    folder.mkdir(parents=True)
    settings = model_settings(args.model, args.checkpoint, tmp)
    settings["max_new_tokens"] = args.max_new_tokens
    ws = Workspace(tmp / "latency" / "ws", device="cpu", **settings)
    router = ws.components.get("router")
    doc = folder / "handbook.md"
    rng = random.Random(args.seed)
    code = rng.randint(1000, 9999)
    doc.write_text(long_document(code, args.latency_tokens, router.count_tokens))
    tokens = router.count_tokens(doc.read_text())
    (folder / "other.md").write_text("# Garden club\nThe garden club meets on Thursdays by the greenhouse.\n")
    question = "What is the access code of the Lumen Labs server room?"
    results: dict[str, Any] = {"model": args.model if args.model != "tiny" else "tiny random Llama",
                               "checkpoint": settings["checkpoint"], "document_tokens": tokens,
                               "max_new_tokens": args.max_new_tokens, "question": question, "by_debounce": {}}
    for debounce in args.latency_debounce:
        results["by_debounce"][f"{debounce:g}"] = _latency_runs(ws, doc, folder, debounce, question, router, rng,
                                                                args)
    return results


def _latency_runs(ws: Any, doc: Path, folder: Path, debounce: float, question: str, router: Any,
                  rng: random.Random, args: argparse.Namespace) -> dict[str, Any]:
    from d2l_haystack.core.textio import content_hash
    from d2l_haystack.kb.watcher import DocumentWatcher

    results: dict[str, Any] = {"debounce_s": debounce, "routes": {}}
    with DocumentWatcher(ws, [folder], debounce=debounce) as watcher:
        assert watcher.wait_idle(600)
        for route in ("d2l", "rag"):
            ws.index_file(doc, route=route)  # forced, so that the edits do not move it
            ws.query(question, max_new_tokens=2)  # warm the query pipeline
            runs = []
            for _ in range(args.repeats):
                code = rng.randint(1000, 9999)
                text = long_document(code, args.latency_tokens, router.count_tokens)
                digest = content_hash(text)
                doc.write_text(text)
                t0 = time.perf_counter()
                while True:
                    rec = ws.record(doc)
                    if rec and rec.get("hash") == digest:
                        break
                    if time.perf_counter() - t0 > args.timeout:
                        raise TimeoutError("the edit was not applied in time")
                    time.sleep(0.02)
                t_commit = time.perf_counter() - t0
                answer = ws.query(question, explain=True)
                t_answer = time.perf_counter() - t0
                doc_id = str(doc.resolve())
                used_adapter = [a for a in answer.adapters if a["id"] == doc_id]
                new_adapter = bool(used_adapter) and ws.adapters.info(doc_id)["content_hash"] == digest
                retrieved = [r for r in (answer.explanation or {}).get("retrieved", []) if r["source"] == doc_id]
                new_chunks = any(str(code) in r["text"] for r in retrieved) and answer.route != "d2l"
                runs.append({"commit_s": round(t_commit, 3), "answered_s": round(t_answer, 3),
                             "query_route": answer.route, "from_new_adapter": new_adapter,
                             "from_new_chunks": new_chunks, "answer": answer.answer.strip()[:120],
                             "answer_has_new_code": str(code) in answer.answer,
                             "index_seconds": rec.get("index_seconds")})
                watcher.wait_idle(60)
            results["routes"][route] = {
                "runs": runs, "commit_s_median": statistics.median(r["commit_s"] for r in runs),
                "answered_s_median": statistics.median(r["answered_s"] for r in runs)}
    return results


# -- report ---------------------------------------------------------------------------------
def print_report(data: dict[str, Any]) -> None:
    b = data.get("burst")
    if b:
        c = b["final_check"]
        kinds = ", ".join(f"{v} {k}" for k, v in b["operation_counts"].items())
        init = b["initial_files"]
        print(f"\nInitial files: {init['files']} written in {init['write_seconds']} s, in step "
              f"{init['seconds_until_in_step']} s after the last ({init['files_per_second_indexed']} files/s)")
        print(f"Burst: {b['operations']} file operations ({kinds}) on {b['files_touched']} files over "
              f"{b['operations_seconds']} s, debounce {b['debounce_s']} s, model {b['model']}")
        actions = ", ".join(f"{v} {k}" for k, v in sorted(b["actions"].items()))
        rows = [("events per second processed", b["events_per_second_processed"]),
                ("what the watcher did", actions),
                ("watchdog events (per second)", f"{b['watchdog_events']} ({b['watchdog_events_per_second']})"),
                ("updates applied after debouncing", b["updates_applied"]),
                ("seconds from last event to in step", b["seconds_until_in_step_after_last_event"]),
                ("files / records / records matching", f"{c['files']} / {c['records']} / {c['records_matching']}"),
                ("routes d2l / rag", f"{c['d2l']} / {c['rag']}"),
                ("adapters current / stale", f"{c['adapters_current']} / {c['adapters_stale']}"),
                ("chunks current / stale", f"{c['chunks_current']} / {c['chunks_stale']}"),
                ("verify() problems, watcher errors", f"{c['verify_problems']}, {b['errors']}")]
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            print(f"  {name:<{width}}  {value}")
    lat = data.get("latency")
    if lat:
        print(f"\nSingle edit of a {lat['document_tokens']}-token document (model {lat['model']}, answers of at most "
              f"{lat['max_new_tokens']} tokens): seconds from the save")
        print(f"  {'debounce':>8} {'route':<6} {'commit (median)':>16} {'answered (median)':>18}  "
              f"runs (commit / answered)")
        for debounce, block in lat["by_debounce"].items():
            for route, r in block["routes"].items():
                runs = ", ".join(f"{x['commit_s']:.2f}/{x['answered_s']:.2f}" for x in r["runs"])
                print(f"  {debounce + ' s':>8} {route:<6} {r['commit_s_median']:>16.2f} "
                      f"{r['answered_s_median']:>18.2f}  {runs}")
    print(f"\nload average: start {data['load_start']}, end {data['load_end']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "burst", "latency"], default="all")
    p.add_argument("--model", default=EMBEDDED, help="base model, or 'tiny' for a tiny random Llama")
    p.add_argument("--checkpoint", default="default", help="hypernetwork checkpoint ('none': untrained)")
    p.add_argument("--burst-model", default=None, help="model for the burst part (default: --model)")
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--burst-seconds", type=float, default=4.0, help="spread the operations over this long")
    p.add_argument("--debounce", type=float, default=1.0, help="watcher debounce for the burst")
    p.add_argument("--rag-tokens", type=int, default=150,
                   help="burst: files over this many tokens go to RAG (router max_tokens; about half of them)")
    p.add_argument("--latency-debounce", type=float, nargs="+", default=[1.0, 0.5], metavar="S",
                   help="watcher debounce(s) for the single edit (default: 1 and 0.5)")
    p.add_argument("--latency-tokens", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads(N) (default: torch's; 1 is much faster on a machine busy with "
                        "other processes)")
    p.add_argument("--quick", action="store_true", help="40 files, 150 events, 1 repeat")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "watch.json"))
    args = p.parse_args(argv)
    if args.checkpoint.lower() in ("none", "untrained"):
        args.checkpoint = None
    if args.quick:
        args.files, args.events, args.repeats = 40, 150, 1
    import logging

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.ERROR)
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    data.update({"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
                 "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "load_start": [round(x, 2) for x in os.getloadavg()],
                 "command": "python benchmarks/bench_watch.py " + " ".join(sys.argv[1:] if argv is None else argv)})
    tmp = Path(tempfile.mkdtemp(prefix="d2l-bench-watch-"))
    try:
        if args.part in ("all", "burst"):
            data["burst"] = run_burst(args, tmp)
            data["burst"]["command"] = data["command"]
        if args.part in ("all", "latency"):
            data["latency"] = run_latency(args, tmp)
            data["latency"]["command"] = data["command"]
            data["latency"]["load_during"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data["load_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda a: print(f"thread error: {a.exc_value}", file=sys.stderr)
    sys.exit(main())
