"""`lfmkit merge CONFIG.yaml OUTPUT`: merge checkpoints from a mergekit YAML config."""

from __future__ import annotations

import argparse
import re
import sys
import time

HELP = """\
Merge LFM2 checkpoints tensor by tensor into the checkpoint folder OUTPUT (config.json,
safetensors shards, tokenizer files from the base or first model), which lfmkit and
transformers load. CONFIG is mergekit's YAML format; methods: linear, slerp, task_arithmetic,
ties, dare_linear, dare_ties, model_stock. Memory: one tensor per input model plus one output
shard (--max-shard-size), not a model per input.

example (merge.yaml):
  merge_method: ties
  base_model: ./sft
  models:
    - model: ./dpo-beta0.1
      parameters: {weight: 0.5, density: 0.6}
    - model: ./dpo-beta0.3
      parameters: {weight: 0.5, density: 0.6}
  dtype: bfloat16

  lfmkit merge merge.yaml merged/ && lfmkit run merged/ "Hello"

DARE's random drop is seeded per tensor from --seed (docs/merging.md has the exact rule).
"""

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?)b?|b?)\s*$", re.IGNORECASE)
POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """'2GB' (10^9), '2GiB' (2^30), '500MB' or a plain number of bytes."""
    m = SIZE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 2GB, 500MB or 1048576")
    number, unit, binary = m.groups()
    scale = (1024 if binary else 1000) ** POWERS[unit.lower()] if unit else 1
    return int(float(number) * scale)


def register(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="merge checkpoints (linear, slerp, ties, dare, ...) from a mergekit YAML config",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="the merge config (mergekit's YAML format)")
    p.add_argument("output", help="the checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random drop (default: 0)")
    p.add_argument(
        "--max-shard-size",
        type=parse_size,
        metavar="SIZE",
        help="largest safetensors shard to write, and so the most output held in memory (default: 1GiB)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in a non-empty OUTPUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.merge import DEFAULT_MAX_SHARD_BYTES, merge
    from ..train.merge_config import load_merge_config

    start = time.perf_counter()
    cfg = load_merge_config(args.config)
    for note in cfg.notes:
        print(f"lfmkit merge: note: {note}", file=sys.stderr)
    out = merge(
        cfg,
        args.output,
        seed=args.seed,
        max_shard_bytes=args.max_shard_size or DEFAULT_MAX_SHARD_BYTES,
        overwrite=args.overwrite,
    )
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    models = {s.model for seg in cfg.segments for s in seg.sources} | ({cfg.base_model} if cfg.base_model else set())
    print(
        f"merged {len(models)} models with {cfg.method.name} into {out} ({len(shards)} shard"
        f"{'s' if len(shards) != 1 else ''}) in {time.perf_counter() - start:.1f}s"
    )
    return 0
