"""`lfmkit train sft`: fine-tune an LFM2 checkpoint from flags or a YAML file (`--config`).

Flags override the YAML file's settings; both use the field names of
`lfmkit.train.SFTConfig` (dashes or underscores). docs/training.md lists every default and
where it comes from.
"""

from __future__ import annotations

import argparse

from ..train.config import SCHEDULERS, SFTConfig

# (flag, config field, argparse options) for every setting the command line exposes.
_FLAGS = [
    ("--model", dict(help="checkpoint directory, Hub id (local cache) or .gguf file")),
    ("--data", dict(action="append", metavar="PATH[:WEIGHT]",
                    help="training data, repeatable: .jsonl/.json/.parquet/.txt or a `datasets` directory, "
                         "with an optional mixing weight (passes per epoch; default 1)")),
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
    ("--packing", dict(action=argparse.BooleanOptionalAction,
                       help="pack documents into max-length rows, each restarting attention, RoPE and the conv "
                            "(default off)")),
    ("--assistant-only-loss", dict(action=argparse.BooleanOptionalAction,
                                   help="loss on assistant turns only for chat rows (default on)")),
    ("--completion-only-loss", dict(action=argparse.BooleanOptionalAction,
                                    help="loss on the completion only for prompt/completion rows (default on)")),
    ("--chat-template", dict(metavar="FILE", help="a .jinja chat template to render conversations with")),
    ("--seed", dict(type=int, help="seed for data order and initialisation (default 42)")),
    ("--save-every", dict(type=int, help="checkpoint every N steps and at the end; 0 = none (default 500)")),
    ("--save-limit", dict(type=int, help="keep only the newest N checkpoints")),
    ("--resume", dict(action="store_true", help="continue from the last complete checkpoint in --output")),
    ("--gradient-checkpointing", dict(action=argparse.BooleanOptionalAction,
                                      help="recompute activations in backward (less memory, ~30%% slower)")),
    ("--bf16", dict(action=argparse.BooleanOptionalAction, help="bfloat16 autocast (float32 master weights)")),
    ("--device", dict(help="cpu, cuda, cuda:N (default: cuda when available)")),
    ("--save-dtype", dict(choices=("float32", "bfloat16", "float16"), help="dtype of the final model")),
    ("--lora-r", dict(type=int, help="LoRA rank (enables LoRA; needs lfmkit.train.lora)")),
    ("--lora-alpha", dict(type=float, help="LoRA alpha")),
    ("--lora-dropout", dict(type=float, help="LoRA dropout")),
    ("--lora-targets", dict(metavar="NAMES", help="comma-separated module names to adapt")),
]


def register(sub) -> None:
    from . import train_grpo

    p = sub.add_parser("train", help="fine-tune a model (sft, grpo)",
                       description="Fine-tune an LFM2 model. See docs/training.md.")
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE")
    s = recipes.add_parser("sft", help="supervised fine-tuning (full or LoRA)",
                           description="Supervised fine-tuning on chat, prompt/completion or text data. "
                                       "Settings come from --config (YAML), overridden by flags.")
    s.add_argument("--config", metavar="FILE", help="YAML file of settings (SFTConfig field names)")
    s.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                   help="no progress bar")
    for flag, options in _FLAGS:
        s.add_argument(flag, default=argparse.SUPPRESS, **options)
    s.set_defaults(func=run_sft)
    train_grpo.register(recipes, _FLAGS)
    p.set_defaults(func=lambda args: p.print_help() or 0, recipe=None)


def config_from_args(args) -> SFTConfig:
    """SFTConfig from --config (if any) overridden by the flags actually given."""
    fields = {f.lstrip("-").replace("-", "_") for f, _ in _FLAGS} | {"progress"}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    if args.config:
        return SFTConfig.from_yaml(args.config, overrides)
    return SFTConfig.from_dict(overrides, where="command line")


def run_sft(args) -> int:
    from ..train.sft import sft

    config = config_from_args(args)
    result = sft(config)
    ran = f"this run: {len(result.losses)}"
    if result.resumed_from:
        ran += f", resumed at step {result.resumed_from}"
    last = f"; final loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"trained {result.steps} steps ({ran}){last}; model and metrics in {result.output}")
    return 0
