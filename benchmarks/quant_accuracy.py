"""Accuracy of weight-only quantization vs float32: cosine similarity and top-1 agreement of
the logits over a long prompt, per mode, on a preset's random weights (or a checkpoint).

    python benchmarks/quant_accuracy.py [lfm2-350m|CHECKPOINT] [--tokens 512] [--modes int8,int4]

A preset's weights are the bf16 random checkpoint `lfmkit bench --compare` writes (std 0.02
normal, unit norms), loaded as float32 for the reference and quantized while loading for the
others. Random weights have no learned structure, so their logits have small margins: the
agreement here is a pessimistic stand-in for a trained checkpoint.

Each quantized mode is measured twice, because the two paths multiply differently: over the
whole prompt at once (prefill: weights expanded to bf16, bf16 GEMM) and token by token
through the state (decode: the int8-activation kernels and the fused decode step), with the
prompt's own tokens fed in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from lfmkit import LFM2
from lfmkit.bench import machine_description, resolve_target, write_random_checkpoint
from lfmkit.loader import load_quantized


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="lfm2-350m")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--modes", default="int8,int4")
    ap.add_argument("--workdir", default=os.path.expanduser("~/.cache/lfmkit/bench"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    config, path, name = resolve_target(args.model)
    if path is None:
        path = write_random_checkpoint(config, Path(args.workdir) / name)
    ref = LFM2.from_pretrained(path, dtype="float32")
    ids = torch.randint(16, min(512, config.vocab_size), (1, args.tokens), generator=torch.Generator().manual_seed(7))
    ref_logits = ref(ids)[0].float()
    del ref
    if not args.json:
        print(f"machine: {machine_description()}\nmodel: {name}, {args.tokens}-token prompt, logits vs float32")
    for mode in args.modes.split(","):
        model = load_quantized(path, mode)
        for how, logits in (("prompt", model(ids)[0].float()), ("token by token", decode_logits(model, ids))):
            cos = torch.nn.functional.cosine_similarity(ref_logits, logits, dim=-1)
            top1 = (ref_logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
            row = {
                "model": name,
                "mode": mode,
                "path": how,
                "tokens": args.tokens,
                "cosine_mean": cos.mean().item(),
                "cosine_min": cos.min().item(),
                "top1_agreement": top1,
            }
            print(
                json.dumps(row)
                if args.json
                else f"{mode:>5} {how:>14}: cosine mean {row['cosine_mean']:.4f} (min {row['cosine_min']:.4f}), "
                f"top-1 agreement {100 * top1:.1f}%"
            )
            sys.stdout.flush()
        del model


def decode_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits [T, V] from feeding `ids` one token at a time through a state (the decode path)."""
    state = model.new_state(1, max_length=ids.shape[1])
    return torch.cat([model(ids[:, t : t + 1], state=state)[0] for t in range(ids.shape[1])]).float()


if __name__ == "__main__":
    main()
