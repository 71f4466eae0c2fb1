"""The merge methods, one tensor at a time: linear, SLERP, task arithmetic, TIES, DARE, Model Stock.

Each method takes the same-named tensor of every input model (already in the working dtype) and
returns the merged tensor. The arithmetic follows mergekit 0.1.5 operation for operation — the
same working dtypes (float32 accumulation for linear and SLERP; the inputs' own dtype for the
task-vector methods and Model Stock), the same order of sums, the same tie-breaking sort — so a
merge equals mergekit's bit for bit; `tests/test_merge.py` checks that against mergekit itself.

`METHODS` describes each method for the config reader: its parameters (name, type, scope and
default, as mergekit declares them), whether it needs a base model, and how many inputs it takes.

DARE's random drop draws its masks from the `generator` it is given; the merge driver seeds one
per tensor (see `lfmkit/train/merge.py`), so a merge is reproducible whatever order it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

REQUIRED = object()  # a parameter with no default
SLERP_CHUNK = 1024 * 1024  # elements per chunk: bounds SLERP's float32 scratch on a big tensor
DOT_THRESHOLD = 0.9995  # |cos| above this: (anti)parallel, SLERP falls back to linear


@dataclass(frozen=True)
class Param:
    """One merge parameter. scope: 'shared' (one value per tensor, from the top-level or slice
    `parameters`), 'input' (one per input model) or 'non_base' (one per input but the base)."""

    name: str
    kind: type  # float or bool
    scope: str
    default: object = REQUIRED


@dataclass(frozen=True)
class Method:
    """A merge method: `run(tensors, base_index, params, generator)` merges one tensor's inputs
    (listed in config order); per-input parameters come as lists aligned with their inputs."""

    name: str
    params: tuple[Param, ...]
    run: Callable[..., torch.Tensor]
    needs_base: bool
    min_inputs: int = 1
    max_inputs: int | None = None
    random: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


# ---- the arithmetic ----------------------------------------------------------------------------
def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def linear(tensors: list[torch.Tensor], weights: list[float], normalize: bool = True) -> torch.Tensor:
    """The weighted average sum(w_i x_i) / sum(w_i) ("model soups", Wortsman et al. 2022),
    accumulated in float32; without `normalize` the plain weighted sum."""
    first = tensors[0]
    dtype = _accumulation_dtype(first)
    w = torch.tensor([weights], dtype=dtype)  # [1, inputs], as mergekit batches it
    out = torch.zeros_like(first, dtype=dtype)
    for x, c in zip(tensors, w.unbind(1)):
        out.addcmul_(x, c.reshape(()))
    if normalize:
        out.div_(w.sum(dim=1).reshape(()))
    return out.to(first.dtype)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the whole flattened tensor from v0 (t=0) to v1 (t=1):
    sin((1-t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1, θ the angle between them (Shoemake 1985), linear
    when they are nearly parallel. Float32 math in chunks of SLERP_CHUNK elements; the norms are
    norms of the chunks' norms, as mergekit computes them."""
    dtype = _accumulation_dtype(v0)
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    tt = torch.tensor([t], dtype=dtype).reshape(-1, 1)
    chunks = [slice(s, s + SLERP_CHUNK) for s in range(0, a.shape[1], SLERP_CHUNK)]

    def norm(x: torch.Tensor) -> torch.Tensor:
        parts = [torch.linalg.vector_norm(x[:, c].to(dtype), dim=1, keepdim=True) for c in chunks]
        n = torch.linalg.vector_norm(torch.stack(parts), dim=0)
        return torch.where(n > eps, n, 1)

    norm_a, norm_b = norm(a), norm(b)
    dot = (
        torch.stack(
            [((a[:, c].to(dtype) / norm_a) * (b[:, c].to(dtype) / norm_b)).sum(dim=1, keepdim=True) for c in chunks]
        )
        .sum(dim=0)
        .clamp(-1, 1)
    )
    parallel = dot.abs() > DOT_THRESHOLD
    theta = torch.acos(torch.where(parallel, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(parallel, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(parallel, tt, torch.sin(tt * theta) / sin_theta)
    out = torch.empty_like(a)
    for c in chunks:
        out[:, c] = coef_a * a[:, c].to(dtype) + coef_b * b[:, c].to(dtype)
    return out.reshape(v0.shape)


def _masked(delta: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """delta * mask; with `rescale`, scaled back to delta's L1 norm (DARE's 1/density rescaling,
    measured rather than assumed)."""
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def keep_largest(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """TIES' trim: keep the `density` fraction of entries largest in magnitude (at least one)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return _masked(delta, mask.reshape_as(delta), rescale)


def random_drop(delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's drop (Yu et al. 2023): keep each entry with probability `density` (one Bernoulli
    draw per entry from `generator`, in float32, or bfloat16 for bfloat16 deltas)."""
    if density >= 1:
        return delta
    work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    return _masked(delta.to(work), mask, rescale).to(delta.dtype)


def sign_agreement(deltas: torch.Tensor) -> torch.Tensor:
    """TIES' elect step: True where a model's (weighted) delta has the sign of the summed deltas
    (ties of the sum count as positive)."""
    sign = deltas.sign().to(torch.int8)
    majority = (deltas.sum(dim=0) >= 0).to(torch.int8) * 2 - 1
    return sign == majority


def task_vectors(
    base: torch.Tensor,
    others: list[torch.Tensor],
    weights: list[float],
    densities: list[float],
    *,
    sparsify: str | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    lam: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """base + lam * sum_i w_i * trim(x_i - base), the family of task arithmetic (Ilharco et al.
    2022), TIES (Yadav et al. 2023; trim = keep_largest, plus the sign election) and DARE
    (trim = random_drop). With `normalize` the sum is divided by the weights that took part."""
    if not others:
        return base
    deltas = base.new_empty((len(others), *base.shape))
    for i, x in enumerate(others):
        delta = x - base
        if sparsify == "magnitude":
            delta = keep_largest(delta, densities[i], rescale)
        elif sparsify == "random":
            delta = random_drop(delta, densities[i], rescale, generator)
        deltas[i] = delta
        del delta
    w = torch.tensor(weights, dtype=deltas.dtype).reshape(-1, *([1] * base.dim()))
    deltas.mul_(w)
    if consensus:
        mask = sign_agreement(deltas)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return (base + mixed).to(base.dtype)


def model_stock(base: torch.Tensor, others: list[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Model Stock (Jang et al. 2024): the average of the fine-tunes pulled toward the base by
    t = N cos θ / (1 + (N - 1) cos θ), cos θ the mean pairwise cosine of their deltas (per row
    with `filter_wise`); where the denominator vanishes the base is kept."""
    shape = base.shape
    if filter_wise:
        w0, ws = (base.unsqueeze(0), [w.unsqueeze(0) for w in others]) if base.dim() == 1 else (base, others)
    else:
        w0, ws = base.reshape(-1), [w.reshape(-1) for w in others]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(
        singular, torch.zeros_like(cos), (n * cos) / torch.where(singular, torch.ones_like(denominator), denominator)
    )
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(shape)


# ---- the methods as the config names them ------------------------------------------------------
def _split(tensors: list[torch.Tensor], base_index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return tensors[base_index], [t for i, t in enumerate(tensors) if i != base_index]


def _run_linear(tensors, base_index, p, generator):
    return linear(tensors, p["weight"], p["normalize"])


def _run_slerp(tensors, base_index, p, generator):
    base, (other,) = _split(tensors, base_index)
    return slerp(p["t"], base, other)


def _run_task_vectors(tensors, base_index, p, generator, *, sparsify, consensus):
    base, others = _split(tensors, base_index)
    return task_vectors(
        base,
        others,
        p["weight"],
        p["density"],
        sparsify=sparsify,
        consensus=consensus,
        normalize=p["normalize"],
        rescale=p["rescale"],
        lam=p["lambda"],
        generator=generator,
    )


def _run_model_stock(tensors, base_index, p, generator):
    base, others = _split(tensors, base_index)
    return model_stock(base, others, p["filter_wise"])


def _task_vector_method(name: str, sparsify: str | None, consensus: bool, normalize: bool, rescale: bool) -> Method:
    params = (
        Param("int8_mask", bool, "shared", False),
        Param("normalize", bool, "shared", normalize),
        Param("rescale", bool, "shared", rescale),
        Param("lambda", float, "shared", 1.0),
        Param("weight", float, "non_base"),
        Param("density", float, "non_base", 1.0),
    )
    run = partial(_run_task_vectors, sparsify=sparsify, consensus=consensus)
    return Method(name, params, run, needs_base=True, random=sparsify == "random")


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "linear",
            (Param("weight", float, "input"), Param("normalize", bool, "shared", True)),
            _run_linear,
            needs_base=False,
        ),
        Method("slerp", (Param("t", float, "shared"),), _run_slerp, needs_base=True, min_inputs=2, max_inputs=2),
        _task_vector_method("task_arithmetic", None, consensus=False, normalize=False, rescale=False),
        _task_vector_method("ties", "magnitude", consensus=True, normalize=True, rescale=False),
        _task_vector_method("dare_linear", "random", consensus=False, normalize=False, rescale=True),
        _task_vector_method("dare_ties", "random", consensus=True, normalize=False, rescale=True),
        Method(
            "model_stock",
            (Param("filter_wise", bool, "shared", False),),
            _run_model_stock,
            needs_base=True,
            min_inputs=3,
        ),
    )
}

__all__ = [
    "METHODS",
    "Method",
    "Param",
    "REQUIRED",
    "linear",
    "slerp",
    "task_vectors",
    "keep_largest",
    "random_drop",
    "sign_agreement",
    "model_stock",
]
