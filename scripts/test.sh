#!/usr/bin/env bash
# Run the test suite: set up .venv if needed, then pytest offline. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh tests/core -m "not integration"`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -ra --durations=10 "$@"
