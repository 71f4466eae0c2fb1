"""Checkpoints in and out: Hugging Face safetensors directories, sharded or not, and Hub ids.

Loading builds the model on the meta device, then reads each tensor straight from the file
into its final buffer (cast one tensor at a time when the dtype changes), so the weights are
never held twice: peak memory stays close to the size of the loaded model. We parse the
safetensors header ourselves so every problem (corrupt header, missing or unexpected tensor,
wrong shape) is reported with the file and tensor name.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .config import LFM2Config
from .errors import CheckpointError, ConfigError
from .model import LFM2

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
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (single file or shards + index)."""
    index = directory / INDEX_NAME
    single = directory / WEIGHTS_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
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


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, SafetensorsFile]]:
    for path in files:
        st = SafetensorsFile(path)
        for name in st.entries:
            yield name, st


# ---- Hub resolution --------------------------------------------------------------------------
def resolve_model_path(path: str | os.PathLike, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, local_files_only: bool | None = None) -> Path:
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
        raise CheckpointError(f"{path}: not a local directory, and huggingface_hub is not installed "
                              f"to fetch it from the Hub (pip install huggingface-hub)") from None
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"]
    try:
        return Path(snapshot_download(text, revision=revision, cache_dir=cache_dir,
                                      allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        if local_files_only:
            raise CheckpointError(f"{path}: not in the local Hugging Face cache, and offline "
                                  f"(HF_HUB_OFFLINE is set)") from None
    except Exception as exc:  # noqa: BLE001 - the hub library raises many types
        raise CheckpointError(f"{path}: cannot read it from the Hugging Face cache: {exc}") from None
    try:
        return Path(snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: download from the Hugging Face Hub failed: "
                              f"{type(exc).__name__}: {exc}") from None


# ---- loading ---------------------------------------------------------------------------------
def _expected_tensors(model: LFM2) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters(remove_duplicate=False))
    if model.config.tie_word_embeddings:
        named.pop("lm_head.weight", None)
    return named


def load_model(path: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = None, revision: str | None = None,
               cache_dir: str | os.PathLike | None = None, strict: bool = True,
               **_ignored) -> LFM2:
    """Load an LFM2 checkpoint: a directory, a Hub id, or a .gguf file."""
    resolved = resolve_model_path(path, revision=revision, cache_dir=cache_dir)
    if resolved.is_file() and resolved.suffix == ".gguf":
        from .export.gguf import load_gguf_model  # optional format support

        return load_gguf_model(resolved, dtype=parse_dtype(dtype), device=device)
    if not resolved.is_dir():
        raise CheckpointError(f"{resolved}: expected a checkpoint directory (config.json + *.safetensors)")
    config = LFM2Config.from_pretrained(resolved)
    target_dtype = parse_dtype(dtype) or DTYPE_NAMES.get(config.torch_dtype, torch.float32)
    device = torch.device(device) if device is not None else torch.device("cpu")
    files = checkpoint_files(resolved)
    with torch.device("meta"):
        model = LFM2(config)
    expected = _expected_tensors(model)
    loaded: set[str] = set()
    unexpected: list[str] = []
    for name, st in iter_tensors(files):
        if name not in expected:
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # some exports write the tied head too; it equals the embedding
            unexpected.append(f"{name} (in {st.path.name})")
            continue
        param = expected[name]
        src_shape = st.entries[name][1]
        if tuple(src_shape) != tuple(param.shape):
            raise CheckpointError(f"{st.path}: tensor '{name}' has shape {list(src_shape)}, but the config "
                                  f"({resolved / 'config.json'}) implies {list(param.shape)}")
        tensor = torch.empty(param.shape, dtype=target_dtype)
        st.read(name, out=tensor)
        _assign(model, name, tensor.to(device) if device.type != "cpu" else tensor)
        loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected tensors: {', '.join(unexpected[:8])}"
                         + (" ..." if len(unexpected) > 8 else ""))
        raise CheckpointError(f"{resolved}: checkpoint does not match its config.json: " + "; ".join(parts))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.source_path = str(resolved)  # where tokenizer and generation config live
    return model.eval()


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


# ---- saving ----------------------------------------------------------------------------------
def save_model(model: LFM2, directory: str | os.PathLike, dtype: torch.dtype | str | None = None,
               max_shard_bytes: int | None = None) -> Path:
    """Write config.json and model.safetensors (or shards + index) in the Hugging Face layout."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(dtype)
    config = model.config
    if dtype is not None:
        config = config.copy(torch_dtype=str(dtype).replace("torch.", ""))
    config.save_pretrained(out)
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if not torch.is_floating_point(p):
            raise CheckpointError(f"cannot save tensor '{name}' of dtype {p.dtype}: dequantize the model first")
        t = p.detach().to("cpu", dtype=dtype or p.dtype).contiguous()
        tensors[name] = t
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
