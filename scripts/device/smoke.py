"""Measure seconds per training step for each phase of a config on a RANDOM model of the real
architecture (checks the CUDA path and sizes max_steps before the real run).

    python3 scripts/device/smoke.py CONFIG TOKENIZER_AND_CONFIG_DIR
"""

import copy
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from d2l_haystack.training.trainer import TrainConfig, Trainer  # noqa: E402

cfg_path, src = sys.argv[1], Path(sys.argv[2])
cache = Path("/tmp/d2l/smokecache")
folder = cache / "smollm2-135m-instruct"
if not (folder / ".d2l-complete").exists():
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(src, folder)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(folder)
    (folder / ".d2l-complete").write_text("random smoke model\n")
os.environ["D2L_HAYSTACK_CACHE"] = str(cache)
print("cuda", torch.cuda.is_available(), torch.__version__, flush=True)
base = TrainConfig.from_file(cfg_path)
for i, phase in enumerate(base.phases):
    cfg = copy.deepcopy(base)
    cfg.phases = [phase]
    cfg.out_dir = f"/tmp/d2l/smoke{i}"
    cfg.max_steps, cfg.eval_every, cfg.log_every, cfg.unrelated_pool = 12, 12, 4, 32
    cfg.eval_docs = 32
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    tr = Trainer(cfg, log=lambda s: print(s, flush=True))
    t = time.perf_counter()
    tr.train()
    print(f"PHASE {i}: {(time.perf_counter() - t) / 12:.3f} s/step incl. eval+save, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
