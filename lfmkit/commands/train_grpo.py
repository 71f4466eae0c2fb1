"""`lfmkit train grpo`: reinforcement learning with verifiable rewards (GRPO) from flags or YAML.

Flags override the YAML file's settings; both use the field names of
`lfmkit.train.grpo_config.GRPOConfig`. The trainer's settings (optimizer, schedule, checkpoints,
LoRA, precision) are the SFT command's flags; docs/training.md ("Reinforcement learning") lists
the GRPO ones and their TRL defaults.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..train.grpo_config import BASE_QUANTS, LOSS_TYPES, SCALE_REWARDS, GRPOConfig

# SFT flags that mean nothing for GRPO (prompts replace data; completions are generated).
_NOT_SHARED = {"--data", "--packing", "--assistant-only-loss", "--completion-only-loss", "--max-length"}
_GRPO_FLAGS = [
    (
        "--prompts",
        dict(
            action="append",
            metavar="FILE",
            help='prompt rows ({"prompt": text or messages, <reward fields>}), repeatable: '
            ".jsonl/.json/.parquet or a `datasets` directory",
        ),
    ),
    (
        "--reward",
        dict(
            action="append",
            dest="rewards",
            metavar="[TASK=]FN[:WEIGHT]",
            help="reward function, repeatable: a built-in (math, ifeval, multiple_choice, exact, tool_call, "
            "think_format), module:function or file.py:function; TASK= limits it to rows whose "
            "'task' is TASK; :WEIGHT scales it (default 1)",
        ),
    ),
    ("--num-generations", dict(type=int, help="completions per prompt (default 8)")),
    ("--max-prompt-length", dict(type=int, help="longer prompts are dropped (default 512)")),
    ("--max-completion-length", dict(type=int, help="tokens per completion at most (default 512)")),
    ("--temperature", dict(type=float, help="sampling temperature (default 1.0)")),
    ("--top-p", dict(type=float, help="nucleus sampling (default 1.0: off)")),
    ("--top-k", dict(type=int, help="top-k sampling (default 0: off)")),
    ("--min-p", dict(type=float, help="min-p sampling (default 0: off)")),
    ("--repetition-penalty", dict(type=float, help="repetition penalty (default 1.0: off)")),
    (
        "--base-quant",
        dict(
            choices=BASE_QUANTS,
            help="LoRA over an int8 / int4 base (QLoRA, needs --lora-r): the rollouts run lfmkit's fused "
            "quantized decode step on the trained adapters (default: the float base)",
        ),
    ),
    ("--loss-type", dict(choices=LOSS_TYPES, help="dapo (token mean, default), grpo (per-sequence mean), dr_grpo")),
    ("--epsilon-low", dict(type=float, help="clip the ratio below at 1 - epsilon-low (default 0.2)")),
    ("--epsilon-high", dict(type=float, help="clip the ratio above at 1 + epsilon-high (default 0.2; DAPO: 0.28)")),
    ("--beta", dict(type=float, help="KL coefficient to the starting model (default 0)")),
    ("--num-iterations", dict(type=int, help="optimizer steps on each batch of rollouts (default 1)")),
    (
        "--scale-rewards",
        dict(choices=SCALE_REWARDS, help="divide advantages by the std of the group (default), the batch, or none"),
    ),
    (
        "--mask-truncated-completions",
        dict(
            action=argparse.BooleanOptionalAction,
            help="no loss on completions cut by max-completion-length (default off)",
        ),
    ),
    (
        "--eval-prompts",
        dict(
            metavar="FILE",
            help="held-out prompts: the mean reward before, after (and every "
            "--eval-every steps) goes to eval_rewards.jsonl and reward.png",
        ),
    ),
    ("--eval-every", dict(type=int, help="also evaluate every N steps (default 0: before and after only)")),
    ("--eval-temperature", dict(type=float, help="sampling temperature of the evaluation (default 0: greedy)")),
    ("--eval-generations", dict(type=int, help="completions per held-out prompt (default 1)")),
]
_HELP_CHANGES = {
    "--batch-size": "completions per optimizer step, global: prompts per step x num-generations (default 8)",
    "--learning-rate": "peak AdamW learning rate (default 1e-6, TRL's GRPO default)",
}


def register(recipes, sft_flags) -> None:
    """Add `grpo` to `lfmkit train`'s recipes; `sft_flags` are the SFT command's (flag, options)."""
    g = recipes.add_parser(
        "grpo",
        help="reinforcement learning with verifiable rewards (GRPO; full or LoRA)",
        description="GRPO on prompts with verifiable rewards: rollouts from lfmkit's own "
        "generation on the training weights. Settings come from --config (YAML), "
        "overridden by flags.",
    )
    g.add_argument("--config", metavar="FILE", help="YAML file of settings (GRPOConfig field names)")
    g.add_argument(
        "--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bar"
    )
    shared = [(f, dict(o, help=_HELP_CHANGES.get(f, o.get("help")))) for f, o in sft_flags if f not in _NOT_SHARED]
    for flag, options in shared + _GRPO_FLAGS:
        g.add_argument(flag, default=argparse.SUPPRESS, **options)
    g.set_defaults(func=run_grpo)


def config_from_args(args) -> GRPOConfig:
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    if args.config:
        return GRPOConfig.from_yaml(args.config, overrides)
    return GRPOConfig.from_dict(overrides, where="command line")


def run_grpo(args) -> int:
    from ..train.distributed import is_main_process
    from ..train.grpo import grpo

    result = grpo(config_from_args(args))
    if not is_main_process():  # under torchrun, process 0 alone reports
        return 0
    ran = f"this run: {len(result.losses)}"
    if result.resumed_from:
        ran += f", resumed at step {result.resumed_from}"
    last = [r for r in result.rewards if r is not None]
    summary = f"; last step's reward {last[-1]:.4f}" if last else ""
    if len(result.evals) >= 2:
        summary += f"; held-out reward {result.evals[0]['reward']:.4f} -> {result.evals[-1]['reward']:.4f}"
    print(f"trained {result.steps} steps ({ran}){summary}; model and metrics in {result.output}")
    return 0
