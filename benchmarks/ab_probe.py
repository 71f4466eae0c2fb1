"""Prefill and decode speed of one lfmkit tree, random weights: for before/after comparisons.

    cd OLD_TREE && PYTHONPATH=$PWD python NEW_TREE/benchmarks/ab_probe.py int8 lfm2-350m
    cd NEW_TREE && PYTHONPATH=$PWD python benchmarks/ab_probe.py int8 lfm2-350m

Runs with the package layout before and after the one-way architecture (random_quantized moved
from lfmkit.quant to lfmkit.loader). Prints one JSON line: best of 2 of a 512-token prefill and
of 96 decode steps after it. THREADS (default 1) sets torch's thread count: on a loaded machine
two OpenMP threads wait on each other at every barrier, so one thread compares more fairly.
"""

import json
import os
import sys
import time

import torch

from lfmkit import LFM2Config

try:
    from lfmkit.loader import random_quantized  # new layout
except ImportError:
    from lfmkit.quant import random_quantized  # old layout
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
mode = sys.argv[1]
model = random_quantized(LFM2Config.from_preset(sys.argv[2] if len(sys.argv) > 2 else "lfm2-350m"), mode)
g = torch.Generator().manual_seed(0)
prompt = torch.randint(16, 500, (1, 512), generator=g)
with torch.inference_mode():
    best_p, best_d = 1e9, 1e9
    for _ in range(2):
        state = model.new_state(1, max_length=700)
        t = time.perf_counter()
        logits = model.prefill(prompt, state)
        best_p = min(best_p, time.perf_counter() - t)
        tok = logits[:, -1:].argmax(-1)
        for _ in range(4):
            tok = model(tok, state=state)[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(96):
            tok = model(tok, state=state)[:, -1:].argmax(-1)
        best_d = min(best_d, time.perf_counter() - t)
print(json.dumps({"mode": mode, "prefill_tok_s": 512 / best_p, "decode_tok_s": 96 / best_d}))
