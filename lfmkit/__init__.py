"""lfmkit: run, chat with, serve, fine-tune and export the LFM2 hybrid language models.

The core (config, the reference model, its state) is imported eagerly; the rest of the public
surface is resolved on first use, so `import lfmkit` stays light and optional parts (server,
export) cost nothing until touched. The package map is in the README ("What is where").
"""

from importlib import import_module

from .config import LFM2Config
from .errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    DataError,
    ExportError,
    GenerationError,
    LFMKitError,
    TokenizerError,
    ToolCallParseError,
)
from .model import LFM2, LFM2State

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "Tokenizer": "text.tokenizer",
    "IncrementalDecoder": "text.tokenizer",
    "ToolCall": "text.chat",
    "parse_tool_calls": "text.chat",
    "format_tool_calls": "text.chat",
    "parse_assistant_message": "text.chat",
    "split_reasoning": "text.chat",
    "StreamParser": "text.chat",
    "AssistantMessage": "text.chat",
    "ContentDelta": "text.chat",
    "ReasoningDelta": "text.chat",
    "ToolCallEvent": "text.chat",
    "ToolCallError": "text.chat",
    "SamplingParams": "inference.sampling",
    "Constraint": "inference.constrain",
    "generate": "inference.generate",
    "stream_generate": "inference.generate",
    "GenerationResult": "inference.generate",
    "ChatSession": "inference.session",
    "Speculator": "inference.speculative",
    "PrefixCache": "inference.prefix_cache",
    "optimize": "fast",
    "deoptimize": "fast",
    "quantize": "fast",
    "load": "loader",
    "load_quantized": "loader",
    "load_gguf_model": "loader",
    "random_quantized": "loader",
    "write_gguf": "export.gguf",
    "export_onnx": "export.onnx",
    "sft": "train.sft",
    "SFTConfig": "train.config",
}


__all__ = [
    "LFMKitError",
    "ConfigError",
    "CheckpointError",
    "TokenizerError",
    "ToolCallParseError",
    "GenerationError",
    "ContextLengthError",
    "ExportError",
    "DataError",
    "LFM2Config",
    "LFM2",
    "LFM2State",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lfmkit' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
