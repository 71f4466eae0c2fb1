"""Matrix-vector throughput of each weight format / kernel option, in one run.

    python benchmarks/kernels.py [--threads 2] [--rows 8192 --cols 2048] [--matrices 8]

Batch-1 decode reads every weight once per token, so GB/s of weights read (and weights per
second) decide decode speed. `--matrices` matrices of the given shape are cycled so the weights
come from memory, not cache (8 x [8192, 2048] in int4 is 64 MiB, twice a 32 MiB L3). Reports
the best of several repeats (the machine is shared).

When torchao is importable it is measured too: its CPU int4 weight-only tensor
(PrototypeInt4WeightOnlyConfig, group 32) and int8 weight-only, eager and under
torch.compile. torchao is not a dependency of lfmkit; to include it without replacing torch:
`pip install --no-deps --target /tmp/tao torchao` and run with `PYTHONPATH=/tmp/tao`.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lfmkit import kernels
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
    ap.add_argument("--matrices", type=int, default=8)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, k, count = args.rows, args.cols, args.matrices
    print(f"machine: {machine_description()}; kernels: {kernels.describe()}; W [{n}, {k}], batch 1")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, k, generator=g)
    xb = x.bfloat16()
    rows = []

    def report(name, bytes_per_matrix, fn):
        s = best_time(fn) / count
        rows.append(name)
        print(f"{name:<44} {bytes_per_matrix / s / 1e9:6.1f} GB/s  {n * k / s / 1e9:6.1f} Gweights/s")

    ws = [torch.randn(n, k, generator=g) * 0.02 for _ in range(count)]
    report("F.linear float32", n * k * 4, lambda: [F.linear(x, w) for w in ws])
    wb = [w.bfloat16() for w in ws]
    report("F.linear bfloat16 (bf16 activations)", n * k * 2, lambda wb=wb: [F.linear(xb, w) for w in wb])
    wb = None  # free them before the next format
    q8 = [torch.randint(-127, 127, (n, k), dtype=torch.int8, generator=g) for _ in range(count)]
    sc = torch.rand(n).bfloat16()
    report(
        "torch._weight_int8pack_mm (bf16 activations)",
        n * k,
        lambda q8=q8: [torch._weight_int8pack_mm(xb, w, sc) for w in q8],
    )
    report(
        "torch._weight_int8pack_mm (fp32 activations)",
        n * k,
        lambda q8=q8: [torch._weight_int8pack_mm(x, w, sc.float()) for w in q8],
    )
    q8 = None
    try:
        q4 = []
        for _ in ws:
            qi = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
            q4.append(torch._convert_weight_to_int4pack_for_cpu(qi, 1))
        sz = torch.rand(k // 32, n, 2).bfloat16()
        report(
            "torch._weight_int4pack_mm_for_cpu (bf16 act.)",
            n * k // 2,
            lambda q4=q4: [torch._weight_int4pack_mm_for_cpu(xb, w, 32, sz) for w in q4],
        )
        q4 = None
    except (RuntimeError, AttributeError) as exc:
        print(f"torch._weight_int4pack_mm_for_cpu: unavailable ({exc})")
    for bits in (8, 4):
        qs = [QuantLinear.from_float(w, bits) for w in ws]
        report(f"lfmkit int{bits} ({kernels.describe()})", qs[0].nbytes(), lambda qs=qs: [q(x) for q in qs])
        qs = None
    report_torchao(ws, xb, report)


def report_torchao(ws, xb, report) -> None:
    """torchao's weight-only int4 (CPU layout) and int8 on the same weights, eager and compiled."""
    try:
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        print(f"torchao: not installed ({exc})")
        return
    n, k = ws[0].shape
    formats = (
        ("int4 (CPU layout, group 32)", PrototypeInt4WeightOnlyConfig(group_size=32), n * k // 2),
        ("int8 weight-only", Int8WeightOnlyConfig(), n * k),
    )
    for name, config, nbytes in formats:
        mods = []
        for w in ws:
            lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
            with torch.no_grad():
                lin.weight.copy_(w)
            quantize_(lin, config)
            mods.append(lin)
        with torch.no_grad():
            report(f"torchao {name}", nbytes, lambda mods=mods: [m(xb) for m in mods])
            compiled = [torch.compile(m) for m in mods]
            report(f"torchao {name} + torch.compile", nbytes, lambda compiled=compiled: [m(xb) for m in compiled])


if __name__ == "__main__":
    main()
