"""The one loader loop: every checkpoint format as a stream of named tensors, one set of checks.

    ckpt = open_checkpoint("LiquidAI/LFM2-1.2B")        # a directory, a Hub id or a .gguf file
    ckpt.config                                         # its LFM2Config
    load_tensors(ckpt, expected, sink)                  # expected: {name: shape}; sink(tensor)

`open_checkpoint` resolves the path (Hub ids through the local cache), reads the config
(config.json, or a GGUF file's `lfm2.*` keys) and lists the stored tensors under their Hugging
Face names. `load_tensors` walks them once and hands each to `sink` — a float model's sink
reads it into its parameter, a quantized model's sink quantizes it a few rows at a time — after
checking, once for every sink, that the tensor is expected and has the expected shape; at the end
it reports the missing ones. A tied head written by some exporters (`lm_head.weight` next to the
embedding) is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from ..config import LFM2Config
from ..errors import CheckpointError
from .hub import resolve_model_path
from .safetensors import DTYPE_NAMES, SafetensorsFile, checkpoint_files

MAX_LISTED = 8  # names listed in a missing / unexpected tensors error


@dataclass
class StoredTensor:
    """One tensor of a checkpoint: its Hugging Face name, shape, stored dtype and readers."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype  # as stored (GGUF q8_0/q4_0: read as float32)
    file: Path
    label: str  # the name the file itself uses (for messages)
    _rows: Callable[[int, int, torch.dtype | None], torch.Tensor] = field(repr=False)  # (start, stop, dtype)

    def read(self, dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The whole tensor, cast to `dtype` (or into `out`)."""
        t = self._rows(0, self.shape[0] if self.shape else 0, None if out is not None else dtype)
        if out is not None:
            return out.copy_(t)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def read_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the first dimension, in the stored dtype."""
        return self._rows(start, stop, None)


@dataclass
class Checkpoint:
    """A resolved checkpoint: where it is, its config, and its tensors."""

    path: Path
    config: LFM2Config
    format: str  # "safetensors" | "gguf"
    dtype: torch.dtype  # the dtype its weights are stored in
    described_by: str  # what defines the expected tensors (messages)
    tensors: Callable[[], Iterator[StoredTensor]] = field(repr=False)
    tokenizer_dir: Callable[[], str | None] = field(repr=False)


def open_checkpoint(
    path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Checkpoint:
    """A checkpoint directory, Hub id or .gguf file, opened for loading (no tensor read yet)."""
    resolved = resolve_model_path(path, revision=revision, cache_dir=cache_dir)
    if resolved.is_file() and resolved.suffix == ".gguf":
        return _open_gguf(resolved)
    if not resolved.is_dir():
        raise CheckpointError(
            f"{resolved}: expected a checkpoint directory (config.json + *.safetensors) or a .gguf file"
        )
    config = LFM2Config.from_pretrained(resolved)
    files = checkpoint_files(resolved)

    def tensors() -> Iterator[StoredTensor]:
        for f in files:
            st = SafetensorsFile(f)
            for name, (dtype, shape, _, _) in st.entries.items():
                yield StoredTensor(
                    name,
                    shape,
                    dtype,
                    st.path,
                    name,
                    lambda a, b, dt, st=st, name=name: (
                        st.read_rows(name, a, b, dt) if st.entries[name][1] else st.read(name)
                    ),
                )

    return Checkpoint(
        resolved,
        config,
        "safetensors",
        DTYPE_NAMES.get(config.torch_dtype, torch.float32),
        f"its config ({resolved / 'config.json'})",
        tensors,
        lambda: str(resolved),
    )


def _open_gguf(path: Path) -> Checkpoint:
    from . import gguf  # needs the `gguf` package (the export extra)

    reader = gguf.open_reader(path)
    config = gguf.read_gguf_config(path, reader)
    weights = list(gguf.iter_gguf_weights(path, reader))
    types = {w.type for w in weights}
    dtype = torch.bfloat16 if "bf16" in types and types <= {"bf16", "f32"} else torch.float32
    config = config.copy(torch_dtype=str(dtype).replace("torch.", ""))

    def tensors() -> Iterator[StoredTensor]:
        for w in weights:
            cache: list[torch.Tensor] = []

            def rows(a: int, b: int, _dtype=None, w=w, cache=cache) -> torch.Tensor:
                if not cache:  # GGUF blocks dequantise whole; row reads slice one copy
                    cache.append(w.to_tensor(dtype))
                return cache[0][a:b] if w.shape else cache[0]

            yield StoredTensor(w.name, w.shape, dtype, path, gguf.gguf_name(w.name), rows)

    def tokenizer_dir() -> str | None:
        vocab = gguf.read_gguf_vocab(path, reader)
        return str(gguf.tokenizer_folder(vocab, config.max_position_embeddings)) if vocab else None

    return Checkpoint(path, config, "gguf", dtype, "the model its GGUF keys describe", tensors, tokenizer_dir)


def load_tensors(
    ckpt: Checkpoint, expected: Mapping[str, tuple[int, ...]], sink: Callable[[StoredTensor], None], strict: bool = True
) -> list[str]:
    """Hand every stored tensor named in `expected` (name -> shape) to `sink`; raise
    CheckpointError for a wrong shape, and (when `strict`) for unexpected or missing tensors.
    Returns the names that were missing (only non-empty when not strict)."""
    loaded: set[str] = set()
    unexpected: list[str] = []
    for t in ckpt.tensors():
        if t.name not in expected:
            if t.name == "lm_head.weight" and ckpt.config.tie_word_embeddings:
                continue  # some exports write the tied head too; it equals the embedding
            unexpected.append(f"{t.label} (in {t.file.name})" if ckpt.format == "safetensors" else t.label)
            continue
        want = tuple(expected[t.name])
        if tuple(t.shape) != want:
            raise CheckpointError(
                f"{t.file}: tensor '{t.label}' has shape {list(t.shape)}, but {ckpt.described_by} implies {list(want)}"
            )
        sink(t)
        loaded.add(t.name)
    missing = sorted(set(expected) - loaded)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            if ckpt.format == "gguf":
                from .gguf import gguf_name

                missing = [gguf_name(m) for m in missing]
            parts.append(_listing("missing tensors", missing))
        if unexpected:
            parts.append(_listing("unexpected tensors", unexpected))
        raise CheckpointError(f"{ckpt.path}: checkpoint does not match {ckpt.described_by}: " + "; ".join(parts))
    return missing


def _listing(what: str, names: list[str]) -> str:
    return f"{what}: {', '.join(names[:MAX_LISTED])}" + (" ..." if len(names) > MAX_LISTED else "")


__all__ = ["Checkpoint", "StoredTensor", "open_checkpoint", "load_tensors"]
