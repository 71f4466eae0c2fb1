"""W8A8 prefill: the GEMMs of a many-token forward in int8 x int8, for int8 and int4 models.

Prefill is bound by arithmetic, not by reading weights, and an int8 GEMM (`torch._int_mm`,
oneDNN with VNNI) runs about twice the multiply-adds per second of a bf16 one on the CPUs we
target. So, for `QuantLinear`s with `prefill="w8a8"` (the default; `"bf16"` keeps the bf16
GEMM on weights dequantized per tile, `"float32"` a float32 GEMM on such tiles), a product with
more than SMALL_BATCH rows:

1. quantizes the activations per token on the fly: int8 codes with one absmax/127 scale per row
   (C, `lfm_quantize_act` with one block per row);
2. multiplies by int8 weights: an int8 model's own codes (one scale per output row) as stored;
   an int4 model's codes re-expressed as int8 rows with one scale per row, a tile of at most
   TILE_BYTES at a time (`lfm_q4_to_q8`: exact for every group whose scale is within a factor
   127/8 of the row's largest; finer groups lose bits), so no int8 copy of the model is kept:
   the cost is one TILE_BYTES buffer and one pass over the int4 weights per prefill call;
3. scales the exact int32 sums back: out = acc * x_scale[row] * w_scale[column].

Where the CPU lacks the instructions those GEMMs need (AVX-512 VNNI for int8, AVX-512 BF16 or
AMX for bf16: AVX2 laptops and servers), PyTorch runs them as loops a hundred times slower than
float32 (kernels/gemm.py), so there `prefill_path` turns "w8a8" and "bf16" into "float32":
weights dequantized exactly, a tile at a time, into oneDNN's float32 GEMM.

Accuracy: against float32 activations times the same dequantized weights, the logits move by a
few parts per thousand of their largest magnitude on random weights (bounded in
tests/test_prefill.py and stated in docs/speed.md).
"""

from __future__ import annotations

import torch

from .. import kernels
from ..errors import ConfigError
from ..kernels import gemm

PREFILL_MODES = ("w8a8", "bf16", "float32")
TILE_BYTES = 8 << 20  # int8 weight rows expanded at a time from int4


def check_prefill(mode: str) -> str:
    """The prefill mode, validated ("w8a8", "bf16" or "float32")."""
    m = str(mode).lower()
    if m not in PREFILL_MODES:
        raise ConfigError(f"prefill must be one of {', '.join(PREFILL_MODES)}, got {mode!r}")
    return m


def w8a8_available() -> bool:
    """W8A8 products can run here (kernels built, `torch._int_mm`), fast or not."""
    return hasattr(torch, "_int_mm") and kernels.load() is not None


def prefill_path(mode: str) -> str:
    """The GEMM a many-row product of a layer with prefill `mode` runs on this CPU: the mode
    itself where its GEMM is fast here, else "float32" (module doc)."""
    if mode == "w8a8":
        return "w8a8" if w8a8_available() and gemm.int8_gemm_fast() else "float32"
    if mode == "bf16":
        return "bf16" if gemm.bf16_gemm_fast() else "float32"
    return "float32"


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 (contiguous) -> (int8 codes [M, K], float32 scales [M]): absmax/127."""
    m, k = x.shape
    xq = torch.empty(m, k, dtype=torch.int8)
    xs = torch.empty(m, dtype=torch.float32)
    kernels.load().lfm_quantize_act(x.data_ptr(), m, k, k, 0, xq.data_ptr(), xs.data_ptr(), None)
    return xq, xs


def int4_rows_as_int8(qweight: torch.Tensor, scales: torch.Tensor, out: torch.Tensor, out_scales: torch.Tensor):
    """Packed int4 rows (fp16 group-32 scales) as int8 rows + one float scale each, into the
    given buffers (rows = qweight's)."""
    n, k = qweight.shape[0], qweight.shape[1] * 2
    kernels.load().lfm_q4_to_q8(qweight.data_ptr(), scales.data_ptr(), n, k, out.data_ptr(), out_scales.data_ptr())


def w8a8_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """x [..., K] times a quantized weight (int8 [N, K] + float32 [N], or int4 [N, K/2] + fp16
    [N, K/32]) as an int8 GEMM; float32 [..., N]."""
    n = qweight.shape[0]
    k = qweight.shape[1] * (2 if bits == 4 else 1)
    xq, xs = quantize_per_token(x.reshape(-1, k).float().contiguous())
    out = torch.empty(xq.shape[0], n, dtype=torch.float32)
    if bits == 8:
        _scale_into(torch._int_mm(xq, qweight.t()), xs, scales, out)
        return out.reshape(*x.shape[:-1], n)
    tile = min(n, max(64, TILE_BYTES // k))
    w8 = torch.empty(tile, k, dtype=torch.int8)
    s8 = torch.empty(tile, dtype=torch.float32)
    for r0 in range(0, n, tile):
        r1 = min(n, r0 + tile)
        int4_rows_as_int8(qweight[r0:r1], scales[r0:r1], w8, s8)
        _scale_into(torch._int_mm(xq, w8[: r1 - r0].t()), xs, s8, out[:, r0:r1])
    return out.reshape(*x.shape[:-1], n)


def _scale_into(acc: torch.Tensor, xs: torch.Tensor, ws: torch.Tensor, out: torch.Tensor) -> None:
    """out = acc * xs[:, None] * ws[None, :] in one pass (out: rows of a wider float32 matrix)."""
    m, n = acc.shape
    kernels.load().lfm_scale_int32(acc.data_ptr(), m, n, xs.data_ptr(), ws.data_ptr(), out.data_ptr(), out.stride(0))
