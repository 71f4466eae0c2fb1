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

`KahanWeights(model, accumulate)` (`master_weights: kahan`) casts the same way but keeps no
master: the optimizer (`compact_adamw.CompactAdamW`) steps the bfloat16 weights themselves with
Kahan-compensated summation (Zamirai et al. 2020, "Revisiting BFloat16 Training"), its bfloat16
compensation buffer taking the master's place at 2 bytes per parameter instead of 4. The
gradients are the bfloat16 ones the backward produces (2 bytes instead of a float32 master
gradient's 4); over several micro-batches (`accumulate`) each is summed in a float32
accumulator as the backward produces it and rounded to bfloat16 once, after the last, so
accumulation still loses nothing to bfloat16 (4 bytes per parameter more, during the step's
backwards only). Checkpoints hold the bfloat16 weights and the optimizer the compensation, so
resume is exact; the final model is the bfloat16 weights.
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
        check_float(model)
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

    def fold_grads(self, last: bool = False) -> None:
        """Fold any gradient still on a working weight into its master (the hooks do it during
        the backward; this catches a gradient set by other means). After every micro-batch;
        `last` (the step's last one) changes nothing here."""
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


class KahanWeights:
    """The model's float weights in bfloat16 with no float32 master; the optimizer compensates
    (module docstring). `masters` are the bfloat16 trainable weights themselves."""

    def __init__(self, model: nn.Module, accumulate: bool, dtype: torch.dtype = torch.bfloat16):
        check_float(model)
        self.model = model
        self.accumulate = accumulate
        self.sums: dict[int, torch.Tensor] = {}  # id(param) -> float32 gradient sum (accumulate)
        self.masters: list[nn.Parameter] = []
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
                if p.requires_grad:
                    self.masters.append(p)
                    if accumulate:
                        p.register_post_accumulate_grad_hook(self._fold)

    def _fold(self, p: torch.Tensor) -> None:
        """Add p's bfloat16 gradient into its float32 sum and drop it from p."""
        if p.grad is None:
            return
        if id(p) in self.sums:
            self.sums[id(p)].add_(p.grad)
        else:
            self.sums[id(p)] = p.grad.to(torch.float32)
        p.grad = None

    def fold_grads(self, last: bool = False) -> None:
        """After every micro-batch: fold what the hooks did not (accumulate); after the last,
        round each float32 sum into the weight's bfloat16 gradient, freeing the sum."""
        if not self.accumulate:
            return
        for p in self.masters:
            self._fold(p)
        if last:
            for p in self.masters:
                total = self.sums.pop(id(p), None)
                if total is not None:
                    p.grad = total.to(p.dtype)

    def write_back(self) -> None:
        """Nothing to do: the optimizer stepped the working weights themselves."""

    @contextlib.contextmanager
    def master_view(self):
        """The model as it is: its bfloat16 weights are what checkpoints hold."""
        yield self.model


def check_float(model: nn.Module) -> None:
    """Refuse a model with quantized layers: bf16_weights casts float weights."""
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ConfigError("bf16_weights: the model has quantized layers; train a float model with bf16_weights")


def fold(p: torch.Tensor, master: torch.Tensor) -> None:
    """Add p's bfloat16 gradient into master's float32 gradient and drop it from p."""
    if p.grad is None:
        return
    if master.grad is None:
        master.grad = p.grad.to(torch.float32)
    else:
        master.grad.add_(p.grad)
    p.grad = None


__all__ = ["MasterWeights", "KahanWeights", "check_float"]
