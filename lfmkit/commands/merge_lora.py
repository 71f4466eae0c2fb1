"""`lfmkit merge-lora BASE ADAPTER OUTPUT`: fold a PEFT LoRA adapter into its base model and write
a plain Hugging Face checkpoint (config.json, safetensors, tokenizer and chat template)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = """\
Fold the LoRA adapter in ADAPTER (adapter_config.json + adapter_model.safetensors, written by
lfmkit or by peft) into the weights of BASE, and write the result to OUTPUT as a plain Hugging
Face checkpoint that transformers, `lfmkit run` and the exporters load with no adapter code.
The merge is computed in float32; OUTPUT is stored in BASE's dtype unless --dtype says otherwise.

examples:
  lfmkit merge-lora LiquidAI/LFM2-1.2B runs/sft/adapter merged/
  lfmkit merge-lora ./LFM2-350M ./adapter ./merged --dtype float32
"""


def register(sub) -> None:
    p = sub.add_parser(
        "merge-lora",
        help="fold a LoRA adapter into its base model (a plain HF checkpoint)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", help="base checkpoint directory, Hugging Face id (local cache) or .gguf file")
    p.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("output", help="folder to write the merged checkpoint to (created if needed)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the written weights (default: the base checkpoint's)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.hub import resolve_model_path
    from ..model.lfm2 import LFM2
    from ..text.tokenizer import copy_tokenizer_files
    from ..train.lora import load_adapter, lora_layers, merge_lora

    t0 = time.perf_counter()
    model = LFM2.from_pretrained(resolve_model_path(args.base), dtype="float32")
    dtype = args.dtype or model.config.torch_dtype
    layers = len(lora_layers(load_adapter(model, args.adapter)))
    merge_lora(model)
    out = Path(args.output)
    model.save_pretrained(out, dtype=dtype)
    source = getattr(model, "source_path", None)
    copied = [p.name for p in copy_tokenizer_files(source, out)] if source and Path(source).is_dir() else []
    print(
        f"merged {layers} adapters of {args.adapter} into {args.base} -> {out} ({dtype}"
        f"{', tokenizer' if 'tokenizer.json' in copied else ''}) in {time.perf_counter() - t0:.1f}s"
    )
    return 0
