#!/usr/bin/env bash
# Measure a hypernetwork checkpoint against the bars of the training issue (all data held out).
#   bash scripts/eval_bars.sh CHECKPOINT_DIR OUT_DIR [quick]
# Writes OUT_DIR/{niah_chunk,niah_long,squad,interference}.json (d2l eval reports) and prints tables.
# Methods: d2l = the engine's default (chunk keys: only the relevant chunks, no adapter when none
# is relevant); d2l-all = every chunk of the document, always (the hypernetwork alone).
# Threads: OMP_NUM_THREADS (e.g. 1 beside a training run). CHUNKING=sentences measures the engine
# with one chunk per sentence (default: tokens, 512-token chunks).
set -euo pipefail
CKPT="${1:?checkpoint folder}"; OUT="${2:?output folder}"; MODE="${3:-full}"; CHUNKING="${CHUNKING:-tokens}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D2L="$ROOT/.venv/bin/python -m d2l_haystack"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/cases"
DEPTHS="0,0.25,0.5,0.75,1"
if [ "$MODE" = quick ]; then PER=1; SQ=20; else PER=2; SQ=40; fi
$D2L niah --lengths 128,256,384,500 --depths "$DEPTHS" --per-cell "$PER" --filler natural -o "$OUT/cases/niah_chunk.jsonl"
$D2L niah --lengths 41000 --depths "$DEPTHS" --per-cell "$PER" --filler natural --seed 77 -o "$OUT/cases/niah_long.jsonl"
$D2L cases squad-paragraphs --max-docs "$SQ" --questions-per-doc 2 -o "$OUT/cases/squad.jsonl"
$D2L cases interference -o "$OUT/cases/interference.jsonl"
run() { echo "== $1"; $D2L eval --cases "$OUT/cases/$1.jsonl" --methods "$2" --checkpoint "$CKPT" --no-progress \
        --chunking "$CHUNKING" \
        --max-new-tokens "${3:-32}" --json "$OUT/$1.json"; }
run niah_chunk base,d2l,d2l-all 16
run squad base,icl,d2l,d2l-all 32
run interference base,d2l,d2l-all 32
# d2l-all on a 41k-token document would apply all ~1,700 sentence chunks at once (GBs of factors)
if [ "$CHUNKING" = sentences ]; then LONG=base,icl,d2l; else LONG=base,icl,d2l,d2l-all; fi
run niah_long "$LONG" 16
