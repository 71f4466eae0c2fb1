"""Which of PyTorch's CPU GEMMs are fast on this processor, and a float32 product through the
fastest one; prefill and the float linears choose their GEMM by these checks.

PyTorch's CPU int8 (`torch._int_mm`) and bfloat16 matrix products go through oneDNN's VNNI and
AVX-512 BF16 / AMX code, and on a processor without those instructions through loops that are
a hundred times slower than a float32 GEMM. Measured on an AMD EPYC (Zen 3, AVX2 only, 2
threads, 2026-12-02), [512, 1024] x [1024, 4608]: float32 40 ms (oneDNN), `torch._int_mm`
2.8 s, bfloat16 4.6 s. Users' laptops are often such machines, so on them a quantized model's
prefill multiplies float32 tiles of its weights instead (quant/prefill.py) and a bfloat16
model's many-row products run in float32 (fast/float_linear.py).

`LFMKIT_SLOW_GEMMS=int8,bf16` (or either) treats those GEMMs as slow on any CPU, to test and
time the float32 paths where the fast ones exist.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

ENV = "LFMKIT_SLOW_GEMMS"


@functools.cache
def _capabilities() -> dict | None:
    get = getattr(torch.cpu, "get_capabilities", None)
    return None if get is None else dict(get())


def _has(*flags: str) -> bool:
    """This CPU has one of `flags` by `torch.cpu.get_capabilities()` (cpuinfo's names, read
    once); True where this torch cannot tell (assume the fast path, as before these checks)."""
    caps = _capabilities()
    return True if caps is None else any(caps.get(f, False) for f in flags)


def _forced_slow() -> set[str]:
    return {p.strip().lower() for p in os.environ.get(ENV, "").split(",") if p.strip()}


def int8_gemm_fast() -> bool:
    """`torch._int_mm` runs oneDNN's VNNI GEMM here: AVX-512 VNNI (or AMX). AVX-VNNI alone
    (VEX-encoded, some laptops) is not counted: not measured, and PyTorch's own check
    (`torch.cpu._is_vnni_supported`) leaves it out as well; those CPUs take float32 prefill."""
    return "int8" not in _forced_slow() and hasattr(torch, "_int_mm") and _has("avx512_vnni", "amx_int8")


def amx_bf16() -> bool:
    """oneDNN's bfloat16 GEMM runs on AMX tiles here (not forced slow)."""
    return "bf16" not in _forced_slow() and _has("amx_bf16")


def bf16_gemm_fast() -> bool:
    """bfloat16 products run on AVX-512 BF16 or AMX here."""
    return "bf16" not in _forced_slow() and _has("avx512_bf16", "amx_bf16")


_ONEDNN = torch.backends.mkldnn.is_available() and os.environ.get("LFMKIT_NO_ONEDNN") != "1"


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """x @ weight.T + bias in float32 through oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`,
    the op torch.compile's CPU backend emits), or None when oneDNN is off (`LFMKIT_NO_ONEDNN=1`)
    or unavailable. Float32 `F.linear` goes to MKL's sgemm, which takes a generic path on AMD
    processors (1.3x to 1.5x slower on a 512-token prefill's products, AMD EPYC, 1 thread)."""
    if not _ONEDNN:
        return None
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias for float32 CPU tensors without autograd: oneDNN, else `F.linear`."""
    out = onednn_linear(x, weight, bias)
    return out if out is not None else F.linear(x, weight, bias)


__all__ = ["bf16_gemm_fast", "float32_linear", "int8_gemm_fast", "onednn_linear", "ENV"]
