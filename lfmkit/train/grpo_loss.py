"""The GRPO objective (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3), in the
trainer's loss protocol (`losses.py`: a sum over the batch's loss items; the trainer divides by
the whole step's count).

Per completion token t of completion i, with the policy's log-prob logp (logits / temperature,
as TRL computes it), the rollout policy's old_logp and the completion's advantage A_i:

    ratio = exp(logp - old_logp)
    l_t = -min(ratio * A_i, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A_i) + beta * KL_t
    KL_t = exp(ref_logp - logp) - (ref_logp - logp) - 1      (Schulman's k3 estimator; beta > 0 only)

On the first optimizer step of a batch of rollouts old_logp is logp itself, detached (the policy
has not moved: ratio = 1, the gradient is the plain policy gradient); later steps on the same
rollouts (num_iterations > 1) use the rollout policy's log-probs. The variants differ only in how
the l_t are averaged over the step (TRL's `loss_type`):

- `dapo` (Yu et al. 2025, arXiv:2503.14476; TRL's default): sum over every completion token of
  the step / their number;
- `grpo`: each completion's mean over its tokens, averaged over the completions;
- `dr_grpo` (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783): sum over
  tokens / (completions x max_completion_length).

The sums are exact over the global step (all micro-batches and processes), which TRL's grpo and
dr_grpo match when micro-batches are equal in size. tests/test_train_grpo.py checks each variant
against a direct computation and against TRL's `GRPOTrainer._compute_loss` on the same tensors.

Logged (as the trainer's per-step means): `clip_low`, `clip_high`, `clip_region` (the fraction
of tokens whose ratio is clipped below with A < 0, above with A > 0, either), `kl` (beta > 0),
`logprob_diff` (first step of a rollout batch: mean |sampler log-prob - training forward
log-prob| over completion tokens, the rollout/training mismatch), and the rollout metrics of the
step (`reward`, `reward/<name>`, completion lengths, ...).
"""

from __future__ import annotations

import torch
from torch import nn

from .batching import Batch
from .data import IGNORE_INDEX
from .losses import LossOutput, default_chunk_size, token_log_probs


def head_logps(
    head: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[target] per row, float32, one chunk of logits at a time."""
    vocab = head.out_features if hasattr(head, "out_features") else head.weight.shape[0]
    chunk = chunk_size or default_chunk_size(vocab)
    scaled = head if temperature == 1.0 else (lambda x: head(x) / temperature)
    return token_log_probs(scaled, hidden, targets, chunk)


def completion_logps(
    model: nn.Module, batch: Batch, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """The log-prob of every trained target of `batch` (row-major order) under `model`."""
    hidden = model(**batch.model_inputs(), return_hidden=True)
    keep = batch.targets != IGNORE_INDEX
    return head_logps(model.lm_head, hidden[keep], batch.targets[keep], temperature, chunk_size)


def clipped_objective(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
):
    """(per-token loss l_t, ratio, KL_t or None) for aligned per-token tensors (see the module doc)."""
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    return loss, ratio, kl


class GRPOLoss:
    """The trainer's loss for `RolloutBatch`es (rollouts.py): see the module doc."""

    def __init__(
        self,
        loss_type: str = "dapo",
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        beta: float = 0.0,
        temperature: float = 1.0,
        chunk_size: int | None = None,
    ):
        self.loss_type, self.beta, self.temperature = loss_type, beta, temperature
        self.epsilon_low, self.epsilon_high = epsilon_low, epsilon_high
        self.chunk_size = chunk_size

    def __call__(self, model: nn.Module, batch) -> LossOutput:
        hidden = model(**batch.model_inputs(), return_hidden=True)
        keep = batch.targets != IGNORE_INDEX
        row = keep.nonzero(as_tuple=True)[0]
        h, t = hidden[keep], batch.targets[keep]
        logps = head_logps(model.lm_head, h, t, self.temperature, self.chunk_size)
        old = batch.old_logps[keep] if batch.old_logps is not None else logps.detach()
        ref = batch.ref_logps[keep] if self.beta != 0.0 else None
        adv = batch.advantages[row]
        per_token, ratio, kl = clipped_objective(logps, old, adv, self.epsilon_low, self.epsilon_high, self.beta, ref)
        if self.loss_type == "grpo":
            per_token = per_token / keep.sum(-1).clamp(min=1)[row]
        total = per_token.sum()
        if h.shape[0] == 0:  # nothing trained here: a zero that still reaches every parameter
            total = total + hidden.float().sum() * 0.0 + model.lm_head.weight.float().sum() * 0.0
        return LossOutput(total, self._parts(batch, model, h, t, logps, ratio, adv, kl))

    def _parts(self, batch, model, h, t, logps, ratio, adv, kl) -> dict[str, torch.Tensor]:
        """Sums whose per-item means (the trainer's division) are the step's token means and
        rollout metrics."""
        with torch.no_grad():
            items = max(batch.step_items, 1.0)  # what the trainer divides by
            token_scale = items / max(batch.step_tokens, 1.0)
            low = (ratio < 1 - self.epsilon_low) & (adv < 0)
            high = (ratio > 1 + self.epsilon_high) & (adv > 0)
            parts = {
                "clip_low": low.sum() * token_scale,
                "clip_high": high.sum() * token_scale,
                "clip_region": (low | high).sum() * token_scale,
            }
            if kl is not None:
                parts["kl"] = kl.sum() * token_scale
            if batch.first_pass and batch.sample_logps is not None:
                sample = batch.sample_logps.to(logps.device)[batch.targets != IGNORE_INDEX]
                raw = logps if self.temperature == 1.0 else head_logps(model.lm_head, h, t, 1.0, self.chunk_size)
                parts["logprob_diff"] = torch.nan_to_num((raw - sample).abs(), nan=0.0).sum() * token_scale
            step_scale = batch.share * items
            for name, value in batch.step_metrics.items():
                if value is not None:
                    parts[name] = torch.tensor(float(value) * step_scale, dtype=torch.float64)
        return parts


__all__ = ["GRPOLoss", "clipped_objective", "completion_logps", "head_logps"]
