"""Serving benchmark: queries per second and latency of ``d2l serve`` under concurrent clients.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py                 # the embedded model, ~5 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py --quick         # smoke test

A workspace of the sample documents (the kettle manual internalized: the ``d2l`` route; the app
changelog forced to RAG: the ``rag`` route) is served by ``d2l serve`` in its own process on a free
127.0.0.1 port, once as a folder workspace (FAISS) and once on PostgreSQL + pgvector (a local
``pgserver`` started for the run and stopped after it; ``--stores`` picks). For each route and
each number of concurrent clients (``--clients``, default 1, 4 and 8), every client sends
``--requests`` questions of that route (``POST /d2l/run``, route forced with ``mode``,
``--max-new-tokens`` tokens); reported: queries per second (all answers over the
wall time), p50 and p95 latency, errors. Writes ``benchmarks/results/serve.json`` (``--out``) and
prints a table. Run it on an otherwise idle machine: the numbers are the machine's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _report import print_table, run_info, write_json  # noqa: E402  (beside this script)

QUESTIONS = {
    "d2l": ["How long is the warranty of the Aurora K2 kettle?", "How much water does the Aurora K2 hold?",
            "What should you do before descaling the kettle?"],
    "rag": ["What is new in version 2.4.0 of the Aurora Home app?", "Which version added dark mode?",
            "What changed in the export format?"],
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workspace: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "d2l_haystack", "serve", "-w", str(workspace),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HAYHOOKS_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/status", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("d2l serve did not start: " + log.read_text()[-2000:])


def load(base: str, route: str, clients: int, requests: int, max_new_tokens: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            for i in range(requests):
                question = QUESTIONS[route][(k + i) % len(QUESTIONS[route])]
                t = time.perf_counter()
                reply = http.post("/d2l/run", json={"question": question, "mode": route,
                                                    "max_new_tokens": max_new_tokens})
                took = time.perf_counter() - t
                with lock:
                    if reply.status_code == 200:
                        latencies.append(took)
                    else:
                        errors.append(f"{reply.status_code}: {reply.text[:100]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start_t = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start_t
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None
    return {"route": route, "clients": clients, "requests": clients * requests, "answered": len(latencies),
            "errors": len(errors), "error_examples": errors[:3], "wall_s": round(wall, 2),
            "qps": round(len(latencies) / wall, 3) if wall else None,
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(p95, 3) if p95 is not None else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--requests", type=int, default=6, help="questions per client and setting")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="1 and 2 clients, 2 questions each")
    p.add_argument("--stores", nargs="+", choices=["folder", "postgresql"], default=["folder", "postgresql"])
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.requests = [1, 2], 2
    from d2l_haystack.kb.postgres import start_local_server, stop_local_server
    from d2l_haystack.kb.workspace import Workspace

    rows = []
    for store in args.stores:
        with tempfile.TemporaryDirectory(prefix="d2l-serve-bench-") as tmp_name:
            tmp = Path(tmp_name)
            docs = tmp / "docs"
            shutil.copytree(REPO / "d2l_haystack" / "samples" / "demo", docs)
            url = start_local_server(tmp / "pg") if store == "postgresql" else None
            try:
                ws = Workspace(tmp / "kb", store=url)
                ws.index_file(docs / "kettle-manual.md", route="d2l")
                ws.index_file(docs / "app-changelog.md", route="rag")
                ws.close()
                port = _free_port()
                proc = start(ws.path, port, tmp / "serve.log")
                base = f"http://127.0.0.1:{port}"
                try:
                    load(base, "d2l", 1, 1, args.max_new_tokens)  # warm-up: models loaded, caches filled
                    load(base, "rag", 1, 1, args.max_new_tokens)
                    for route in ("d2l", "rag"):
                        for clients in args.clients:
                            row = {"store": store, **load(base, route, clients, args.requests, args.max_new_tokens)}
                            rows.append(row)
                            print(f"{store} {route} x{clients}: {row['qps']} q/s, p50 {row['p50_s']} s, "
                                  f"p95 {row['p95_s']} s, {row['errors']} errors", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(30)
            finally:
                if url:
                    stop_local_server(tmp / "pg")
    data = {**run_info("bench_serve.py", argv),
            "stores": {"folder": "files.json + FAISS in the workspace folder",
                       "postgresql": "PostgreSQL 16 + pgvector (pgserver, Unix socket, same machine)"},
            "max_new_tokens": args.max_new_tokens, "rows": rows}
    out = write_json(args.out, data)
    print_table(rows, [("store", "store"), ("route", "route"), ("clients", "clients"), ("q/s", "qps"),
                       ("p50 s", "p50_s"), ("p95 s", "p95_s"), ("errors", "errors")])
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
