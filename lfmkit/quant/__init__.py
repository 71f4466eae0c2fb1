"""Weight-only int8 / int4 formats (formats.py) and the layers that multiply by them (linear.py).
Installing them on a model is `lfmkit.fast.optimize`; loading straight into them is `lfmkit.load`."""

from .formats import MODES, check_mode, dequantize_int4, dequantize_int8, fits, quantize_int4, quantize_int8
from .linear import QuantEmbedding, QuantLinear, adjacent, fused_view

__all__ = [
    "MODES",
    "check_mode",
    "fits",
    "quantize_int8",
    "quantize_int4",
    "dequantize_int8",
    "dequantize_int4",
    "QuantLinear",
    "QuantEmbedding",
    "adjacent",
    "fused_view",
]
