"""lfmkit: run, chat with, serve, fine-tune and export the LFM2 hybrid language models."""

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

__version__ = "0.1.0"
