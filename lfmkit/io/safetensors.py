"""safetensors files in and out: single files or shards + index, in the Hugging Face layout.

We parse the header ourselves so every problem (corrupt header, bad entry, file too short) is
reported with the file and tensor name, and read tensors (or row ranges of them) straight into
a caller's buffer, so loading never holds the weights twice.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from ..checks import read_json_object, shown
from ..errors import CheckpointError, ConfigError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
               "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16}
MAX_HEADER_BYTES = 100 * 2**20
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key == "auto":
        return None
    if key not in DTYPE_NAMES:
        raise ConfigError(f"unsupported dtype {dtype!r}; choose float32, bfloat16 or float16")
    return DTYPE_NAMES[key]


# ---- safetensors reading ---------------------------------------------------------------------
class SafetensorsFile:
    """One .safetensors file: its header, and reads of single tensors without mmap."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (too short)")
                (n,) = struct.unpack("<Q", raw)
                if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > size:
                    raise CheckpointError(f"{self.path}: corrupt safetensors header (length {n})")
                header = json.loads(f.read(n).decode("utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except (ValueError, RecursionError) as exc:   # not UTF-8, not JSON, a 5000-digit number, deep nesting
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", {}) or {}
        self.data_start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype = SAFETENSORS_DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor '{name}': bad header entry {info!r}") from None
            numel = 1
            for s in shape:
                numel *= s
            nbytes = numel * torch.empty((), dtype=dtype).element_size()
            if end - begin != nbytes or begin < 0 or self.data_start + end > size:
                raise CheckpointError(f"{self.path}: tensor '{name}': data offsets {begin}..{end} do not "
                                      f"match shape {list(shape)} {info['dtype']} or the file size")
            self.entries[name] = (dtype, shape, begin, end)

    def read(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read tensor `name` (into `out` if given: same shape, any dtype, CPU)."""
        dtype, shape, begin, end = self.entries[name]
        direct = out is not None and out.dtype == dtype and out.device.type == "cpu" and out.is_contiguous()
        buf = out if direct else torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            view = memoryview(buf.view(-1).view(torch.uint8).numpy()) if buf.numel() else memoryview(b"")
            got = f.readinto(view) if buf.numel() else 0
        if got != end - begin:
            raise CheckpointError(f"{self.path}: tensor '{name}': file ended early")
        if out is not None and not direct:
            out.copy_(buf)
            return out
        return buf

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of tensor `name` (its first dimension), in its stored dtype."""
        dtype, shape, begin, end = self.entries[name]
        row_bytes = (end - begin) // max(1, shape[0])
        buf = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin + start * row_bytes)
            view = memoryview(buf.view(-1).view(torch.uint8).numpy()) if buf.numel() else memoryview(b"")
            got = f.readinto(view) if buf.numel() else 0
        if got != (stop - start) * row_bytes:
            raise CheckpointError(f"{self.path}: tensor '{name}': file ended early")
        return buf


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or shards + index)."""
    index = directory / INDEX_NAME
    single = directory / WEIGHTS_NAME
    if index.is_file():
        weight_map = read_json_object(index, CheckpointError).get("weight_map")
        if not (isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values())):
            raise CheckpointError(f"{index}: not a valid safetensors index ('weight_map' must map tensor names "
                                  f"to shard file names, got {shown(weight_map)})")
        files = sorted({directory / f for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: lists shard '{f.name}', which is missing")
        return files
    if single.is_file():
        return [single]
    others = sorted(directory.glob("*.safetensors"))
    if others:
        return others
    raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME} found")


# ---- saving ----------------------------------------------------------------------------------
def write_safetensors(tensors: dict[str, torch.Tensor], directory: str | os.PathLike,
                      max_shard_bytes: int | None = None) -> Path:
    """Write `tensors` as model.safetensors, or as shards of at most `max_shard_bytes` + index."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shards = _shard(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / WEIGHTS_NAME), metadata=metadata)
        (out / INDEX_NAME).unlink(missing_ok=True)
        return out
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata=metadata)
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                             indent=2), encoding="utf-8")
    (out / WEIGHTS_NAME).unlink(missing_ok=True)
    return out


def _shard(tensors: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if not max_bytes:
        return [tensors]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards
