"""Mixed precision with bfloat16 working weights and float32 master weights (`bf16_weights`).

`MasterWeights(model)` casts the model's parameters to bfloat16 in place and keeps a float32
master of every trainable one. The forward, the backward and everything else that reads the
model (GRPO's rollouts, DPO's log-probs, the held-out evaluation) read the bfloat16 weights; the
optimizer (AdamW, its states in float32) steps the masters, and `write_back` — part of the
optimizer step — rounds them into the bfloat16 weights. Nothing reads a stale weight and no
other copy of the model exists: the bfloat16 tensors *are* the model, the masters are the
optimizer's (as in apex's O2 / DeepSpeed's bf16 mode / Megatron's mixed precision).

On CPUs with AVX512-BF16 or AMX (and on GPUs) bfloat16 matmuls run ~2.5x faster than float32
ones at the small batches of decoding and ~2x at training sizes, and the weights take half the
memory bandwidth. Gradients are accumulated in float32 on the masters, each one as soon as the
backward has produced it (a post-accumulate-grad hook: the bfloat16 gradient is dropped at once,
so the whole model's bfloat16 gradients never exist together; the peak is the optimizer step
anyway), and accumulation over micro-batches loses nothing to bfloat16. Full fine-tuning holds
18 bytes per parameter (bfloat16 weight, float32 master, its gradient, two AdamW moments)
against float32's 16; the halved activations pay for it. LoRA's frozen base is bfloat16 only.

`master_view()` puts the float32 masters in the parameters' place for checkpoint saving and
loading and for the final save, so checkpoints and the final model hold the float32 values.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.linear import QuantLinear


class MasterWeights:
    """The model's trainable parameters in bfloat16, their float32 masters beside them."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        if any(isinstance(m, QuantLinear) for m in model.modules()):
            raise ConfigError("bf16_weights: the model has quantized layers; train a float model with bf16_weights")
        self.model = model
        self.dtype = dtype
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        with torch.no_grad():
            for p in model.parameters():
                if not p.is_floating_point() or p.dtype == dtype:
                    continue
                if p.requires_grad:
                    master = p.detach().to(torch.float32, copy=True)
                    self.pairs.append((p, master))
                    p.register_post_accumulate_grad_hook(lambda p, m=master: fold(p, m))
                p.data = p.data.to(dtype)

    @property
    def masters(self) -> list[torch.Tensor]:
        """The float32 tensors the optimizer steps (one per trainable parameter, in order)."""
        return [m for _, m in self.pairs]

    def fold_grads(self) -> None:
        """Fold any gradient still on a working weight into its master (the hooks do it during
        the backward; this catches a gradient set by other means)."""
        for p, m in self.pairs:
            fold(p, m)

    @torch.no_grad()
    def write_back(self) -> None:
        """Round the masters into the working weights (after every optimizer step)."""
        for p, m in self.pairs:
            p.copy_(m)

    @contextlib.contextmanager
    def master_view(self):
        """The float32 masters in the trainable parameters' place (loads write into the masters);
        on exit the working weights come back, rounded from the masters."""
        working = [p.data for p, _ in self.pairs]
        for p, m in self.pairs:
            p.data = m
        try:
            yield self.model
        finally:
            for (p, _), w in zip(self.pairs, working):
                p.data = w
            self.write_back()


def fold(p: torch.Tensor, master: torch.Tensor) -> None:
    """Add p's bfloat16 gradient into master's float32 gradient and drop it from p."""
    if p.grad is None:
        return
    if master.grad is None:
        master.grad = p.grad.to(torch.float32)
    else:
        master.grad.add_(p.grad)
    p.grad = None


__all__ = ["MasterWeights"]
