"""Speed applied from outside: `optimize(model, quant=None|"int8"|"int4"|"bf16")` installs the
quantized linears, fused weights, C small ops and the fused decode step on a reference model,
for inference. See install.py (what is installed), modules.py (the fast module classes, each
falling back to the reference) and decode_step.py (one C call per token)."""

from .decode_step import FusedDecode
from .install import (
    deoptimize,
    install_fast_modules,
    logit_agreement,
    optimize,
    quantize,
    set_prefill,
    weight_bytes,
)
from .modules import FastLFM2

__all__ = [
    "optimize",
    "quantize",
    "deoptimize",
    "install_fast_modules",
    "set_prefill",
    "FusedDecode",
    "FastLFM2",
    "weight_bytes",
    "logit_agreement",
]
