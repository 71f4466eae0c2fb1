"""The reference model in and out of checkpoints (float weights; quantized loading is lfmkit.load).

Loading builds the model on the meta device, then reads each tensor straight from the file
into its final buffer (cast one tensor at a time when the dtype changes), so the weights are
never held twice. The loop and its checks are `lfmkit.io.checkpoint.load_tensors`; this file is
only the float sink. Parameters come back trainable (`requires_grad=True`, as transformers
loads them) and the model in eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..io.checkpoint import StoredTensor, load_tensors, open_checkpoint
from ..io.safetensors import parse_dtype, write_safetensors


def expected_tensors(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor name -> shape for a model (a tied head is not stored)."""
    named = dict(model.named_parameters(remove_duplicate=False))
    if model.config.tie_word_embeddings:
        named.pop("lm_head.weight", None)
    return {n: tuple(p.shape) for n, p in named.items()}


def set_parameter(model: nn.Module, name: str, tensor: torch.Tensor, requires_grad: bool = True) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, nn.Parameter(tensor, requires_grad=requires_grad))


def load_model(
    cls,
    path: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    strict: bool = True,
):
    """An instance of `cls` (LFM2) with the weights of a directory, Hub id or .gguf file."""
    ckpt = open_checkpoint(path, revision=revision, cache_dir=cache_dir)
    target = parse_dtype(dtype) or ckpt.dtype
    device = torch.device(device) if device is not None else torch.device("cpu")
    config = ckpt.config
    if ckpt.format == "gguf":
        config = config.copy(torch_dtype=str(target).replace("torch.", ""))
    with torch.device("meta"):
        model = cls(config)

    def sink(t: StoredTensor) -> None:
        tensor = t.read(target)
        set_parameter(model, t.name, tensor.to(device) if device.type != "cpu" else tensor)

    load_tensors(ckpt, expected_tensors(model), sink, strict=strict)
    model.tie_weights()
    model.source_path = ckpt.tokenizer_dir()  # where tokenizer and generation config live
    if ckpt.format == "gguf":
        model.gguf_path = str(ckpt.path)
    return model.eval()


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write config.json and model.safetensors (or shards + index) in the Hugging Face layout."""
    dtype = parse_dtype(dtype)
    config = model.config
    if dtype is not None:
        config = config.copy(torch_dtype=str(dtype).replace("torch.", ""))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if not torch.is_floating_point(p):
            raise CheckpointError(f"cannot save tensor '{name}' of dtype {p.dtype}: dequantize the model first")
        tensors[name] = p.detach().to("cpu", dtype=dtype or p.dtype).contiguous()
    return write_safetensors(tensors, out, max_shard_bytes)
