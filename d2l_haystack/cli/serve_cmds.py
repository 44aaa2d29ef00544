"""The ``serve`` sub-command: the workspace over HTTP (Hayhooks: REST and OpenAI-compatible chat).

Examples::

    d2l serve -w kb                                  # http://127.0.0.1:1416, no token
    D2L_SERVE_TOKEN=s3cret d2l serve -w kb --port 8080
    d2l serve -w kb --index-root /srv/docs           # clients may also index files under /srv/docs

Then ``curl -X POST localhost:1416/d2l/run -d '{"question": "..."}' -H 'content-type: application/json'``
or ``openai.OpenAI(base_url="http://127.0.0.1:1416/v1", api_key="s3cret")`` with ``model="d2l"``.
"""

from __future__ import annotations

import argparse
import os

from .kb_cmds import _add_workspace, _default_workspace, _quiet
from .options import add_device_option

TOKEN_ENV = "D2L_SERVE_TOKEN"


def _cmd_serve(args: argparse.Namespace) -> int:
    _quiet()
    from d2l_haystack.serve import serve

    token = args.token or os.environ.get(TOKEN_ENV) or None
    workspace = args.workspace or _default_workspace()
    print(f"d2l serve: workspace {workspace} on http://{args.host}:{args.port} "
          f"({'bearer token required' if token else 'no token'}); POST /d2l/run, /v1/chat/completions "
          f"(model 'd2l'), /d2l_index/run; GET /kb/status, /docs. Ctrl-C stops it.", flush=True)
    serve(workspace, host=args.host, port=args.port, token=token, index_root=args.index_root, device=args.device)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a workspace over HTTP (Hayhooks: REST, OpenAI-compatible chat, uploads)",
        description="Start Hayhooks with the workspace's query pipeline (POST /d2l/run, and the OpenAI chat "
                    "endpoint with model 'd2l': the route, adapters and chunks are in the reply's 'd2l' field) "
                    "and its indexing pipeline (POST /d2l_index/run with a file's name and content).")
    _add_workspace(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=1416, help="port (default 1416, Hayhooks' own)")
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on every request (default: ${TOKEN_ENV}, else none)")
    p.add_argument("--index-root", default=None, metavar="DIR",
                   help="clients may also index server-side files under this folder (default: uploads only)")
    add_device_option(p)
    p.set_defaults(handler=_cmd_serve)
