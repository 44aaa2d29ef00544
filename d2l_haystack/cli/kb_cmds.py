"""Knowledge-base sub-commands: ``index``, ``query``, ``status``, ``remove`` and ``demo``.

Examples::

    d2l index docs/ notes.md --workspace kb      # route each file to D2L or RAG
    d2l query "What is the warranty period?" --workspace kb --explain
    d2l status --workspace kb
    d2l remove notes.md --workspace kb
    d2l demo                                     # sample documents, a few questions, routes

``--workspace`` defaults to ``$D2L_WORKSPACE`` or ``./d2l-workspace``. ``index`` creates the
workspace; the model settings given when it is created (``--model``, ``--checkpoint``) are
saved in it and used by every later command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .options import CHUNKING_CHOICES, add_device_option, checkpoint_arg

DEMO_QUESTIONS: list[tuple[str, list[str]]] = [
    ("How long is the warranty of the Aurora K2 kettle?", ["3 years", "3-year", "three years"]),
    ("What does error code E4 mean on the Aurora K2 kettle?", ["dry boil"]),
    ("When is lunch catered at the Lumen Labs office?", ["Thursday"]),
    ("What is new in version 2.5.0 of the Aurora Home app?", ["descaling reminder"]),
    ("Is shipping free for an order of 60 euros?", ["yes"]),
    ("What is the capital of France?", ["Paris"]),
]
"""The demo's questions with the answers the sample documents give (any one counts, after the
SQuAD normalisation), so the demo shows which route answered right instead of leaving it to the
reader."""

DEMO_EDITS = [
    "## 2.5.0 (2026-04-14)\n- New: a descaling reminder every 4 weeks.\n"
    "- Changed: schedules can now repeat on weekends.\n",
    "## 2.5.1 (2026-04-20)\n- Fixed: the descaling reminder appeared in the wrong language.\n",
]


def _default_workspace() -> str:
    return os.environ.get("D2L_WORKSPACE") or "d2l-workspace"


def _quiet() -> None:
    os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _add_workspace(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", "-w", default=None, metavar="DIR",
                   help="workspace folder (default: $D2L_WORKSPACE or ./d2l-workspace)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="base model, saved in the workspace (default: the saved one, else smollm2-135m-instruct)")
    p.add_argument("--checkpoint", type=checkpoint_arg, default=argparse.SUPPRESS,
                   help="hypernetwork checkpoint, saved in the workspace: 'default', a folder, or 'none' (untrained)")
    p.add_argument("--chunking", choices=CHUNKING_CHOICES, default=argparse.SUPPRESS,
                   help="how adapters cut documents, saved in the workspace: tokens, sentences, or auto "
                        "(sentences for a document that fits in one chunk)")
    p.add_argument("--reading-memory", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="document adapters carry the checkpoint's reading-memory rows, saved in the workspace "
                        "(default: on; --no-reading-memory internalizes faster into smaller adapters)")
    add_device_option(p)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "model", None):
        out["model"] = args.model
    if hasattr(args, "checkpoint"):  # given on the command line ('none' is None)
        out["checkpoint"] = args.checkpoint
    if hasattr(args, "chunking"):
        out["chunking"] = args.chunking
    if hasattr(args, "reading_memory"):
        out["reading_memory"] = args.reading_memory
    if getattr(args, "max_file_size", None) is not None:
        out["max_file_bytes"] = args.max_file_size
    if getattr(args, "store", None):
        out["store"] = args.store
    return out


def add_max_file_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-file-size", type=int, default=None, metavar="BYTES",
                   help="largest file indexed, saved in the workspace (default: the saved one, else 8 MiB)")


def _open(args: argparse.Namespace, create: bool, recover: bool = True) -> Any:
    from d2l_haystack.kb.workspace import Workspace

    path = args.workspace or _default_workspace()
    settings = _settings(args) if create else {}
    return Workspace(path, create=create, device=getattr(args, "device", None), recover=recover, **settings)


def _short(path: str) -> str:
    """``path`` relative to the current folder when it lies inside it, control characters (a
    newline in a file name) escaped so that one path stays one line."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        rel = path
    shown = path if rel.startswith("..") else rel
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    from d2l_haystack.components.internalization_router import human_duration

    return human_duration(time.time() - ts) + " ago"


def _print_result(result: Any) -> None:
    moved = (f" (was {result.previous_route})" if result.previous_route and result.previous_route != result.route
             else "")
    detail = f"{result.chunks} chunks" if result.route == "rag" else "adapter"
    print(f"{result.action:<12} {result.route or '-':<4} {_short(result.path)}  [{detail}, {result.seconds:.2f} s]"
          f"{moved}")
    if result.action != "unchanged":
        print(f"{'':13}why: {result.reason}")


# -- index --------------------------------------------------------------------------------
def _cmd_index(args: argparse.Namespace) -> int:
    _quiet()
    from d2l_haystack.core.errors import InputError

    ws = _open(args, create=True)
    errors = 0

    def report(item: Any) -> None:  # an IndexResult, or a skipped file (InputError; "path: why" from --ray)
        nonlocal errors
        if isinstance(item, InputError | str):
            errors += 1
            print(f"skipped      {item}", file=sys.stderr)
        else:
            _print_result(item)

    if args.ray is not None:  # the hypernetwork passes on a Ray cluster, the commits here
        from d2l_haystack.kb.ray_index import index_with_ray

        done = index_with_ray(ws, args.paths, address=None if args.ray == "local" else args.ray,
                              workers=args.workers, route=args.route, force=args.force, on_result=report)
        results = done.results
        print(f"ray: {done.internalized_on_workers} internalized by {done.workers} worker(s), {done.unchanged} "
              f"unchanged, {len(done.failures)} failed, {done.docs_per_second} documents/s")
    else:
        results = ws.index_paths(args.paths, route=args.route, force=args.force, skip_errors=args.skip_errors,
                                 on_result=report)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.action] = counts.get(r.action, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing to index"
    print(f"workspace {_short(str(ws.path))}: {summary}" + (f", {errors} skipped" if errors else ""))
    return 1 if errors and not results else 0


# -- query --------------------------------------------------------------------------------
def _print_answer(answer: Any, explain: bool, streamed: bool = False) -> None:
    if not streamed:
        print(answer.answer)
    used = ", ".join(_short(a["path"]) + f" ({a['score']:.2f})" for a in answer.adapters) or "-"
    sources = sorted({_short(c["path"]) for c in answer.chunks})
    print(f"[route: {answer.route} | adapters: {used} | chunks: {len(answer.chunks)}"
          + (f" from {', '.join(sources)}" if sources else "") + f" | {answer.seconds:.2f} s]")
    if explain and answer.explanation:
        ex = answer.explanation
        print(f"why: {ex['reason']}")
        print(f"relevance of internalized documents (threshold {ex['threshold']:.2f}):")
        for c in ex.get("candidates", []) or [{"id": "(none internalized)", "score": float("nan")}]:
            print(f"  {c['score']:6.2f}  {_short(c['id'])}")
        print("retrieved chunks (cosine similarity):")
        for c in ex.get("retrieved", []) or [{"source": "(none)", "similarity": None, "text": ""}]:
            sim = f"{c['similarity']:6.2f}" if c.get("similarity") is not None else "     -"
            text = c.get("text", "").replace("\n", " ")[:70]
            print(f"  {sim}  {_short(str(c['source']))}: {text}")


def _cmd_query(args: argparse.Namespace) -> int:
    _quiet()
    ws = _open(args, create=False)
    callback = None
    if args.stream and not args.json:
        def callback(chunk: Any) -> None:
            if chunk.content:
                print(chunk.content, end="", flush=True)
    answer = ws.query(args.question, explain=args.explain, max_new_tokens=args.max_new_tokens, mode=args.mode,
                      streaming_callback=callback)
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2, default=str))
        return 0
    if callback is not None:
        print()
    _print_answer(answer, args.explain, streamed=callback is not None)
    return 0


# -- status -------------------------------------------------------------------------------
def _cmd_status(args: argparse.Namespace) -> int:
    ws = _open(args, create=False, recover=False)  # status loads no model: it never redoes an update
    st = ws.status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    t = st["totals"]
    checkpoint = st["checkpoint"] if st["checkpoint"] is not None else "none (untrained)"
    print(f"workspace {_short(st['workspace'])}: model {st['model']}, checkpoint {checkpoint}")
    print(f"{t['documents']} documents: {t['d2l']} internalized (D2L, {_size(t['adapter_bytes'])} of adapters), "
          f"{t['rag']} indexed (RAG, {t['chunks']} chunks)")
    if st["queries"]:
        print("queries by route: " + ", ".join(f"{k} {v}" for k, v in sorted(st["queries"].items())))
    if st["pending_recovery"]:
        print(f"note: an interrupted update is waiting to be redone (`d2l repair -w {_short(st['workspace'])}`)")
    if st["rag_index_problem"]:
        print(f"damaged: the RAG index ({st['rag_index_problem']}); `d2l repair -w {_short(st['workspace'])}`")
    damaged = [d for d in st["documents"] if d["problem"]]
    if damaged:
        print(f"damaged: {len(damaged)} adapter(s), flagged below; `d2l repair -w {_short(st['workspace'])}`")
    if not st["documents"]:
        return 0
    print(f"\n{'route':<5} {'size':>9} {'queries':>7} {'changes':>7} {'last change':>12}  document")
    for d in st["documents"]:
        size = _size(d["adapter_bytes"]) if d["route"] == "d2l" else f"{d['chunks']} chunks"
        flag = "" if d["exists"] in (None, True) else "  (file missing)"
        flag += "  (adapter damaged)" if d["problem"] else ""
        print(f"{d['route'] or '-':<5} {size:>9} {d['queries']:>7} {d['changes']:>7} {_ago(d['last_change']):>12}  "
              f"{_short(d['path'])}{flag}")
        print(f"{'':5} why: {d['reason']}")
        for c in d.get("route_changes", [])[-3:]:  # the latest route changes, each with its reason
            print(f"{'':5} moved {c['from']} -> {c['to']} {_ago(c['at'])}: {c.get('reason', '')}")
    return 0


# -- verify / repair ----------------------------------------------------------------------
def _cmd_verify(args: argparse.Namespace) -> int:
    ws = _open(args, create=False, recover=False)  # reads everything, changes nothing
    problems = ws.verify()
    if args.json:
        print(json.dumps({"workspace": str(ws.path), "problems": problems}, indent=2))
    else:
        for line in problems:
            print(f"problem  {line}")
        print(f"workspace {_short(str(ws.path))}: " + (f"{len(problems)} problem(s); fix with "
                                                       f"`d2l repair -w {_short(str(ws.path))}`" if problems
                                                       else "healthy"))
    return 1 if problems else 0


def _cmd_repair(args: argparse.Namespace) -> int:
    _quiet()
    ws = _open(args, create=False, recover=False)  # repair() finishes an interrupted update itself
    done = ws.repair(on_action=lambda line: print(f"repaired {line}"))
    left = ws.verify()
    for line in left:
        print(f"problem  {line}", file=sys.stderr)
    print(f"workspace {_short(str(ws.path))}: " + (f"{len(done)} repair(s)" if done else "nothing to repair")
          + (f", {len(left)} problem(s) left" if left else ", healthy"))
    return 1 if left else 0


# -- remove -------------------------------------------------------------------------------
def _cmd_remove(args: argparse.Namespace) -> int:
    ws = _open(args, create=False)
    missing = 0
    for path in args.paths:
        if ws.remove_file(path):
            print(f"removed      {_short(str(Path(path).resolve()))}")
        else:
            missing += 1
            print(f"not indexed  {path}", file=sys.stderr)
    return 1 if missing == len(args.paths) else 0


# -- demo ---------------------------------------------------------------------------------
def sample_documents() -> list[Path]:
    """The sample documents shipped with the package (``d2l_haystack/samples/demo``)."""
    folder = Path(str(resources.files("d2l_haystack") / "samples" / "demo"))
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _cmd_demo(args: argparse.Namespace) -> int:
    _quiet()
    from d2l_haystack.kb.workspace import Workspace

    start = time.perf_counter()
    path = Path(args.workspace) if args.workspace else Path(tempfile.mkdtemp(prefix="d2l-demo-"))
    ws = Workspace(path, device=args.device, max_new_tokens=args.max_new_tokens, **_settings(args))
    sources = ws.path / "sources"
    sources.mkdir(exist_ok=True)
    for sample in sample_documents():
        if not (sources / sample.name).exists():
            shutil.copy(sample, sources / sample.name)
    print(f"d2l demo: workspace {_short(str(ws.path))}, model {ws.settings['model']}")
    print("\n== 1. indexing the sample documents (each one is routed: D2L adapter or RAG chunks)")
    for f in sorted(sources.iterdir()):
        if ws.supports(f):
            _print_result(ws.index_file(f))
    engine = ws.components.get("converter").engine
    if not engine.trained:
        print("\nnote: no trained hypernetwork checkpoint is installed: adapters are zero, so D2L answers come "
              "from the base model alone (routing, storage and timing are real).")

    print("\n== 2. the changelog is edited twice in a row (the workspace keeps each file's change history)")
    changelog = sources / "app-changelog.md"
    for edit in DEMO_EDITS:
        text = changelog.read_text(encoding="utf-8")
        if edit.splitlines()[0] in text:
            continue
        head, sep, rest = text.partition("\n\n")
        changelog.write_text(f"{head}{sep}{edit}\n{rest}", encoding="utf-8")
        time.sleep(0.2)
        _print_result(ws.index_file(changelog))

    print("\n== 3. re-indexing everything: unchanged files do no work")
    results = ws.index_paths([sources])
    print(", ".join(f"{Path(r.path).name}: {r.action}" for r in results))

    print("\n== 4. questions (the query router picks the adapter of a relevant document, or RAG)")
    from d2l_haystack.evaluation.metrics import contains

    right: dict[str, list[bool]] = {}
    beside: list[bool] = []  # the document in the prompt, on the questions an adapter answered
    for question, expected in DEMO_QUESTIONS:
        answer = ws.query(question, max_new_tokens=args.max_new_tokens)
        hit = bool(contains(answer.answer, expected))
        right.setdefault(answer.route, []).append(hit)
        print(f"\nQ: {question}\nA: {answer.answer.strip()}")
        print(f"   expected: {expected[0]} -> {'right' if hit else 'wrong'}")
        _print_answer(answer, explain=False, streamed=True)
        print(f"   why: {answer.reason}")
        texts = [Path(a["path"]).read_text(encoding="utf-8") for a in answer.adapters if Path(a["path"]).is_file()]
        if texts:  # what internalizing buys: the same question with the document in the prompt instead
            icl = engine.generate(question, context="\n\n".join(texts), max_new_tokens=args.max_new_tokens)
            icl_hit = bool(contains(icl.text, expected))
            beside.append(icl_hit)
            print(f"   document in the prompt instead: {icl.text.strip()!r} -> {'right' if icl_hit else 'wrong'} "
                  f"({icl.prompt_tokens} prompt tokens, {icl.seconds:.2f} s; the adapter's prompt had "
                  f"{answer.meta.get('usage', {}).get('prompt_tokens', '?')} tokens, {answer.seconds:.2f} s)")
    print("\nright answers by route: " + ", ".join(f"{route} {sum(v)}/{len(v)}" for route, v in sorted(right.items()))
          + f" (of {len(DEMO_QUESTIONS)} questions)")
    if beside:
        adapter_hits = sum(right.get("d2l", [])) + sum(right.get("hybrid", []))
        print(f"questions answered by adapters: {adapter_hits}/{len(beside)} right; the same questions with the "
              f"document in the prompt: {sum(beside)}/{len(beside)} right")

    print("\n== 5. status")
    status_args = argparse.Namespace(workspace=str(ws.path), json=False)
    _cmd_status(status_args)
    print(f"\nd2l demo: done in {time.perf_counter() - start:.0f} s. Try: d2l query \"...\" --workspace "
          f"{_short(str(ws.path))} --explain")
    return 0


# -- registration -------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="index files or folders into a workspace (routed to D2L or RAG)",
                              description="Index .txt, .md, .html (and .pdf with pypdfium2/pypdf) files. Each "
                                          "document is routed to an adapter (D2L) or to FAISS chunks (RAG); "
                                          "unchanged files do no work.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    _add_workspace(p)
    _add_model_options(p)
    p.add_argument("--route", choices=["d2l", "rag", "auto"], default=None,
                   help="force a route for these files (remembered; 'auto' clears it)")
    p.add_argument("--force", action="store_true", help="redo the work even for unchanged files")
    p.add_argument("--skip-errors", action="store_true", help="skip unreadable files instead of stopping")
    add_max_file_size(p)
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="internalize on a Ray cluster (ADDRESS as ray.init takes it: auto, ray://head:10001; "
                        "alone: a local cluster for this run); bad files are reported and skipped")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --ray: workers in the pool (default: the cluster's GPUs, else its CPUs)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="keep a NEW workspace's records and RAG chunks in this PostgreSQL database "
                        "(postgresql://..., or $VARIABLE naming one; `d2l postgres start` runs a local one); "
                        "saved in the workspace (default: the folder, with FAISS)")
    p.set_defaults(handler=_cmd_index)

    p = subparsers.add_parser("query", help="answer a question from a workspace (adapter, RAG or hybrid)")
    p.add_argument("question")
    _add_workspace(p)
    add_device_option(p)
    p.add_argument("--explain", action="store_true", help="show the routing scores and retrieved chunks")
    p.add_argument("--mode", choices=["d2l", "rag", "hybrid"], default=None, help="force a route")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="answer length limit")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print the answer while it is generated (default on)")
    p.add_argument("--json", action="store_true", help="print the answer and its metadata as JSON")
    p.set_defaults(handler=_cmd_query)

    p = subparsers.add_parser("status", help="list a workspace's documents: route, why, size, queries, changes")
    _add_workspace(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_status)

    p = subparsers.add_parser("verify", help="check a workspace: adapter checksums, chunks, records, store files",
                              description="Read every record, adapter file (against its checksum) and the RAG "
                                          "index; print one line per problem. Exit 1 when there is any. "
                                          "Changes nothing.")
    _add_workspace(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_verify)

    p = subparsers.add_parser("repair", help="fix what `d2l verify` finds, from the records and the source files",
                              description="Finish an interrupted update, rebuild a damaged RAG index (the damaged "
                                          "one is moved aside, not deleted), re-internalize damaged adapters, "
                                          "forget files that are gone, drop what nothing refers to.")
    _add_workspace(p)
    add_device_option(p)
    p.set_defaults(handler=_cmd_repair)

    p = subparsers.add_parser("remove", help="remove files from a workspace (adapter, chunks and record)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    _add_workspace(p)
    p.set_defaults(handler=_cmd_remove)

    p = subparsers.add_parser("demo", help="index the sample documents and answer a few questions, showing routes")
    p.add_argument("--workspace", "-w", default=None, metavar="DIR",
                   help="workspace folder (default: a new temporary folder)")
    _add_model_options(p)
    p.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="answer length limit (default 48)")
    p.set_defaults(handler=_cmd_demo)
