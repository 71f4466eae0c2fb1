"""`lfmkit bench MODEL|PRESET`: prefill/decode speed, time to first token, memory, state size;
`--compare` adds the dense baseline, llama.cpp and transformers in the same run."""

from __future__ import annotations

import json

from ..config import DENSE_BASELINE, PRESETS


def register(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure prefill/decode speed, time to first token and memory",
        description="Measure a model on this machine: prefill tok/s on a PROMPT_LEN-token prompt (and the time "
        "to first token), decode tok/s at batch 1 and at --batch, peak RSS and state bytes per "
        "token. MODEL is a checkpoint directory or Hub id, or a preset "
        f"({', '.join(PRESETS)}) with random weights (no download). --compare also runs, in "
        "the same process: the dense Qwen3-shaped baseline of the same class in lfmkit "
        f"({', '.join(f'{k} -> {v}' for k, v in DENSE_BASELINE.items())}), llama.cpp via "
        "llama-cpp-python on a GGUF of the same weights (Q4_0 for int4, Q8_0 for int8), and "
        "transformers float32, and prints the ratios.",
    )
    p.add_argument("model", help="checkpoint directory, Hub id, or preset name")
    p.add_argument(
        "--quant", default="int4", help="weights: int4, int8, bf16 or fp32; several separated by commas (default int4)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16", "float32", "bfloat16"],
        help="float weights instead of --quant (same as --quant fp32 / bf16)",
    )
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens for prefill (default 512)")
    p.add_argument("--decode-tokens", type=int, default=128, help="decode steps at batch 1 (default 128)")
    p.add_argument("--batch", type=int, default=8, help="rows for the batched decode (default 8; 1 skips)")
    p.add_argument("--batch-tokens", type=int, default=32, help="decode steps at --batch (default 32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's default)")
    p.add_argument(
        "--compare", action="store_true", help="also run the dense baseline, llama.cpp (if installed) and transformers"
    )
    p.add_argument(
        "--transformers-tokens",
        type=int,
        default=32,
        help="decode steps for transformers in --compare (default 32; it is slow)",
    )
    p.add_argument("--repeats", type=int, default=2, help="runs per measurement, best kept (default 2)")
    p.add_argument(
        "--prefill",
        default="w8a8",
        choices=["w8a8", "bf16", "float32"],
        help="GEMMs of int8/int4 prefill: w8a8 (int8 activations per token, default), bf16 or float32 "
        "(w8a8 and bf16 run float32 on CPUs without AVX-512 VNNI / BF16)",
    )
    p.add_argument(
        "--bandwidth-mib",
        type=int,
        default=1024,
        help="MiB summed to measure the read bandwidth for the bandwidth share (default 1024)",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="where --compare writes a preset's random checkpoint and GGUF files (default ~/.cache/lfmkit/bench)",
    )
    p.add_argument(
        "--draft",
        default=None,
        metavar="MODEL|ngram|self",
        help="also measure speculative decoding at batch 1 on a repetitive prompt, against plain decoding of it: "
        "a draft preset or checkpoint (loaded in the same --quant), 'ngram' (prompt lookup) or 'self' (the model "
        "drafts for itself: all drafts accepted, the verify cost alone); prints tok/s both ways and the "
        "acceptance rate",
    )
    p.add_argument("--draft-k", type=int, default=4, help="tokens drafted per step with --draft (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import bench, format_table, machine_description, ratios

    quant = args.quant
    if args.dtype:
        quant = {"float32": "fp32", "bfloat16": "bf16"}.get(args.dtype, args.dtype)
    modes = [m.strip() for m in quant.split(",") if m.strip()]
    log = (lambda *a, **k: None) if args.json else (lambda msg: print(msg, flush=True))
    if not args.json:
        print(f"machine: {machine_description()}", flush=True)
    results = bench(
        args.model,
        quant=modes,
        prompt_len=args.prompt_len,
        decode_tokens=args.decode_tokens,
        batch=args.batch,
        batch_tokens=args.batch_tokens,
        compare=args.compare,
        threads=args.threads,
        workdir=args.workdir,
        transformers_tokens=args.transformers_tokens,
        repeats=args.repeats,
        log=log,
        draft=args.draft,
        draft_k=args.draft_k,
        prefill=args.prefill,
        bandwidth_mib=args.bandwidth_mib,
    )
    if args.json:
        for r in results:
            print(json.dumps({**r.as_dict(), "machine": machine_description()}))
        return 0
    print(format_table(results))
    for line in ratios(results):
        print(line)
    return 0
