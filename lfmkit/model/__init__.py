"""The reference LFM2: modules with Hugging Face names, the hybrid inference state, and
float checkpoints in and out. Trainable, and equal to transformers' Lfm2ForCausalLM."""

from .lfm2 import LFM2, PREFILL_CHUNK, Attention, Block, FeedForward, RMSNorm, ShortConv, StepContext
from .state import LFM2State, StateSnapshot

__all__ = [
    "LFM2",
    "LFM2State",
    "StateSnapshot",
    "RMSNorm",
    "ShortConv",
    "Attention",
    "FeedForward",
    "Block",
    "StepContext",
    "PREFILL_CHUNK",
]
