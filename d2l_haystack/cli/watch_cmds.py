"""The ``watch`` sub-command: keep a workspace in step with folders (foreground service).

Examples::

    d2l watch docs/ --workspace kb                       # Ctrl-C (SIGINT) or SIGTERM stops it cleanly
    d2l watch docs/ notes/ -w kb --include "*.md" --exclude "drafts/*" --debounce 0.5
    d2l watch docs/ -w kb --once                         # reconcile the workspace with the folder and exit

On start the workspace is reconciled with the folders (files added, changed, renamed or deleted
while the watcher was not running). On SIGINT/SIGTERM the update in progress is finished (each
update is atomic and journaled; a second signal stops at once, and the next start redoes the
interrupted update), then the service exits with code 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from .kb_cmds import _add_model_options, _add_workspace, _open, _quiet, _short, add_max_file_size


def _print_event(event: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(event.to_dict(), default=str), flush=True)
        return
    if event.action in ("unchanged", "skipped"):  # skips are logged (stderr) by the watcher
        return
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    moved = f" (was {event.previous_route})" if event.route_changed else ""
    source = f" (from {_short(event.source)})" if event.source else ""
    line = f"{stamp} {event.action:<12} {event.route or '-':<4} {_short(event.path)}{source}{moved}"
    if event.seconds:
        line += f"  [{event.seconds:.2f} s]"
    print(line, flush=True)
    if event.reason and (event.route_changed or event.action in ("removed", "failed")):
        print(f"{'':9}why: {event.reason}", flush=True)


def _cmd_watch(args: argparse.Namespace) -> int:
    _quiet()
    from d2l_haystack.kb.watcher import DocumentWatcher

    ws = _open(args, create=True)
    watcher = DocumentWatcher(
        ws, args.paths, include=args.include, exclude=args.exclude, debounce=args.debounce,
        reroute_interval=args.reroute_interval if args.reroute_interval > 0 else None,
        polling=args.polling,  # the size limit is the workspace's (--max-file-size saves it)
        on_event=lambda e: _print_event(e, args.json))
    if args.once:
        events = watcher.reconcile()
        changed = sum(e.action not in ("unchanged", "skipped") for e in events)
        print(f"workspace {_short(str(ws.path))}: in step with {', '.join(_short(r) for r in watcher.roots)} "
              f"({changed} updates)", file=sys.stderr)
        return 0

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # second signal: stop now; the journal redoes the interrupted update on the next start
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watcher.start()
        print(f"watching {', '.join(_short(r) for r in watcher.roots)} -> workspace {_short(str(ws.path))} "
              f"(debounce {watcher.debounce:g} s; Ctrl-C to stop)", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("stopping: finishing the update in progress...", file=sys.stderr, flush=True)
        watcher.stop(drain=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    s = watcher.stats
    print(f"stopped: {s['updates']} updates, {s['route_changes']} route changes, {s['skipped']} skipped, "
          f"{s['errors']} errors", file=sys.stderr, flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "watch", help="keep a workspace in step with folders (index, re-index, rename, remove; foreground)",
        description="Watch folders recursively and apply every change to the workspace: new and edited files are "
                    "(re)indexed and routed (D2L or RAG), renamed files keep their record, deleted files lose "
                    "their adapter and chunks. Reconciles on start; SIGINT/SIGTERM stop it cleanly.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="folders (or single files) to watch")
    _add_workspace(p)
    _add_model_options(p)
    p.add_argument("--include", action="append", default=None, metavar="GLOB",
                   help="only files matching (relative path or name; repeatable; default: every readable type)")
    p.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="skip files or folders matching (repeatable; hidden files and editor temporaries always)")
    p.add_argument("--debounce", type=float, default=1.0, metavar="S",
                   help="seconds of quiet before a changed file is processed (default 1)")
    p.add_argument("--reroute-interval", type=float, default=300.0, metavar="S",
                   help="re-evaluate routes this often while idle (also after new queries; 0: only after queries)")
    add_max_file_size(p)
    p.add_argument("--polling", action="store_true", help="poll the folders instead of OS notifications")
    p.add_argument("--once", action="store_true", help="reconcile the workspace with the folders and exit")
    p.add_argument("--json", action="store_true", help="print one JSON line per event")
    p.set_defaults(handler=_cmd_watch)
