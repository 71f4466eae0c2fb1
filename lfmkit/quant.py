"""Weight-only quantization: int8 (one scale per output channel) and int4 (one scale per group).

`quantize(model, "int8" | "int4" | "bf16" | "fp32")` swaps every linear layer and the tied
embedding/head of a loaded model in place. `load_quantized(path, mode)` does the same while
loading a checkpoint, tensor by tensor and in row chunks, so the float model is never held
whole (the 1.2B model in int4 loads in well under 1 GB). `random_quantized(config, mode)`
builds a random-weight model the same way, for benchmarks of the real shapes.

Formats (weights W [N, K], K a multiple of 32):
- int8: `qweight` int8 [N, K] in [-127, 127], `scales` float32 [N]; W ~ qweight * scales[:, None].
- int4 (K a multiple of 64): `qweight` uint8 [N, K/2]: in every block of 64 columns, byte i
  holds column i in its low nibble and column i+32 in its high nibble, each stored as q + 8
  with q in [-8, 7]; `scales` float16 [N, K/group]; the largest-magnitude weight of a group
  maps to -8 exactly (llama.cpp's Q4_0 rule); W ~ (nibble - 8) * scale. group = 32 by default
  (0.5625 bytes/weight, like Q4_0); the C++ kernels handle group 32, other sizes run in PyTorch.
A linear whose in_features does not fit (tiny test models) stays float.

Matrix-vector products (decode, small batches) run in our C++ kernels (qkernel.py), which
quantize the activations to int8 in blocks of 32 and use integer dot products. Larger inputs
(prefill) dequantize one weight to bfloat16 and run a bfloat16 GEMM. Without the kernels,
everything falls back to dequantize + `F.linear` in PyTorch.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import qkernel
from .config import LFM2Config
from .errors import ConfigError

MODES = ("fp32", "bf16", "int8", "int4")
SMALL_BATCH = 16          # rows up to which the matrix-vector kernels beat dequant + GEMM
CHUNK_ROWS = 128          # rows quantized at a time while loading (bounds temporary memory)
PREFILL_TILE_BYTES = 8 << 20   # bf16 weight rows expanded at a time for a prefill GEMM


def check_mode(mode: str | None) -> str:
    mode = (mode or "fp32").lower()
    aliases = {"float32": "fp32", "none": "fp32", "bfloat16": "bf16", "q8": "int8", "q4": "int4"}
    mode = aliases.get(mode, mode)
    if mode not in MODES:
        raise ConfigError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


# ---- quantizing tensors -----------------------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (qweight int8 [N, K], scales float32 [N])."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise symmetric int4 in the packed layout above: (qweight uint8, scales float16)."""
    n, k = w.shape
    if k % group_size or group_size % 32:
        raise ConfigError(f"int4 needs in_features ({k}) divisible by the group size ({group_size}), "
                          f"itself a multiple of 32")
    if k % 64:
        raise ConfigError(f"int4 needs in_features divisible by 64, got {k}")
    g = w.float().reshape(n, k // group_size, group_size)
    idx = g.abs().argmax(dim=-1, keepdim=True)
    extreme = torch.gather(g, -1, idx)                       # signed largest-magnitude value
    scales = (extreme / -8.0).squeeze(-1).to(torch.float16)
    s = scales.float()
    inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
    q = (torch.round(g * inv[..., None]).clamp_(-8, 7) + 8).to(torch.uint8).reshape(n, k // 64, 2, 32)
    packed = q[:, :, 0] | (q[:, :, 1] << 4)                 # [n, k/64, 32]
    return packed.reshape(n, k // 2).contiguous(), scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.float() * scales[:, None]).to(dtype)


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int = 32,
                    dtype=torch.float32) -> torch.Tensor:
    n, half = q.shape
    k = half * 2
    b = q.reshape(n, k // 64, 1, 32)
    nib = torch.cat((b & 15, b >> 4), dim=2).reshape(n, k).float() - 8.0
    return (nib.reshape(n, k // group_size, group_size) * scales.float()[..., None]).reshape(n, k).to(dtype)


def fits(in_features: int, bits: int, group_size: int = 32) -> bool:
    """Whether a linear with this input width can be quantized (else it stays float)."""
    if bits == 8:
        return in_features % 32 == 0
    return in_features % 64 == 0 and in_features % group_size == 0 and group_size % 32 == 0


_SCRATCH = threading.local()   # per thread: the kernels run without the GIL


def _scratch(m: int, k: int) -> tuple[int, int, int]:
    """Reused buffers for quantized activations (int8 values, block scales, block sums), one
    set per thread and shape, so models can run in several threads at once."""
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    bufs = cache.get((m, k))
    if bufs is None:
        tensors = (torch.empty(m * k, dtype=torch.int8), torch.empty(m * k // 32, dtype=torch.float32),
                   torch.empty(m * k // 32, dtype=torch.int32))
        bufs = cache[(m, k)] = (*(t.data_ptr() for t in tensors), tensors)
    return bufs[0], bufs[1], bufs[2]


# ---- modules -----------------------------------------------------------------------------------
class KernelSpec(NamedTuple):
    """What qkernel needs to multiply by one quantized weight (see csrc/kernels.cpp)."""

    w: int        # weight codes
    s: int        # scales
    wsum: int     # int8: weight sums per activation block, else 0
    K: int
    N: int
    bits: int
    ab: int       # activation block: int8 256 (or 32 for narrow widths), int4 32


class QuantLinear(nn.Module):
    """A bias-free linear layer with int8 or int4 weights; float activations in and out."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 32,
                 device=None):
        super().__init__()
        if bits not in (4, 8):
            raise ConfigError(f"QuantLinear supports 4 or 8 bits, not {bits}")
        if not fits(in_features, bits, group_size):
            raise ConfigError(f"int{bits} linears need in_features divisible by "
                              f"{64 if bits == 4 else 32} (and by group_size), got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        if bits == 8:
            self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        else:
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scales", torch.empty(out_features, in_features // group_size,
                                                       dtype=torch.float16, device=device))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bits: int, group_size: int = 32) -> "QuantLinear":
        mod = cls(weight.shape[1], weight.shape[0], bits, group_size)
        mod.set_weight(weight)
        return mod

    _fast = None   # cached kernel call (see _prepare)

    def set_weight(self, weight: torch.Tensor, rows: slice | None = None) -> None:
        """Quantize `weight` (float, all rows or the given row range) into this layer."""
        rows = rows or slice(0, self.out_features)
        q, s = quantize_int8(weight) if self.bits == 8 else quantize_int4(weight, self.group_size)
        self.qweight[rows].copy_(q)
        self.scales[rows].copy_(s)
        self.__dict__["_fast"] = None   # int8 kernels cache weight sums: recompute them
        self.__dict__.pop("_wsum", None)

    def dequantize(self, dtype=torch.float32, rows: slice | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """The float weight this layer multiplies by, [out_features, in_features] (or a range
        of its rows; bfloat16 can be written into a given buffer)."""
        lib = qkernel.load()
        if dtype == torch.bfloat16 and self._kernel_ok() and lib is not None:
            r0, r1 = (rows.start, rows.stop) if rows is not None else (0, self.out_features)
            if out is None:
                out = torch.empty(r1 - r0, self.in_features, dtype=torch.bfloat16)
            fn = lib.lfm_q8_dequant_bf16 if self.bits == 8 else lib.lfm_q4_dequant_bf16
            fn(self.qweight[r0:r1].data_ptr(), self.scales[r0:r1].data_ptr(), r1 - r0, self.in_features,
               out.data_ptr())
            return out
        q, s = (self.qweight, self.scales) if rows is None else (self.qweight[rows], self.scales[rows])
        return dequantize_int8(q, s, dtype) if self.bits == 8 else dequantize_int4(q, s, self.group_size, dtype)

    @property
    def weight(self) -> torch.Tensor:  # for code that inspects .weight (dtype, device, shape)
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.in_features, self.out_features
        m = x.numel() // k
        fast = self._fast
        if fast is None:
            fast = self._prepare()
        if not fast or x.device.type != "cpu":
            return F.linear(x, self.dequantize(x.dtype))
        if m > SMALL_BATCH:
            return self._prefill_linear(x)
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        xq, xs, xsum = _scratch(m, k)
        out = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
        fn, args = fast
        fn(x.data_ptr(), m, k, *args, n, out.data_ptr(), xq, xs, xsum)
        return out

    def _prefill_linear(self, x: torch.Tensor) -> torch.Tensor:
        """Many rows: a bf16 GEMM (AVX-512 BF16 / AMX via oneDNN) on the weights expanded a
        tile of rows at a time, so the float copy never exceeds PREFILL_TILE_BYTES."""
        k, n = self.in_features, self.out_features
        xb = x.reshape(-1, k).to(torch.bfloat16)
        tile = max(64, PREFILL_TILE_BYTES // (2 * k) // 64 * 64)
        if tile >= n:
            return F.linear(xb, self.dequantize(torch.bfloat16)).to(x.dtype).reshape(*x.shape[:-1], n)
        out = torch.empty(xb.shape[0], n, dtype=x.dtype)
        buf = torch.empty(tile, k, dtype=torch.bfloat16)
        for r0 in range(0, n, tile):
            r1 = min(n, r0 + tile)
            w = self.dequantize(torch.bfloat16, slice(r0, r1), buf[: r1 - r0])
            out[:, r0:r1] = F.linear(xb, w)
        return out.reshape(*x.shape[:-1], n)

    def _prepare(self):
        """(C function, its weight arguments) for the kernel path, or False."""
        spec = self.kernel_spec()
        if spec is None:
            fast = False
        elif self.bits == 4:
            fast = (qkernel.load().lfm_q4_linear, (spec.w, spec.s))
        else:
            fast = (qkernel.load().lfm_q8_linear, (spec.ab, spec.w, spec.s, spec.wsum))
        self.__dict__["_fast"] = fast
        return fast

    def kernel_spec(self) -> "KernelSpec | None":
        """Pointers and sizes for qkernel (None when the kernels cannot run this layer).

        int8 multiplies activations quantized in blocks of 256 values where the width allows
        (else 32); its kernel needs the weight sums per such block (see csrc/kernels.cpp)."""
        if qkernel.load() is None or not self._kernel_ok():
            return None
        wsum_ptr, ab = 0, 32
        if self.bits == 8:
            ab = 256 if self.in_features % 256 == 0 else 32
            wsum = self.__dict__.get("_wsum")
            if wsum is None or wsum.shape != (self.out_features, self.in_features // ab):
                wsum = self.qweight.view(self.out_features, -1, ab).sum(-1, dtype=torch.int32).contiguous()
                self.__dict__["_wsum"] = wsum   # kept with the layer, outside the state dict
            wsum_ptr = wsum.data_ptr()
        return KernelSpec(self.qweight.data_ptr(), self.scales.data_ptr(), wsum_ptr, self.in_features,
                          self.out_features, self.bits, ab)

    def _apply(self, fn, recurse=True):
        self.__dict__["_fast"] = None   # buffers may move: look the pointers up again
        return super()._apply(fn, recurse)

    def _kernel_ok(self) -> bool:
        return self.qweight.device.type == "cpu" and (self.bits == 8 or self.group_size == 32)

    def nbytes(self) -> int:
        return self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * self.scales.element_size()

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}{g}"


class QuantEmbedding(nn.Module):
    """Embedding lookup from a QuantLinear's table (shared with the tied head)."""

    def __init__(self, table: QuantLinear):
        super().__init__()
        self.table = table

    @property
    def weight(self) -> torch.Tensor:
        return self.table.dequantize()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.table
        flat = ids.reshape(-1)
        q, s = t.qweight[flat], t.scales[flat]
        rows = dequantize_int8(q, s) if t.bits == 8 else dequantize_int4(q, s, t.group_size)
        return rows.reshape(*ids.shape, t.in_features)


# ---- whole models ------------------------------------------------------------------------------
def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _bits(mode: str) -> int:
    return 8 if mode == "int8" else 4


# Linears that read the same input are fused into one matrix (fewer, larger kernel calls):
# the rows of the fused weight are the parts stacked in this order. Exact, since every scale
# belongs to one row.
FUSED = {"w13": ("w1", "w3"), "qkv": ("q_proj", "k_proj", "v_proj")}


def _fusion_groups(model: nn.Module) -> list[tuple[str, str, list[tuple[str, nn.Linear]]]]:
    """(parent module name, fused name, [(part name, linear), ...]) for every fusable group."""
    groups = []
    for pname, parent in model.named_modules():
        for fused, parts in FUSED.items():
            mods = [getattr(parent, p, None) for p in parts]
            if all(isinstance(m, nn.Linear) for m in mods):
                groups.append((pname, fused, list(zip(parts, mods))))
    return groups

def _install_fused(model: nn.Module, bits: int, group_size: int):
    """Replace each fusion group by one empty QuantLinear; yield (part name, part linear,
    fused QuantLinear, the part's row range) so the caller fills or maps the rows."""
    for pname, fused, parts in _fusion_groups(model):
        k = parts[0][1].in_features
        if not fits(k, bits, group_size):
            continue
        parent = model.get_submodule(pname)
        q = QuantLinear(k, sum(m.out_features for _, m in parts), bits, group_size)
        row = 0
        for name, lin in parts:
            yield f"{pname}.{name}", lin, q, slice(row, row + lin.out_features)
            row += lin.out_features
            delattr(parent, name)
        setattr(parent, fused, q)



def quantize(model: nn.Module, mode: str = "int8", group_size: int = 32) -> nn.Module:
    """Quantize a loaded LFM2 in place (every linear + the tied embedding/head); returns it.

    mode: "int8" (per-channel), "int4" (group-wise, `group_size` columns per scale), "bf16"
    (cast), or "fp32" (no change). The non-linear parameters (norms, conv filters) stay float32,
    and so do linears whose width the format cannot hold (see `fits`).
    """
    mode = check_mode(mode)
    if mode == "fp32":
        return model.float()
    if mode == "bf16":
        return model.to(torch.bfloat16)
    model.float()
    bits = _bits(mode)
    tied = getattr(model.config, "tie_word_embeddings", False)
    with torch.no_grad():
        for _, lin, q, rows in _install_fused(model, bits, group_size):
            q.set_weight(lin.weight, rows)
        for name in _linear_names(model):
            lin = model.get_submodule(name)
            if (tied and name == "lm_head") or not fits(lin.in_features, bits, group_size):
                continue
            _set_module(model, name, QuantLinear.from_float(lin.weight, bits, group_size))
        emb = model.model.embed_tokens
        if fits(emb.weight.shape[1], bits, group_size):
            table = QuantLinear.from_float(emb.weight, bits, group_size)
            model.model.embed_tokens = QuantEmbedding(table)
            if tied:
                model.lm_head = table
    model.quant_mode = mode
    _attach_fused_decode(model)
    return model


def _attach_fused_decode(model: nn.Module) -> None:
    from .decode_step import attach   # builds on this module

    attach(model)


def _skeleton(config: LFM2Config, mode: str, group_size: int) -> tuple[nn.Module, dict]:
    """An LFM2 in `mode` with empty quantized linears (real memory) and float parameters on
    meta, plus the map checkpoint tensor name -> (QuantLinear, row range) for loading."""
    from .model import LFM2

    with torch.device("meta"):
        model = LFM2(config)
    bits = _bits(mode)
    targets: dict[str, tuple[QuantLinear, slice]] = {}
    for name, _, q, rows in _install_fused(model, bits, group_size):
        targets[f"{name}.weight"] = (q, rows)
    for name in _linear_names(model):
        lin = model.get_submodule(name)
        if (config.tie_word_embeddings and name == "lm_head") or not fits(lin.in_features, bits, group_size):
            continue
        q = QuantLinear(lin.in_features, lin.out_features, bits, group_size)
        _set_module(model, name, q)
        targets[f"{name}.weight"] = (q, slice(0, lin.out_features))
    if fits(config.hidden_size, bits, group_size):
        table = QuantLinear(config.hidden_size, config.vocab_size, bits, group_size)
        model.model.embed_tokens = QuantEmbedding(table)
        targets["model.embed_tokens.weight"] = (table, slice(0, config.vocab_size))
        if config.tie_word_embeddings:
            model.lm_head = table
    model.quant_mode = mode
    _attach_fused_decode(model)
    return model, targets


def _assign_float(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, nn.Parameter(tensor, requires_grad=False))


def load_quantized(path: str | os.PathLike, mode: str, group_size: int = 32) -> nn.Module:
    """Load a safetensors checkpoint straight into int8/int4, a few thousand rows at a time."""
    from .checkpoint import checkpoint_files, iter_tensors, resolve_model_path
    from .errors import CheckpointError

    mode = check_mode(mode)
    resolved = resolve_model_path(path)
    if mode in ("fp32", "bf16") or not resolved.is_dir():
        from .checkpoint import load_model

        return quantize(load_model(resolved, dtype="float32" if mode == "fp32" else mode), mode, group_size)
    config = LFM2Config.from_pretrained(resolved)
    model, targets = _skeleton(config, mode, group_size)
    expected = {n for n, _ in model.named_parameters()} | set(targets)
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    loaded = set()
    for name, st in iter_tensors(checkpoint_files(resolved)):
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name not in expected:
            raise CheckpointError(f"{st.path}: unexpected tensor '{name}' for this config")
        dtype, shape, begin, end = st.entries[name]
        if name not in targets:
            tensor = st.read(name).float()
            want = tuple(model.get_parameter(name).shape)
            if tuple(tensor.shape) != want:
                raise CheckpointError(f"{st.path}: tensor '{name}' has shape {list(tensor.shape)}, "
                                      f"expected {list(want)}")
            _assign_float(model, name, tensor)
        else:
            qmod, rows = targets[name]
            if tuple(shape) != (rows.stop - rows.start, qmod.in_features):
                raise CheckpointError(f"{st.path}: tensor '{name}' has shape {list(shape)}, expected "
                                      f"{[rows.stop - rows.start, qmod.in_features]}")
            row_bytes = (end - begin) // shape[0]
            with open(st.path, "rb") as f:
                for r0 in range(0, shape[0], CHUNK_ROWS):
                    r1 = min(shape[0], r0 + CHUNK_ROWS)
                    buf = torch.empty(r1 - r0, shape[1], dtype=dtype)
                    f.seek(st.data_start + begin + r0 * row_bytes)
                    if f.readinto(memoryview(buf.view(-1).view(torch.uint8).numpy())) != buf.numel() * buf.element_size():
                        raise CheckpointError(f"{st.path}: tensor '{name}': file ended early")
                    qmod.set_weight(buf, slice(rows.start + r0, rows.start + r1))
        loaded.add(name)
    missing = sorted(expected - loaded)
    if missing:
        raise CheckpointError(f"{resolved}: missing tensors: {', '.join(missing[:8])}")
    model.source_path = str(resolved)
    _release_freed_memory()
    return model.eval()


def _release_freed_memory() -> None:
    """Hand the quantization temporaries back to the OS (glibc keeps freed heap otherwise)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def random_quantized(config: LFM2Config, mode: str, group_size: int = 32, seed: int = 0,
                     std: float = 0.02) -> nn.Module:
    """A random-weight model of `config` built directly in `mode` (no full float copy)."""
    mode = check_mode(mode)
    if mode in ("fp32", "bf16"):
        from .model import LFM2

        return LFM2.from_config(config, dtype=torch.float32 if mode == "fp32" else torch.bfloat16, seed=seed)
    g = torch.Generator().manual_seed(seed)
    model, _ = _skeleton(config, mode, group_size)
    for name, p in list(model.named_parameters()):
        t = torch.ones(p.shape) if name.endswith("norm.weight") else torch.randn(p.shape, generator=g) * std
        _assign_float(model, name, t)
    for name, b in list(model.named_buffers()):
        if b.is_meta:  # only float buffers could be meta; quantized ones are real
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, torch.zeros(b.shape, dtype=b.dtype))
    seen = set()
    for mod in model.modules():
        if isinstance(mod, QuantLinear) and id(mod) not in seen:
            seen.add(id(mod))
            for r0 in range(0, mod.out_features, CHUNK_ROWS):
                r1 = min(mod.out_features, r0 + CHUNK_ROWS)
                mod.set_weight(torch.randn(r1 - r0, mod.in_features, generator=g) * std, slice(r0, r1))
    _release_freed_memory()
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights the model holds (each shared tensor once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen and not t.is_meta:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def logit_agreement(reference: nn.Module, candidate: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity and top-1 agreement of the two models' logits over `ids` [1, T]."""
    a = reference(ids).float().reshape(-1, reference.config.vocab_size)
    b = candidate(ids).float().reshape(-1, reference.config.vocab_size)
    cos = F.cosine_similarity(a, b, dim=-1).mean().item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return {"cosine": cos, "top1_agreement": top1, "tokens": int(a.shape[0])}


__all__ = ["quantize", "load_quantized", "random_quantized", "QuantLinear", "QuantEmbedding", "MODES",
           "quantize_int8", "quantize_int4", "dequantize_int8", "dequantize_int4", "logit_agreement",
           "weight_bytes", "check_mode"]
