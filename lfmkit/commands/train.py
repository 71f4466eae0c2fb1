"""`lfmkit train sft | distill | distill-cache | dpo`: fine-tune an LFM2 checkpoint, distil a
teacher into it, write a teacher's top-k cache, or train it on preference pairs, from flags or a
YAML file (`--config`).

Flags override the YAML file's settings; both use the field names of
`lfmkit.train.SFTConfig` / `DistillConfig` / `DPOConfig` (dashes or underscores), so one YAML file can drive
`distill-cache` and then `distill`. docs/training.md lists every default and where it comes from.
"""

from __future__ import annotations

import argparse

from ..train.config import (
    CACHE_DTYPES,
    DISTRIBUTED,
    KD_LOSSES,
    MASTER_WEIGHTS,
    OPTIMIZERS,
    SCHEDULERS,
    TEACHER_QUANTS,
    DistillCacheConfig,
    DistillConfig,
    SFTConfig,
)
from ..train.dpo_config import LOSSES, DPOConfig

# (flag, config field, argparse options) for every setting the command line exposes.
_FLAGS = [
    ("--model", dict(help="checkpoint directory, Hub id (local cache) or .gguf file")),
    (
        "--data",
        dict(
            action="append",
            metavar="PATH[:WEIGHT]",
            help="training data, repeatable: .jsonl/.json/.parquet/.txt or a `datasets` directory, "
            "with an optional mixing weight (passes per epoch; default 1)",
        ),
    ),
    ("--output", dict(help="directory for the final model, checkpoints, metrics.jsonl and loss.png")),
    ("--max-steps", dict(type=int, help="optimizer steps to run (overrides --epochs)")),
    ("--epochs", dict(type=float, help="passes over the data mixture (default 3)")),
    ("--learning-rate", dict(type=float, help="peak AdamW learning rate (default 2e-5)")),
    ("--lr-scheduler", dict(choices=SCHEDULERS, help="decay after warmup (default linear)")),
    ("--warmup-ratio", dict(type=float, help="fraction of the steps spent warming up (default 0)")),
    ("--warmup-steps", dict(type=int, help="warmup steps (overrides --warmup-ratio)")),
    ("--weight-decay", dict(type=float, help="AdamW weight decay (default 0)")),
    ("--max-grad-norm", dict(type=float, help="gradient clipping norm, 0 = off (default 1.0)")),
    ("--batch-size", dict(type=int, help="sequences per optimizer step, global (default 8)")),
    ("--grad-accum", dict(type=int, help="micro-batches per optimizer step (default 1)")),
    ("--max-length", dict(type=int, help="tokens per sequence; longer documents are truncated (default 1024)")),
    (
        "--packing",
        dict(
            action=argparse.BooleanOptionalAction,
            help="pack documents into max-length rows, each restarting attention, RoPE and the conv (default off)",
        ),
    ),
    (
        "--assistant-only-loss",
        dict(action=argparse.BooleanOptionalAction, help="loss on assistant turns only for chat rows (default on)"),
    ),
    (
        "--completion-only-loss",
        dict(
            action=argparse.BooleanOptionalAction,
            help="loss on the completion only for prompt/completion rows (default on)",
        ),
    ),
    ("--chat-template", dict(metavar="FILE", help="a .jinja chat template to render conversations with")),
    ("--seed", dict(type=int, help="seed for data order and initialisation (default 42)")),
    ("--save-every", dict(type=int, help="checkpoint every N steps and at the end; 0 = none (default 500)")),
    ("--save-limit", dict(type=int, help="keep only the newest N checkpoints")),
    ("--resume", dict(action="store_true", help="continue from the last complete checkpoint in --output")),
    (
        "--gradient-checkpointing",
        dict(
            action=argparse.BooleanOptionalAction, help="recompute activations in backward (less memory, ~30%% slower)"
        ),
    ),
    ("--bf16", dict(action=argparse.BooleanOptionalAction, help="bfloat16 autocast (float32 master weights)")),
    (
        "--bf16-weights",
        dict(
            action=argparse.BooleanOptionalAction,
            help="mixed precision: the model's weights in bfloat16, float32 masters in the optimizer",
        ),
    ),
    (
        "--master-weights",
        dict(
            choices=MASTER_WEIGHTS,
            help="with --bf16-weights: float32 masters (default), or kahan: none, Kahan-compensated bfloat16 updates",
        ),
    ),
    (
        "--optim",
        dict(choices=OPTIMIZERS, help="adamw (default) or adamw_8bit: AdamW's moments block-wise in 8 bits"),
    ),
    ("--device", dict(help="cpu, cuda, cuda:N (default: cuda when available; under torchrun cuda:LOCAL_RANK)")),
    (
        "--distributed",
        dict(choices=DISTRIBUTED, help="under torchrun: ddp (replicate the model; default) or fsdp (shard it, FSDP2)"),
    ),
    ("--save-dtype", dict(choices=("float32", "bfloat16", "float16"), help="dtype of the final model")),
    ("--lora-r", dict(type=int, help="LoRA rank (enables LoRA; needs lfmkit.train.lora)")),
    ("--lora-alpha", dict(type=float, help="LoRA alpha")),
    ("--lora-dropout", dict(type=float, help="LoRA dropout")),
    ("--lora-targets", dict(metavar="NAMES", help="comma-separated module names to adapt")),
]


_TEACHER_FLAGS = [
    ("--teacher", dict(help="teacher checkpoint (directory, Hub id or .gguf); it must share the student's tokenizer")),
    (
        "--teacher-quant",
        dict(choices=TEACHER_QUANTS, help="load the teacher in fp32, bf16, int8 or int4 (default: its stored dtype)"),
    ),
]
_DISTILL_FLAGS = (
    _FLAGS
    + _TEACHER_FLAGS
    + [
        (
            "--teacher-cache",
            dict(
                metavar="DIR",
                help="train from this top-k cache (lfmkit train distill-cache) instead of running the teacher",
            ),
        ),
        ("--kd-loss", dict(choices=KD_LOSSES, help="divergence to the teacher (default forward_kl)")),
        ("--temperature", dict(type=float, help="softmax temperature of both distributions (default 2.0)")),
        (
            "--alpha",
            dict(type=float, help="weight of the distillation term; 1 - alpha weighs the hard-label CE (default 0.5)"),
        ),
        ("--jsd-beta", dict(type=float, help="beta of the generalized JSD, kd-loss jsd (default 0.5)")),
    ]
)
# Preference pairs have no loss masks to choose: every flag of `train sft` but those two.
_DPO_FLAGS = [(f, o) for f, o in _FLAGS if f not in ("--assistant-only-loss", "--completion-only-loss")] + [
    ("--ref-model", dict(help="reference model (default: the starting model; with LoRA, its adapters off)")),
    (
        "--loss",
        dict(
            choices=LOSSES,
            help="sigmoid (DPO), sigmoid_norm (length-normalized DPO), ipo, simpo (reference-free); default sigmoid",
        ),
    ),
    ("--beta", dict(type=float, help="DPO's beta, IPO's tau, SimPO's beta (default 0.1)")),
    ("--simpo-gamma", dict(type=float, help="SimPO's target reward margin (default 0.5)")),
]
_CACHE_DATA = (
    "--data",
    "--max-length",
    "--packing",
    "--assistant-only-loss",
    "--completion-only-loss",
    "--chat-template",
    "--device",
)
_CACHE_FLAGS = (
    _TEACHER_FLAGS
    + [(f, o) for f, o in _FLAGS if f in _CACHE_DATA]
    + [
        ("--model", dict(help="the student, whose tokenizer reads the data (default: the teacher's)")),
        ("--output", dict(dest="teacher_cache", metavar="DIR", help="the cache folder to write (YAML: teacher_cache)")),
        ("--top-k", dict(type=int, help="log-probs kept per trained token (default 64)")),
        ("--cache-dtype", dict(choices=CACHE_DTYPES, help="dtype of the stored log-probs (default float16)")),
        (
            "--batch-size",
            dict(
                type=int,
                help="with --grad-accum: the teacher runs batch_size / grad_accum rows at a "
                "time, the training micro-batch (default 8)",
            ),
        ),
        ("--grad-accum", dict(type=int, help="see --batch-size (default 1)")),
    ]
)


def register(sub) -> None:
    from . import train_grpo

    p = sub.add_parser(
        "train",
        help="fine-tune a model (sft, distill, dpo, grpo)",
        description="Fine-tune an LFM2 model. See docs/training.md.",
    )
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE")
    add_recipe(
        recipes,
        "sft",
        _FLAGS,
        run_sft,
        help="supervised fine-tuning (full or LoRA)",
        description="Supervised fine-tuning on chat, prompt/completion or text data. "
        "Settings come from --config (YAML), overridden by flags.",
    )
    add_recipe(
        recipes,
        "distill",
        _DISTILL_FLAGS,
        run_distill,
        help="knowledge distillation from a teacher",
        description="Train the student --model against a teacher's next-token distributions (online "
        "--teacher, or --teacher-cache), mixed with the hard-label CE by --alpha. Every "
        "setting of `train sft` applies. Settings come from --config (YAML), overridden by flags.",
    )
    add_distill_cache(recipes, "distill-cache")
    add_recipe(
        recipes,
        "dpo",
        _DPO_FLAGS,
        run_dpo,
        help="preference optimization on chosen/rejected pairs (DPO, IPO, SimPO)",
        description="Direct preference optimization on TRL-format pairs (prompt/chosen/rejected). Every "
        "setting of `train sft` applies but the loss masks; the defaults that differ are TRL's "
        "DPOConfig (learning rate 1e-6). Settings come from --config (YAML), overridden by flags.",
    )
    train_grpo.register(recipes, _FLAGS)
    p.set_defaults(func=lambda args: p.print_help() or 0, recipe=None)


def add_recipe(recipes, name: str, flags: list, func, **texts) -> argparse.ArgumentParser:
    """A subcommand taking --config and `flags` (only the flags given override the YAML file)."""
    s = recipes.add_parser(name, **texts)
    s.add_argument("--config", metavar="FILE", help="YAML file of settings (SFTConfig / DistillConfig field names)")
    s.add_argument(
        "--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bar"
    )
    for flag, options in flags:
        s.add_argument(flag, default=argparse.SUPPRESS, **options)
    s.set_defaults(
        func=func, settings=[options.get("dest") or flag.lstrip("-").replace("-", "_") for flag, options in flags]
    )
    return s


def add_distill_cache(parsers, name: str) -> argparse.ArgumentParser:
    """`distill-cache` (also `lfmkit distill cache`): the teacher's top-k log-probs, written once."""
    return add_recipe(
        parsers,
        name,
        _CACHE_FLAGS,
        run_distill_cache,
        help="run a teacher once and write its top-k log-probs for `train distill --teacher-cache`",
        description="Tokenize --data as training will, run --teacher once over every distinct "
        "document and write its top-k log-probs to --output. `train distill "
        "--teacher-cache DIR` with the same data settings reads them (the same "
        "--config file serves both).",
    )


def config_from_args(args, kind: type[SFTConfig] = SFTConfig) -> SFTConfig:
    """A `kind` config from --config (if any) overridden by the flags actually given."""
    fields = set(getattr(args, "settings", [])) | {"progress"}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    if args.config:
        return kind.from_yaml(args.config, overrides)
    return kind.from_dict(overrides, where="command line")


def report(result) -> None:
    """The run's one-line summary (process 0 only under torchrun)."""
    from ..train.distributed import is_main_process

    if not is_main_process():
        return
    ran = f"this run: {len(result.losses)}"
    if result.resumed_from:
        ran += f", resumed at step {result.resumed_from}"
    last = f"; final loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"trained {result.steps} steps ({ran}){last}; model and metrics in {result.output}")


def run_sft(args) -> int:
    from ..train.sft import sft

    report(sft(config_from_args(args)))
    return 0


def run_distill(args) -> int:
    from ..train.distill_recipe import distill_run

    report(distill_run(config_from_args(args, DistillConfig)))
    return 0


def run_dpo(args) -> int:
    from ..train.dpo import dpo

    report(dpo(config_from_args(args, DPOConfig)))
    return 0


def run_distill_cache(args) -> int:
    from ..train.distill import TeacherCache
    from ..train.distill_recipe import distill_cache

    cache = TeacherCache(distill_cache(config_from_args(args, DistillCacheConfig)))
    print(
        f"wrote the teacher's top-{cache.k} log-probs of {cache.index['documents']:,} documents "
        f"({cache.index['tokens']:,} trained tokens) to {cache.path}"
    )
    return 0
