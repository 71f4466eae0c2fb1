"""Loading for inference: one entry for float, quantized and fast models.

    model = lfmkit.load("LiquidAI/LFM2-1.2B")                  # float, fast paths installed
    model = lfmkit.load("./LFM2-1.2B", quant="int4")           # straight into int4
    model = lfmkit.load("model.gguf", fast=False)              # the plain reference model

`load` reads any checkpoint (directory, Hub id, .gguf) through the one loader loop
(`lfmkit.io.checkpoint.load_tensors`). Float loading is the reference model's own
(`LFM2.from_pretrained`); quantized loading builds the model on the meta device with empty
quantized layers and quantizes each tensor a few rows at a time as it is read, so the float
model is never held whole (the 1.2B model in int4 loads in well under 1 GB). Both then install
the fast paths (`lfmkit.fast.optimize`) unless `fast=False`.

`random_quantized(config, mode)` builds a random-weight model the same way, for benchmarks of
the real shapes.
"""

from __future__ import annotations

import ctypes
import os

import torch

from ..config import LFM2Config
from ..default_model import resolve_model
from ..errors import CheckpointError
from ..fast.install import install_fast_modules, install_quantized_linears, optimize, quantize_rows
from ..io.checkpoint import StoredTensor, load_tensors, open_checkpoint
from ..model.lfm2 import LFM2
from ..model.loading import expected_tensors, set_parameter
from ..quant.formats import check_mode


def load(
    path: str | os.PathLike | None = None,
    quant: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    fast: bool = True,
    group_size: int = 32,
    prefill: str = "w8a8",
    **kwargs,
) -> LFM2:
    """A model for inference from a directory, Hub id or .gguf file.

    quant: None (float, in `dtype`), "int8" or "int4" (quantized while loading; our kernels run
    on the CPU, elsewhere the layers dequantize for each product), "bf16".
    fast: install the fast paths (kernels, fused decode); False gives the reference model.
    prefill: "w8a8" (int8 GEMMs for many-token products of int8/int4 models), "bf16" or
    "float32" (on CPUs without AVX-512 VNNI / BF16 the first two run float32: quant/prefill.py).
    kwargs: revision, cache_dir (Hub ids).
    path None: the model that ships with lfmkit (`lfmkit.default_model`), said in one line on stderr.
    """
    path = resolve_model(path)
    mode = check_mode(quant) if quant is not None else None
    if mode in ("int8", "int4"):
        model = load_quantized(path, mode, group_size=group_size, fast=fast, prefill=prefill, **kwargs)
        return model.to(device) if device is not None else model
    if mode in ("fp32", "bf16"):
        dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    model = LFM2.from_pretrained(path, dtype=dtype, device=device, **kwargs)
    return optimize(model) if fast else model


def load_gguf_model(
    path: str | os.PathLike, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None
) -> LFM2:
    """The reference model from a GGUF file (weights dequantised; float32, or bfloat16 for bf16 files)."""
    if not str(path).endswith(".gguf"):
        raise CheckpointError(f"{path}: not a .gguf file")
    return LFM2.from_pretrained(path, dtype=dtype, device=device)


def _skeleton(config: LFM2Config, mode: str, group_size: int) -> tuple[LFM2, dict, dict]:
    """An LFM2 on meta with empty quantized layers; (model, {name: layer}, {name: shape})."""
    with torch.device("meta"):
        model = LFM2(config)
    shapes = expected_tensors(model)
    targets = install_quantized_linears(model, mode, group_size)
    return model, targets, shapes


def load_quantized(
    path: str | os.PathLike, mode: str, group_size: int = 32, fast: bool = True, prefill: str = "w8a8", **kwargs
) -> LFM2:
    """Load a checkpoint straight into int8/int4, a few rows at a time (see the module doc)."""
    mode = check_mode(mode)
    if mode in ("fp32", "bf16"):
        return load(path, quant=mode, fast=fast, **kwargs)
    ckpt = open_checkpoint(path, **kwargs)
    model, targets, shapes = _skeleton(ckpt.config, mode, group_size)

    def sink(t: StoredTensor) -> None:
        layer = targets.get(t.name)
        if layer is None:
            set_parameter(model, t.name, t.read(torch.float32), requires_grad=False)
        else:
            quantize_rows(layer, t.read_rows, t.shape[0])

    with torch.no_grad():
        load_tensors(ckpt, shapes, sink)
    _tie(model, targets)
    model.source_path = ckpt.tokenizer_dir()
    _release_freed_memory()
    model.eval()
    return install_fast_modules(model, prefill) if fast else model


def random_quantized(
    config: LFM2Config, mode: str, group_size: int = 32, seed: int = 0, std: float = 0.02, prefill: str = "w8a8"
) -> LFM2:
    """A random-weight model of `config` built directly in `mode` (no full float copy), fast."""
    mode = check_mode(mode)
    if mode in ("fp32", "bf16"):
        model = LFM2.from_config(config, dtype=torch.float32 if mode == "fp32" else torch.bfloat16, seed=seed)
        return optimize(model)
    g = torch.Generator().manual_seed(seed)
    model, targets, shapes = _skeleton(config, mode, group_size)
    with torch.no_grad():
        for name, shape in shapes.items():
            layer = targets.get(name)
            if layer is not None:
                quantize_rows(layer, lambda a, b, k=shape[1]: torch.randn(b - a, k, generator=g) * std, shape[0])
            else:
                t = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape, generator=g) * std
                set_parameter(model, name, t, requires_grad=False)
    _tie(model, targets)
    _release_freed_memory()
    return install_fast_modules(model.eval(), prefill)


def _tie(model: LFM2, targets: dict) -> None:
    if "model.embed_tokens.weight" not in targets:  # a quantized table is the tied head already
        model.tie_weights()


def _release_freed_memory() -> None:
    """Hand the quantization temporaries back to the OS (glibc keeps freed heap otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


__all__ = ["load", "load_quantized", "load_gguf_model", "random_quantized"]
