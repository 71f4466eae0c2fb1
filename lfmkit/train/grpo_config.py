"""The GRPO configuration: `SFTConfig`'s trainer settings plus rollouts, rewards and the loss.

Everything the fine-tuning trainer reads (optimizer, schedule, accumulation, precision, LoRA,
checkpoints, resume, progress) means what it means for SFT. The settings that differ, and every
new one, take TRL's `GRPOConfig` defaults (learning rate 1e-6, 8 generations per prompt, sampling
at temperature 1, loss "dapo", epsilon 0.2, beta 0, group scaling, one iteration), so a recipe
ported from TRL means the same thing here. `batch_size` counts completions per optimizer step
(prompts per step x num_generations), as TRL's generation batch does. Kept free of torch so the
CLI can build its parser cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from .config import SFTConfig

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
BASE_QUANTS = ("int8", "int4")  # LoRA over a quantized base (lora_decode.py)
SCALE_REWARDS = ("group", "batch", "none")
# SFT settings that have no meaning for rollouts; setting one is refused rather than ignored.
NOT_FOR_GRPO = {"data": [], "packing": False}


@dataclass
class GRPOConfig(SFTConfig):
    """Group Relative Policy Optimization of an LFM2 checkpoint on prompts with verifiable rewards."""

    learning_rate: float = 1e-6  # TRL GRPOConfig
    prompts: list[str] = field(default_factory=list)  # prompt files (.jsonl/.json/.parquet/datasets dir)
    rewards: list[str] = field(default_factory=list)  # "[TASK=]module:function[:WEIGHT]" or a built-in name
    # rollouts (sampling as in TRL: plain temperature sampling, no penalties)
    num_generations: int = 8
    max_prompt_length: int = 512  # longer prompts are dropped (and counted)
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    # LoRA over an int8 / int4 base (QLoRA): rollouts through the fused quantized decode step
    base_quant: str | None = None
    # the loss
    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # DAPO recommends 0.28
    beta: float = 0.0  # KL to the starting model (LoRA: adapters off)
    num_iterations: int = 1  # optimizer steps on each batch of rollouts
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    # held-out reward
    eval_prompts: str | None = None
    eval_every: int = 0  # also every N steps (0: before and after only)
    eval_temperature: float = 0.0  # greedy: the held-out reward is deterministic
    eval_generations: int = 1

    def required(self) -> dict[str, str]:
        return {
            "model": "a checkpoint directory, Hub id or .gguf file",
            "prompts": "one or more prompt files (.jsonl, .json, .parquet or a datasets directory)",
            "rewards": "one or more reward functions (module:function or a built-in name)",
            "output": "the directory for the model, checkpoints and metrics",
        }

    def validate(self, where: str = "config") -> None:
        super().validate(where)

        def bad(name: str, why: str):
            raise ConfigError(f"{where}: {name} {why}")

        for name, default in NOT_FOR_GRPO.items():
            if getattr(self, name) != default:
                bad(name, "does not apply to GRPO (prompts come from `prompts`; completions are generated)")
        for name in (
            "num_generations",
            "max_prompt_length",
            "max_completion_length",
            "num_iterations",
            "eval_generations",
        ):
            if getattr(self, name) < 1:
                bad(name, f"must be at least 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            bad("num_generations", "must be at least 2 (advantages compare completions of the same prompt)")
        if self.batch_size % self.num_generations:
            bad(
                "batch_size",
                f"({self.batch_size} completions per step) must be a multiple of num_generations "
                f"({self.num_generations})",
            )
        if self.loss_type not in LOSS_TYPES:
            bad("loss_type", f"must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            bad("scale_rewards", f"must be one of {', '.join(SCALE_REWARDS)}, got {self.scale_rewards!r}")
        for name in ("epsilon_low", "epsilon_high", "beta", "eval_temperature", "min_p"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                bad(name, f"must be a non-negative number, got {value}")
        if self.epsilon_low >= 1:
            bad("epsilon_low", f"must be below 1 (the ratio is clipped at 1 - epsilon_low), got {self.epsilon_low}")
        if not 0 < self.temperature <= 100:
            bad("temperature", f"must be in (0, 100] (the policy's log-probs divide by it), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            bad("top_k" if self.top_k < 0 else "repetition_penalty", "is out of range")
        if self.base_quant is not None:
            if self.base_quant not in BASE_QUANTS:
                bad("base_quant", f"must be one of {', '.join(BASE_QUANTS)}, got {self.base_quant!r}")
            if self.lora_r is None:
                bad("base_quant", "needs lora_r: the quantized base is frozen, LoRA adapters train over it")
            if self.bf16_weights:
                bad("base_quant", "and bf16_weights exclude each other (the base is int8 / int4, the adapters float32)")
        if self.eval_every < 0:
            bad("eval_every", f"must not be negative, got {self.eval_every}")
        for name in ("save_every", "max_steps", "eval_every"):
            value = getattr(self, name)
            if value and value % self.num_iterations:
                bad(
                    name,
                    f"({value}) must be a multiple of num_iterations ({self.num_iterations}): checkpoints "
                    f"and evaluations fall between batches of rollouts",
                )

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.num_generations


__all__ = ["GRPOConfig", "LOSS_TYPES", "SCALE_REWARDS", "BASE_QUANTS"]
