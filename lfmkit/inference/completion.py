"""What `generate` and the serving engine share about one sequence being generated: when it stops,
what text it shows, its logprobs, and how prompts become one left-padded batch.

- `Completion.accept(token)`: the one finish rule. A stop token (eos unless `ignore_eos`, or
  `stop_token_ids`) ends it with "stop"; a stop string in its text ends it with "stop" (the stop
  string and what follows are never shown; text that may begin one is held back); reaching its
  token limit ends it with "length". Checked in that order, once per token.
- `logprob_entries(out, params)`: a `SampleOutput`'s logprobs as one `TokenLogprob` per row (None
  for rows that did not ask), each row's top list cut to its own `top_logprobs`.
- `left_padded(prompts, pad_id)`: ids and attention mask for prompts of different lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import TokenizerError
from .sampling import SampleOutput, SamplingParams

FINISH_STOP = "stop"  # eos, a stop token or a stop string
FINISH_LENGTH = "length"  # max_tokens reached
FINISH_ABORT = "abort"  # the caller asked to stop


@dataclass
class TokenLogprob:
    """The logprob of one generated token under the model, and of the likeliest alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


class StopStringMatcher:
    """Finds stop strings in streamed text, holding back text that may be the start of one.

    `push(piece)` returns (text safe to show, stopped?); after a stop, the stop string and
    everything after it are dropped. Work per piece is bounded by the longest stop string.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        buf = self._held + piece
        best = None
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            self._held = ""
            self.matched = best[1]
            return buf[: best[0]], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


class Completion:
    """One sequence's stop rule and visible text (see the module doc).

    decoder: an incremental detokenizer, or None for token-only generation (no text, no stop
    strings). `accept` returns the text the token makes visible; once `finish_reason` is set,
    `flush()` returns what was held back (a partial character or partial stop string).
    """

    def __init__(self, stop_ids: frozenset[int], max_tokens: int, decoder=None, stop: Sequence[str] = ()):
        self.stop_ids = stop_ids
        self.max_tokens = max_tokens
        self.decoder = decoder
        self.matcher = StopStringMatcher(stop)
        self.count = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    def accept(self, token: int) -> str:
        self.count += 1
        if token in self.stop_ids:
            self.finish_reason, self.stop_reason = FINISH_STOP, token
            return ""
        text = ""
        if self.decoder is not None:
            try:
                piece = self.decoder.push(token)
            except TokenizerError:  # padded vocabularies: ids past the tokenizer's have no text
                piece = ""
            text, stopped = self.matcher.push(piece)
            if stopped:
                self.finish_reason, self.stop_reason = FINISH_STOP, self.matcher.matched
                return text
        if self.count >= self.max_tokens:
            self.finish_reason = FINISH_LENGTH
        return text

    def flush(self) -> str:
        """The held-back text at the end (nothing after a stop string)."""
        if self.decoder is None or self.matcher.matched is not None:
            return ""
        text, stopped = self.matcher.push(self.decoder.flush())
        if stopped:
            self.finish_reason, self.stop_reason = FINISH_STOP, self.matcher.matched
            return text
        return text + self.matcher.flush()


def stop_token_ids(params: SamplingParams, eos_ids: set[int] | frozenset[int]) -> frozenset[int]:
    """The ids that end a completion under `params`: its stop_token_ids, and eos unless ignored."""
    ids = set(params.stop_token_ids or ())
    if not params.ignore_eos:
        ids |= set(eos_ids)
    return frozenset(ids)


def logprob_entries(out: SampleOutput, params: Sequence[SamplingParams]) -> list[TokenLogprob | None]:
    """One TokenLogprob per sampled row (None where its params ask for none)."""
    if out.logprobs is None:
        return [None] * len(params)
    lp, toks = out.logprobs.tolist(), out.tokens.tolist()
    tops_ids = out.top_ids.tolist() if out.top_ids is not None else None
    tops_lp = out.top_logprobs.tolist() if out.top_logprobs is not None else None
    entries: list[TokenLogprob | None] = []
    for i, p in enumerate(params):
        if not p.wants_logprobs:
            entries.append(None)
            continue
        k = p.top_logprobs
        top = list(zip(tops_ids[i][:k], tops_lp[i][:k])) if tops_ids is not None and k else []
        entries.append(TokenLogprob(toks[i], lp[i], top))
    return entries


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids [B, width], attention mask [B, width] or None when no row is padded)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, (None if all(len(p) == width for p in prompts) else mask)


__all__ = [
    "Completion",
    "StopStringMatcher",
    "TokenLogprob",
    "logprob_entries",
    "left_padded",
    "stop_token_ids",
    "FINISH_STOP",
    "FINISH_LENGTH",
    "FINISH_ABORT",
]
