"""`lfmkit info MODEL`: config summary, parameter count, layer layout and state size per token."""

from __future__ import annotations

import json

from ..config import PRESETS, LFM2Config


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show a model's config, size, layer layout and state size",
        description="Print a model's configuration summary. MODEL is a checkpoint directory, "
        "a Hugging Face id (read from the local cache), a .gguf file, or a preset "
        f"name ({', '.join(PRESETS)}).",
    )
    p.add_argument("model", help="checkpoint directory, Hub id, .gguf file, or preset name")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def load_config(model: str) -> tuple[LFM2Config, str]:
    """The config of a preset, a checkpoint directory, a Hub id or a GGUF file (weights not read)."""
    if model.lower() in PRESETS:
        return LFM2Config.from_preset(model), f"preset {model.lower()} (random weights)"
    from ..io.hub import resolve_model_path

    path = resolve_model_path(model)
    if path.is_file() and path.suffix == ".gguf":
        from ..io.gguf import read_gguf_config

        return read_gguf_config(path), str(path)
    return LFM2Config.from_pretrained(path), str(path)


def layout_string(config: LFM2Config) -> str:
    """One character per layer: C = short convolution, A = attention."""
    return "".join("A" if t == "full_attention" else "C" for t in config.layer_types)


def run(args) -> int:
    config, source = load_config(args.model)
    facts = config.summary()
    facts["source"] = source
    facts["layout"] = layout_string(config)
    dense_kv = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_size * 2
    facts["all_attention_state_bytes_per_token_bf16"] = dense_kv
    if args.json:
        print(json.dumps(facts))
        return 0
    per_tok = facts["state_bytes_per_token_bf16"]
    rows = [
        ("source", source),
        ("parameters", f"{facts['parameters']:,}"),
        ("layers", f"{facts['layers']} ({facts['conv_layers']} conv + {facts['attention_layers']} attention)"),
        ("layout", facts["layout"] + "   (C = short conv, A = attention)"),
        ("attention at", ", ".join(map(str, facts["attention_layer_indices"])) or "-"),
        ("hidden / ffn", f"{facts['hidden_size']} / {facts['ff_dim']}"),
        ("heads / kv heads", f"{facts['heads']} / {facts['kv_heads']} (head_dim {facts['head_dim']})"),
        ("vocab", f"{facts['vocab_size']:,}" + (" (tied embeddings)" if facts["tied_embeddings"] else "")),
        ("context", f"{facts['context_length']:,} tokens"),
        (
            "state per token",
            f"{per_tok:,} B in bf16 ({per_tok / dense_kv:.0%} of an all-attention model of this depth, {dense_kv:,} B)",
        ),
        ("state per sequence", f"+ {facts['state_fixed_bytes_bf16']:,} B of conv windows, fixed"),
        ("state at 32k tokens", f"{(per_tok * 32768 + facts['state_fixed_bytes_bf16']) / 2**20:,.0f} MiB per sequence"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
