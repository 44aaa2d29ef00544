#!/usr/bin/env bash
# The main job: set up .venv if needed, then run `d2l demo` (extra arguments are passed on).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/d2l demo "$@"
