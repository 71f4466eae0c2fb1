"""Inference fast paths, swapped in for the reference modules by class.

Each class here subclasses a reference module (same parameters, same Hugging Face names) and is
installed by `lfmkit.fast.optimize`, which reassigns `module.__class__`. A fast forward takes its
kernel path only when no gradient is needed (grad mode off, or nothing involved requires grad)
and the tensors fit (contiguous float32 on the CPU, few token rows); otherwise it runs the
reference forward, so a model with fast paths installed still trains correctly.

- `FastRMSNorm`: one C loop for up to FUSED_MAX_ROWS token rows (decode, small batches).
- `FastShortConv`: the decode step (shift the window, dot, gate) in one C loop.
- `FastFeedForward`: w1 and w3 as one quantized matrix when they are stored back to back, the
  SiLU gate in one C loop, or in place (no second [rows, ff] temporary) for larger inputs.
- `FastAttention`: q, k and v as one quantized matrix when they are stored back to back.
- `FastLinear` (float_linear.py): float32 inference products through oneDNN instead of MKL.
- `FastLFM2`: single-token steps of a quantized model through the fused decode step
  (decode_step.py), one C call per token.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import kernels
from ..model.lfm2 import LFM2, Attention, FeedForward, Linear, RMSNorm, ShortConv, StepContext
from ..model.state import LFM2State
from ..quant.linear import QuantLinear, fused_view, rows_of
from .float_linear import FastLinear

FUSED_MAX_ROWS = 64  # up to this many token rows, small ops run in the fused C loops


def no_grad_needed(*tensors: torch.Tensor | None) -> bool:
    """True when autograd records nothing for an op on these tensors."""
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


def _lib(*tensors: torch.Tensor | None):
    """The kernel library if every tensor is a contiguous float32 CPU tensor, else None."""
    for t in tensors:
        if t is not None and (t.dtype is not torch.float32 or not t.is_contiguous() or t.device.type != "cpu"):
            return None
    return kernels.load()


class FastRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not no_grad_needed(x, self.weight):
            return super().forward(x)
        rows = x.numel() // x.shape[-1]
        lib = _lib(x, self.weight) if rows <= FUSED_MAX_ROWS else None
        if lib is None:
            if x.dtype == self.weight.dtype == torch.float32:  # one op, the weight folded in
                return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
            return super().forward(x)
        out = torch.empty_like(x)
        lib.lfm_rmsnorm(x.data_ptr(), self.weight.data_ptr(), rows, x.shape[-1], self.eps, out.data_ptr())
        return out


class FastShortConv(ShortConv):
    def mix(self, bcx: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        state, weight, bias = ctx.state, self.conv.weight, self.conv.bias
        if state is None or bcx.shape[1] != 1 or ctx.token_mask is not None or not no_grad_needed(bcx, weight, bias):
            return super().mix(bcx, ctx)
        window = state.conv[self.layer_idx]
        lib = _lib(bcx, window, weight, bias)
        if lib is None:
            return super().mix(bcx, ctx)
        b, _, h3 = bcx.shape
        y = torch.empty(b, 1, h3 // 3, dtype=bcx.dtype)
        lib.lfm_conv_step(
            bcx.data_ptr(),
            h3,
            window.data_ptr(),
            weight.data_ptr(),
            bias.data_ptr() if bias is not None else None,
            b,
            h3 // 3,
            self.kernel,
            y.data_ptr(),
        )
        return y


def _cached_fused(module: torch.nn.Module, parts: list[torch.nn.Module]) -> QuantLinear | None:
    """fused_view(parts), cached on `module` while the parts keep their memory."""
    key = tuple((id(p), p.qweight.data_ptr()) if isinstance(p, QuantLinear) else (id(p), 0) for p in parts)
    cached = module.__dict__.get("_fused")
    if cached is None or cached[0] != key:
        cached = (key, fused_view(parts))
        module.__dict__["_fused"] = cached
    return cached[1]


class FastFeedForward(FeedForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not no_grad_needed(x, *self.parameters()):  # adapters on w1/w3 train: the reference
            return super().forward(x)
        w13 = _cached_fused(self, [self.w1, self.w3])
        if w13 is None:
            # inference: gate and product in w1's output buffer (a 256-row prefill of the 1.2B
            # model would otherwise hold two more [256, 8192] float32 temporaries)
            return self.w2(F.silu(self.w1(x), inplace=True).mul_(self.w3(x)))
        gu = w13(x)
        rows, f = gu.numel() // gu.shape[-1], gu.shape[-1] // 2
        lib = _lib(gu) if rows <= FUSED_MAX_ROWS else None
        if lib is not None:
            h = torch.empty(*gu.shape[:-1], f, dtype=gu.dtype)
            lib.lfm_silu_mul(gu.data_ptr(), rows, f, h.data_ptr())
            return self.w2(h)
        gate, up = gu.chunk(2, dim=-1)
        return self.w2(F.silu(gate, inplace=True).mul_(up))

    def fused(self) -> QuantLinear | None:
        """w1 and w3 as one quantized matrix, or None."""
        return _cached_fused(self, [self.w1, self.w3])


class FastAttention(Attention):
    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self.fused()
        if qkv is None:
            return super().project(x)
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        return qkv(x).split((nq, nk, nk), dim=-1)

    def fused(self) -> QuantLinear | None:
        """q, k and v as one quantized matrix, or None."""
        return _cached_fused(self, [self.q_proj, self.k_proj, self.v_proj])


class FastLFM2(LFM2):
    """An LFM2 whose single-token steps go through the fused decode step when it can take them
    (`self.fused_decode`, set by `optimize`); every other call is the reference forward."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: LFM2State | None = None,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        fused = self.__dict__.get("fused_decode")
        if (
            fused is not None
            and state is not None
            and attention_mask is None
            and not return_hidden
            and document_ids is None
            and input_ids.dim() == 2
            and input_ids.shape[1] == 1
            and state.batch_size == input_ids.shape[0]
            and not torch.is_grad_enabled()
        ):
            logits = fused(input_ids, state)
            if logits is not None:
                return logits
        # In inference, quantized products choose their path per row (a training forward over a
        # quantized base, QLoRA, keeps one path for the whole batch).
        rows = contextlib.nullcontext()
        if input_ids.dim() == 2 and document_ids is None and not torch.is_grad_enabled():
            rows = rows_of(*input_ids.shape, None if attention_mask is None else attention_mask.to(torch.bool))
        with rows:
            return super().forward(
                input_ids,
                attention_mask=attention_mask,
                state=state,
                logits_to_keep=logits_to_keep,
                return_hidden=return_hidden,
                document_ids=document_ids,
            )

    def _apply(self, fn, recurse=True):
        fused = self.__dict__.get("fused_decode")
        if fused is not None:
            fused.reset()  # tensors may have moved or changed dtype: gather the pointers again
        return super()._apply(fn, recurse)


SWAPS = {
    RMSNorm: FastRMSNorm,
    ShortConv: FastShortConv,
    FeedForward: FastFeedForward,
    Attention: FastAttention,
    LFM2: FastLFM2,
    Linear: FastLinear,
}
REFERENCE = {fast: ref for ref, fast in SWAPS.items()}
