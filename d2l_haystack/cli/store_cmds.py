"""The ``workspace`` and ``postgres`` sub-commands: moving a workspace into a shared PostgreSQL
database, and a local PostgreSQL + pgvector server to try it with.

Examples::

    d2l postgres start pg                        # prints postgresql://postgres:@/postgres?host=...
    d2l index docs/ -w kb --store "$(d2l postgres start pg)"
    d2l workspace copy kb postgresql://user:pw@db.internal/kb --to /mnt/shared/kb
    d2l workspace copy kb "$D2L_STORE"           # in place: kb's records move into the database
    d2l postgres stop pg
"""

from __future__ import annotations

import argparse

from .kb_cmds import _default_workspace, _quiet


def _cmd_copy(args: argparse.Namespace) -> int:
    _quiet()
    from d2l_haystack.kb.migrate import copy_workspace
    from d2l_haystack.kb.workspace import Workspace

    target = args.target
    store, to = (target, args.to) if "://" in target or target.startswith("$") else (args.store, args.to or target)
    src = Workspace.open(args.source or _default_workspace())
    dest = copy_workspace(src, store, to, on_progress=lambda msg: print(f"d2l workspace copy: {msg}", flush=True))
    problems = dest.verify()
    totals = dest.status()["totals"]
    print(f"d2l workspace copy: {dest.path} ({dest.store}): {totals['documents']} documents "
          f"({totals['d2l']} adapters, {totals['rag']} in RAG, {totals['chunks']} chunks), nothing re-internalized; "
          f"verify: {'healthy' if not problems else f'{len(problems)} problem(s)'}")
    for line in problems:
        print(f"  {line}")
    dest.close()
    return 1 if problems else 0


def _cmd_pg_start(args: argparse.Namespace) -> int:
    from d2l_haystack.kb.postgres import start_local_server

    print(start_local_server(args.data))
    return 0


def _cmd_pg_stop(args: argparse.Namespace) -> int:
    from d2l_haystack.kb.postgres import stop_local_server

    if stop_local_server(args.data):
        print(f"d2l postgres: stopped the server of {args.data}")
        return 0
    print(f"d2l postgres: no server runs in {args.data}")
    return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("workspace", help="copy a workspace (into a PostgreSQL database, or a new folder)")
    sub = p.add_subparsers(dest="workspace_command", metavar="ACTION", required=True)
    c = sub.add_parser("copy", help="copy a workspace without re-internalizing (adapters, records, chunks)",
                       description="Copy a workspace: its adapter files as they are, its records, counters and "
                                   "history, and its RAG chunks with their embeddings. TARGET is a postgresql:// "
                                   "URL (with --to DIR: a new folder for workspace.json and the adapters; without: "
                                   "the workspace moves into the database in place, keeping its folder state in "
                                   ".folder-state/) or a new folder. Stop watchers and servers of it first.")
    c.add_argument("source", metavar="SOURCE", nargs="?", default=None,
                   help="the workspace to copy (default: $D2L_WORKSPACE or ./d2l-workspace)")
    c.add_argument("target", metavar="TARGET", help="postgresql://... URL, $VARIABLE naming one, or a new folder")
    c.add_argument("--to", default=None, metavar="DIR", help="the new workspace folder (adapters, workspace.json)")
    c.add_argument("--store", default=None, metavar="URL",
                   help="with a folder TARGET: keep its records in this database")
    c.set_defaults(handler=_cmd_copy)

    p = subparsers.add_parser("postgres", help="a local PostgreSQL + pgvector (the pgserver wheel) to try a shared "
                                               "workspace with")
    sub = p.add_subparsers(dest="postgres_command", metavar="ACTION", required=True)
    s = sub.add_parser("start", help="start (or find running) the server of DATA; prints its connection URL")
    s.add_argument("data", nargs="?", default="d2l-postgres", metavar="DATA",
                   help="its data folder (default ./d2l-postgres); the server listens on a Unix socket there")
    s.set_defaults(handler=_cmd_pg_start)
    s = sub.add_parser("stop", help="stop the server of DATA")
    s.add_argument("data", nargs="?", default="d2l-postgres", metavar="DATA")
    s.set_defaults(handler=_cmd_pg_stop)



