"""Float32 linears through oneDNN: the same products as `F.linear`, two to three times faster
at the shapes inference runs on CPUs where PyTorch's BLAS (MKL) takes a slow path.

PyTorch sends a float32 `F.linear` on the CPU to MKL's sgemm. On AMD processors MKL runs a
generic code path: measured on this project's AMD EPYC (1 thread), an [8, 1024] x [1024, 65536]
head product takes 79 ms through MKL and 38 ms through oneDNN (bundled with PyTorch, which picks
its AVX-512 kernels by CPUID), the w1/w3 product 11.2 ms against 5.0 ms, a 512-token prefill's
1.3x to 1.5x less (BENCHMARKS.md, issue 16). `FastLinear` calls oneDNN's matmul
(`torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU backend emits) on the dense
weight as it is: no copy, no second layout to keep in memory. The products are IEEE float32 like
MKL's, summed in another order (float rounding, nothing more).

Only inference takes this path: a float32 weight on the CPU with oneDNN available, no gradient
needed (training keeps `F.linear` and its autograd), and not `LFMKIT_NO_ONEDNN=1`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..model.lfm2 import Linear

_ONEDNN = torch.backends.mkldnn.is_available() and os.environ.get("LFMKIT_NO_ONEDNN") != "1"


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """x @ weight.T + bias through oneDNN, or None when the tensors do not take that path."""
    if not _ONEDNN or weight.dtype is not torch.float32 or x.dtype is not torch.float32:
        return None
    if weight.device.type != "cpu" or x.device.type != "cpu" or not weight.is_contiguous() or x.numel() == 0:
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return None
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class FastLinear(Linear):
    """A linear layer whose float32 inference products run on oneDNN (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = onednn_linear(x, self.weight, self.bias)
        return out if out is not None else F.linear(x, self.weight, self.bias)


__all__ = ["FastLinear", "onednn_linear"]
