"""What the quantized kernels compute, written in PyTorch, for the kernel tests."""

import torch


def act_quantized(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """x as the kernels see it: int8 in blocks with one absmax/127 scale per block (int4: 32
    values; int8: 256 where the width allows, else 32; W8A8 prefill: the whole row)."""
    b = x.reshape(*x.shape[:-1], -1, block)
    s = b.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))  # times the reciprocal, as the kernels
    return (torch.round(b * inv) * s).reshape(x.shape)


def assert_same_greedy(model, prompt: list[int], got: list[int], want: list[int], tol: float = 0.05) -> None:
    """Greedy tokens of a fast path (`got`) against the reference path's (`want`), two paths whose
    logits differ only by rounding (an int8 activation code on the other side of a boundary):
    equal, or parting where the reference's logits nearly tie. `model` computes the reference
    path (its last-position logits after prompt + `want`'s common prefix, one forward from an
    empty state); at the first token where the two differ, the reference may prefer its own
    token by at most `tol` of the logits' largest magnitude (the fused-step tests' bound after a
    few steps). A token the reference ranks clearly lower fails, as does a different length."""
    assert len(got) == len(want), (got, want)
    if got == want:
        return
    i = next(k for k, (a, b) in enumerate(zip(got, want)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(want[:i])]))[0, -1]
    gap = float(logits[want[i]] - logits[got[i]])
    assert gap <= tol * float(logits.abs().max()), f"token {i}: {got[i]} where the reference has {want[i]} by {gap:.4f}"
