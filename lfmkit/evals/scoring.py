"""Log-likelihood scoring on the hybrid state: each shared few-shot prefix prefilled once.

`score_continuations(model, [(context ids, [continuation ids ...]), ...])` gives, per context,
every continuation's summed log-probability, whether greedy decoding would produce it, and the
argmax token after the context (multiple choice under both rules, and lm-eval's loglikelihood
requests through `LMEvalModel`).

Where the work goes, and what is not done twice:

- contexts are sorted by their tokens and cut into *prefix groups* (`prefix_groups`): runs of
  contexts whose common prefix is worth sharing (an MMLU subject's description and few-shot
  examples, most of a 5-shot prompt). A group's prefix is prefilled once, into one state row,
  and copied (conv windows and K/V) into every row that runs after it, however many batches
  the group spans;
- a context's continuations need the logits after ctx + continuation[:-1]; continuations whose
  such sequences are equal or prefixes of one another share one row (" A" ... " D" that encode
  as a space token and a letter need one row, not four; one-token continuations need only the
  context itself). lm-eval's HF backend shares equal sequences the same way;
- rows are sorted by length before they are cut into batches, so little padding is run, and
  the 65,536-wide head is applied only at the positions that predict a continuation token (the
  context's last position for the argmax).

Rows are right-padded (padding after a row's real tokens cannot change them); long rows run in
pieces of `ROW_TOKENS_PER_PASS` token rows per pass, the state carrying them across passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import EvalError
from ..inference.shared_prefix import common_prefix

# Token rows (rows x tokens) per forward pass: bounds activation memory for long prompts.
ROW_TOKENS_PER_PASS = 2048


@dataclass
class ContinuationScore:
    """lm-eval's (log-likelihood, is_greedy) for each continuation, and the context's argmax token."""

    logliks: list[float]
    greedy: list[bool]
    top_token: int


@dataclass
class _Row:
    """One sequence run after its group's prefix: context `request`'s own tokens plus `extra`
    continuation tokens (a continuation without its last token); it scores continuations
    `serves` of that context, and the argmax after the context when `top`."""

    request: int
    extra: tuple[int, ...]
    tokens: list[int]
    serves: list[int]
    top: bool


def prefix_groups(contexts: Sequence[list[int]]) -> list[tuple[list[int], int]]:
    """Cut the contexts, in sorted order, into groups that share a prefix: [(indices, prefix length)].

    A group of n contexts sharing p tokens costs p + sum(len - p) tokens of prefill. Sorted
    contexts are taken one by one; the next one joins the current group when that costs less
    than starting a group of its own, i.e. when n * p' > (n - 1) * p for the group's new common
    prefix p'. Each context keeps at least one token of its own (`common_prefix`).
    """
    order = sorted(range(len(contexts)), key=lambda i: contexts[i])
    groups: list[tuple[list[int], int]] = []
    for i in order:
        if groups:
            members, p = groups[-1]
            # Sorted: the common prefix of a run is that of its first and last context.
            joined = common_prefix([contexts[members[0]], contexts[i]])
            if len(members) * joined > (len(members) - 1) * p:
                groups[-1] = (members + [i], joined)
                continue
        groups.append(([i], len(contexts[i]) - 1))
    return [(members, p if len(members) > 1 else 0) for members, p in groups]


def _plan_rows(i: int, ctx: list[int], conts: list[list[int]], p: int) -> list[_Row]:
    """The rows context `i` needs after a p-token prefix: one per continuation prefix (each
    continuation without its last token), leaving out any that is a prefix of another, since
    the longer row gives its logits too; the first row also gives the argmax."""
    seqs = sorted({tuple(c[:-1]) for c in conts} | {()})
    kept = [s for k, s in enumerate(seqs) if not (k + 1 < len(seqs) and seqs[k + 1][: len(s)] == s)]
    rows = [_Row(i, extra, ctx[p:] + list(extra), [], k == 0) for k, extra in enumerate(kept)]
    for k, cont in enumerate(conts):
        head = tuple(cont[:-1])
        next(r for r in rows if r.extra[: len(head)] == head).serves.append(k)
    return rows


def _fit(ctx: list[int], conts: list[list[int]], limit: int) -> list[int]:
    """Drop the oldest context tokens when context + longest continuation exceeds the context size."""
    if not ctx:
        raise EvalError("a multiple-choice context encodes to no tokens")
    if any(not c for c in conts):
        raise EvalError("a continuation encodes to no tokens")
    longest = max((len(c) for c in conts), default=0)
    return ctx[max(0, len(ctx) + longest - 1 - limit) :]


@torch.no_grad()
def score_continuations(
    model, requests: Sequence[tuple[list[int], list[list[int]]]], batch_size: int = 16
) -> list[ContinuationScore]:
    """For each (context ids, [continuation ids ...]): every continuation's summed log-probability
    and whether greedy decoding would produce it, plus the argmax token after the context.
    `batch_size` rows run per forward pass."""
    limit = model.config.max_position_embeddings
    requests = [(_fit(ctx, conts, limit), [list(c) for c in conts]) for ctx, conts in requests]
    out = [ContinuationScore([0.0] * len(conts), [False] * len(conts), -1) for _, conts in requests]
    for members, p in prefix_groups([ctx for ctx, _ in requests]):
        rows = [row for i in members for row in _plan_rows(i, *requests[i], p)]
        rows.sort(key=lambda r: len(r.tokens))
        prefix_state = None
        if p:  # prefilled once for the whole group
            prefix_state = model.new_state(batch_size=1, max_length=p)
            model.prefill(torch.tensor([requests[members[0]][0][:p]], device=model.device), prefix_state)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            owns = [len(requests[r.request][0]) - p for r in chunk]  # each row's context tokens
            for r, lp in zip(chunk, _row_logprobs(model, prefix_state, p, chunk, owns)):
                _read_row(out[r.request], r, requests[r.request][1], lp)
    return out


def _read_row(score: ContinuationScore, row: _Row, conts: list[list[int]], lp: torch.Tensor) -> None:
    """Fill in what one row's log-probabilities [len(extra) + 1, V] give its context's score."""
    if row.top:
        score.top_token = int(lp[0].argmax())
    for k in row.serves:
        target = torch.tensor(conts[k], device=lp.device)
        got = lp[: len(target)]
        score.logliks[k] = float(got.gather(-1, target[:, None]).sum())
        score.greedy[k] = bool((got.argmax(-1) == target).all())


def _row_logprobs(model, prefix_state, p: int, chunk: list[_Row], owns: list[int]) -> list[torch.Tensor]:
    """Run rows after the shared prefix; per row the log-probabilities [len(extra) + 1, V] at the
    positions that predict a continuation token (the context's last token onwards)."""
    width = max(len(r.tokens) for r in chunk)
    state = model.new_state(batch_size=len(chunk), max_length=p + width)
    if prefix_state is not None:
        for k in range(len(chunk)):
            state.copy_row(prefix_state, 0, k)
    ids = torch.full((len(chunk), width), model.config.pad_token_id, dtype=torch.long)
    picks, counts = [], []
    for k, (r, own) in enumerate(zip(chunk, owns)):
        ids[k, : len(r.tokens)] = torch.tensor(r.tokens)
        n = len(r.extra) + 1
        picks += [k * width + own - 1 + j for j in range(n)]
        counts.append(n)
    ids = ids.to(model.device)
    step = max(1, ROW_TOKENS_PER_PASS // len(chunk))
    hidden = torch.cat(
        [model(ids[:, a : a + step], state=state, return_hidden=True) for a in range(0, width, step)], dim=1
    )  # [R, width, H]
    picked = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(picks, device=hidden.device)]
    logp = model.lm_head(picked).float().log_softmax(-1)
    return list(logp.split(counts))


__all__ = ["score_continuations", "prefix_groups", "ContinuationScore", "ROW_TOKENS_PER_PASS"]
