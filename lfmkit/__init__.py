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

from .config import LFM2Config
from .model import LFM2
from .state import LFM2State

__version__ = "0.1.0"
