"""What the benchmark scripts share: the run's description, the JSON file, the printed table."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def run_info(script: str, argv: list[str] | None) -> dict[str, Any]:
    """Date, machine, CPU count and the exact command of a benchmark run."""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpus": os.cpu_count(), "command": " ".join([f"benchmarks/{script}", *(argv or sys.argv[1:])])}


def write_json(out: str | Path, data: dict[str, Any]) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """A Markdown table of ``rows``: ``columns`` are ``(header, key)`` pairs."""
    print("\n| " + " | ".join(h for h, _ in columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r.get(k)) for _, k in columns) + " |")
