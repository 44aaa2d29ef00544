#!/usr/bin/env bash
# End-to-end check of the vLLM path on a machine with a CUDA GPU and `pip install vllm` (it is not
# part of .ci/run: this project never needs a GPU). It indexes the sample documents into a
# workspace, exports its adapters for vLLM, starts `vllm serve` with them, and asks the same
# questions through the local AdapterGenerator and through RemoteAdapterGenerator (greedy).
#   bash scripts/vllm_check.sh [OUT_DIR]
# Expected output (the last lines):
#   kettle-manual.md  local: <answer>  vllm: <the same answer>   (for each internalized sample)
#   vllm check: N of N answers equal (greedy; small differences in the last token can come from
#   fp16 kernels, listed above)
# and exit 0 when every adapter loaded and every request got an answer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$(mktemp -d)}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
PORT="${PORT:-8011}"
export HF_HUB_OFFLINE=1
"$PY" -m d2l_haystack index "$ROOT/d2l_haystack/samples/demo" -w "$OUT/kb" --device cuda
"$PY" -m d2l_haystack workspace export-lora "$OUT/exports" -w "$OUT/kb" --max-rank 64 | tee "$OUT/export.txt"
BASE="$("$PY" -c "from d2l_haystack.core.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))")"
MODULES="$(grep -o -- '--lora-modules .*' "$OUT/export.txt" | sed 's/--lora-modules //')"
"$PY" -m vllm.entrypoints.openai.api_server --model "$BASE" --served-model-name base --enable-lora \
    --max-lora-rank 64 --max-loras 8 --lora-modules $MODULES --port "$PORT" --dtype float16 > "$OUT/vllm.log" 2>&1 &
VLLM=$!
trap 'kill $VLLM 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do curl -sf "localhost:$PORT/v1/models" >/dev/null && break; sleep 2; done
"$PY" - "$OUT" "$PORT" <<'PY'
import sys
from pathlib import Path

from d2l_haystack.components import AdapterGenerator, RemoteAdapterGenerator
from d2l_haystack.kb.workspace import Workspace

out, port = Path(sys.argv[1]), sys.argv[2]
ws = Workspace.open(out / "kb", device="cuda")
local = AdapterGenerator(store=ws.adapters, device="cuda", generation_kwargs={"max_new_tokens": 24})
remote = RemoteAdapterGenerator(api_base_url=f"http://127.0.0.1:{port}/v1", base_model="base",
                                exports=str(out / "exports"), generation_kwargs={"max_tokens": 24, "temperature": 0})
questions = {"kettle-manual.md": "How long is the warranty of the Aurora K2 kettle?"}
same = total = 0
for entry in ws.adapters.list():
    name = Path(entry["id"]).name
    question = questions.get(name, f"What is {entry.get('title') or name} about?")
    a = local.run(messages=question, adapter_ids=[entry["id"]], generation_kwargs={"gate": False, "max_chunks": 0})["replies"][0].text
    b = remote.run(messages=question, adapter_ids=[entry["id"]])["replies"][0].text
    total += 1
    same += a.strip() == b.strip()
    print(f"{name}  local: {a.strip()!r}  vllm: {b.strip()!r}")
print(f"vllm check: {same} of {total} answers equal (greedy; small differences in the last token can come "
      f"from fp16 kernels, listed above)")
PY
