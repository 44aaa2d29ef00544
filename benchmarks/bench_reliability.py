"""Reliability benchmark: churn through the watcher, damaged files, kill -9, bad input.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reliability.py            # all parts, ~10 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reliability.py --quick    # smoke test, ~2 min

Writes ``benchmarks/results/reliability/reliability.json`` (``--out``) and prints a table per part.
Every part runs on a tiny random Llama (4 layers, hidden 64, the real SmolLM2 tokenizer, untrained
hypernetwork): what is measured is the bookkeeping (records, adapters, chunks, journal), not the model.

* **churn**: for each seed a :class:`~d2l_haystack.kb.watcher.DocumentWatcher` (debounce 0.15 s)
  watches a folder while :class:`~d2l_haystack.bench.churn.Churn` applies bursts of 1-15 random
  operations (create, edit, delete, rename, rename over, move between folders, folder create,
  rename and delete; a burst takes milliseconds, well inside the debounce window); after each
  quiet period :func:`~d2l_haystack.bench.churn.mismatches` compares the workspace with the folder.
  Reported: operations, files at the end, quiet periods checked, mismatches (must be 0).
* **damage**: each kind of damage is applied to a fresh workspace of 6 documents (3 adapters, 3
  RAG); reported per kind: whether ``verify()`` found it, whether a question still got an answer,
  whether ``repair()`` left the workspace healthy (``verify() == []``) and answering.
* **kill -9**: ``d2l index`` in a subprocess is killed with SIGKILL after a random delay (so at
  random points: loading, internalizing, committing); then the workspace is reopened for writing
  (which finishes or rolls back what the journal holds) and verified. Reported: kills, the points
  the journal was left at, healthy afterwards (must be all).
* **bad input**: commands a user might get wrong; reported: the exit code and the first line of
  the message (must be one line, exit 2, no traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_watch import tiny_model  # noqa: E402  (sibling script)

DOCS = {
    "kettle.md": "# Kettle\nThe Aurora K2 kettle has a two-year warranty and boils 1.7 litres.\n",
    "office.md": "# Office\nThe Lyon office opens at nine and closes at five on weekdays.\n",
    "garden.txt": "The community garden is watered every Tuesday by the volunteers.\n",
    "changelog.md": "# Changelog\nVersion 2.4 adds dark mode. Version 2.3 changed the export format.\n",
    "faq.md": "# FAQ\nReturns are accepted within thirty days with the receipt.\n",
    "menu.txt": "The canteen serves soup on Mondays and fish on Fridays.\n",
}
RAG_DOCS = ("changelog.md", "faq.md", "menu.txt")


def _settings(model: str) -> dict[str, Any]:
    return {"model": model, "checkpoint": None, "chunk_tokens": 64, "max_new_tokens": 4}


def _fresh(tmp: Path, model: str, name: str, extra: int = 0) -> tuple[Any, Path]:
    """A workspace of :data:`DOCS` (three forced to RAG) and ``extra`` more generated notes."""
    from d2l_haystack.kb.workspace import Workspace

    docs = tmp / f"{name}-docs"
    docs.mkdir()
    for file, text in DOCS.items():
        (docs / file).write_text(text, encoding="utf-8")
    for i in range(extra):
        (docs / f"note{i}.md").write_text(f"# Note {i}\nLocker {i} is on floor {i % 7} and opens with {i * 37}.\n")
    ws = Workspace(tmp / f"{name}-kb", device="cpu", **_settings(model))
    for file in sorted(docs.iterdir()):
        ws.index_file(file, route="rag" if file.name in RAG_DOCS or file.name.endswith("3.md") else "d2l")
    return ws, docs


# -- churn ----------------------------------------------------------------------------------
def run_churn(tmp: Path, model: str, seeds: list[int], operations: int) -> list[dict[str, Any]]:
    from d2l_haystack.bench.churn import Churn, mismatches
    from d2l_haystack.kb.watcher import DocumentWatcher
    from d2l_haystack.kb.workspace import Workspace

    rows = []
    for seed in seeds:
        docs = tmp / f"churn-{seed}"
        ws = Workspace(tmp / f"churn-{seed}-kb", device="cpu", **_settings(model))
        churn = Churn(docs, seed=seed, max_files=50)
        for _ in range(10):
            churn.step()
        rng = random.Random(seed)
        done = periods = bad = 0
        examples: list[Any] = []
        start = time.perf_counter()
        with DocumentWatcher(ws, [docs], debounce=0.15) as watcher:
            watcher.wait_idle(120)
            while done < operations:
                burst = [churn.step() for _ in range(rng.randint(1, 15))]
                done += len(burst)
                if not watcher.wait_idle(120):
                    examples.append({"operations": burst, "problems": ["watcher not idle after 120 s"]})
                problems = mismatches(ws, watcher)
                periods += 1
                bad += len(problems)
                if problems and len(examples) < 3:
                    examples.append({"operations": burst, "problems": problems})
        rows.append({"seed": seed, "operations": done, "files_at_end": len(churn.files()), "quiet_periods": periods,
                     "mismatches": bad, "operation_counts": dict(sorted(churn.counts.items())),
                     "seconds": round(time.perf_counter() - start, 1), "examples": examples})
        print(f"churn seed {seed}: {done} operations, {periods} quiet periods, {bad} mismatches", flush=True)
    return rows


# -- damage ---------------------------------------------------------------------------------
def _adapter_file(ws: Any) -> Path:
    return next(p for p in sorted((ws.path / "adapters" / "objects").iterdir())
                if p.suffix == ".safetensors" and not p.name.endswith(".routing.safetensors"))


def _overwrite_middle(path: Path, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = os.urandom(min(n, len(data) - mid))
    path.write_bytes(bytes(data))


DAMAGE = {
    "adapter bytes overwritten (same size)": lambda ws, docs: _overwrite_middle(_adapter_file(ws)),
    "adapter file truncated": lambda ws, docs: _adapter_file(ws).write_bytes(_adapter_file(ws).read_bytes()[:500]),
    "adapter file deleted": lambda ws, docs: _adapter_file(ws).unlink(),
    "faiss/index.json truncated": lambda ws, docs: (ws.path / "faiss" / "index.json").write_bytes(
        (ws.path / "faiss" / "index.json").read_bytes()[:200]),
    "faiss/index.faiss truncated": lambda ws, docs: (ws.path / "faiss" / "index.faiss").write_bytes(b"\0" * 10),
    "faiss folder deleted": lambda ws, docs: __import__("shutil").rmtree(ws.path / "faiss"),
    "journal.json left by a crash": lambda ws, docs: (ws.path / "journal.json").write_text(
        json.dumps({"op": "index", "doc_id": str(docs / "kettle.md"), "route": None, "phase": "commit"})),
    "journal.json garbage": lambda ws, docs: (ws.path / "journal.json").write_text("{not json"),
    "orphan adapter file": lambda ws, docs: (ws.path / "adapters" / "objects" / "deadbeef.0.safetensors").write_bytes(
        b"x" * 100),
    "a source file deleted behind the workspace": lambda ws, docs: (docs / "garden.txt").unlink(),
}


def run_damage(tmp: Path, model: str) -> list[dict[str, Any]]:
    from d2l_haystack.core.errors import D2LError
    from d2l_haystack.kb.workspace import Workspace
    from d2l_haystack.stores import faiss_document_store

    rows = []
    for i, (kind, damage) in enumerate(DAMAGE.items()):
        ws, docs = _fresh(tmp, model, f"damage{i}")
        path = ws.path
        damage(ws, docs)
        faiss_document_store._REGISTRY.clear()  # as a new process would see the files
        row: dict[str, Any] = {"damage": kind}
        try:
            opened = Workspace(path, device="cpu", recover=False)
            row["found_by_verify"] = bool(opened.verify())
            try:
                opened.query("How long is the kettle warranty?")
                row["still_answers"] = True
            except D2LError as exc:
                row["still_answers"] = False
                row["query_error"] = str(exc)
            done = opened.repair()
            faiss_document_store._REGISTRY.clear()
            again = Workspace.open(path, device="cpu")
            left = again.verify()
            again.query("How long is the kettle warranty?")
            row.update(repairs=done, healthy_after_repair=not left, left=left)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, never stops
            row.update(healthy_after_repair=False, error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
        print(f"damage: {kind}: found {row.get('found_by_verify')}, answers {row.get('still_answers')}, "
              f"healthy after repair {row.get('healthy_after_repair')}", flush=True)
    return rows


# -- kill -9 --------------------------------------------------------------------------------
def run_kills(tmp: Path, model: str, kills: int, seed: int) -> list[dict[str, Any]]:
    from d2l_haystack.kb.workspace import Workspace
    from d2l_haystack.stores import faiss_document_store

    rng = random.Random(seed)
    ws, docs = _fresh(tmp, model, "kill", extra=60)
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for k in range(kills):
        for file in sorted(docs.iterdir()):  # a new version of every file: every index does work
            base = file.read_text(encoding="utf-8").split("\nRevision")[0]
            file.write_text(base + f"\nRevision {k}: note {rng.randint(0, 10**6)}.\n", encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "d2l_haystack", "index", str(docs), "-w", str(ws.path),
                                 "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.perf_counter()
        if k % 3 == 0:  # at a random moment
            time.sleep(rng.uniform(3.0, 20.0))
        else:  # in the middle of the n-th update: internalizing (prepare) or writing the stores (commit)
            phase = "prepare" if k % 3 == 1 else "commit"
            target, seen, was = rng.randint(1, 30), 0, False
            while proc.poll() is None and seen < target:
                now = _journal_phase(ws.path) == phase
                seen += now and not was
                was = now
                time.sleep(0.0002)
            time.sleep(rng.uniform(0.0, 0.003 if phase == "commit" else 0.02))
        delay = time.perf_counter() - start
        finished = proc.poll() is not None
        if not finished:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        journal = ws.path / "journal.json"
        point = json.loads(journal.read_text()).get("phase", "?") if journal.exists() else "none"
        faiss_document_store._REGISTRY.clear()
        again = Workspace(ws.path, device="cpu")  # a writer: finishes or rolls back
        left = again.verify()
        rows.append({"delay_s": round(delay, 2), "finished_before_kill": finished, "journal_phase": point,
                     "healthy_after_reopen": not left, "left": left})
        print(f"kill {k}: after {delay:.1f} s, journal {point}, healthy {not left}", flush=True)
    return rows


def _journal_phase(path: Path) -> str | None:
    try:
        return json.loads((path / "journal.json").read_text()).get("phase")
    except (OSError, ValueError):
        return None


# -- bad input ------------------------------------------------------------------------------
def run_bad_input(tmp: Path, model: str) -> list[dict[str, Any]]:
    ws, docs = _fresh(tmp, model, "bad")
    (tmp / "binary.md").write_bytes(b"\x00\x01\x02" * 100)
    (tmp / "empty.md").write_text("")
    (tmp / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp / "big.md").write_text("word " * 2_000_000)
    w = ["-w", str(ws.path)]
    cases = {
        "index a missing file": ["index", str(tmp / "nope.md"), *w],
        "index a binary file": ["index", str(tmp / "binary.md"), *w],
        "index an empty file": ["index", str(tmp / "empty.md"), *w],
        "index a non-UTF-8 file": ["index", str(tmp / "latin1.txt"), *w],
        "index a 10 MB file (limit 8 MiB)": ["index", str(tmp / "big.md"), *w],
        "index with a bad route": ["index", str(docs / "kettle.md"), "--route", "both", *w],
        "query an empty question": ["query", "  ", *w],
        "query with --max-new-tokens -1": ["query", "What?", "--max-new-tokens", "-1", *w],
        "query a missing workspace": ["query", "What?", "-w", str(tmp / "nowhere")],
        "status of a folder that is not a workspace": ["status", "-w", str(docs)],
        "ask with a missing adapter folder": ["ask", "What?", "--adapter", str(tmp / "none")],
        "remove a file that is not indexed": ["remove", str(tmp / "nope.md"), *w],
    }
    rows = []
    for name, argv in cases.items():
        run = subprocess.run([sys.executable, "-m", "d2l_haystack", *argv], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
        lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
        errors = [line for line in lines if "error:" in line] or lines
        rows.append({"case": name, "exit": run.returncode, "message": errors[0] if errors else "",
                     "lines": len(lines), "traceback": "Traceback" in run.stderr})
        print(f"bad input: {name}: exit {run.returncode}: {rows[-1]['message'][:110]}", flush=True)
    return rows


def print_report(data: dict[str, Any]) -> None:
    if data.get("churn"):
        print("\n| seed | operations | files at end | quiet periods | mismatches |\n|---|---|---|---|---|")
        for r in data["churn"]:
            print(f"| {r['seed']} | {r['operations']} | {r['files_at_end']} | {r['quiet_periods']} "
                  f"| {r['mismatches']} |")
    if data.get("damage"):
        print("\n| damage | found by verify | still answers | healthy after repair |\n|---|---|---|---|")
        for r in data["damage"]:
            print(f"| {r['damage']} | {r.get('found_by_verify')} | {r.get('still_answers')} | "
                  f"{r.get('healthy_after_repair')} |")
    if data.get("kills"):
        healthy = sum(r["healthy_after_reopen"] for r in data["kills"])
        phases: dict[str, int] = {}
        for r in data["kills"]:
            phases[r["journal_phase"]] = phases.get(r["journal_phase"], 0) + 1
        print(f"\nkill -9: {len(data['kills'])} kills, journal left at {phases}, healthy after reopen {healthy}")
    if data.get("bad_input"):
        print("\n| bad input | exit | message |\n|---|---|---|")
        for r in data["bad_input"]:
            print(f"| {r['case']} | {r['exit']} | {r['message'][:100]} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["all", "churn", "damage", "kills", "bad_input"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--operations", type=int, default=1000, help="churn operations per seed")
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="one seed, 150 operations, 3 kills")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reliability" / "reliability.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.operations, args.kills = args.seeds[:1], 150, 3
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.CRITICAL)
    out = Path(args.out)
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    data.update({"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
                 "command": " ".join(["benchmarks/bench_reliability.py", *(argv or sys.argv[1:])]),
                 "model": "tiny random Llama (4 layers, hidden 64), untrained hypernetwork"})
    with tempfile.TemporaryDirectory(prefix="d2l-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        model = tiny_model(tmp)
        parts = ["churn", "damage", "kills", "bad_input"] if args.part == "all" else [args.part]
        if "churn" in parts:
            data["churn"] = run_churn(tmp, model, args.seeds, args.operations)
        if "damage" in parts:
            data["damage"] = run_damage(tmp, model)
        if "kills" in parts:
            data["kills"] = run_kills(tmp, model, args.kills, args.seeds[0])
        if "bad_input" in parts:
            data["bad_input"] = run_bad_input(tmp, model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print_report(data)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
