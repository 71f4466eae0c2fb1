"""Training losses, each a sum over trained tokens (the trainer divides by the global count).

A loss is a callable `loss(model, batch) -> LossOutput`: `total` is the sum of the per-item
losses over the batch's `loss_items` (for token losses the trained tokens,
`batch.targets != IGNORE_INDEX`; for preference losses the pairs, `preference.py`), and
`parts` optional named sums to log (a distillation loss reports its CE and KL halves there).
Dividing by the number of items of the whole global batch (every micro-batch, every process)
is the trainer's job: that makes the loss the mean over all trained tokens, as TRL and
transformers compute it (`num_items_in_batch`), so batch size, packing, accumulation and the
number of processes never change it.

`linear_cross_entropy(hidden, weight, targets)` is the head and the cross-entropy fused and
chunked, the technique of Liger Kernel's `LigerFusedLinearCrossEntropy` (Hsu et al. 2024,
arXiv:2410.10989) and TRL's `chunked_nll`: logits are formed for `chunk_size` tokens at a time,
in float32, and the gradients with respect to the hidden states and the head weight are
computed in the same pass, so no [tokens, vocab] tensor ever exists beyond one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .batching import Batch
from .data import IGNORE_INDEX

# Float32 logits held at once: chunk_size * vocab <= 2**24 (64 MiB; 256 tokens at LFM2's 65,536).
LOGIT_BUDGET = 1 << 24


def default_chunk_size(vocab_size: int) -> int:
    return max(16, LOGIT_BUDGET // max(1, vocab_size))


@dataclass
class LossOutput:
    """`total`: the sum of per-token losses over trained tokens; `parts`: named sums to log."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T, target_i), gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, grad_hidden: bool, grad_weight: bool):
        n = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        d_hidden = torch.empty_like(hidden) if grad_hidden else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grad_weight else None
        for a in range(0, n, chunk_size):
            h, t = hidden[a : a + chunk_size], targets[a : a + chunk_size]
            logits = (h @ weight.T).float()
            picked = logits.gather(1, t[:, None])[:, 0]
            # logsumexp and softmax from one exp pass, in place over the chunk's logits.
            peak = logits.amax(dim=-1, keepdim=True)
            exp = logits.sub_(peak).exp_()
            denom = exp.sum(dim=-1, keepdim=True)
            total += (peak[:, 0] + denom[:, 0].log() - picked).sum()
            if grad_hidden or grad_weight:
                # d/dlogits of CE = softmax - onehot.
                probs = exp.div_(denom)
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                probs = probs.to(h.dtype)
                if grad_hidden:
                    torch.mm(probs, weight, out=d_hidden[a : a + chunk_size])
                if grad_weight and probs.dtype == torch.float32:
                    d_weight.addmm_(probs.T, h)  # accumulated in place: no [vocab, h] temporary
                elif grad_weight:
                    d_weight += (probs.T @ h).float()
        ctx.save_for_backward(d_hidden, d_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        # Scaled in place (a second backward through this graph is refused by autograd's version check).
        d_hidden, d_weight = ctx.saved_tensors
        gh = d_hidden.mul_(grad_total.to(d_hidden.dtype)) if d_hidden is not None else None
        gw = d_weight.mul_(grad_total).to(ctx.weight_dtype) if d_weight is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of `hidden` [n, h] through a bias-free head `weight` [vocab, h]
    against `targets` [n] (every one trained), in float32, never holding more than
    `chunk_size` rows of logits. Under autocast the matmuls run in the autocast dtype."""
    if hidden.shape[0] == 0:  # nothing trained here: a zero that still reaches every parameter
        return hidden.float().sum() * 0.0 + weight.float().sum() * 0.0
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    else:
        weight = weight.to(hidden.dtype)
    grad = torch.is_grad_enabled()
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden, weight, targets, chunk, grad and hidden.requires_grad, grad and weight.requires_grad
        )


def token_log_probs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """log softmax(head(hidden_i))[target_i] for every row i, float32 [n], differentiable: each
    chunk's head and log-softmax are recomputed in the backward pass (activation
    checkpointing), so memory stays at one chunk of logits at the price of a second head
    forward. Works for any head module (plain, or wrapped by an adapter)."""
    from torch.utils.checkpoint import checkpoint

    def chunk_logps(h, t):
        return -F.cross_entropy(head(h).float(), t, reduction="none")

    if hidden.shape[0] == 0:  # still through the head: an empty result that reaches every parameter
        return chunk_logps(hidden, targets)
    parts = [
        checkpoint(chunk_logps, hidden[a : a + chunk_size], targets[a : a + chunk_size], use_reentrant=False)
        for a in range(0, hidden.shape[0], chunk_size)
    ]
    return torch.cat(parts)


def chunked_head_cross_entropy(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """The same sum for any head module (e.g. one wrapped by an adapter), one chunk of logits at
    a time (`token_log_probs`)."""
    return -token_log_probs(head, hidden, targets, chunk_size).sum()


class CausalLMLoss:
    """Next-token cross-entropy summed over trained tokens: the SFT loss (TRL's "nll" and
    "chunked_nll", transformers' `ForCausalLMLoss` with `num_items_in_batch`), computed from the
    model's final-norm hidden states with the chunked fused head above."""

    def __init__(self, chunk_size: int | None = None):
        self.chunk_size = chunk_size

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        hidden = model(**batch.model_inputs(), return_hidden=True)
        keep = batch.targets != IGNORE_INDEX
        h, t = hidden[keep], batch.targets[keep]
        head = model.lm_head
        if is_plain_linear(head):
            total = linear_cross_entropy(h, head.weight, t, self.chunk_size)
        else:
            chunk = self.chunk_size or default_chunk_size(model.config.vocab_size)
            total = chunked_head_cross_entropy(head, h, t, chunk)
        return LossOutput(total)


def is_plain_linear(module: nn.Module) -> bool:
    """A bias-free nn.Linear computing exactly x @ weight.T (not wrapped or replaced by an adapter)."""
    return isinstance(module, nn.Linear) and module.bias is None and type(module).forward is nn.Linear.forward


__all__ = [
    "LossOutput",
    "linear_cross_entropy",
    "chunked_head_cross_entropy",
    "token_log_probs",
    "CausalLMLoss",
    "default_chunk_size",
    "is_plain_linear",
]
