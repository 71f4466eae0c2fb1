"""GRPO's data: prompts, rollouts from lfmkit's own generation on the policy, rewards, advantages,
and the plan the trainer steps through.

- `read_prompts(paths, tokenizer, ...)`: prompt rows (`{"prompt": "..." or [messages], "tools":
  [...], <any reward fields>}`) rendered to token ids (text: bos + text; messages: the chat
  template with the generation prompt), each with its file:line.
- `generate_rollouts(model, tokenizer, prompts, sampling, seed)`: `lfmkit.generate` on the
  model being trained, itself (no copy, no weight sync): one batch, the n completions of a
  prompt sharing its prefill (the hybrid conv + KV state is copied into n rows), each stopping
  at end of turn (eos / `<|im_end|>`) or `max_completion_length`. Rollouts run in the model's
  own dtype (float32 master weights; bfloat16 under bf16_weights; over a quantized LoRA base,
  the fused quantized decode step with the adapters, lora_decode.py), in eval mode, without
  autograd.
- `group_advantages(rewards, n, scale)`: TRL's group-relative advantages (reward minus its
  group's mean, divided by the group's, the batch's or no standard deviation + 1e-4).
- `RolloutPlan`: the trainer's plan (`DataPlan`'s protocol). Optimizer step s uses rollout
  batch s // num_iterations: the first step of a batch generates it (prompts_per_step prompts
  of a seeded per-epoch order, num_generations completions each, seeds from (seed, batch,
  prompt)) and scores it; the following num_iterations - 1 steps reuse it, with the importance
  ratio against the rollout policy's log-probs (computed once, right after generation, by the
  training forward without gradients). A run resumed at a batch boundary regenerates exactly
  the same rollouts. `collate` gives `RolloutBatch`es.
- `mean_reward(...)`: the mean reward of a model on held-out prompts (greedy by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import DataError, LFMKitError
from ..inference.generate import encode_prompt, generate
from ..inference.sampling import SamplingParams
from .batching import Batch
from .data import IGNORE_INDEX, read_rows
from .grpo_loss import completion_logps
from .rewards import RewardSet


# ---- prompts -------------------------------------------------------------------------------
@dataclass
class PromptRow:
    """One prompt: where it came from, its messages (what rewards see), token ids, other fields."""

    where: str
    messages: list[dict]
    ids: list[int]
    fields: dict = field(default_factory=dict)


def read_prompts(
    paths: list[str], tokenizer, max_prompt_length: int, chat_template: str | None = None
) -> tuple[list[PromptRow], int]:
    """(prompts, number dropped for being longer than max_prompt_length) from prompt files."""
    rows, dropped = [], 0
    kwargs = {"chat_template": chat_template} if chat_template else None
    for path in paths:
        for where, row in read_rows(path):
            prompt = row.get("prompt")
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
            elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
                messages = prompt
                if messages[-1].get("role") == "assistant":
                    raise DataError(f"{where}: 'prompt' ends with an assistant turn; the completion is generated")
            else:
                raise DataError(f"{where}: needs 'prompt': a string or a non-empty list of messages")
            try:
                ids = encode_prompt(prompt, tokenizer, row.get("tools"), kwargs)
            except LFMKitError as exc:
                raise DataError(f"{where}: {exc}") from None
            if len(ids) > max_prompt_length:
                dropped += 1
                continue
            fields = {k: v for k, v in row.items() if k != "prompt"}
            rows.append(PromptRow(where, messages, ids, fields))
    return rows, dropped


# ---- rollouts ------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One completion of one prompt, scored."""

    prompt: PromptRow
    completion_ids: list[int]
    text: str
    truncated: bool  # stopped by max_completion_length, not at end of turn
    sample_logps: list[float]  # the sampler's log-probs of its tokens (the raw distribution)
    reward: float = math.nan  # weighted sum of the rewards that apply (NaN: none applies)
    rewards: list[float] = field(default_factory=list)
    advantage: float = 0.0
    old_logps: torch.Tensor | None = None  # the rollout policy's, when reused (num_iterations > 1)
    ref_logps: torch.Tensor | None = None  # the reference's, when beta > 0


def batch_seed(seed: int, batch: int, prompt: int) -> int:
    """The sampling seed of one prompt of one rollout batch (its n completions derive from it)."""
    digest = hashlib.sha256(f"{seed}:{batch}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Dropout off for generation; the model's mode is restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def generate_rollouts(
    model: nn.Module, tokenizer, prompts: list[PromptRow], sampling: SamplingParams, seeds: list[int]
) -> list[Rollout]:
    """sampling.n completions of every prompt, prompt-major, unscored (see the module doc)."""
    params = [sampling.replace(seed=s, logprobs=True) for s in seeds]
    with eval_mode(model), torch.no_grad():
        results = generate(model, [p.ids for p in prompts], params, tokenizer=tokenizer)
    return [
        Rollout(
            prompts[r.prompt_index],
            list(r.token_ids),
            r.text or "",
            r.finish_reason == "length",
            [e.logprob for e in r.logprobs or []],
        )
        for r in results
    ]


def score(rollouts: list[Rollout], rewards: RewardSet) -> None:
    for r in rollouts:
        r.reward, r.rewards = rewards.score(r.prompt.messages, r.text, r.prompt.fields, r.prompt.where)


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The unbiased standard deviation ignoring NaNs (TRL's `nanstd`)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    out = torch.sqrt(variance * count / (count - 1))
    return out.squeeze(dim) if dim is not None else out.reshape(())


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, whether each completion's std was zero) for rewards [P * n], prompt-major:
    A = (r - mean of its group) / (std + 1e-4), std of the group ("group"), of the whole batch
    ("batch") or none ("none"); NaN rewards (nothing applied) are left out and get A = 0."""
    groups = rewards.view(-1, num_generations)
    mean = torch.nanmean(groups, dim=1).repeat_interleave(num_generations)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(groups, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), torch.isclose(std, torch.zeros_like(std))


# ---- batches -------------------------------------------------------------------------------
@dataclass
class RolloutBatch(Batch):
    """Prompt + completion rows for the GRPO loss (`targets` != IGNORE_INDEX on the completion
    tokens that carry loss), with per-row advantages and per-token log-probs aligned with
    `targets`: the rollout policy's (`old_logps`, None on a batch's first step: the current
    forward's, detached), the reference's (`ref_logps`), the sampler's (`sample_logps`, NaN where
    unknown). `items` is what the loss sums over (loss_items); `step_*` are the whole step's
    totals, so that per-token and per-step metrics logged through the trainer's per-item means
    come out as TRL reports them; `step_metrics` are rollout metrics of the step (rewards, lengths)."""

    advantages: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    sample_logps: torch.Tensor | None = None
    items: float = 0.0
    step_items: float = 1.0
    step_tokens: float = 1.0
    share: float = 1.0  # this batch's rows / the step's rows
    first_pass: bool = True
    step_metrics: dict = field(default_factory=dict)

    @property
    def loss_items(self) -> float:
        return self.items


def _aligned(
    rollouts: list[Rollout], width: int, values: Callable[[Rollout], list | torch.Tensor | None], fill: float
) -> torch.Tensor | None:
    """[rows, width] float32 holding each rollout's per-completion-token values at the positions
    that predict those tokens (prompt length - 1 onwards), `fill` elsewhere; None if any lacks them."""
    out = torch.full((len(rollouts), width), fill, dtype=torch.float32)
    for i, r in enumerate(rollouts):
        v = values(r)
        if v is None:
            return None
        v = torch.as_tensor(v, dtype=torch.float32)
        start = len(r.prompt.ids) - 1
        out[i, start : start + len(v)] = v
    return out


def collate_rollouts(rollouts: list[Rollout], pad_id: int, mask_truncated: bool = False) -> RolloutBatch:
    """Right-padded prompt + completion rows; targets on the completion (none for a truncated
    completion under `mask_truncated`)."""
    seqs = [r.prompt.ids + r.completion_ids for r in rollouts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    real = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (r, s) in enumerate(zip(rollouts, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        real[i, : len(s)] = True
        if not (mask_truncated and r.truncated):
            start = len(r.prompt.ids) - 1
            targets[i, start : start + len(r.completion_ids)] = torch.tensor(r.completion_ids)
    mask = None if bool(real.all()) else real.long()
    return RolloutBatch(
        ids,
        targets,
        attention_mask=mask,
        tokens=int(real.sum()),
        advantages=torch.tensor([r.advantage for r in rollouts], dtype=torch.float32),
        old_logps=_aligned(rollouts, width, lambda r: r.old_logps, 0.0),
        ref_logps=_aligned(rollouts, width, lambda r: r.ref_logps, 0.0),
        sample_logps=_aligned(rollouts, width, lambda r: r.sample_logps, math.nan),
    )


def loss_items(batch: Batch, loss_type: str, max_completion_length: int) -> float:
    """What each loss variant averages over: tokens (dapo), sequences (grpo), sequences x
    max_completion_length (dr_grpo)."""
    rows = batch.input_ids.shape[0]
    if loss_type == "grpo":
        return float(rows)
    if loss_type == "dr_grpo":
        return float(rows * max_completion_length)
    return float(batch.trained_tokens)


# ---- the plan ------------------------------------------------------------------------------
@dataclass
class RolloutStep:
    """One batch of rollouts: the rollouts, its totals and its metrics."""

    index: int
    rollouts: list[Rollout]
    items: float
    tokens: float
    metrics: dict


class RolloutPlan:
    """The trainer's plan for GRPO (see the module doc). `reference` (when beta > 0) is a context
    manager factory yielding the reference model; `autocast` the training forward's precision;
    `on_step(step)` runs before a step's rollouts (the periodic held-out evaluation)."""

    packing = False

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        prompts: list[PromptRow],
        rewards: RewardSet,
        config,
        reference: Callable | None = None,
        autocast: Callable = contextlib.nullcontext,
        on_step: Callable[[int], None] | None = None,
    ):
        if not prompts:
            raise DataError("prompts: no prompt left to train on")
        self.model, self.tokenizer, self.prompts, self.rewards = model, tokenizer, prompts, rewards
        self.config = config
        self.reference = reference
        self.autocast = autocast
        self.on_step = on_step
        self.per_step = config.prompts_per_step
        self.sampling = SamplingParams(
            max_tokens=config.max_completion_length,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            min_p=config.min_p,
            repetition_penalty=config.repetition_penalty,
            n=config.num_generations,
        )
        self.batches_per_epoch = math.ceil(len(prompts) / self.per_step)
        self._current: RolloutStep | None = None

    # DataPlan's protocol
    def steps_in_epoch(self, epoch: int) -> int:
        return self.batches_per_epoch * self.config.num_iterations

    def total_steps(self, epochs: float) -> int:
        return math.ceil(epochs * self.batches_per_epoch) * self.config.num_iterations

    def locate(self, step: int) -> tuple[int, int]:
        return divmod(step, self.steps_in_epoch(0))

    def step_rows(self, step: int) -> tuple[int, list[Rollout]]:
        index, first = divmod(step, self.config.num_iterations)
        if self._current is None or self._current.index != index:
            if self.on_step is not None:
                self.on_step(step)
            self._current = self.rollout_step(index)
        epoch, _ = self.locate(step)
        self._first_pass = first == 0
        return epoch, self._current.rollouts

    def collate(self, rows: list[Rollout], pad_id: int) -> RolloutBatch:
        cfg = self.config
        batch = collate_rollouts(rows, pad_id, cfg.mask_truncated_completions)
        batch.items = loss_items(batch, cfg.loss_type, cfg.max_completion_length)
        if not self._first_pass and batch.old_logps is None:
            raise RuntimeError("a reused rollout batch has no old log-probs")
        return self._of_step(batch, len(rows))

    def empty_batch(self, pad_id: int) -> RolloutBatch:
        """No completion: one padding token, nothing trained, the step's totals and metrics (a
        process with no row left in a short step logs the same names as the others)."""
        cfg, none = self.config, torch.zeros((1, 1), dtype=torch.float32)
        batch = RolloutBatch(
            torch.full((1, 1), pad_id, dtype=torch.long),
            torch.full((1, 1), IGNORE_INDEX, dtype=torch.long),
            tokens=0,
            advantages=torch.zeros(1),
            old_logps=None if self._first_pass else none,
            ref_logps=none if cfg.beta > 0 else None,
            sample_logps=torch.full((1, 1), math.nan),
        )
        return self._of_step(batch, 0)

    def _of_step(self, batch: RolloutBatch, rows: int) -> RolloutBatch:
        """`batch` stamped with the current step's totals, its share of the step and its metrics."""
        current = self._current
        batch.step_items, batch.step_tokens = current.items, current.tokens
        batch.share = rows / len(current.rollouts)
        batch.first_pass = self._first_pass
        batch.step_metrics = (
            current.metrics
            if self._first_pass
            else {k: v for k, v in current.metrics.items() if not k.startswith("rollout_")}
        )
        return batch

    # building one batch of rollouts
    def prompts_of(self, index: int) -> list[PromptRow]:
        epoch, k = divmod(index, self.batches_per_epoch)
        order = list(range(len(self.prompts)))
        random.Random(f"{self.config.seed}:{epoch}:prompts").shuffle(order)
        return [self.prompts[i] for i in order[k * self.per_step : (k + 1) * self.per_step]]

    def rollout_step(self, index: int) -> RolloutStep:
        cfg = self.config
        prompts = self.prompts_of(index)
        t0, c0 = time.perf_counter(), time.process_time()
        rollouts = generate_rollouts(
            self.model,
            self.tokenizer,
            prompts,
            self.sampling,
            [batch_seed(cfg.seed, index, i) for i in range(len(prompts))],
        )
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        score(rollouts, self.rewards)
        rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)
        advantages, zero_std = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        for r, a in zip(rollouts, advantages.tolist()):
            r.advantage = a
        if cfg.num_iterations > 1:
            self._attach_logps(rollouts, self.model, "old_logps")
        if cfg.beta > 0:
            with self.reference() as reference:
                self._attach_logps(rollouts, reference, "ref_logps")
        probe = collate_rollouts(rollouts, 0, cfg.mask_truncated_completions)
        metrics = rollout_metrics(rollouts, self.rewards.names, zero_std, seconds, cpu)
        return RolloutStep(
            index,
            rollouts,
            loss_items(probe, cfg.loss_type, cfg.max_completion_length),
            float(probe.trained_tokens),
            metrics,
        )

    @torch.no_grad()
    def _attach_logps(self, rollouts: list[Rollout], model: nn.Module, name: str) -> None:
        """Per-token log-probs of every completion under `model` (the training forward, without
        gradients, in micro-batches of the training step's size)."""
        size = max(1, self.config.batch_size // self.config.grad_accum)
        with eval_mode(model):
            for a in range(0, len(rollouts), size):
                chunk = rollouts[a : a + size]
                batch = collate_rollouts(chunk, 0).to(self.model.device)
                with self.autocast():
                    logps = completion_logps(model, batch, self.config.temperature, self.config.loss_chunk_size)
                keep = batch.targets != IGNORE_INDEX
                counts = keep.sum(-1).tolist()
                for r, values in zip(chunk, logps.float().cpu().split(counts)):
                    setattr(r, name, values)


def rollout_metrics(
    rollouts: list[Rollout], names: list[str], zero_std: torch.Tensor, seconds: float, cpu_seconds: float = 0.0
) -> dict:
    """The step's rollout metrics (TRL's names in lfmkit's style): mean reward, its std, each
    reward's mean over the rows it applies to, completion lengths, truncation, throughput."""
    totals = torch.tensor([r.reward for r in rollouts], dtype=torch.float64)
    lengths = [len(r.completion_ids) for r in rollouts]
    out = {"reward": _finite(torch.nanmean(totals)), "reward_std": _finite(nanstd(totals))}
    for k, name in enumerate(names):
        out[f"reward/{name}"] = _finite(
            torch.nanmean(torch.tensor([r.rewards[k] for r in rollouts], dtype=torch.float64))
        )
    out.update(
        {
            "frac_reward_zero_std": float(zero_std.float().mean()),
            "unscored": sum(math.isnan(r.reward) for r in rollouts) / len(rollouts),
            "completion_length": statistics.fmean(lengths),
            "completion_length_max": max(lengths),
            "truncated": sum(r.truncated for r in rollouts) / len(rollouts),
            "rollout_s": round(seconds, 4),
            "rollout_tokens_per_s": round(sum(lengths) / max(seconds, 1e-9), 1),
            "rollout_cpu_s": round(cpu_seconds, 4),  # the process's CPU time (all threads)
        }
    )
    return out


def _finite(x: torch.Tensor) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


# ---- held-out reward -----------------------------------------------------------------------
def mean_reward(
    model: nn.Module,
    tokenizer,
    prompts: list[PromptRow],
    rewards: RewardSet,
    max_tokens: int,
    temperature: float = 0.0,
    n: int = 1,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Mean reward (and each reward's mean) of `model` on `prompts`: n completions each, greedy
    when temperature is 0, generated `batch_size` prompts at a time."""
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, n=n
    )
    rollouts = []
    for a in range(0, len(prompts), batch_size):
        chunk = prompts[a : a + batch_size]
        rollouts += generate_rollouts(
            model, tokenizer, chunk, params, [batch_seed(seed, -1, a + i) for i in range(len(chunk))]
        )
    score(rollouts, rewards)
    metrics = rollout_metrics(rollouts, rewards.names, torch.zeros(1), 1.0)
    keep = ["reward", "completion_length", "truncated"] + [f"reward/{name}" for name in rewards.names]
    return {k: metrics[k] for k in keep} | {"prompts": len(prompts), "completions": len(rollouts)}


__all__ = [
    "PromptRow",
    "read_prompts",
    "Rollout",
    "generate_rollouts",
    "score",
    "group_advantages",
    "nanstd",
    "RolloutBatch",
    "collate_rollouts",
    "loss_items",
    "RolloutPlan",
    "RolloutStep",
    "rollout_metrics",
    "mean_reward",
    "batch_seed",
    "eval_mode",
]
