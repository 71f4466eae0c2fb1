"""Tiny random-weight LFM2 checkpoints built with transformers (the reference), for tests.

`make_checkpoint(dir, **overrides)` saves a `Lfm2ForCausalLM` with random weights (and the
test tokenizer when `with_tokenizer=True`) and returns (dir, reference_model).
Layouts cover the real family at toy sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

ATTN, CONV = "full_attention", "conv"

# Toy versions of the real layouts (same layer pattern, tiny widths).
LAYOUTS = {
    "1.2b": dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        layer_types=[ATTN if i in (2, 5, 8, 10, 12, 14) else CONV for i in range(16)],
    ),
    "2.6b": dict(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=160,
        block_auto_adjust_ff_dim=False,
        layer_types=[ATTN if i in (2, 5, 9, 13, 17, 21, 24, 27) else CONV for i in range(30)],
    ),
    "small": dict(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        layer_types=[CONV, ATTN, CONV, ATTN],
    ),
}


def reference_config(layout: str = "small", vocab_size: int = 512, **overrides):
    from transformers import Lfm2Config

    kw = dict(LAYOUTS[layout])
    kw.update(
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        eos_token_id=7,
        bos_token_id=1,
        pad_token_id=0,
        block_multiple_of=32,
    )
    kw.update(overrides)
    kw["num_hidden_layers"] = len(kw["layer_types"])
    return Lfm2Config(**kw)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.08) -> None:
    """Weights large enough that logits are far from uniform (so token choices are stable)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def make_checkpoint(
    directory, layout: str = "small", seed: int = 0, dtype=torch.float32, with_tokenizer: bool = False, **overrides
):
    """Save a random-weight reference model to `directory`; return (Path, model)."""
    from transformers import Lfm2ForCausalLM

    directory = Path(directory)
    config = reference_config(layout, **overrides)
    torch.manual_seed(seed)
    model = Lfm2ForCausalLM(config).eval()
    randomize(model, seed)
    model = model.to(dtype)
    model.save_pretrained(directory)
    if with_tokenizer:
        from lfmkit.testing import build_test_tokenizer

        build_test_tokenizer(directory)
    return directory, model
