"""The default model's tokenizer and its two freshly initialised LFM2 checkpoints.

    python recipes/default/init_models.py DATA_DIR OUT_DIR [--seed 0]

trains a byte-level BPE tokenizer (LFM2's special tokens at their ids, `<think>` / `</think>`,
LFM2's chat template: `lfmkit.testing.build_test_tokenizer` on the generated training
conversations, rendered with the template) and writes OUT_DIR/teacher-init and
OUT_DIR/student-init: config.json + model.safetensors with random weights (std 0.02, seeded),
the tokenizer files and a generation_config.json, in the Hugging Face LFM2 layout, so that
`lfmkit train sft` and `lfmkit train distill` start from them like from any checkpoint.

The two shapes follow the family (LFM2-350M: 16 layers, 6 of them GQA attention, the rest
double-gated short convolutions, a tied head, a SwiGLU FFN with the 2/3 auto-adjust rule),
scaled down to what trains in about an hour on 2 shared CPU cores (MODEL_CARD.md says why).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lfmkit import LFM2, LFM2Config
from lfmkit.testing import build_test_tokenizer
from lfmkit.text.chat_template import LFM2_CHAT_TEMPLATE, render_chat_template

VOCAB = 4096

SHAPES = {
    # hidden 256, 8 layers (attention at 2 and 5, as LFM2-350M's first two), ~7.9M parameters
    "teacher": dict(
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
        block_ff_dim=1152,
        attention=(2, 5),
    ),
    # hidden 192, 6 layers (attention at 2 and 4), ~3.4M parameters: about 0.43 of the teacher
    "student": dict(
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        num_key_value_heads=1,
        block_ff_dim=768,
        attention=(2, 4),
    ),
}
# The model card's sampling defaults (LFM2: temperature 0.3, min_p 0.15, repetition penalty 1.05).
GENERATION_CONFIG = {
    "bos_token_id": 1,
    "eos_token_id": 7,
    "pad_token_id": 0,
    "do_sample": True,
    "temperature": 0.3,
    "min_p": 0.15,
    "repetition_penalty": 1.05,
}


def config_for(name: str) -> LFM2Config:
    shape = dict(SHAPES[name])
    attention = shape.pop("attention")
    layers = shape["num_hidden_layers"]
    return LFM2Config(
        vocab_size=VOCAB,
        layer_types=["full_attention" if i in attention else "conv" for i in range(layers)],
        max_position_embeddings=4096,
        name=f"lfmkit-default-{name}",
        **shape,
    )


def corpus(data_dir: Path):
    """The training conversations rendered as the model will see them (the tokenizer's text)."""
    for path in sorted((data_dir / "train").glob("*.jsonl")):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                yield render_chat_template(
                    LFM2_CHAT_TEMPLATE,
                    row["messages"],
                    tools=row.get("tools"),
                    bos_token="<|startoftext|>",
                    eos_token="<|im_end|>",
                )


def write_generation_config(directory: Path) -> None:
    (directory / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")


def init_models(data_dir: Path, out: Path, seed: int = 0) -> dict[str, Path]:
    tok_dir = build_test_tokenizer(out / "tokenizer", vocab_size=VOCAB, corpus=list(corpus(data_dir)))
    written = {}
    for i, name in enumerate(SHAPES):
        directory = out / f"{name}-init"
        model = LFM2.from_config(config_for(name), seed=seed + i)
        model.save_pretrained(str(directory))
        for f in tok_dir.iterdir():
            (directory / f.name).write_bytes(f.read_bytes())
        write_generation_config(directory)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n / 1e6:.2f}M parameters -> {directory}")
        written[name] = directory
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train the tokenizer and write the random-init checkpoints.")
    parser.add_argument("data", help="the folder data.py wrote")
    parser.add_argument("out", help="where tokenizer/, teacher-init/ and student-init/ go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    init_models(Path(args.data), Path(args.out), args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
