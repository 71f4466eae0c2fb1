"""Quantized linear layers: int8 / int4 weights (formats.py), float activations in and out.

Matrix-vector products (decode, small batches) run in our C++ kernels (lfmkit.kernels), which
quantize the activations to int8 in blocks of 32 and use integer dot products. Larger inputs
(prefill) run an int8 GEMM on activations quantized per token (`prefill="w8a8"`, the default,
see prefill.py), or with `prefill="bf16"` dequantize the weight to bfloat16 a tile of rows at a
time and run a bfloat16 GEMM. Without the kernels, everything falls back to dequantize +
`F.linear` in PyTorch.

Linears that read the same input (q/k/v, w1/w3) can be allocated back to back in one buffer
(`adjacent`): each part is still its own `QuantLinear` under its Hugging Face name, and
`fused_view(parts)` is one `QuantLinear` over all their rows, for one kernel call instead of
several. These are buffers, not parameters: a quantized layer does not train (LoRA wraps it).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..errors import ConfigError
from ..kernels import gemm
from .formats import dequantize_int4, dequantize_int8, fits, quantize_int4, quantize_int8
from .prefill import prefill_path, w8a8_linear

SMALL_BATCH = 16  # rows up to which the matrix-vector kernels beat dequant + GEMM
PREFILL_TILE_BYTES = 8 << 20  # float weight rows expanded at a time for a prefill GEMM


_SCRATCH = threading.local()  # per thread: the kernels run without the GIL

# The real tokens of the model forward running now, [batch, tokens] bool (None: all are real),
# set by the fast model (`rows_of`), so that each row's product is the one it gets alone.
_ROWS: contextvars.ContextVar[tuple[int, int, torch.Tensor | None] | None] = contextvars.ContextVar(
    "lfmkit_rows", default=None
)


@contextlib.contextmanager
def rows_of(batch: int, tokens: int, mask: torch.Tensor | None):
    """Within this block, products of more than SMALL_BATCH rows choose their path per batch
    row: a row with at most SMALL_BATCH real tokens (`mask`, [batch, tokens], True = real; None:
    all real) takes the matrix-vector kernels on those tokens, exactly as that prompt alone
    would; the other rows take the prefill GEMM. So the path of a request's tokens never
    depends on the requests padded into the same forward."""
    token = _ROWS.set((batch, tokens, mask))
    try:
        yield
    finally:
        _ROWS.reset(token)


def _scratch(m: int, k: int) -> tuple[int, int, int]:
    """Reused buffers for quantized activations (int8 values, block scales, block sums), one
    set per thread and shape, so models can run in several threads at once."""
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    bufs = cache.get((m, k))
    if bufs is None:
        tensors = (
            torch.empty(m * k, dtype=torch.int8),
            torch.empty(m * k // 32, dtype=torch.float32),
            torch.empty(m * k // 32, dtype=torch.int32),
        )
        bufs = cache[(m, k)] = (*(t.data_ptr() for t in tensors), tensors)
    return bufs[0], bufs[1], bufs[2]


# ---- modules -----------------------------------------------------------------------------------
class KernelSpec(NamedTuple):
    """What qkernel needs to multiply by one quantized weight (see csrc/kernels.cpp)."""

    w: int  # weight codes
    s: int  # scales
    wsum: int  # int8: weight sums per activation block, else 0
    K: int
    N: int
    bits: int
    ab: int  # activation block: int8 256 (or 32 for narrow widths), int4 32


class QuantLinear(nn.Module):
    """A bias-free linear layer with int8 or int4 weights; float activations in and out."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 32, device=None):
        super().__init__()
        if bits not in (4, 8):
            raise ConfigError(f"QuantLinear supports 4 or 8 bits, not {bits}")
        if not fits(in_features, bits, group_size):
            raise ConfigError(
                f"int{bits} linears need in_features divisible by "
                f"{64 if bits == 4 else 32} (and by group_size), got {in_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        if bits == 8:
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        else:
            self.register_buffer(
                "qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device)
            )
            self.register_buffer(
                "scales", torch.empty(out_features, in_features // group_size, dtype=torch.float16, device=device)
            )

    @classmethod
    def over(
        cls, qweight: torch.Tensor, scales: torch.Tensor, in_features: int, bits: int, group_size: int = 32
    ) -> "QuantLinear":
        """A layer over existing code and scale tensors (views share their memory)."""
        mod = cls(in_features, 0, bits, group_size, device="meta")
        mod.out_features = qweight.shape[0]
        mod.qweight, mod.scales = qweight, scales
        return mod

    @classmethod
    def from_float(cls, weight: torch.Tensor, bits: int, group_size: int = 32) -> "QuantLinear":
        mod = cls(weight.shape[1], weight.shape[0], bits, group_size)
        mod.set_weight(weight)
        return mod

    _fast = None  # cached kernel call (see _prepare)
    prefill = "w8a8"  # how products of more than SMALL_BATCH rows run: "w8a8", "bf16" or "float32" (prefill.py)

    def set_weight(self, weight: torch.Tensor, rows: slice | None = None) -> None:
        """Quantize `weight` (float, all rows or the given row range) into this layer."""
        rows = rows or slice(0, self.out_features)
        q, s = quantize_int8(weight) if self.bits == 8 else quantize_int4(weight, self.group_size)
        self.qweight[rows].copy_(q)
        self.scales[rows].copy_(s)
        self.__dict__["_fast"] = None  # int8 kernels cache weight sums: recompute them
        self.__dict__.pop("_wsum", None)

    def dequantize(
        self, dtype=torch.float32, rows: slice | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The float weight this layer multiplies by, [out_features, in_features] (or a range
        of its rows; bfloat16 and float32 can be written into a given buffer)."""
        lib = kernels.load()
        if dtype in (torch.bfloat16, torch.float32) and self._kernel_ok() and lib is not None:
            r0, r1 = (rows.start, rows.stop) if rows is not None else (0, self.out_features)
            if out is None:
                out = torch.empty(r1 - r0, self.in_features, dtype=dtype)
            fn = getattr(lib, f"lfm_q{self.bits}_dequant_{'bf16' if dtype == torch.bfloat16 else 'f32'}")
            fn(self.qweight[r0:r1].data_ptr(), self.scales[r0:r1].data_ptr(), r1 - r0, self.in_features, out.data_ptr())
            return out
        q, s = (self.qweight, self.scales) if rows is None else (self.qweight[rows], self.scales[rows])
        return dequantize_int8(q, s, dtype) if self.bits == 8 else dequantize_int4(q, s, self.group_size, dtype)

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects .weight (dtype, device, shape)
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.in_features
        m = x.numel() // k
        fast = self._fast
        if fast is None:
            fast = self._prepare()
        if not fast or x.device.type != "cpu":
            return F.linear(x, self.dequantize(x.dtype))
        if m > SMALL_BATCH:
            by_row = self._per_row(x)
            return by_row if by_row is not None else self._prefill_linear(x)
        return self._kernel_linear(x)

    def _kernel_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The matrix-vector kernels on x [..., K] (few rows)."""
        k, n = self.in_features, self.out_features
        m = x.numel() // k
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        xq, xs, xsum = _scratch(m, k)
        out = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
        fn, args = self._fast
        fn(x.data_ptr(), m, k, *args, n, out.data_ptr(), xq, xs, xsum)
        return out

    def _per_row(self, x: torch.Tensor) -> torch.Tensor | None:
        """Inside `rows_of` with a row of at most SMALL_BATCH real tokens: x [B, T, K] with each
        such row's real tokens through the kernels (one call per row, as alone), the other rows
        through the prefill GEMM, padding left at zero; else None (the GEMM takes all of x)."""
        rows = _ROWS.get()
        if rows is None or x.dim() != 3:
            return None
        b, t, mask = rows
        if x.shape[0] != b or x.shape[1] > t:
            return None
        if mask is None:
            if x.shape[1] > SMALL_BATCH:
                return None
            real = torch.ones(b, x.shape[1], dtype=torch.bool)
        else:
            real = mask[:, t - x.shape[1] :]  # the last positions: a head after logits_to_keep
        counts = real.sum(-1)
        short = counts <= SMALL_BATCH
        if not bool(short.any()):
            return None
        out = torch.zeros(*x.shape[:-1], self.out_features, dtype=torch.float32)
        if not bool(short.all()):
            long = ~short
            out[long] = self._prefill_linear(x[long]).float()
        for row in short.nonzero().flatten().tolist():
            where = real[row].nonzero().flatten()
            if len(where):
                out[row, where] = self._kernel_linear(x[row, where])
        return out

    def _prefill_linear(self, x: torch.Tensor) -> torch.Tensor:
        """Many rows: an int8 GEMM on per-token int8 activations (prefill.py), or a bf16 GEMM
        (AVX-512 BF16 / AMX via oneDNN) or float32 GEMM on the weights expanded a tile of rows
        at a time, so the float copy never exceeds PREFILL_TILE_BYTES; which one by
        `prefill_path` (the layer's mode, or float32 where that mode's GEMM is slow here)."""
        path = prefill_path(self.prefill)
        if path == "w8a8":
            return w8a8_linear(x, self.qweight, self.scales, self.bits)
        dtype = torch.bfloat16 if path == "bf16" else torch.float32
        product = F.linear if path == "bf16" else gemm.float32_linear
        k, n = self.in_features, self.out_features
        xf = x.reshape(-1, k).to(dtype).contiguous()
        tile = max(64, PREFILL_TILE_BYTES // (dtype.itemsize * k) // 64 * 64)
        if tile >= n:
            return product(xf, self.dequantize(dtype)).to(x.dtype).reshape(*x.shape[:-1], n)
        out = torch.empty(xf.shape[0], n, dtype=x.dtype)
        buf = torch.empty(tile, k, dtype=dtype)
        for r0 in range(0, n, tile):
            r1 = min(n, r0 + tile)
            w = self.dequantize(dtype, slice(r0, r1), buf[: r1 - r0])
            out[:, r0:r1] = product(xf, w)
        return out.reshape(*x.shape[:-1], n)

    def _prepare(self):
        """(C function, its weight arguments) for the kernel path, or False."""
        spec = self.kernel_spec()
        if spec is None:
            fast = False
        elif self.bits == 4:
            fast = (kernels.load().lfm_q4_linear, (spec.w, spec.s))
        else:
            fast = (kernels.load().lfm_q8_linear, (spec.ab, spec.w, spec.s, spec.wsum))
        self.__dict__["_fast"] = fast
        return fast

    def kernel_spec(self) -> "KernelSpec | None":
        """Pointers and sizes for qkernel (None when the kernels cannot run this layer).

        int8 multiplies activations quantized in blocks of 256 values where the width allows
        (else 32); its kernel needs the weight sums per such block (see csrc/kernels.cpp)."""
        if kernels.load() is None or not self._kernel_ok():
            return None
        wsum_ptr, ab = 0, 32
        if self.bits == 8:
            ab = 256 if self.in_features % 256 == 0 else 32
            wsum = self.__dict__.get("_wsum")
            if wsum is None or wsum.shape != (self.out_features, self.in_features // ab):
                wsum = self.qweight.view(self.out_features, -1, ab).sum(-1, dtype=torch.int32).contiguous()
                self.__dict__["_wsum"] = wsum  # kept with the layer, outside the state dict
            wsum_ptr = wsum.data_ptr()
        return KernelSpec(
            self.qweight.data_ptr(),
            self.scales.data_ptr(),
            wsum_ptr,
            self.in_features,
            self.out_features,
            self.bits,
            ab,
        )

    def _apply(self, fn, recurse=True):
        """Moves (`.to(device)`) apply; dtype casts (`model.float()`, `.half()`) leave the layer as
        it is: its scales' dtype is part of the quantized format."""
        self.__dict__["_fast"] = None  # buffers may move: look the pointers up again
        dtype, moved = self.scales.dtype, fn(self.scales)
        if moved.device == self.scales.device and moved.dtype != dtype:
            return self
        super()._apply(fn, recurse)
        if self.scales.dtype != dtype:
            self.scales = self.scales.to(dtype)
        return self

    def _kernel_ok(self) -> bool:
        return self.qweight.device.type == "cpu" and (self.bits == 8 or self.group_size == 32)

    def nbytes(self) -> int:
        return self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * self.scales.element_size()

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{g}"


class QuantEmbedding(nn.Module):
    """Embedding lookup from a QuantLinear's table (shared with the tied head)."""

    def __init__(self, table: QuantLinear):
        super().__init__()
        self.table = table

    @property
    def weight(self) -> torch.Tensor:
        return self.table.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.table
        flat = ids.reshape(-1)
        q, s = t.qweight[flat], t.scales[flat]
        rows = dequantize_int8(q, s) if t.bits == 8 else dequantize_int4(q, s, t.group_size)
        return rows.reshape(*ids.shape, t.in_features)


def adjacent(in_features: int, out_features: list[int], bits: int, group_size: int = 32) -> list[QuantLinear]:
    """Empty layers that read the same input, their rows stored back to back in one buffer, so
    that `fused_view` can multiply by all of them in one kernel call."""
    whole = QuantLinear(in_features, sum(out_features), bits, group_size)
    parts, row = [], 0
    for n in out_features:
        parts.append(
            QuantLinear.over(whole.qweight[row : row + n], whole.scales[row : row + n], in_features, bits, group_size)
        )
        row += n
    return parts


def _follows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """b starts where a ends, in the same memory."""
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.is_contiguous()
        and b.is_contiguous()
        and b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()
    )


def fused_view(parts: list[nn.Module]) -> QuantLinear | None:
    """One QuantLinear over the rows of `parts` (in order) when they are quantized layers of one
    format stored back to back (see `adjacent`); None otherwise (e.g. after one was replaced,
    moved, or wrapped by an adapter)."""
    if not parts or any(type(p) is not QuantLinear for p in parts):
        return None
    first = parts[0]
    for a, b in zip(parts, parts[1:]):
        if (
            (a.bits, a.group_size, a.in_features) != (b.bits, b.group_size, b.in_features)
            or not _follows(a.qweight, b.qweight)
            or not _follows(a.scales, b.scales)
        ):
            return None
    n = sum(p.out_features for p in parts)
    q, sc = first.qweight, first.scales
    whole = QuantLinear.over(
        q.as_strided((n, *q.shape[1:]), q.stride()),
        sc.as_strided((n, *sc.shape[1:]), sc.stride()),
        first.in_features,
        first.bits,
        first.group_size,
    )
    whole.prefill = first.prefill
    return whole
