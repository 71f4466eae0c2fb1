"""Preference losses: DPO and its length-normalized, IPO and SimPO forms, on packed pairs.

`PreferenceLoss(objective)` is a loss of the trainer's protocol (`losses.py`): it runs the model
once over a `PreferenceBatch` (chosen and rejected of every pair packed as separate documents),
sums each sequence's completion log-probabilities (chunked over the head: no [tokens, vocab]
tensor), and returns the sum over pairs of the objective's per-pair loss; the trainer divides
by the number of pairs of the global batch, so the step loss is the mean over pairs as in TRL.
The parts it logs are TRL's metrics, summed here and averaged by the trainer:
`rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies` (the fraction of
pairs whose chosen reward is higher), `logps/chosen`, `logps/rejected` (summed completion
log-probabilities of the policy).

Each objective maps (policy log-probs, reference log-probs, completion lengths) of a batch of
pairs to (per-pair loss, chosen reward, rejected reward), exactly as TRL computes them
(`DPOTrainer._compute_loss`; SimPO: `CPOTrainer.cpo_loss`), so step-1 losses and metrics equal
TRL's on the same pairs. Below, rho = log pi(y|x) - log pi_ref(y|x) is a completion's log-ratio
(summed over its tokens) and |y| its number of tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE_INDEX
from .losses import LossOutput, default_chunk_size, token_log_probs
from .preference_data import PreferenceBatch


class Sigmoid:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
    Secretly a Reward Model", arXiv:2305.18290, Eq. 7):
    loss = -log sigmoid(beta * (rho_chosen - rho_rejected)); reward = beta * rho (TRL "sigmoid")."""

    needs_reference = True

    def __init__(self, beta: float):
        self.beta = beta

    def __call__(self, logps, ref_logps, lengths):
        rho = logps - ref_logps
        loss = -F.logsigmoid(self.beta * self.delta(rho, lengths))
        return loss, self.beta * rho[:, 0], self.beta * rho[:, 1]

    def delta(self, rho, lengths):
        return rho[:, 0] - rho[:, 1]


class SigmoidNorm(Sigmoid):
    """Length-normalized DPO: the log-ratios averaged per completion token before the DPO
    sigmoid, loss = -log sigmoid(beta * (rho_c / |y_c| - rho_r / |y_r|)), so a longer chosen
    answer no longer wins by its length alone (TRL "sigmoid_norm"; the length-normalized DPO
    LFM2's post-training uses). Rewards are logged as TRL logs them, beta * rho (summed)."""

    def delta(self, rho, lengths):
        per_token = rho / lengths.clamp(min=1.0)
        return per_token[:, 0] - per_token[:, 1]


class IPO(SigmoidNorm):
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036, Eq. 17), beta being its tau: a squared loss pulling the
    per-token log-ratio margin to 1 / (2 tau), loss = (rho_c / |y_c| - rho_r / |y_r| - 1/(2 beta))^2
    (per-token averaging as in TRL "ipo", confirmed there with the paper's authors)."""

    def __call__(self, logps, ref_logps, lengths):
        rho = logps - ref_logps
        loss = (self.delta(rho, lengths) - 1.0 / (2.0 * self.beta)) ** 2
        return loss, self.beta * rho[:, 0], self.beta * rho[:, 1]


class SimPO:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", arXiv:2405.14734, Eq. 6): reference-free, the reward is the length-normalized
    log-probability r = beta / |y| * log pi(y|x), with a target margin gamma:
    loss = -log sigmoid(r_chosen - r_rejected - gamma) (TRL `CPOTrainer`, loss_type "simpo",
    cpo_alpha 0). The paper tunes beta in the single digits, far above DPO's 0.1: set it explicitly."""

    needs_reference = False

    def __init__(self, beta: float, gamma: float):
        self.beta, self.gamma = beta, gamma

    def __call__(self, logps, ref_logps, lengths):
        rewards = self.beta * logps / lengths.clamp(min=1.0)
        loss = -F.logsigmoid(rewards[:, 0] - rewards[:, 1] - self.gamma)
        return loss, rewards[:, 0], rewards[:, 1]


def make_objective(loss: str, beta: float, simpo_gamma: float = 0.5):
    """The objective named `loss` (one of dpo_config.LOSSES)."""
    if loss == "simpo":
        return SimPO(beta, simpo_gamma)
    return {"sigmoid": Sigmoid, "sigmoid_norm": SigmoidNorm, "ipo": IPO}[loss](beta)


def sequence_log_probs(model: nn.Module, batch: PreferenceBatch, chunk_size: int | None = None) -> torch.Tensor:
    """Summed completion log-probabilities [pairs, 2] (chosen, rejected) of every pair in the
    batch, differentiable when grad is enabled."""
    hidden = model(**batch.model_inputs(), return_hidden=True)
    keep = batch.targets != IGNORE_INDEX
    chunk = chunk_size or default_chunk_size(model.config.vocab_size)
    logps = token_log_probs(model.lm_head, hidden[keep], batch.targets[keep], chunk)
    sums = logps.new_zeros(2 * batch.pairs).index_add(0, batch.sequence_ids[keep], logps)
    return sums.view(batch.pairs, 2)


class PreferenceLoss:
    """The trainer's loss for preference pairs (see the module docstring)."""

    def __init__(self, objective, chunk_size: int | None = None):
        self.objective = objective
        self.chunk_size = chunk_size

    def __call__(self, model: nn.Module, batch: PreferenceBatch) -> LossOutput:
        logps = sequence_log_probs(model, batch, self.chunk_size)
        ref = batch.ref_logps
        if ref is None:
            if self.objective.needs_reference:
                raise ValueError("this preference batch has no reference log-probs (compute them first)")
            ref = torch.zeros_like(logps)
        loss, chosen, rejected = self.objective(logps, ref.to(logps.dtype), batch.lengths.to(logps.device))
        chosen, rejected, detached = chosen.detach(), rejected.detach(), logps.detach()
        return LossOutput(
            loss.sum(),
            {
                "rewards/chosen": chosen.sum(),
                "rewards/rejected": rejected.sum(),
                "rewards/margins": (chosen - rejected).sum(),
                "rewards/accuracies": (chosen > rejected).float().sum(),
                "logps/chosen": detached[:, 0].sum(),
                "logps/rejected": detached[:, 1].sum(),
            },
        )


__all__ = ["Sigmoid", "SigmoidNorm", "IPO", "SimPO", "make_objective", "sequence_log_probs", "PreferenceLoss"]
