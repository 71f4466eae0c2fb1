"""What the quantized kernels compute, written in PyTorch, for the kernel tests."""

import torch


def act_quantized(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x as the kernels see it: int8 in blocks with one absmax/127 scale per block (int4: 32
    values; int8: 256 where the width allows, else 32; W8A8 prefill: the whole row)."""
    b = x.reshape(*x.shape[:-1], -1, block)
    s = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))  # times the reciprocal, as the kernels
    return (torch.round(b * inv) * s).reshape(x.shape)
