"""`grpo(config, rewards=None)`: reinforcement learning with verifiable rewards, end to end.

Loads the reference model (float32 master weights) and its tokenizer, reads the prompts
(`rollouts.read_prompts`) and the rewards (`rewards.py`), optionally adapts the model (LoRA when
`lora_r` is set; over an int8 / int4 base with `base_quant`, the rollouts then running the fused
quantized decode step with the adapters, `lora_decode.py`), and runs the fine-tuning trainer
(`trainer.py`) with the GRPO loss (`grpo_loss.py`) over a `RolloutPlan`, which generates each
batch of rollouts with lfmkit's own generation on the model being trained. The output directory
holds what SFT leaves (the final model or adapter, `metrics.jsonl`, `loss.png`,
`train_config.json`, `checkpoints/`), plus `eval_rewards.jsonl` (the held-out reward before
training, every `eval_every` steps and after, when `eval_prompts` is set) and `reward.png`
(the training reward per step and the held-out reward).

The reference of the KL term (beta > 0) is the starting model: with LoRA the same model with its
adapters switched off (no copy), otherwise a frozen copy taken before training.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..model import LFM2
from .distributed import destroy_process_group, init_process_group, is_main_process
from .grpo_config import GRPOConfig
from .grpo_loss import GRPOLoss
from .lora import adapters_disabled, has_lora
from .lora_decode import install as install_lora_decode
from .lora_decode import quantized_base, rollout_precision
from .metrics import METRICS_FILE, read_metrics
from .rewards import RewardSet, as_reward_set
from .rollouts import PromptRow, RolloutPlan, mean_reward, read_prompts
from .sft import lora_hooks, model_tokenizer, read_chat_template, resolve_device, save_hf_model, where
from .trainer import Trainer, TrainResult, check_output

EVAL_FILE = "eval_rewards.jsonl"
REWARD_PLOT = "reward.png"
PROGRESS = ("reward",)


@dataclass
class GRPOResult(TrainResult):
    """A finished GRPO run: the trainer's result, the training reward of each step this run took,
    and the held-out evaluations (`eval_rewards.jsonl`)."""

    rewards: list[float | None] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


def as_grpo_config(config: GRPOConfig | dict | str | os.PathLike, rewards=None) -> GRPOConfig:
    """A GRPOConfig from itself, a dict or a YAML file; when rewards are given as Python objects
    and the config names none, their names are recorded in `rewards` (train_config.json)."""
    if rewards is not None and not isinstance(config, (str, os.PathLike)):
        names = [
            getattr(r, "name", None) or f"{getattr(r, '__module__', '?')}:{getattr(r, '__qualname__', r)}"
            for r in (as_reward_set(rewards).rewards)
        ]
        if isinstance(config, dict):
            config = {**config, "rewards": config.get("rewards") or names}
        elif isinstance(config, GRPOConfig) and not config.rewards:
            config.rewards = names
    if isinstance(config, GRPOConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return GRPOConfig.from_dict(config)
    return GRPOConfig.from_yaml(config)


def _load_prompts(
    paths: list[str], tokenizer, config: GRPOConfig, template: str | None, what: str, verbose: bool
) -> list[PromptRow]:
    prompts, dropped = read_prompts(paths, tokenizer, config.max_prompt_length, template)
    if verbose:
        print(
            f"{what} {', '.join(paths)}: {len(prompts)} prompts; {dropped} longer than max_prompt_length "
            f"({config.max_prompt_length}) dropped",
            flush=True,
        )
    if not prompts:
        raise ConfigError(
            f"{what}: no prompt of {', '.join(paths)} fits max_prompt_length ({config.max_prompt_length})"
        )
    return prompts


class HeldOut:
    """The held-out reward: measured at step 0, every `eval_every` steps and at the end, each
    record appended to eval_rewards.jsonl (records from a later step than a resumed run's are
    replaced)."""

    def __init__(
        self, model, tokenizer, prompts: list[PromptRow], rewards: RewardSet, config: GRPOConfig, verbose: bool
    ):
        self.model, self.tokenizer, self.prompts, self.rewards, self.config = model, tokenizer, prompts, rewards, config
        self.path = Path(config.output) / EVAL_FILE
        self.verbose = verbose

    def due(self, step: int) -> bool:
        return step == 0 or bool(self.config.eval_every and step % self.config.eval_every == 0)

    def __call__(self, step: int) -> dict:
        cfg = self.config
        record = {
            "step": step,
            **mean_reward(
                self.model,
                self.tokenizer,
                self.prompts,
                self.rewards,
                cfg.max_completion_length,
                cfg.eval_temperature,
                cfg.eval_generations,
                seed=cfg.seed,
            ),
        }
        kept = [r for r in read_metrics(self.path) if r.get("step", -1) < step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept + [record]), encoding="utf-8")
        if self.verbose:
            print(f"held-out reward at step {step}: {record['reward']}", flush=True)
        return record


def plot_rewards(output: str | Path) -> Path | None:
    """The training reward per step and the held-out reward against step, into reward.png
    (None without matplotlib or without rewards)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    train = [r for r in read_metrics(Path(output) / METRICS_FILE) if r.get("reward") is not None]
    held = [r for r in read_metrics(Path(output) / EVAL_FILE) if r.get("reward") is not None]
    if not train and not held:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(
            [r["step"] for r in train],
            [r["reward"] for r in train],
            color="tab:blue",
            linewidth=0.8,
            alpha=0.6,
            label="training reward (step mean)",
        )
    if held:
        ax.plot(
            [r["step"] for r in held],
            [r["reward"] for r in held],
            color="tab:red",
            marker="o",
            linewidth=1.5,
            label="held-out reward",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(output) / REWARD_PLOT
    fig.savefig(path)
    plt.close(fig)
    return path


def _reference(config: GRPOConfig, model: nn.Module, snapshot: nn.Module | None) -> Callable | None:
    """A context-manager factory yielding the KL reference (None when beta is 0); under
    bf16_weights the frozen copy is in bfloat16 too, so the policy starts at KL 0."""
    if config.beta == 0:
        return None
    if has_lora(model):
        return lambda: adapters_disabled(model)
    for p in snapshot.parameters():
        p.requires_grad_(False)
    if config.bf16_weights:
        snapshot.to(torch.bfloat16)
    return lambda: contextlib.nullcontext(snapshot)


def grpo(
    config: GRPOConfig | dict | str | os.PathLike,
    rewards=None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    save_model: Callable[[nn.Module, Path], None] | None = None,
    verbose: bool = True,
) -> GRPOResult:
    """Train `config.model` with GRPO on `config.prompts`; see the module docstring.

    rewards: reward functions (callables, `Reward`s, specs, or (callable, weight) pairs) instead
    of `config.rewards`. prepare_model / save_model: as for `sft` (default: LoRA when `lora_r`
    is set; the Hugging Face directory or the adapter).
    """
    config = as_grpo_config(config, rewards)
    check_output(config)
    device = resolve_device(config.device)
    joined = init_process_group(device)  # under torchrun
    try:
        return _grpo(config, rewards, device, prepare_model, save_model, verbose and is_main_process())
    finally:
        if joined:
            destroy_process_group()


def _grpo(config: GRPOConfig, rewards, device: torch.device, prepare_model, save_model, verbose: bool) -> GRPOResult:
    """The run of `grpo` (in every process under torchrun; process 0 alone evaluates the held-out
    prompts and writes their records and the reward plot)."""
    reward_set = as_reward_set(rewards if rewards is not None else config.rewards)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = LFM2.from_pretrained(config.model, dtype="float32", device=device)
    if config.base_quant:
        if device.type != "cpu":
            raise ConfigError(f"base_quant: lfmkit's quantized kernels run on the CPU, the device is {device}")
        quantized_base(model, config.base_quant)
    tokenizer = model_tokenizer(model, config.model, "prompts need")
    tokenizer_dir = model.source_path
    template = read_chat_template(config)
    prompts = _load_prompts(config.prompts, tokenizer, config, template, "prompts", verbose)
    held_out = None
    if config.eval_prompts and is_main_process():
        held_out = HeldOut(
            model,
            tokenizer,
            _load_prompts([config.eval_prompts], tokenizer, config, template, "eval_prompts", verbose),
            reward_set,
            config,
            verbose,
        )

    snapshot = copy.deepcopy(model) if config.beta > 0 and not config.base_quant else None  # LoRA: adapters off
    lora_prepare, lora_save = lora_hooks(config) if prepare_model is None else (None, None)
    prepare_model = prepare_model or lora_prepare
    save_model = save_model or lora_save
    if prepare_model is not None:
        torch.manual_seed(config.seed)  # adapter initialisation is part of the run's randomness
        model = prepare_model(model) or model
        if held_out is not None:
            held_out.model = model
    if config.base_quant:
        if not has_lora(model):
            raise ConfigError(
                "base_quant: the model has no LoRA adapters to train over its quantized base (set lora_r)"
            )
        install_lora_decode(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if save_model is None:

        def save_model(m, out):
            save_hf_model(m, out, tokenizer_dir, config.save_dtype)

    reference = _reference(config, model, snapshot)
    if reference is not None and has_lora(model):
        del snapshot

    def autocast():
        if config.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def before_step(step: int) -> None:
        if held_out is not None and held_out.due(step):
            held_out(step)

    plan = RolloutPlan(model, tokenizer, prompts, reward_set, config, reference, autocast, before_step)
    loss = GRPOLoss(
        config.loss_type,
        config.epsilon_low,
        config.epsilon_high,
        config.beta,
        config.temperature,
        config.loss_chunk_size,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = Trainer(model, plan, config, pad_id, loss_fn=loss, save_model=save_model, progress_metrics=PROGRESS)
    if verbose:
        print(
            f"training {trainer.total_steps} steps of {config.prompts_per_step} prompts x {config.num_generations} "
            f"completions (loss {config.loss_type}, {config.num_iterations} step(s) per batch of rollouts) "
            f"on {where(trainer, device)}; rollouts in {rollout_precision(model, config)} on the training weights",
            flush=True,
        )
    result = trainer.train()
    if held_out is not None:
        held_out(trainer.total_steps)
    if is_main_process():
        plot_rewards(config.output)
    records = {r["step"]: r for r in read_metrics(Path(config.output) / METRICS_FILE)}
    ran = range(result.resumed_from + 1, result.resumed_from + len(result.losses) + 1)
    return GRPOResult(
        **vars(result),
        rewards=[records.get(s, {}).get("reward") for s in ran],
        evals=read_metrics(Path(config.output) / EVAL_FILE) if held_out is not None else [],
    )


__all__ = ["grpo", "GRPOResult", "as_grpo_config", "plot_rewards", "HeldOut", "EVAL_FILE", "REWARD_PLOT"]
