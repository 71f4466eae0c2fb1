"""Prefill speed of W8A8 against bf16 GEMMs in one process, interleaved (a shared machine drifts).

    PYTHONPATH=$PWD python benchmarks/prefill_ab.py int4 lfm2-350m [--threads 1] [--rounds 3]

Prints one JSON line per prefill mode: the best 512-token prefill tok/s over the rounds.
"""

import argparse
import json
import time

import torch

from lfmkit import LFM2Config
from lfmkit.fast import set_prefill
from lfmkit.loader import random_quantized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("int8", "int4"))
    ap.add_argument("preset", nargs="?", default="lfm2-350m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = random_quantized(LFM2Config.from_preset(args.preset), args.mode)
    prompt = torch.randint(16, 500, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    best = {"w8a8": 1e9, "bf16": 1e9}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for prefill in best:
                set_prefill(model, prefill)
                state = model.new_state(1, max_length=args.tokens + 8)
                t = time.perf_counter()
                model.prefill(prompt, state)
                best[prefill] = min(best[prefill], time.perf_counter() - t)
    for prefill, s in best.items():
        print(json.dumps({"mode": args.mode, "preset": args.preset, "prefill": prefill, "tok_s": args.tokens / s}))


if __name__ == "__main__":
    main()
