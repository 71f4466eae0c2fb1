"""Float linears for inference: few token rows through lfmkit's streaming kernel, more through
oneDNN; the same products as `F.linear`, summed in another order.

Decode multiplies a handful of token rows by every weight once, so it is bound by reading the
weights; the BLAS kernels PyTorch calls there are written for big products. Measured on this
project's 2-core Xeon (AVX-512 BF16, weights from memory, 2 threads; BENCHMARKS.md, issue 16):
an [8, 1024] x [1024, 65536] bfloat16 head product takes 17.6 ms through `F.linear` and 9.1 ms
through `lfm_float_linear` (kernels/csrc/float.cpp: each weight row read once, multiplied by
every token row; bfloat16 pairs by `vdpbf16ps` where the CPU has AVX512_BF16); w1 [8, 1024] x
[1024, 9216] 2.9 against 2.3 ms. Up to `SMALL_ROWS` token rows take that kernel; past that the
blocked GEMMs win. On CPUs with AMX, oneDNN's bfloat16 tiles win from `AMX_TILE_ROWS` rows on
all but head-sized weights (`_tiles_win`).

More rows: float32 `F.linear` goes to MKL's sgemm, which takes a generic path on AMD
processors (measured on an AMD EPYC, 1 thread: a 512-token prefill's products 1.3x to 1.5x
slower than oneDNN's), so float32 products call oneDNN's matmul
(`torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU backend emits) on the dense
weight as it is: no copy, no second layout to keep in memory. bfloat16 `F.linear` already goes
to oneDNN, where the CPU has AVX-512 BF16 or AMX; elsewhere (AVX2 machines, kernels/gemm.py)
PyTorch's bfloat16 GEMM is a loop a hundred times slower than float32, so those products run
as float32 GEMMs on widened tiles of the weight (`widened_linear`).

Only inference takes these paths: a float32 or bfloat16 weight on the CPU, no gradient needed
(training keeps `F.linear` and its autograd), kernels built (`LFMKIT_NO_KERNELS=1` turns the
streaming kernel off), not `LFMKIT_NO_ONEDNN=1` (oneDNN off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from ..kernels import gemm
from ..model.lfm2 import Linear

SMALL_ROWS = 8  # up to this many token rows, products take the streaming kernel
WIDEN_TILE_BYTES = 8 << 20  # float32 weight rows widened at a time from bfloat16 (widened_linear)
_FLOATS = (torch.float32, torch.bfloat16)


def _inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The tensors take a fast path: CPU, one float dtype, no gradient to record."""
    if weight.dtype not in _FLOATS or x.dtype is not weight.dtype or (bias is not None and bias.dtype is not x.dtype):
        return False
    if weight.device.type != "cpu" or x.device.type != "cpu" or not weight.is_contiguous() or x.numel() == 0:
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))


_STREAMS: dict[int, bool] = {}


def _streams(lib) -> bool:
    """The loaded kernel library has a vector path (the portable loop is no faster than BLAS)."""
    got = _STREAMS.get(id(lib))
    if got is None:
        got = _STREAMS[id(lib)] = lib.lfm_isa().decode() != "portable"
    return got


def small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x @ weight.T + bias through the streaming kernel (any number of rows), or None when the
    tensors do not take that path (see the module doc) or the kernels are unavailable."""
    if not _inference(x, weight, bias) or (bias is not None and not bias.is_contiguous()):
        return None
    lib = kernels.load()
    if lib is None or not _streams(lib):
        return None
    return stream_linear(lib, x, weight, bias)


def stream_linear(lib, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, widen: bool = False):
    """`lfm_float_linear` of kernel library `lib` on float32 or bfloat16 CPU tensors (weight and
    bias contiguous); `widen`: bfloat16 through float32 FMAs even where `vdpbf16ps` exists."""
    k, n = weight.shape[1], weight.shape[0]
    flat = x.reshape(-1, k).contiguous()
    m = flat.shape[0]
    out = torch.empty(m, n, dtype=x.dtype)
    mode = 0 if x.dtype is torch.float32 else 2 if widen else 1
    scratch = torch.empty(m * k) if mode == 2 or (mode == 1 and not lib.lfm_float_bf16dp()) else None
    lib.lfm_float_linear(
        flat.data_ptr(),
        m,
        k,
        weight.data_ptr(),
        n,
        bias.data_ptr() if bias is not None else None,
        out.data_ptr(),
        mode,
        scratch.data_ptr() if scratch is not None else None,
    )
    return out.view(*x.shape[:-1], n)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x @ weight.T + bias through oneDNN (float32), or None when the tensors do not take that path."""
    if weight.dtype is not torch.float32 or not _inference(x, weight, bias):
        return None
    return gemm.onednn_linear(x, weight, bias)


def widened_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """bfloat16 x @ weight.T + bias as float32 GEMMs on tiles of at most WIDEN_TILE_BYTES of
    widened weight rows (products exact in float32, the sum rounded to bfloat16 once), for CPUs
    whose bfloat16 GEMM is a slow loop (kernels/gemm.py); None when the tensors do not take
    that path."""
    if weight.dtype is not torch.bfloat16 or gemm.bf16_gemm_fast() or not _inference(x, weight, bias):
        return None
    k, n = weight.shape[1], weight.shape[0]
    flat = x.reshape(-1, k).float()
    out = torch.empty(flat.shape[0], n, dtype=torch.bfloat16)
    tile = max(64, WIDEN_TILE_BYTES // (4 * k))
    for r0 in range(0, n, tile):
        r1 = min(n, r0 + tile)
        b = None if bias is None else bias[r0:r1].float()
        out[:, r0:r1] = gemm.float32_linear(flat, weight[r0:r1].float(), b)
    return out.view(*x.shape[:-1], n)


AMX_TILE_ROWS = 5  # on AMX, bfloat16 products of this many rows or more go to oneDNN's tiles...
AMX_STREAM_BYTES = 64 << 20  # ...unless the weight is this large (the LM head: the stream kernel wins)


def _tiles_win(weight: torch.Tensor, rows: int) -> bool:
    """oneDNN's AMX bfloat16 GEMM beats the streaming kernel here (measured on a 2-core Xeon
    with AMX, weights from memory: [8, 1024] x [1024, 9216] 0.68 against 0.76 ms, [8, 4608] x
    [4608, 1024] 0.27 against 0.37 ms; the [8, 1024] x [1024, 65536] head 7.3 against 5.7 ms,
    and at 4 rows or fewer the kernel wins everywhere; BENCHMARKS.md, issue 16)."""
    return (
        rows >= AMX_TILE_ROWS
        and weight.dtype is torch.bfloat16
        and weight.nbytes < AMX_STREAM_BYTES
        and gemm.amx_bf16()
    )


class FastLinear(Linear):
    """A linear layer whose float inference products take the fast paths (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows <= SMALL_ROWS and not _tiles_win(self.weight, rows):
            out = small_linear(x, self.weight, self.bias)
        if out is None:
            out = onednn_linear(x, self.weight, self.bias)
        if out is None:
            out = widened_linear(x, self.weight, self.bias)
        return out if out is not None else F.linear(x, self.weight, self.bias)


__all__ = ["FastLinear", "onednn_linear", "small_linear", "stream_linear", "widened_linear", "SMALL_ROWS"]
