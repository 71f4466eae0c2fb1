"""`lfmkit export gguf|onnx`: write a model for llama.cpp / Ollama or for ONNX Runtime."""

from __future__ import annotations

import time

GGUF_HELP = """\
Write MODEL as one GGUF file for llama.cpp, llama-cpp-python, LM Studio or Ollama:
architecture 'lfm2' with all its keys, the tokenizer (byte-level BPE, pre-tokenizer 'lfm2',
special ids) and the chat template, so `llama-cli -m OUT` chats with no other file.

Types: f32, f16 (default; lossless for bf16 checkpoints up to f16 range), bf16, q8_0
(8.5 bits/weight), q4_0 (4.5 bits/weight; the tied embedding / output matrix stays q8_0).
Norms and the short-convolution kernels always stay f32, as llama.cpp expects.

examples:
  lfmkit export gguf LiquidAI/LFM2-1.2B lfm2-1.2b-f16.gguf
  lfmkit export gguf ./my-finetune model-q4_0.gguf --type q4_0
  lfmkit run model-q4_0.gguf "Hello"          # lfmkit reads GGUF files back too
"""

ONNX_HELP = """\
Write MODEL as an ONNX graph for ONNX Runtime into OUTDIR: model.onnx + model.onnx_data
(float32), a weight-quantised model_q4.onnx (int4 MatMulNBits, block 32) or model_int8.onnx
(dynamic int8) next to it, plus config.json and the tokenizer files, so the ONNX Runtime
generation loop from the LFM2 model cards runs on the folder unchanged.

Inputs: input_ids, attention_mask, position_ids (int64), then per layer past_conv.{i}
[batch, hidden, conv_L_cache] (conv layers) or past_key_values.{i}.key / .value
[batch, kv_heads, past_len, head_dim] (attention layers). Outputs: logits, then the
present_conv.{i} / present.{i}.key / .value states in the same order. Batch and lengths are
dynamic; left padding works (mask 0 = padding).

examples:
  lfmkit export onnx LiquidAI/LFM2-350M lfm2-onnx/
  lfmkit export onnx ./ckpt out/ --quantize int8
"""


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to GGUF (llama.cpp, Ollama) or ONNX (ONNX Runtime)",
        description="Export an LFM2 model to the edge runtimes.",
    )
    fmt = p.add_subparsers(dest="format", metavar="FORMAT")
    fmt.required = True

    import argparse

    g = fmt.add_parser(
        "gguf",
        help="one .gguf file for llama.cpp / Ollama",
        description=GGUF_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("model", help="checkpoint directory, Hugging Face id (local cache) or .gguf file")
    g.add_argument("output", help="the .gguf file to write")
    g.add_argument(
        "--type",
        default="f16",
        choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
        help="weight type of the matrices (default: f16)",
    )
    g.add_argument(
        "--tokenizer",
        metavar="DIR",
        help="folder with tokenizer.json / tokenizer_config.json (default: MODEL's folder)",
    )
    g.add_argument("--name", help="model name stored in general.name")
    g.set_defaults(func=run_gguf)

    o = fmt.add_parser(
        "onnx",
        help="model.onnx + config and tokenizer for ONNX Runtime",
        description=ONNX_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_argument("model", help="checkpoint directory, Hugging Face id (local cache) or .gguf file")
    o.add_argument("outdir", help="folder to write (created if needed)")
    o.add_argument(
        "--quantize",
        default="q4",
        choices=["q4", "int8", "none"],
        help="also write a weight-quantised graph: q4 = int4 MatMulNBits (model_q4.onnx, default), "
        "int8 = dynamic int8 (model_int8.onnx), none = float32 only",
    )
    o.add_argument(
        "--tokenizer", metavar="DIR", help="folder with the tokenizer files to copy (default: MODEL's folder)"
    )
    o.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    o.set_defaults(func=run_onnx)


def _load(model: str, dtype: str | None = None):
    from ..io.hub import resolve_model_path
    from ..model.lfm2 import LFM2

    path = resolve_model_path(model)
    return LFM2.from_pretrained(path, dtype=dtype), path


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def run_gguf(args) -> int:
    from ..export.gguf import write_gguf
    from ..io.gguf import gguf_summary

    t0 = time.perf_counter()
    model, path = _load(args.model)
    tokenizer = args.tokenizer or (path if path.is_dir() else None)
    out = write_gguf(model, args.output, type=args.type, tokenizer_dir=tokenizer, name=args.name)
    info = gguf_summary(out)
    types = ", ".join(f"{n} {t}" for t, n in sorted(info["tensor_types"].items()))
    print(
        f"wrote {out} ({_mib(info['bytes'])}, {info['tensors']} tensors: {types}; "
        f"vocab {info['vocab']:,}{', chat template' if info['chat_template'] else ''}) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def run_onnx(args) -> int:
    from ..export.onnx import export_onnx

    t0 = time.perf_counter()
    model, path = _load(args.model, dtype="float32")
    tokenizer = args.tokenizer or (path if path.is_dir() else None)
    written = export_onnx(
        model,
        args.outdir,
        quantize=None if args.quantize == "none" else args.quantize,
        tokenizer_dir=tokenizer,
        opset=args.opset,
    )
    for f in written:
        print(f"wrote {f} ({_mib(f.stat().st_size)})")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0
