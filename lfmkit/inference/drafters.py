"""Drafters for speculative decoding (speculative.py): they propose the next few tokens.

- `ModelDrafter`: a smaller model with the target's vocabulary (LFM2-350M for the 2.6B), with
  its own batch-1 state; it catches up on what the target emitted from the longest common
  prefix of what it has fed (rolled back with conv-window snapshots taken after each of its
  steps).
- `NgramDrafter`: prompt lookup (Saxena 2023, as transformers' `prompt_lookup_num_tokens` and
  vLLM's n-gram speculator): the tokens that followed the last earlier occurrence of the
  context's last n tokens (n from `max_ngram` down to `min_ngram`), that span repeated when it
  runs into the present (a loop goes on). No model, no state.

Both have `reset(params, seed)` (a new sequence: how to draw its drafts) and
`propose(context, k) -> Draft`; a drafted token's distribution `q` is reported when it was
sampled (the rejection rule needs it), None when it was chosen deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import GenerationError
from ..model.state import LFM2State, StateSnapshot
from .sampling import BatchSampler, SamplingParams, derived_seed, make_generator

DEFAULT_K = 4
FUSED_FEED = 16  # a draft's catch-up of up to this many tokens goes through its fused step


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from `probs` [V] (any non-negative weights) by inverse CDF."""
    cdf = probs.to(torch.float64).cumsum(-1)
    u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    return int(torch.searchsorted(cdf, u[None], right=True).clamp_(max=probs.shape[-1] - 1))


@dataclass
class Draft:
    """Proposed next tokens; `probs[i]` is the distribution token i was drawn from (None: each
    was chosen deterministically, so q is one-hot)."""

    tokens: list[int]
    probs: torch.Tensor | None = None  # [len(tokens), V]


def _draft_params(params: SamplingParams) -> SamplingParams:
    """What a draft samples with: the row's filters, no penalties (q need not match p)."""
    return params.replace(
        repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, logprobs=False, top_logprobs=0, n=1
    )


def _draft_generator(seed: int | None) -> torch.Generator:
    return make_generator(None if seed is None else derived_seed(seed, 7_777))


class NgramDrafter:
    """Prompt-lookup drafting: continue the context as it continued after the last earlier
    occurrence of its final n tokens. An index of n-grams is kept and extended as the context
    grows (rebuilt when it does not extend the one indexed)."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise GenerationError(f"n-gram drafting: need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.k = DEFAULT_K  # drafts per step (set by the Speculator)
        self._tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest occurrence ended

    def reset(self, params: SamplingParams, seed: int | None = None) -> None:
        """Start a new sequence (n-gram drafts are deterministic: nothing to seed)."""

    def propose(self, context: Sequence[int], k: int) -> Draft:
        if k < 1 or len(context) < 2:
            return Draft([])
        self._extend(context)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            end = self._index.get(tuple(context[-n:]))
            if end is not None:  # continue as it did then; a run into the present repeats
                period = len(context) - end
                return Draft([context[end + i % period] for i in range(k)])
        return Draft([])

    def _extend(self, context: Sequence[int]) -> None:
        """Index every n-gram that ends before the context's last token (so each has a
        continuation), by where it ends; later occurrences overwrite earlier ones."""
        old = self._tokens
        if len(context) < len(old) or list(context[: len(old)]) != old:
            old, self._index = [], {}
        for end in range(max(1, len(old)), len(context)):
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                self._index[tuple(context[end - n : end])] = end
        self._tokens = list(context)


class ModelDrafter:
    """Drafts with a smaller model of the same vocabulary, on its own batch-1 state.

    `propose(context, k)` first brings its state to `context`: it goes back to the longest
    common prefix of what it has fed (a snapshot of its conv windows and counters is kept after
    each of its forwards; with no snapshot there, it starts over) and feeds the rest; then it
    drafts k tokens, one single-token step each (the fused decode step for a quantized draft).
    """

    def __init__(self, model, max_length: int):
        self.model = model
        self.k = DEFAULT_K  # drafts per step (set by the Speculator)
        self.state: LFM2State = model.new_state(batch_size=1, max_length=max_length)
        self.sampler = BatchSampler(model.config.vocab_size, 1, device=model.device)
        self.greedy = True
        self.generator: torch.Generator | None = None
        self.tokens: list[int] = []  # what the state holds
        self._snaps: dict[int, StateSnapshot] = {}

    def reset(self, params: SamplingParams, seed: int | None = None) -> None:
        """Draw drafts as `params` would (argmax when greedy), with a generator from `seed`."""
        self.greedy = params.is_greedy
        if not self.greedy:
            self.sampler.add_row(0, _draft_params(params))
            self.generator = _draft_generator(seed)

    @torch.no_grad()
    def propose(self, context: Sequence[int], k: int) -> Draft:
        k = min(k, self.state.max_length - len(context) + 1)
        if k < 1 or not context:
            return Draft([])
        logits = self._catch_up(context)
        tokens, probs = [], []
        for i in range(k):
            if self.greedy:
                tokens.append(int(logits.argmax()))
            else:
                q = self.sampler.distribution(logits[None], [0])[0]
                tokens.append(draw(q, self.generator))
                probs.append(q)
            if i + 1 < k:
                logits = self._feed(tokens[-1:])
        return Draft(tokens, torch.stack(probs) if probs else None)

    def _catch_up(self, context: Sequence[int]) -> torch.Tensor:
        """Bring the state to `context`; return the next-token logits [V]."""
        n = len(self.tokens)
        if list(context[:n]) != self.tokens:
            n = next((i for i, (a, b) in enumerate(zip(self.tokens, context)) if a != b), len(context))
        n = min(n, len(context) - 1)  # at least one token to feed: its logits are needed
        if n < len(self.tokens):
            snap = self._snaps.get(n)
            if snap is None:
                self.state.reset()
                n = 0
            else:
                self.state.restore(snap)
            del self.tokens[n:]
        self._snaps = {}
        return self._feed(list(context[n:]))

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Feed ids (a short catch-up through the fused step when the draft has one); return
        the last position's logits [V] and keep a snapshot for rolling back to here."""
        x = torch.tensor([ids], dtype=torch.long, device=self.model.device)
        fused = self.model.__dict__.get("fused_decode")
        logits = fused(x, self.state) if fused is not None and len(ids) <= FUSED_FEED else None
        logits = (logits if logits is not None else self.model.prefill(x, self.state))[0, -1]
        self.tokens.extend(ids)
        self._snaps[len(self.tokens)] = self.state.snapshot()
        return logits


__all__ = ["Draft", "NgramDrafter", "ModelDrafter", "draw", "DEFAULT_K"]
