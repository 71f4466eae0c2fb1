"""The fused decode step: one C call runs a whole token through a quantized LFM2.

At batch 1 the weights stream through in a few milliseconds, and driving ~65 kernel calls
and ~300 small PyTorch ops from Python used to cost about as much again (see BENCHMARKS.md).
`FusedDecode` gathers, once, every pointer the step needs (quantized weights, norms, conv
filters) into C structs, and `csrc/decode_step.cpp` runs the layers in one OpenMP region.

`lfmkit.fast.optimize` attaches a `FusedDecode` to the model as `model.fused_decode`;
`FastLFM2.forward` hands it single-token steps against a state with no padding, and it
returns None (the module path runs instead) whenever it cannot take one: no kernels, a float
or biased layer, a state on another device or dtype, or `LFMKIT_NO_FUSED_DECODE=1`. Results
equal the module path up to float rounding.
"""

from __future__ import annotations

import ctypes
import os
import threading

import torch
from torch import nn

from .. import kernels
from ..model.state import LFM2State
from ..quant.linear import KernelSpec, QuantEmbedding, QuantLinear, fused_view

_p, _i64 = ctypes.c_void_p, ctypes.c_int64


class _Lora(ctypes.Structure):
    """A LoRA adapter on rows [row0, row0 + rows) of a linear's output (csrc/decode_step.cpp)."""

    _fields_ = [("A", _p), ("B", _p), ("r", _i64), ("row0", _i64), ("rows", _i64), ("scale", ctypes.c_float)]


class _Linear(ctypes.Structure):
    _fields_ = [
        ("w", _p),
        ("s", _p),
        ("wsum", _p),
        ("K", _i64),
        ("N", _i64),
        ("bits", _i64),
        ("ab", _i64),
        ("lora", ctypes.POINTER(_Lora)),  # NULL: no adapters (FusedDecode.slot's subclasses add them)
        ("n_lora", _i64),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("is_attn", _i64),
        ("op_norm", _p),
        ("ffn_norm", _p),
        ("mix", _Linear),
        ("out", _Linear),
        ("w13", _Linear),
        ("w2", _Linear),
        ("conv_w", _p),
        ("q_norm", _p),
        ("k_norm", _p),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("n_layers", _i64),
        ("hidden", _i64),
        ("ff", _i64),
        ("n_heads", _i64),
        ("n_kv", _i64),
        ("head_dim", _i64),
        ("conv_L", _i64),
        ("vocab", _i64),
        ("eps", ctypes.c_float),
        ("layers", ctypes.POINTER(_Layer)),
        ("final_norm", _p),
        ("embed", _Linear),
        ("head", _Linear),
    ]


class _StateView(ctypes.Structure):
    _fields_ = [
        ("a", ctypes.POINTER(_p)),
        ("b", ctypes.POINTER(_p)),
        ("max_len", _i64),
        ("lengths", _p),
        ("positions", _p),
        ("valid", _p),
    ]


class Unsupported(Exception):
    """This model cannot take the fused step (the module path runs instead)."""


def _linear(mod: nn.Module | None, keep: list) -> _Linear:
    spec: KernelSpec | None = mod.kernel_spec() if isinstance(mod, QuantLinear) else None
    if spec is None:
        raise Unsupported(f"{type(mod).__name__} is not a kernel-backed quantized linear")
    keep.append(mod)  # the plan points into its buffers
    keep.append(mod.__dict__.get("_wsum"))
    return _Linear(*spec)


def _f32(t: torch.Tensor | None) -> int:
    if t is None or t.dtype != torch.float32 or not t.is_contiguous() or t.device.type != "cpu":
        raise Unsupported("a norm or conv filter is not a contiguous float32 CPU tensor")
    return t.data_ptr()


class FusedDecode:
    """Single-token steps of one quantized model in one C call (None where it cannot)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._plan: tuple | None = None  # (C model struct, the objects it points into)
        self._local = threading.local()  # scratch per thread: the C step runs without the GIL
        self.disabled = os.environ.get("LFMKIT_NO_FUSED_DECODE", "0") not in ("0", "")
        self.reason: str | None = "disabled by LFMKIT_NO_FUSED_DECODE" if self.disabled else None

    def reset(self) -> None:
        """Forget the gathered pointers (the model's tensors moved or changed dtype)."""
        self._plan, self._local = None, threading.local()
        if not self.disabled:
            self.reason = None

    def available(self) -> bool:
        return self._build() is not None

    # ---- building ------------------------------------------------------------------------
    def _build(self):
        if self._plan is None and self.reason is None:
            try:
                self._plan = self._gather()
            except Unsupported as exc:
                self.reason = str(exc)
        return self._plan

    def _gather(self):
        lib = kernels.load()
        if lib is None:
            raise Unsupported(f"no kernels: {kernels.build_error}")
        m = self.model
        cfg = m.config
        if cfg.conv_bias or cfg.head_size % 2:
            raise Unsupported("conv_bias or an odd head_dim is not supported by the fused step")
        layers = (_Layer * cfg.num_hidden_layers)()
        keep: list = []
        ff = None
        for i, block in enumerate(m.model.layers):
            ly = layers[i]
            ly.op_norm, ly.ffn_norm = _f32(block.operator_norm.weight), _f32(block.ffn_norm.weight)
            fwd = block.feed_forward
            ly.w13, ly.w2 = self.slot([fwd.w1, fwd.w3], keep), self.slot([fwd.w2], keep)
            ff = ly.w13.N // 2
            if block.is_attention:
                att = block.self_attn
                ly.is_attn = 1
                ly.mix = self.slot([att.q_proj, att.k_proj, att.v_proj], keep)
                ly.out = self.slot([att.out_proj], keep)
                ly.q_norm, ly.k_norm = _f32(att.q_layernorm.weight), _f32(att.k_layernorm.weight)
            else:
                conv = block.conv
                ly.mix, ly.out = self.slot([conv.in_proj], keep), self.slot([conv.out_proj], keep)
                ly.conv_w = _f32(conv.conv.weight)
        emb = m.model.embed_tokens
        if not isinstance(emb, QuantEmbedding):
            raise Unsupported("the embedding is not quantized")
        cm = _Model(
            cfg.num_hidden_layers,
            cfg.hidden_size,
            ff,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_size,
            cfg.conv_L_cache,
            cfg.vocab_size,
            cfg.norm_eps,
            layers,
            _f32(m.model.embedding_norm.weight),
            _linear(emb.table, keep),
            self.slot([m.lm_head], keep),
        )
        return cm, (layers, keep), lib

    def slot(self, parts: list[nn.Module], keep: list) -> _Linear:
        """The C linear for one product of the step: `parts` are the modules whose outputs it
        computes side by side (q/k/v, w1/w3: stored back to back, one quantized matrix; else one
        module). Raises Unsupported for anything but kernel-backed quantized layers."""
        return _linear(parts[0] if len(parts) == 1 else fused_view(parts), keep)

    # ---- running -------------------------------------------------------------------------
    def __call__(
        self, input_ids: torch.Tensor, state: LFM2State, conv_columns: list[torch.Tensor | None] | None = None
    ) -> torch.Tensor | None:
        """Logits [B, T, vocab] for input_ids [B, T] at each row's next T slots, or None.

        T > 1 computes each token exactly as T single-token steps would (speculative decoding
        verifies drafts this way). `conv_columns`: per layer, None for attention layers, else a
        float32 [B, T, hidden] tensor that receives the value each token shifted into the conv
        window (so a caller can restore the window after any prefix of the T tokens)."""
        plan = self._build()
        if (
            plan is None
            or state.dtype != torch.float32
            or state.device.type != "cpu"
            or input_ids.device.type != "cpu"
            or not state.padding_free()
        ):
            return None
        cm, _, lib = plan
        b, t, s = state.batch_size, input_ids.shape[1], state.max_length
        state.check_room(t)
        ids = input_ids.reshape(b * t).to(torch.int64).contiguous()
        cos, sin = self.model._rope_cache(state.max_filled() + t)
        view = self._state_view(state)
        if view is None:
            return None
        scratches = self._local.__dict__.setdefault("scratch", {})
        scratch = scratches.get((b * t, s))
        if scratch is None:
            n = lib.lfm_decode_scratch_bytes(ctypes.byref(cm), _i64(b * t), _i64(s))
            scratch = scratches[(b * t, s)] = torch.empty(n, dtype=torch.uint8)
        logits = torch.empty(b, t, self.model.config.vocab_size, dtype=torch.float32)
        cols = None
        if conv_columns is not None:
            cols = (_p * len(conv_columns))(*[c.data_ptr() if c is not None else 0 for c in conv_columns])
        lib.lfm_decode_tokens(
            ctypes.byref(cm),
            ctypes.byref(view[0]),
            _i64(b),
            _i64(t),
            ids.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            scratch.data_ptr(),
            logits.data_ptr(),
            cols,
        )
        state.counted_externally(t)
        return logits

    def _state_view(self, state: LFM2State):
        """The C view of a state's buffers, cached on the state object (it never reallocates);
        None for buffers the C code cannot index (not contiguous)."""
        first = state.conv[0] if state.conv[0] is not None else state.keys[0]
        key = (id(self), first.data_ptr(), state.lengths.data_ptr(), state.valid.data_ptr(), state.max_length)
        cached = state.__dict__.get("_fused_view")  # clones and row views copy it: check the key
        if cached is not None and cached[0] == key:
            return cached[1]
        for t in (*state.conv, *state.keys, *state.values, state.lengths, state.positions, state.valid):
            if t is not None and not t.is_contiguous():
                return None
        n = len(state.conv)
        a = (_p * n)(*[(c if c is not None else k).data_ptr() for c, k in zip(state.conv, state.keys)])
        bv = (_p * n)(*[v.data_ptr() if v is not None else 0 for v in state.values])
        view = (
            _StateView(
                ctypes.cast(a, ctypes.POINTER(_p)),
                ctypes.cast(bv, ctypes.POINTER(_p)),
                state.max_length,
                state.lengths.data_ptr(),
                state.positions.data_ptr(),
                state.valid.data_ptr(),
            ),
            a,
            bv,
        )
        state.__dict__["_fused_view"] = (key, view)
        return view


def attach(model: nn.Module) -> nn.Module:
    """Give a quantized model its fused decode step (`model.fused_decode`)."""
    model.__dict__["fused_decode"] = FusedDecode(model)
    return model


__all__ = ["FusedDecode", "Unsupported", "attach"]
