"""lfmkit: run, chat with, serve, fine-tune and export the LFM2 hybrid language models.

The core (config, model, state) is imported eagerly; the rest of the public surface is
resolved on first use, so `import lfmkit` stays light and optional parts (server, export)
cost nothing until touched.
"""

from importlib import import_module

from .errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    ExportError,
    GenerationError,
    LFMKitError,
    TokenizerError,
    ToolCallParseError,
)

from .config import LFM2Config
from .model import LFM2
from .state import LFM2State

# `generate` is both a submodule and its main function. Importing the function eagerly binds
# the name to the function for good; lazily, any `import lfmkit.generate` elsewhere would
# leave the package attribute pointing at the module.
from .generate import generate

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "Tokenizer": "tokenizer",
    "IncrementalDecoder": "tokenizer",
    "ToolCall": "chat",
    "parse_tool_calls": "chat",
    "format_tool_calls": "chat",
    "parse_assistant_message": "chat",
    "split_reasoning": "chat",
    "StreamParser": "chat",
    "AssistantMessage": "chat",
    "ContentDelta": "chat",
    "ReasoningDelta": "chat",
    "ToolCallEvent": "chat",
    "ToolCallError": "chat",
    "SamplingParams": "sampling",
    "stream_generate": "generate",
    "GenerationResult": "generate",
    "ChatSession": "session",
    "quantize": "quant",
    "load_quantized": "quant",
    "write_gguf": "export.gguf",
    "load_gguf_model": "export.gguf",
    "export_onnx": "export.onnx",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lfmkit' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
