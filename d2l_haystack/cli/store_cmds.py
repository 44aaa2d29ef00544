"""The ``workspace`` and ``postgres`` sub-commands: moving a workspace into a shared PostgreSQL
database, and a local PostgreSQL + pgvector server to try it with.

Examples::

    d2l postgres start pg                        # prints postgresql://postgres:@/postgres?host=...
    d2l index docs/ -w kb --store "$(d2l postgres start pg)"
    d2l workspace copy kb postgresql://user:pw@db.internal/kb --to /mnt/shared/kb
    d2l workspace copy kb "$D2L_STORE"           # in place: kb's records move into the database
    d2l postgres stop pg
    d2l workspace export-lora -w kb exports       # every adapter, as a vLLM server loads it
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def _cmd_export_lora(args: argparse.Namespace) -> int:
    _quiet()
    from d2l_haystack.cli.core_cmds import _memory_note, _peft_base_name
    from d2l_haystack.core.serving import export_for_serving, lora_modules, lora_name
    from d2l_haystack.kb.workspace import Workspace

    ws = Workspace.open(args.workspace or _default_workspace())
    out = Path(args.out)
    modules, max_rank = [], 1
    for entry in ws.adapters.list():
        adapter = ws.adapters.get(entry["id"])
        name = lora_name(entry["id"])
        manifest = export_for_serving(adapter, out / name, name=name, max_rank=args.max_rank, memory=args.memory,
                                      base_model=args.base_model or _peft_base_name(adapter.base_model))
        max_rank = max(max_rank, manifest["max_rank"])
        modules += lora_modules(manifest, out / name)
        print(f"{entry['id']}: {', '.join(g['name'] for g in manifest['groups'])}"
              f"{_memory_note(adapter) if manifest['memory_rows'] else ''}"
              f"{' (' + manifest['memory_left_out'] + ')' if manifest.get('memory_left_out') else ''}", flush=True)
    ws.close()
    base = args.base_model or ws.settings["model"]
    print(f"d2l workspace export-lora: {len(modules)} LoRA folder(s) in {out}; serve with:\n  vllm serve {base} "
          f"--enable-lora --max-lora-rank {max_rank} --max-loras {min(len(modules), 8) or 1} "
          f"--lora-modules {' '.join(modules)}\nand answer with RemoteAdapterGenerator(exports='{out}') "
          f"(docs/vllm.md)")
    return 0


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
    from d2l_haystack.cli.core_cmds import _add_memory_export_option

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

    e = sub.add_parser("export-lora", help="export every adapter of a workspace for a multi-LoRA server (vLLM)",
                       description="Write each adapter as PEFT folders a vLLM server loads as they are (ranks "
                                   "padded, long documents in chunk groups), named as RemoteAdapterGenerator "
                                   "names them, and print the `vllm serve` command.")
    e.add_argument("out", metavar="OUT", help="the exports folder (one subfolder per adapter)")
    e.add_argument("--workspace", "-w", default=None, metavar="DIR")
    e.add_argument("--max-rank", type=int, default=512, metavar="R", help="the server's --max-lora-rank (default 512)")
    e.add_argument("--base-model", default=None, help="the base model name the server loads (default: the workspace's)")
    _add_memory_export_option(e)
    e.set_defaults(handler=_cmd_export_lora)

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



