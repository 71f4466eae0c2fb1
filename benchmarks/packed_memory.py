"""Peak memory and time of one training forward + backward over a long packed row.

A packed row of `--tokens` tokens holding documents of `--doc-length` tokens each, through a
small LFM2 layout (hidden 256, 4 layers of which 2 attention, random weights), loss = the sum
of the logits' squares: what packing costs in attention, apart from the weights. Run in a fresh
process per measurement (peak RSS is per process):

    python benchmarks/packed_memory.py --tokens 16384 --doc-length 1024 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from lfmkit import LFM2, LFM2Config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--doc-length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = LFM2Config.from_preset("lfm2-350m").copy(
        hidden_size=256,
        num_hidden_layers=4,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        block_ff_dim=768,
        vocab_size=1024,
    )
    model = LFM2.from_config(config, seed=0).train()
    ids = torch.randint(0, config.vocab_size, (1, args.tokens))
    docs = (torch.arange(args.tokens) // args.doc_length)[None]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    model(ids, document_ids=docs).float().square().mean().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    record = {
        "tokens": args.tokens,
        "doc_length": args.doc_length,
        "threads": args.threads,
        "peak_rss_mib": round(peak / 1024),
        "growth_mib": round((peak - before) / 1024),
        "seconds": round(seconds, 2),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
