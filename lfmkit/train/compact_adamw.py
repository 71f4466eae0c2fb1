"""AdamW in less memory: block-wise 8-bit moments, and bfloat16 weights without float32 masters.

`CompactAdamW(params, lr, betas, eps, weight_decay, eight_bit=True)` is torch's AdamW (decoupled
weight decay, bias-corrected moments) with two savings, each a well-known technique:

- `eight_bit`: both moments are stored block-wise in 8 bits (Dettmers et al. 2022, "8-bit
  Optimizers via Block-wise Quantization"; `blockwise.py`): 2 bytes per parameter for the two
  instead of 8. Tensors under `MIN_8BIT_SIZE` values (norm weights, biases: bitsandbytes' and
  torchao's threshold) keep float32 moments; they are a negligible share of the memory and the
  most sensitive to rounding.
- bfloat16 parameters are updated with Kahan-compensated summation (Zamirai et al. 2020,
  "Revisiting BFloat16 Training"): a bfloat16 compensation buffer per weight carries what
  rounding the updated weight to bfloat16 lost into the next step, so an update far below half
  a bfloat16 ulp still accumulates. 2 bytes per parameter instead of a 4-byte float32 master.
  Float32 parameters are updated as torch's AdamW updates them.

Each parameter is stepped on its own, in one pass over its values (the C++ kernel
`lfm_adamw_step`, lfmkit/kernels/csrc/optim.cpp, threads over blocks of 256), so the step makes
no float32 temporary of the model or even of one tensor; each gradient is released as soon as
its parameter has been stepped. Without the kernels (no compiler, LFMKIT_NO_KERNELS=1) the same
arithmetic runs in PyTorch, a chunk of `CHUNK` values at a time.

State per parameter: `step`, `exp_avg` and `exp_avg_sq` (uint8 codes shaped like the parameter,
or float32), their block scales `exp_avg_scale` and `exp_avg_sq_scale` (float32, 8-bit only) and
`compensation` (bfloat16 parameters only). `state_dict()` / `load_state_dict()` keep every dtype,
so a checkpoint restores the state bit for bit.
"""

from __future__ import annotations

import ctypes
import math

import torch

from ..kernels import load as load_kernels
from .blockwise import BLOCK, bucket_table, dequantize, dynamic_map, midpoints, quantize

MIN_8BIT_SIZE = 4096
CHUNK = 1 << 20  # values per piece of the PyTorch fallback (a multiple of BLOCK)


class CompactAdamW(torch.optim.Optimizer):
    """AdamW with optionally 8-bit moments; bfloat16 parameters get Kahan compensation."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, eight_bit: bool = True):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.eight_bit = eight_bit
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype not in (torch.float32, torch.bfloat16):
                    raise TypeError(f"CompactAdamW steps float32 or bfloat16 parameters, not {p.dtype}")

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        state["step"] = 0
        if self.eight_bit and p.numel() >= MIN_8BIT_SIZE:
            blocks = -(-p.numel() // BLOCK)
            for name in ("exp_avg", "exp_avg_sq"):
                state[name] = torch.zeros_like(p, dtype=torch.uint8)
                state[f"{name}_scale"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        else:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        if p.dtype == torch.bfloat16:
            state["compensation"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lib = load_kernels()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p] if self.state[p] else self._init_state(p)
                state["step"] += 1
                hyper = dict(  # in lfm_adamw_step's argument order
                    lr=float(group["lr"]),
                    one_minus_beta1=1 - beta1,
                    beta2=beta2,
                    one_minus_beta2=1 - beta2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    step_size=float(group["lr"]) / (1 - beta1 ** state["step"]),
                    bias2_sqrt=math.sqrt(1 - beta2 ** state["step"]),
                )
                grad = p.grad.contiguous()
                if lib is not None and p.device.type == "cpu" and p.is_contiguous():
                    _kernel_step(lib, p, grad, state, hyper)
                else:
                    reference_step(p, grad, state, **hyper)
                p.grad = None  # consumed: its memory is free for the next parameter's work
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading, then the saved state tensors in their own dtypes (torch casts
        floating state to the parameter's dtype, which would round float32 moments and scales
        of bfloat16 parameters)."""
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, saved in state_dict["state"].items():
            p = params[int(i)]
            for k, v in saved.items():
                if torch.is_tensor(v):
                    self.state[p][k] = v.to(device=p.device, copy=True)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@torch.no_grad()
def _kernel_step(lib: ctypes.CDLL, p: torch.Tensor, grad: torch.Tensor, state: dict, hyper: dict) -> None:
    tables = _kernel_tables()
    lib.lfm_adamw_step(
        p.data_ptr(),
        int(p.dtype == torch.bfloat16),
        _ptr(state.get("compensation")),
        grad.data_ptr(),
        int(grad.dtype == torch.bfloat16),
        state["exp_avg"].data_ptr(),
        state["exp_avg_sq"].data_ptr(),
        _ptr(state.get("exp_avg_scale")),
        _ptr(state.get("exp_avg_sq_scale")),
        p.numel(),
        *(t.data_ptr() for t in tables),
        *(ctypes.c_float(v) for v in hyper.values()),
    )


_TABLES: tuple[torch.Tensor, ...] | None = None


def _kernel_tables() -> tuple[torch.Tensor, ...]:
    """(signed map, its midpoints, its bucket table, the unsigned three), built once and kept
    alive for the kernel; the tables get one padding entry (the kernel's vector gather reads 4
    bytes at an entry)."""
    global _TABLES
    if _TABLES is None:
        _TABLES = tuple(
            t
            for signed in (True, False)
            for t in (
                dynamic_map(signed),
                midpoints(signed),
                torch.cat([bucket_table(signed), torch.zeros(1, dtype=torch.int16)]),
            )
        )
    return _TABLES


@torch.no_grad()
def reference_step(
    p: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    lr: float,
    one_minus_beta1: float,
    beta2: float,
    one_minus_beta2: float,
    eps: float,
    weight_decay: float,
    step_size: float,
    bias2_sqrt: float,
) -> None:
    """The kernel's arithmetic in PyTorch, CHUNK values at a time (the fallback, and the
    definition the kernel is tested against)."""
    flat_p, flat_g = p.view(-1), grad.reshape(-1)
    comp = state.get("compensation")
    quantized = "exp_avg_scale" in state
    for start in range(0, p.numel(), CHUNK):
        part = slice(start, start + CHUNK)
        blocks = slice(start // BLOCK, -(-(start + CHUNK) // BLOCK))
        g = flat_g[part].float()
        if quantized:
            m = dequantize(state["exp_avg"].view(-1)[part], state["exp_avg_scale"][blocks], signed=True)
            v = dequantize(state["exp_avg_sq"].view(-1)[part], state["exp_avg_sq_scale"][blocks], signed=False)
        else:
            m, v = state["exp_avg"].view(-1)[part], state["exp_avg_sq"].view(-1)[part]
        m = m + one_minus_beta1 * (g - m)
        v = beta2 * v + one_minus_beta2 * g * g
        adam = step_size * (m / (v.sqrt() * (1 / bias2_sqrt) + eps))
        if comp is None:
            flat_p[part] = flat_p[part] * (1 - lr * weight_decay) - adam
        else:
            w, c = flat_p[part].float(), comp.view(-1)[part].float()
            u = c - lr * weight_decay * (w + c) - adam
            t = (w + u).to(torch.bfloat16)
            flat_p[part] = t
            comp.view(-1)[part] = (u - (t.float() - w)).to(torch.bfloat16)
        if quantized:
            for name, value, signed in (("exp_avg", m, True), ("exp_avg_sq", v, False)):
                codes, scales = quantize(value, signed)
                state[name].view(-1)[part] = codes
                state[f"{name}_scale"][blocks] = scales
        else:
            state["exp_avg"].view(-1)[part] = m
            state["exp_avg_sq"].view(-1)[part] = v


__all__ = ["CompactAdamW", "MIN_8BIT_SIZE", "reference_step"]
