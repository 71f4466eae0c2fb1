"""The fused decode step over LoRA adapters on a quantized base (QLoRA), for GRPO's rollouts.

With LoRA over an int8 / int4 base the frozen weights the training forward multiplies by *are*
`QuantLinear` codes, so the rollouts can read them with lfmkit's fast decode (one C call per
token, csrc/decode_step.cpp) and add each adapter's update beside the base product:

    y = base(x) + scale * (x A^T) B^T        (A [r, in], B [out, r], float32, as LoRALinear)

`LoRAFusedDecode` is `lfmkit.fast.FusedDecode` whose products carry their adapters: the C step
points at the adapters' own `lora_A.weight` / `lora_B.weight` tensors, which the optimizer
updates in place, so every rollout reads the policy's current weights with no copy and no sync
step (the pointers are checked on every call and gathered again if a tensor was replaced).
`install(model)` attaches it to a model that `apply_lora` wrapped (its top-level class becomes
`FastLFM2`, whose single-token steps without gradients go to the fused step; everything else,
the training forward included, stays the reference forward through the LoRA modules).

Precision of a rollout step: the base product quantizes its input activations to int8 on the
fly (blocks of 32 values for int4 weights, of 256 for int8) with integer dot products, as
lfmkit's inference does; the adapters and everything else (norms, conv, attention, logits) are
float32. The module path computes the same thing op for op (QuantLinear's kernels for up to 16
rows), so the two agree to float rounding (`tests/test_lora_decode.py`).

`quantized_base(model, mode)` quantizes a float model's linears in place for such a run
(`lfmkit.fast.optimize`), before `apply_lora`.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from ..fast import optimize
from ..fast.decode_step import FusedDecode, Unsupported, _Linear, _Lora
from ..fast.modules import FastLFM2
from ..model import LFM2
from ..quant.linear import QuantLinear
from .lora import LoRALinear, lora_layers


def quantized_base(model: nn.Module, mode: str) -> nn.Module:
    """Quantize `model`'s linears (and the tied embedding / head) to `mode` in place, for LoRA
    over a quantized base; its remaining float parameters are frozen (apply_lora adds the
    trainable ones). Products of more than 16 rows (the training forward, prompt prefill) run
    bfloat16 GEMMs on the weights dequantized a tile at a time (`prefill="bf16"`): against the
    rollouts' int8 activation blocks they agree better than W8A8's per-token int8 activations
    and, for a training step's few hundred rows, run faster (measured in docs/training.md)."""
    return optimize(model, quant=mode, prefill="bf16")


def _plain(layer: nn.Module) -> QuantLinear:
    """A plain QuantLinear over a (Frozen)QuantLinear's own buffers (views share memory), so
    that parts stored back to back still fuse into one matrix."""
    if not isinstance(layer, QuantLinear):
        raise Unsupported(f"{type(layer).__name__} is not a quantized linear")
    if type(layer) is QuantLinear:
        return layer
    return QuantLinear.over(layer.qweight, layer.scales, layer.in_features, layer.bits, layer.group_size)


def _adapter(m: LoRALinear, row0: int) -> _Lora:
    a, b = m.lora_A.weight, m.lora_B.weight
    for t in (a, b):
        if t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
            raise Unsupported("a LoRA adapter is not a contiguous float32 CPU tensor")
    if a.shape[0] > b.shape[0]:
        raise Unsupported(f"LoRA rank {a.shape[0]} exceeds its layer's {b.shape[0]} outputs")
    return _Lora(a.data_ptr(), b.data_ptr(), a.shape[0], row0, b.shape[0], float(m.scaling))


class LoRAFusedDecode(FusedDecode):
    """The fused decode step of a quantized model whose linears may be wrapped in LoRA adapters
    (see the module doc); None (the module path) while adapters are disabled or dropout is live."""

    def slot(self, parts: list[nn.Module], keep: list) -> _Linear:
        lin = super().slot([_plain(p.base_layer if isinstance(p, LoRALinear) else p) for p in parts], keep)
        adapters, row = [], 0
        for p in parts:
            if isinstance(p, LoRALinear):
                adapters.append(_adapter(p, row))
            row += p.out_features
        if adapters:
            array = (_Lora * len(adapters))(*adapters)
            keep.append(array)
            lin.lora, lin.n_lora = ctypes.cast(array, ctypes.POINTER(_Lora)), len(adapters)
        return lin

    def _build(self):
        if self._plan is None and self.reason is None:
            layers = list(lora_layers(self.model).values())
            self._layers = layers
            self._dropout = [m for m in layers if not isinstance(m.lora_dropout, nn.Identity)]
            # (parameter dict, parameter, its data pointer) of every adapter tensor the plan reads
            params = [(lin._parameters, lin.weight) for m in layers for lin in (m.lora_A, m.lora_B)]
            self._pointers = [(d, p, p.data_ptr()) for d, p in params]
        return super()._build()

    def _stale(self) -> bool:
        """Whether an adapter tensor was replaced (not updated in place) since the plan was made."""
        return any(d["weight"] is not p or p.data_ptr() != ptr for d, p, ptr in self._pointers)

    def __call__(self, input_ids, state, conv_columns=None):
        if self._build() is None:
            return None
        if any(m.disabled for m in self._layers) or any(m.training for m in self._dropout):
            return None
        if self._stale():
            self.reset()  # gather the pointers again
        return super().__call__(input_ids, state, conv_columns)


def install(model: nn.Module) -> LoRAFusedDecode:
    """Give a LoRA-wrapped quantized LFM2 the fused decode step with its adapters (in place);
    returns it (`.available()` says whether the model can take it, `.reason` why not)."""
    if type(model) is LFM2:
        model.__class__ = FastLFM2
    fused = LoRAFusedDecode(model)
    model.__dict__["fused_decode"] = fused
    return fused


def rollout_precision(model: nn.Module, config) -> str:
    """What a GRPO run's rollouts compute in, for its start-up line."""
    if getattr(config, "base_quant", None):
        fused = model.__dict__.get("fused_decode")
        block = "32" if config.base_quant == "int4" else "256 (or 32)"
        how = (
            "the fused decode step"
            if fused is not None and fused.available()
            else f"the module path ({getattr(fused, 'reason', None) or 'no fused step'})"
        )
        return f"{config.base_quant} base weights (activations int8 per {block}) + float32 adapters, {how}"
    return "bfloat16" if config.bf16_weights else str(model.dtype).removeprefix("torch.")


__all__ = ["LoRAFusedDecode", "install", "quantized_base", "rollout_precision"]
