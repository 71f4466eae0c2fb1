"""Block-wise 8-bit quantization of optimizer states (Dettmers et al. 2022, "8-bit Optimizers via
Block-wise Quantization", arXiv:2110.02861).

A float tensor is cut into blocks of `BLOCK` (256) consecutive values; each block keeps its
absmax as a float32 scale and each value a uint8 code: the index of the nearest of 256 values of
Dettmers' *dynamic* map (`dynamic_map`) to value / absmax. The map spends its codes on a
dynamic exponent (seven decades, 1e-6 to 1) and a linear fraction whose bits shrink as the
exponent grows, so small and large values alike keep about two significant digits; the signed
map (first moment) covers [-1, 1], the unsigned one (second moment, never negative) [0, 1]
with twice the resolution. The map is bitsandbytes' `create_dynamic_map` (torchao's too), so
codes, scales and values mean the same as theirs.

`quantize` / `dequantize` are the plain PyTorch definitions (the reference, and the fallback
without the C++ kernels). The kernel (lfmkit/kernels/csrc/optim.cpp) finds the same code
without a search: `bucket_table` maps the top 16 bits of a float32 (sign, exponent and seven
mantissa bits, one bucket of values) to the nearest code of the bucket's smaller end and whether
one midpoint between codes falls inside the bucket (never two: `bucket_table` checks), and one
comparison with that midpoint finishes. Ties between two codes round to the larger value.
"""

from __future__ import annotations

import functools

import torch

BLOCK = 256


@functools.cache
def dynamic_map(signed: bool) -> torch.Tensor:
    """Dettmers' dynamic data type: 256 sorted float32 values in [-1, 1] (signed) or [0, 1]."""
    data: list[float] = []
    for i in range(7):  # exponent 10^-6 .. 10^0; the fraction gets 2^i (signed) or 2^(i+1) items
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        bounds = torch.linspace(0.1, 1, items)
        means = ((bounds[:-1] + bounds[1:]) / 2.0).tolist()
        data += [10 ** (i - 6) * x for x in means]
        if signed:
            data += [-(10 ** (i - 6)) * x for x in means]
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)


@functools.cache
def midpoints(signed: bool) -> torch.Tensor:
    """The 255 midpoints between neighbouring codes of the map (float32), then +inf (256)."""
    q = dynamic_map(signed)
    return torch.cat([(q[1:] + q[:-1]) / 2, torch.tensor([float("inf")])])


def encode(x: torch.Tensor, signed: bool) -> torch.Tensor:
    """uint8 codes of the nearest map values of `x` (values in the map's range; ties round up)."""
    return torch.bucketize(x, midpoints(signed)[:-1], right=True).to(torch.uint8)


@functools.cache
def bucket_table(signed: bool) -> torch.Tensor:
    """int16[65536]: for the float32 values whose top 16 bits are b, the code of the bucket's
    smaller end, plus 256 when the next code's midpoint lies inside the bucket."""
    patterns = torch.arange(1 << 16, dtype=torch.int64) << 16
    ends = []
    for low_bits in (0, 0xFFFF):
        bits = patterns | low_bits
        bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32)
        x = bits.view(torch.float32)  # the inf / NaN buckets (never met) stand for +-1
        ends.append(torch.where(x.isfinite(), x, torch.copysign(torch.ones_like(x), x)).clamp(-1.0, 1.0))
    small, large = torch.minimum(*ends), torch.maximum(*ends)
    lo, hi = encode(small, signed).to(torch.int16), encode(large, signed).to(torch.int16)
    if int((hi - lo).max()) > 1:
        raise AssertionError("a float32 bucket spans two midpoints of the dynamic map")
    return lo + 256 * (hi > lo).to(torch.int16)


def scales_of(x: torch.Tensor) -> torch.Tensor:
    """The float32 absmax of every block of BLOCK values of flat `x` (the last block may be
    shorter), at least 1e-12 so an all-zero block divides safely."""
    n = x.numel()
    padded = torch.nn.functional.pad(x.abs(), (0, -n % BLOCK))
    return padded.view(-1, BLOCK).amax(dim=1).clamp_min(1e-12)


def per_value(scales: torch.Tensor, n: int) -> torch.Tensor:
    """Each value's block scale, for a flat tensor of n values."""
    return scales.repeat_interleave(BLOCK)[:n]


def quantize(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes shaped like x, float32 absmax per block) of float32 `x`, block-wise over its
    flattened values."""
    flat = x.reshape(-1).float()
    scales = scales_of(flat)
    codes = encode(flat * per_value(1 / scales, flat.numel()), signed)
    return codes.view(x.shape), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, signed: bool) -> torch.Tensor:
    """The float32 values the codes and block scales stand for (shaped like codes)."""
    flat = dynamic_map(signed)[codes.reshape(-1).long()] * per_value(scales, codes.numel())
    return flat.view(codes.shape)


__all__ = ["BLOCK", "dynamic_map", "midpoints", "bucket_table", "encode", "quantize", "dequantize", "scales_of"]
