"""Where a model lives: a local directory or file as is, or a Hugging Face Hub id through the
local Hub cache (downloaded when online and missing; `HF_HUB_OFFLINE=1` keeps it to the cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError


def resolve_model_path(
    path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local directory (or .gguf file) for `path`: as is, or a Hub id through the HF cache."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists():
        return p
    text = str(path)
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~")) and " " not in text
    if not looks_like_repo:
        raise CheckpointError(f"{path}: no such file or directory")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - optional dependency
        raise CheckpointError(
            f"{path}: not a local directory, and huggingface_hub is not installed "
            f"to fetch it from the Hub (pip install huggingface-hub)"
        ) from None
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"]
    try:
        return Path(
            snapshot_download(
                text, revision=revision, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        if local_files_only:
            raise CheckpointError(
                f"{path}: not in the local Hugging Face cache, and offline (HF_HUB_OFFLINE is set)"
            ) from None
    except Exception as exc:  # noqa: BLE001 - the hub library raises many types
        raise CheckpointError(f"{path}: cannot read it from the Hugging Face cache: {exc}") from None
    try:
        return Path(snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: download from the Hugging Face Hub failed: {type(exc).__name__}: {exc}"
        ) from None
