"""Core sub-commands: ``internalize``, ``ask``, ``export-peft`` and ``info``.

Examples::

    d2l internalize manual.txt -o adapters/manual
    d2l ask "What is the warranty period?" --adapter adapters/manual
    d2l ask "What is the warranty period?" --doc manual.txt     # internalize, then answer
    d2l export-peft adapters/manual peft/manual
    d2l info

``--checkpoint`` takes ``default`` (the checkpoint shipped for the model, untrained when there
is none), a checkpoint folder, or ``none`` for an untrained hypernetwork (its adapters are
exactly zero: useful for tests and timing). Whenever answers come from an untrained
hypernetwork a one-line notice is printed on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .options import add_chunking_option, add_device_option, add_reading_memory_option, checkpoint_arg


def _add_engine_options(p: argparse.ArgumentParser, from_adapter: bool = False) -> None:
    from d2l_haystack.core.models import DEFAULT_DTYPE, DEFAULT_MODEL

    default = f"the adapter's model, else {DEFAULT_MODEL}" if from_adapter else DEFAULT_MODEL
    p.add_argument("--model", default=None,
                   help=f"base model: embedded name, local model folder, or hub id org/name (default: {default})")
    p.add_argument("--checkpoint", type=checkpoint_arg, default="default",
                   help="hypernetwork checkpoint: 'default' (shipped for the model, untrained if none), "
                        "a checkpoint folder, or 'none' (untrained: zero adapters)")
    add_reading_memory_option(p)
    add_device_option(p)
    p.add_argument("--dtype", default=DEFAULT_DTYPE, choices=["float32", "bfloat16", "float16"],
                   help=f"base model dtype (default {DEFAULT_DTYPE})")


def _engine(args: argparse.Namespace, model: str | None = None) -> Any:
    from d2l_haystack.core import get_engine
    from d2l_haystack.core.models import DEFAULT_MODEL
    from d2l_haystack.core.textio import DEFAULT_CHUNKING

    if not getattr(args, "verbose", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return get_engine(model or args.model or DEFAULT_MODEL, args.checkpoint, device=args.device,
                      dtype=args.dtype, chunk_tokens=getattr(args, "chunk_tokens", None),
                      chunking=getattr(args, "chunking", DEFAULT_CHUNKING),
                      reading_memory=getattr(args, "reading_memory", True))


def _notice_untrained(command: str, what: str) -> None:
    print(f"d2l {command}: note: {what} untrained hypernetwork: the adapter is zero and answers are the "
          f"base model's own (pass --checkpoint FOLDER with a trained checkpoint)", file=sys.stderr)


def _human_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _internalize(engine: Any, text: str, path: str, command: str, kind: str = "document") -> Any:
    if engine.reader(kind).checkpoint_path is None:
        _notice_untrained(command, "internalizing with an")
    return engine.internalize(text, source=path, meta={"source": str(Path(path).resolve())}, kind=kind)


# -- internalize ------------------------------------------------------------------------------
def cmd_internalize(args: argparse.Namespace) -> int:
    from d2l_haystack.core.errors import InputError
    from d2l_haystack.core.textio import read_text_file

    out = Path(args.output)
    if out.is_file() and out.suffix != ".safetensors":
        raise InputError(f"{out}: is a file, expected an adapter folder or a .safetensors path")
    if bool(args.file) == bool(args.instructions):
        raise InputError("give a document FILE or --instructions FILE (one of the two)")
    source = args.file or args.instructions
    text = read_text_file(source)  # fails fast, before the model is loaded
    engine = _engine(args)
    start = time.perf_counter()
    if args.instructions:
        engine.set_instructions_checkpoint(args.instructions_checkpoint)
    adapter = _internalize(engine, text, source, "internalize", "instructions" if args.instructions else "document")
    seconds = time.perf_counter() - start
    written = adapter.save(out)  # atomic: an existing adapter is replaced only by a complete one
    print(f"wrote {written}: {adapter.num_chunks} chunk(s), {adapter.num_tokens} tokens, "
          f"rank {adapter.total_rank}{_memory_note(adapter)}, {_human_bytes(written.stat().st_size)}, {seconds:.2f} s")
    return 0


# -- ask --------------------------------------------------------------------------------------
def _model_for_adapter(adapter: Any) -> str:
    from d2l_haystack.core.errors import AdapterError
    from d2l_haystack.core.models import EMBEDDED_MODELS

    name = adapter.base_model
    if name in EMBEDDED_MODELS or "/" in name:
        return name
    raise AdapterError(f"adapter was made for base model '{name}' (a local folder): pass --model FOLDER")


def cmd_ask(args: argparse.Namespace) -> int:
    from d2l_haystack.core import Adapter
    from d2l_haystack.core.errors import InputError

    if args.max_chunks is not None and args.max_chunks < 0:
        raise InputError(f"--max-chunks must be >= 0 (0 applies every chunk), got {args.max_chunks}")

    adapter = None
    if args.adapter:
        adapter = Adapter.load(args.adapter)
        engine = _engine(args, args.model or _model_for_adapter(adapter))
        if adapter.checkpoint_id.startswith("untrained"):
            _notice_untrained("ask", "this adapter was made by an")
    elif args.doc:
        from d2l_haystack.core.textio import read_text_file

        text = read_text_file(args.doc)
        engine = _engine(args)
        adapter = _internalize(engine, text, args.doc, "ask")
    else:
        engine = _engine(args)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = engine.generate(args.question, adapter, max_new_tokens=args.max_new_tokens,
                             streaming_callback=write if args.stream else None, max_chunks=args.max_chunks,
                             gate=args.gate)
    if args.stream:
        print()
    else:
        print(result.text)
    if result.meta.get("gated"):
        print(f"(answered without the adapter: the question is not about the document -- best chunk "
              f"relevance {result.meta['relevance']:.2f} < {engine.min_relevance:.2f}; --no-gate applies it anyway)",
              file=sys.stderr)
    if args.verbose:
        print(f"({result.num_tokens} tokens in {result.seconds:.2f} s, first token after "
              f"{result.time_to_first_token:.2f} s, prompt {result.prompt_tokens} tokens)", file=sys.stderr)
    return 0


# -- export-peft ------------------------------------------------------------------------------
def _peft_base_name(label: str) -> str:
    from d2l_haystack.core.models import EMBEDDED_MODELS, cache_dir

    folder = cache_dir() / label
    if label in EMBEDDED_MODELS and (folder / ".d2l-complete").is_file():
        return str(folder)
    return label


def cmd_export_peft(args: argparse.Namespace) -> int:
    from d2l_haystack.core import Adapter
    from d2l_haystack.core.errors import InputError

    adapter, left_out = Adapter.load(args.adapter_dir).for_peft(args.memory)
    if left_out:
        print(f"d2l export-peft: note: {left_out}", file=sys.stderr)
    out = Path(args.out_dir)
    if out.is_file():
        raise InputError(f"{out}: is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise InputError(f"{out}: folder is not empty (use --force to write into it)")
    base = args.base_model or _peft_base_name(adapter.base_model)
    if args.serving == "vllm":
        from d2l_haystack.core.serving import export_for_serving, lora_modules, lora_name

        name = lora_name(args.name or Path(args.adapter_dir).resolve().name)
        manifest = export_for_serving(adapter, out, name=name, base_model=base, max_rank=args.max_rank)
        groups = manifest["groups"]
        modules = " ".join(lora_modules(manifest, out))
        print(f"wrote {len(groups)} vLLM LoRA folder(s) in {out} (rank {adapter.serving_rank_needed} padded to "
              f"{', '.join(str(g['rank']) for g in groups)}; manifest {out / 'd2l_serving.json'}); serve with: "
              f"vllm serve {base} --enable-lora --max-lora-rank {manifest['max_rank']} --lora-modules {modules}")
        return 0
    folder = adapter.to_peft(out, base_model_name_or_path=base)
    print(f"wrote PEFT LoRA folder {folder} (rank {adapter.total_rank}{_memory_note(adapter)}); "
          f"load it with peft.PeftModel.from_pretrained(base_model, '{folder}')")
    return 0


# -- info -------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from d2l_haystack import __version__
    from d2l_haystack.core.models import cache_dir

    engine = _engine(args)
    desc = engine.describe()
    info = {
        "version": __version__,
        "model": desc["base_model"],
        "model_folder": desc["model_path"],
        "device": desc["device"],
        "checkpoint": desc["checkpoint"],
        "checkpoint_id": desc["checkpoint_id"],
        "trained": desc["trained"],
        "hypernet_parameters": desc["hypernet_parameters"],
        "encoder_mode": desc["encoder_mode"],
        "exit_layer": desc["exit_layer"],
        "rank": desc["rank"],
        "chunk_tokens": desc["chunk_tokens"],
        "chunking": desc["chunking"],
        "max_chunks": desc["max_chunks"],
        "key_model": desc["key_model"],
        "min_relevance": desc["min_relevance"],
        "reading_memory": desc["reading_memory"] or "none (the hypernetwork alone)",
        **({"memory_yield_above": desc["memory_yield_above"], "memory_override": desc["memory_override"],
            "memory_max_tokens": desc["memory_max_tokens"], "memory_max_rows": desc["memory_max_rows"],
            "memory_row_use": desc["memory_row_use"], "memory_follow_on_yield": desc["memory_follow_on_yield"],
            "memory_long_documents": desc["memory_long_documents"]}
           if desc["reading_memory"] else {}),
        "cache_folder": str(cache_dir()),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info) + 1
        for key, value in info.items():
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            if key == "trained":
                shown = "yes" if value else "no (adapters are zero until a checkpoint is trained)"
            print(f"{key.replace('_', ' ') + ':':<{width + 1}} {shown}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("internalize", help="turn a text file into a LoRA adapter",
                              description="Internalize a UTF-8 text file into a LoRA adapter folder.")
    p.add_argument("file", nargs="?", help="UTF-8 text file (a document)")
    p.add_argument("--instructions", metavar="FILE",
                   help="internalize a system prompt / task instructions instead: an adapter applied to every "
                        "question (docs/instructions.md)")
    p.add_argument("--instructions-checkpoint", default="default", metavar="DIR", type=checkpoint_arg,
                   help="hypernetwork for --instructions (default: the one shipped for the model; none: untrained)")
    p.add_argument("-o", "--output", required=True, metavar="ADAPTER_DIR",
                   help="adapter folder (adapter.safetensors is written atomically inside)")
    _add_engine_options(p)
    p.add_argument("--chunk-tokens", type=int, default=None, metavar="N",
                   help="tokens per chunk (default: the checkpoint's, 512)")
    add_chunking_option(p)
    p.set_defaults(handler=cmd_internalize)

    p = subparsers.add_parser("ask", help="answer a question, with an adapter, a document, or neither",
                              description="Answer a question with the base model plus an adapter. With --doc "
                                          "the file is internalized first and the question is answered WITHOUT "
                                          "the document in the prompt.")
    p.add_argument("question")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--adapter", metavar="DIR", help="adapter folder or .safetensors file")
    source.add_argument("--doc", metavar="FILE", help="text file to internalize first")
    _add_engine_options(p, from_adapter=True)
    p.add_argument("--chunk-tokens", type=int, default=None, metavar="N", help="tokens per chunk for --doc")
    add_chunking_option(p)
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="answer length limit (default 128)")
    p.add_argument("--max-chunks", type=int, default=None, metavar="N",
                   help="apply at most the N chunk adapters the question is about "
                        "(default 8; 0 applies every chunk, without relevance gate)")
    p.add_argument("--gate", action=argparse.BooleanOptionalAction, default=True,
                   help="apply no adapter when no chunk of the document is relevant to the question "
                        "(default: on; --no-gate always applies the most relevant chunks)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print the answer as it is generated (default: on)")
    p.set_defaults(handler=cmd_ask)

    p = subparsers.add_parser("export-peft", help="write an adapter as a standard PEFT LoRA folder",
                              description="Export an adapter to a PEFT LoRA folder that "
                                          "peft.PeftModel.from_pretrained loads.")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--base-model", default=None,
                   help="base_model_name_or_path written in adapter_config.json (default: the adapter's model)")
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    p.add_argument("--serving", choices=["vllm"], default=None,
                   help="write what a multi-LoRA server loads as it is: ranks padded (exactly the same update) to "
                        "one the server accepts, long documents as one adapter per chunk group, d2l_serving.json")
    p.add_argument("--max-rank", type=int, default=512, metavar="R",
                   help="with --serving: the server's --max-lora-rank (default 512)")
    p.add_argument("--name", default=None, help="with --serving: the LoRA name (default: the adapter folder's name)")
    _add_memory_export_option(p)
    p.set_defaults(handler=cmd_export_peft)

    p = subparsers.add_parser("info", help="show the model, checkpoint and cache in use")
    _add_engine_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_info)


def _add_memory_export_option(p: argparse.ArgumentParser) -> None:
    """``--memory/--no-memory`` of the export commands."""
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="export the reading-memory rows where a LoRA can hold them (default: on; rows matched on "
                        "another layer, as the shipped memory's, are left out with a note). A LoRA file applies them "
                        "to every question: the engine's per-question choice (yield to a sure adapter, at most "
                        "max_rows) does not travel; --no-memory exports the hypernetwork's update alone "
                        "(docs/vllm.md)")


def _memory_note(adapter: Any) -> str:
    """`` + N reading-memory rows on down_proj@29`` when the adapter carries a reading memory."""
    return f" + {adapter.memory_rows} reading-memory rows on {adapter.memory_key}" if adapter.memory_rows else ""
