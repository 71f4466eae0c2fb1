"""lfmkit's exception types.

Every error a user can cause (a bad path, a bad config, a bad request, bad tool-call text)
is one of these, with a message that names the file, field or parameter involved. The CLI
prints them as one line; the server turns them into HTTP 4xx responses.
"""


class LFMKitError(Exception):
    """Base class of every error lfmkit raises on purpose."""


class ConfigError(LFMKitError, ValueError):
    """A config.json or a config field is missing, mistyped or unsupported."""


class CheckpointError(LFMKitError):
    """A checkpoint directory, file or tensor cannot be used."""


class TokenizerError(LFMKitError):
    """Tokenizer files are missing or unusable, or a chat template failed to render."""


class ToolCallParseError(LFMKitError, ValueError):
    """Text that should hold tool calls does not parse. `.raw` keeps the offending text."""

    def __init__(self, message: str, raw: str = ""):
        super().__init__(message)
        self.raw = raw


class GenerationError(LFMKitError, ValueError):
    """Bad sampling parameters or a generation request that cannot be served."""


class ContextLengthError(GenerationError):
    """The prompt (plus requested tokens) does not fit the model's context or the state."""


class ExportError(LFMKitError):
    """A model cannot be written in the requested export format."""


class DataError(LFMKitError, ValueError):
    """A training data file or one of its rows is unusable; the message names the file and line (or row)."""


class EvalError(LFMKitError, ValueError):
    """An evaluation cannot run: a missing or malformed dataset file, an unknown task or rule."""
