#!/usr/bin/env bash
# Measure a hypernetwork checkpoint on the reading bars (every set held out of training).
#   bash scripts/eval_reading.sh CHECKPOINT_DIR OUT_DIR [METHODS]
# Writes OUT_DIR/<set>.json (d2l eval reports) and OUT_DIR/demo.txt, and prints the tables.
# Sets: realistic (generated documents of held-out kinds and templates, 200 questions), short_docs
# (hand-written notes, benchmarks/cases/short_docs.jsonl), needle_heldout_chunk / needle_heldout_long
# (needles phrased as training never phrased them, 256-500 and 41k tokens), needle_chunk (the trained
# phrasings), squad_large (390 SQuAD validation questions outside the model card's report files),
# interference (general questions with another document's adapter), squad_swapped (100 SQuAD validation
# paragraphs with their answers swapped for same-shape spans: readable, never known; the reports add
# replaced_answer, the share of replies with the answer the text lost). METHODS (default d2l) are run on
# every set; base, icl and rag do not depend on the checkpoint: BASELINES=1 adds them where they apply.
# Threads: OMP_NUM_THREADS (e.g. 1 beside a training run). CHUNKING=sentences|auto: the engine's chunking
# (default tokens). Compare two runs: d2l compare A.json B.json.
set -euo pipefail
CKPT="${1:?checkpoint folder}"; OUT="${2:?output folder}"; METHODS="${3:-d2l}"; CHUNKING="${CHUNKING:-tokens}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D2L="$ROOT/.venv/bin/python -m d2l_haystack"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
C="$OUT/cases"; mkdir -p "$C"
L="$ROOT/benchmarks/results/eval_keys_cpu_run2l_full"
[ -f "$C/realistic.jsonl" ] || $D2L cases realistic --max-docs 100 -o "$C/realistic.jsonl"
[ -f "$C/needle_heldout_chunk.jsonl" ] || $D2L niah --lengths 256,500 --depths 0,0.25,0.5,0.75,1 --per-cell 4 \
    --template heldout -o "$C/needle_heldout_chunk.jsonl"
[ -f "$C/needle_heldout_long.jsonl" ] || $D2L niah --lengths 41000 --depths 0,0.25,0.5,0.75,1 --per-cell 2 \
    --template heldout --seed 77 -o "$C/needle_heldout_long.jsonl"
[ -f "$C/needle_chunk.jsonl" ] || $D2L niah --lengths 128,256,384,500 --depths 0,0.25,0.5,0.75,1 --per-cell 2 \
    --filler natural -o "$C/needle_chunk.jsonl"
[ -f "$C/squad_large.jsonl" ] || $D2L cases squad-paragraphs --questions-per-doc 1 --seed 11 \
    --exclude "$L/squad.json" --exclude "$L/squad_sel.json" -o "$C/squad_large.jsonl"
[ -f "$C/interference.jsonl" ] || $D2L cases interference -o "$C/interference.jsonl"
[ -f "$C/squad_swapped.jsonl" ] || $D2L cases squad-swapped --max-docs 100 -o "$C/squad_swapped.jsonl"
cp "$ROOT/benchmarks/cases/short_docs.jsonl" "$C/short_docs.jsonl"
run() {  # set, methods, max new tokens
    echo "== $1 ($2)"
    $D2L eval --cases "$C/$1.jsonl" --methods "$2" --checkpoint "$CKPT" --no-progress --max-new-tokens "${3:-32}" \
        --chunking "$CHUNKING" --json "$OUT/$1.json"
}
with() { if [ "${BASELINES:-0}" = 1 ]; then echo "$1,$METHODS"; else echo "$METHODS"; fi; }
run realistic "$(with base,icl,rag)"
run short_docs "$(with base,icl)"
run needle_heldout_chunk "$(with base)" 16
run needle_chunk "$METHODS" 16
run interference "$METHODS"
run squad_large "$METHODS"
run squad_swapped "$(with base,icl)"
run needle_heldout_long "$METHODS" 16
echo "== demo"
$D2L demo --checkpoint "$CKPT" --chunking "$CHUNKING" > "$OUT/demo.txt" 2>&1 || { tail -5 "$OUT/demo.txt"; exit 1; }
grep -E "questions answered by adapters|right answers by route" "$OUT/demo.txt"
