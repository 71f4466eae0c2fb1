"""Weight-only quantization formats: int8 (one scale per output channel) and int4 (one scale
per group), as tensors. The modules that multiply by them are in `linear.py`.

Formats (weights W [N, K]):
- int8 (K a multiple of 32): `qweight` int8 [N, K] in [-127, 127], `scales` float32 [N];
  W ~ qweight * scales[:, None].
- int4 (K a multiple of 64): `qweight` uint8 [N, K/2]: in every block of 64 columns, byte i
  holds column i in its low nibble and column i+32 in its high nibble, each stored as q + 8
  with q in [-8, 7]; `scales` float16 [N, K/group]; the largest-magnitude weight of a group
  maps to -8 exactly (llama.cpp's Q4_0 rule); W ~ (nibble - 8) * scale. group = 32 by default
  (0.5625 bytes/weight, like Q4_0); the C++ kernels handle group 32, other sizes run in PyTorch.
A linear whose in_features does not fit (tiny test models) stays float.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

MODES = ("fp32", "bf16", "int8", "int4")


def check_mode(mode: str | None) -> str:
    mode = (mode or "fp32").lower()
    aliases = {"float32": "fp32", "none": "fp32", "bfloat16": "bf16", "q8": "int8", "q4": "int4"}
    mode = aliases.get(mode, mode)
    if mode not in MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def bits_of(mode: str) -> int:
    return 8 if check_mode(mode) == "int8" else 4


# ---- quantizing tensors -----------------------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (qweight int8 [N, K], scales float32 [N])."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise symmetric int4 in the packed layout above: (qweight uint8, scales float16)."""
    n, k = w.shape
    if k % group_size or group_size % 32:
        raise ConfigError(
            f"int4 needs in_features ({k}) divisible by the group size ({group_size}), itself a multiple of 32"
        )
    if k % 64:
        raise ConfigError(f"int4 needs in_features divisible by 64, got {k}")
    g = w.float().reshape(n, k // group_size, group_size)
    idx = g.abs().argmax(dim=-1, keepdim=True)
    extreme = torch.gather(g, -1, idx)  # signed largest-magnitude value
    scales = (extreme / -8.0).squeeze(-1).to(torch.float16)
    s = scales.float()
    inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
    q = (torch.round(g * inv[..., None]).clamp_(-8, 7) + 8).to(torch.uint8).reshape(n, k // 64, 2, 32)
    packed = q[:, :, 0] | (q[:, :, 1] << 4)  # [n, k/64, 32]
    return packed.reshape(n, k // 2).contiguous(), scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.float() * scales[:, None]).to(dtype)


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int = 32, dtype=torch.float32) -> torch.Tensor:
    n, half = q.shape
    k = half * 2
    b = q.reshape(n, k // 64, 1, 32)
    nib = torch.cat((b & 15, b >> 4), dim=2).reshape(n, k).float() - 8.0
    return (nib.reshape(n, k // group_size, group_size) * scales.float()[..., None]).reshape(n, k).to(dtype)


def fits(in_features: int, bits: int, group_size: int = 32) -> bool:
    """Whether a linear with this input width can be quantized (else it stays float)."""
    if bits == 8:
        return in_features % 32 == 0
    return in_features % 64 == 0 and in_features % group_size == 0 and group_size % 32 == 0
