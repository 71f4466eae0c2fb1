"""Matrix-vector throughput of each weight format / kernel option, in one run.

    python benchmarks/kernels.py [--threads 2] [--rows 8192 --cols 2048]

Batch-1 decode reads every weight once per token, so GB/s of weights read (and weights per
second) decide decode speed. Four matrices of the given shape are cycled so the weights come
from memory, not cache. Reports the best of several repeats (the machine is shared).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lfmkit import qkernel
from lfmkit.bench import machine_description
from lfmkit.quant import QuantLinear


def best_time(fn, n=10, repeats=7) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=2048)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, k = args.rows, args.cols
    print(f"machine: {machine_description()}; kernels: {qkernel.describe()}; W [{n}, {k}], batch 1")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, k, generator=g)
    xb = x.bfloat16()
    rows = []

    def report(name, bytes_per_matrix, fn):
        s = best_time(fn) / 4
        rows.append(name)
        print(f"{name:<44} {bytes_per_matrix / s / 1e9:6.1f} GB/s  {n * k / s / 1e9:6.1f} Gweights/s")

    ws = [torch.randn(n, k, generator=g) * 0.02 for _ in range(4)]
    report("F.linear float32", n * k * 4, lambda: [F.linear(x, w) for w in ws])
    wb = [w.bfloat16() for w in ws]
    report("F.linear bfloat16 (bf16 activations)", n * k * 2, lambda: [F.linear(xb, w) for w in wb])
    del wb
    q8 = [torch.randint(-127, 127, (n, k), dtype=torch.int8, generator=g) for _ in range(4)]
    sc = torch.rand(n).bfloat16()
    report("torch._weight_int8pack_mm (bf16 activations)", n * k, lambda: [torch._weight_int8pack_mm(xb, w, sc) for w in q8])
    report("torch._weight_int8pack_mm (fp32 activations)", n * k,
           lambda: [torch._weight_int8pack_mm(x, w, sc.float()) for w in q8])
    del q8
    try:
        q4 = []
        for w in ws:
            qi = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
            q4.append(torch._convert_weight_to_int4pack_for_cpu(qi, 1))
        sz = torch.rand(k // 32, n, 2).bfloat16()
        report("torch._weight_int4pack_mm_for_cpu (bf16 act.)", n * k // 2,
               lambda: [torch._weight_int4pack_mm_for_cpu(xb, w, 32, sz) for w in q4])
        del q4
    except (RuntimeError, AttributeError) as exc:
        print(f"torch._weight_int4pack_mm_for_cpu: unavailable ({exc})")
    for bits in (8, 4):
        qs = [QuantLinear.from_float(w, bits) for w in ws]
        report(f"lfmkit int{bits} ({qkernel.describe()})", qs[0].nbytes(), lambda: [q(x) for q in qs])


if __name__ == "__main__":
    main()
