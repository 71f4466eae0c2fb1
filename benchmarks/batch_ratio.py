"""Batch-8 against batch-1 decode of a quantized preset, per CPU-second, in one process.

    PYTHONPATH=$PWD python benchmarks/batch_ratio.py int4 lfm2-350m [--threads 1] [--rounds 3]

Random weights, a 64-token prompt per row, then `--steps` greedy steps through the fused decode
step at batch 1 and at batch `--batch`, alternating, `--rounds` times. Prints one JSON line per
round: tokens per CPU-second of this process (its own CPU time, which a shared machine disturbs
less than the wall clock) and per wall second at each batch size, and their ratios. On a busy
machine compare ratios from the same run, not absolute rates.

`--libraries A.so B.so` compares kernel builds under one model: each round runs every library
in turn (swapped in as `lfmkit.kernels`' library), e.g. the csrc of an older commit built with
`g++ -O3 -fopenmp -shared -fPIC -std=c++17` plus the path's flags (lfmkit/kernels/__init__.py)
against this tree's; each line then names its library.
"""

import argparse
import ctypes
import json
import os
import time

import torch

from lfmkit import LFM2Config, kernels
from lfmkit.loader import random_quantized
from lfmkit.quant import QuantLinear


@torch.inference_mode()
def rates(model, prompt: torch.Tensor, batch: int, steps: int) -> tuple[float, float]:
    """(tokens per CPU-second, tokens per wall second) of `steps` greedy steps at `batch` rows."""
    state = model.new_state(batch, max_length=prompt.shape[0] + steps + 8)
    tok = model.prefill(prompt.expand(batch, -1).contiguous(), state)[:, -1].argmax(-1, keepdim=True)
    tok = model(tok, state=state, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        tok = model(tok, state=state, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
    return batch * steps / (time.process_time() - cpu), batch * steps / (time.perf_counter() - wall)


def use_library(model, lib: ctypes.CDLL) -> None:
    """Make `lib` the kernel library of `model`: its layers and fused step look it up again."""
    kernels._declare(lib)
    kernels._lib, kernels._tried = lib, True
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.__dict__["_fast"] = None
    model.fused_decode.reset()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("int8", "int4"))
    ap.add_argument("preset", nargs="?", default="lfm2-350m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--libraries", nargs="+", default=None, help="kernel builds (.so) to compare")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = random_quantized(LFM2Config.from_preset(args.preset), args.mode)
    prompt = torch.randint(16, 500, (64,), generator=torch.Generator().manual_seed(0))
    libraries = [(p, ctypes.CDLL(p)) for p in args.libraries] if args.libraries else [(None, None)]
    for _ in range(args.rounds):
        for name, lib in libraries:
            if lib is not None:
                use_library(model, lib)
            c1, w1 = rates(model, prompt, 1, args.steps)
            cb, wb = rates(model, prompt, args.batch, args.steps)
            row = {"mode": args.mode, "preset": args.preset, "threads": args.threads, "batch": args.batch}
            if name is not None:
                row["library"] = name
            row.update(b1_tok_per_cpu_s=round(c1, 1), b1_tok_s=round(w1, 1), batch_tok_per_cpu_s=round(cb, 1))
            row.update(batch_tok_s=round(wb, 1), ratio_cpu=round(cb / c1, 2), ratio_wall=round(wb / w1, 2))
            row["load_average"] = round(os.getloadavg()[0], 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
