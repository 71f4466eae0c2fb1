"""Prefill a batch whose prompts share a long prefix (few-shot examples) once for all of them.

`prefill_shared(model, state, prompts)` runs the batch's common prefix once, into a one-row
state, copies it (conv windows and K/V) into every row of `state`, then runs each row's own
tail after it. Rows end at their own lengths with no padding anywhere (a ragged, padding-free
state, which the fused decode step accepts), and each row's logits and state are those of its
whole prompt run alone, up to float rounding of the different matmul shapes.

It pays when the prefix is long and the tails short: a 5-shot MGSM batch of 8 prompts prefills
its ~1,000-token prefix once instead of 8 times. Tails run one row at a time (each streams the
weights once), so `worth_sharing` asks for a prefix of at least `MIN_PREFIX` tokens that saves
more tokens than the tails hold.
"""

from __future__ import annotations

import torch

from ..model.state import LFM2State

MIN_PREFIX = 64


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving every prompt at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def worth_sharing(prompts: list[list[int]]) -> int:
    """The prefix length to share, or 0 when a plain batched prefill is the better deal."""
    if len(prompts) < 2:
        return 0
    p = common_prefix(prompts)
    tails = sum(len(x) - p for x in prompts)
    return p if p >= MIN_PREFIX and p * (len(prompts) - 1) > tails else 0


@torch.no_grad()
def prefill_shared(model, state: LFM2State, prompts: list[list[int]], prefix: int) -> torch.Tensor:
    """Prefill `prompts` (one per row of the empty `state`) sharing their first `prefix` tokens;
    return each row's last logits [B, V]."""
    device = model.device
    side = model.new_state(batch_size=1, max_length=max(len(p) for p in prompts))
    model.prefill(torch.tensor([prompts[0][:prefix]], device=device), side)
    base = side.snapshot()
    logits = []
    for row, ids in enumerate(prompts):
        side.restore(base)
        logits.append(model.prefill(torch.tensor([ids[prefix:]], device=device), side)[0, -1])
        state.copy_row(side, 0, row)
    return torch.stack(logits)


__all__ = ["prefill_shared", "worth_sharing", "common_prefix", "MIN_PREFIX"]
