"""Sampling parameters and the batched per-row sampler.

`SamplingParams` is one request's knobs (validated on construction and by `.validate()`, which
raises `GenerationError` naming the parameter). Its defaults are the model card's
recommendation (temperature 0.3, min_p 0.15, repetition_penalty 1.05);
`SamplingParams.for_model(model_or_dir, **overrides)` starts from the checkpoint's
`generation_config.json` instead when it sets any of those fields. `SamplingParams.greedy()` is
plain argmax.

`BatchSampler(vocab_size, max_rows)` samples one token for every row of a [B, V] logits tensor,
each row with its own parameters, its own `torch.Generator` and its own penalty history, so a
row's tokens depend only on its own seed and logits, never on which other rows share the batch:

    sampler = BatchSampler(vocab_size, max_rows=8)
    sampler.add_row(slot, params, prompt_ids)          # resets that slot's history and RNG
    out = sampler.sample(logits, slots)                # logits [B, V]; slots: B slot numbers
    out.tokens                                         # LongTensor [B]
    out.logprobs, out.top_ids, out.top_logprobs        # None unless some row asked for logprobs
    sampler.remove_row(slot)

`slots=None` means slots 0..B-1. `sample` records the chosen tokens in each row's history in
place (per-row token counts, updated with one scatter per step), so penalties never look back
over the whole sequence. A row whose slot is not in `slots` is untouched.

Processing order per row (the order of `transformers`' generate): repetition penalty (over prompt
and generated tokens, as in transformers and vLLM), presence and frequency penalties (generated
tokens only, as in OpenAI and vLLM), then temperature 0 → argmax; otherwise temperature, top_k,
top_p (on the top_k-renormalised distribution), min_p (relative to the most likely token), and one
draw from the row's generator by inverse CDF. Returned logprobs are those of the model's raw
distribution (log-softmax of the unprocessed logits), as vLLM reports them by default.

Structured output: a row whose params carry a `constraint` (constrain.Constraint: a JSON
schema, a Lark grammar, tool calls) gets a grammar matcher in `add_row`; `sample` sets the tokens
its grammar disallows to -inf first (the masks of all such rows in one call), and the matcher
takes the chosen token (see constrain.py). Logprobs stay those of the raw distribution.

Seeds: a row with `seed=s` draws from `torch.Generator().manual_seed(s)`; a row without a seed
draws its generator's seed from torch's global RNG (so `torch.manual_seed` makes it repeatable).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import GenerationError
from .constrain import Constraint, advance, allowed_tokens, mask_logits

# The model card's recommended sampling settings for every LFM2 checkpoint.
MODEL_CARD_DEFAULTS = {"temperature": 0.3, "min_p": 0.15, "repetition_penalty": 1.05}
MAX_TOP_LOGPROBS = 20
NUCLEUS_CANDIDATES = 1024  # top_p looks at the likeliest 1024 tokens first (exact: falls back to all)
GENERATION_CONFIG = "generation_config.json"


@dataclass
class SamplingParams:
    """How to pick each next token, and when to stop."""

    max_tokens: int = 256
    temperature: float = MODEL_CARD_DEFAULTS["temperature"]  # 0 = greedy (argmax)
    top_k: int = 0  # 0 (or -1) = off
    top_p: float = 1.0  # 1 = off
    min_p: float = MODEL_CARD_DEFAULTS["min_p"]  # 0 = off
    repetition_penalty: float = MODEL_CARD_DEFAULTS["repetition_penalty"]  # 1 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # stop strings (not in the output)
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens besides eos
    ignore_eos: bool = False  # keep going past eos
    n: int = 1  # completions per prompt
    logprobs: bool = False  # logprob of each chosen token
    top_logprobs: int = 0  # and of the k likeliest tokens
    constraint: Constraint | None = None  # structured output: a grammar every token must follow

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        if self.top_k == -1:
            self.top_k = 0
        self.validate()

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def greedy(cls, **overrides: Any) -> "SamplingParams":
        """Plain argmax decoding: no temperature, no penalties."""
        base = dict(temperature=0.0, min_p=0.0, repetition_penalty=1.0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_generation_config(cls, source: str | os.PathLike | dict | None, **overrides: Any) -> "SamplingParams":
        """Defaults from a `generation_config.json` (file, directory or dict), else the model card."""
        values = dict(generation_config_defaults(source))
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_model(cls, model: Any, **overrides: Any) -> "SamplingParams":
        """Defaults for a loaded model (its checkpoint directory) or a checkpoint directory."""
        source = model if isinstance(model, (str, os.PathLike)) else getattr(model, "source_path", None)
        return cls.from_generation_config(source, **overrides)

    def replace(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)

    # ---- facts ---------------------------------------------------------------------------
    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs or self.top_logprobs > 0

    def to_dict(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (a constraint by its description)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["constraint"] = None if self.constraint is None else self.constraint.description
        return out

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> "SamplingParams":
        """Raise GenerationError naming the first bad parameter; return self when all are fine."""

        def bad(name: str, msg: str):
            raise GenerationError(f"sampling parameter '{name}': {msg}, got {getattr(self, name)!r}")

        def integer(name: str, low: int, high: int | None = None):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                bad(name, "must be an integer")
            if v < low or (high is not None and v > high):
                bad(name, f"must be >= {low}" + (f" and <= {high}" if high is not None else ""))

        def number(name: str, low: float, high: float, low_open: bool = False):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                bad(name, "must be a finite number")
            if v < low or v > high or (low_open and v == low):
                bad(name, f"must be in {'(' if low_open else '['}{low}, {high}]")

        integer("max_tokens", 1)
        number("temperature", 0.0, 100.0)
        integer("top_k", 0)
        number("top_p", 0.0, 1.0, low_open=True)
        number("min_p", 0.0, 1.0)
        number("repetition_penalty", 0.0, 100.0, low_open=True)
        number("presence_penalty", -2.0, 2.0)
        number("frequency_penalty", -2.0, 2.0)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad("seed", "must be an integer or None")
        if not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "must be a non-empty string or a list of non-empty strings")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be a list of non-negative token ids")
        if not isinstance(self.ignore_eos, bool):
            bad("ignore_eos", "must be true or false")
        integer("n", 1, 128)
        if not isinstance(self.logprobs, bool):
            bad("logprobs", "must be true or false")
        integer("top_logprobs", 0, MAX_TOP_LOGPROBS)
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            bad("constraint", "must be an lfmkit Constraint (Constraint.json_schema(...), .lark(...), ...)")
        if self.constraint is not None and self.ignore_eos:
            bad("ignore_eos", "cannot be combined with a constraint: a constrained answer ends where its grammar does")
        return self


def generation_config_defaults(source: str | os.PathLike | dict | None) -> dict[str, Any]:
    """Sampling defaults: the model card's, overridden by what generation_config.json sets."""
    values: dict[str, Any] = dict(MODEL_CARD_DEFAULTS)
    data: dict[str, Any] | None = None
    if isinstance(source, dict):
        data = source
    elif source is not None:
        p = Path(source)
        file = p / GENERATION_CONFIG if p.is_dir() else p
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GenerationError(f"{file}: not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise GenerationError(f"{file}: expected a JSON object")
    if not data:
        return values
    for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        if data.get(key) is not None:
            values[key] = data[key]
    if data.get("max_new_tokens") is not None:
        values["max_tokens"] = data["max_new_tokens"]
    if data.get("do_sample") is False:
        values["temperature"] = 0.0
    return values


def generation_config_eos(source: str | os.PathLike | None) -> list[int]:
    """eos_token_id(s) declared by a checkpoint's generation_config.json (empty if none)."""
    if source is None:
        return []
    p = Path(source)
    file = p / GENERATION_CONFIG if p.is_dir() else p
    if not file.is_file():
        return []
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GenerationError(f"{file}: not valid JSON ({exc})") from None
    eos = data.get("eos_token_id") if isinstance(data, dict) else None
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one row: seeded with `seed`, or from torch's global RNG."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.long))
    return torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)


def derived_seed(seed: int | None, index: int) -> int | None:
    """Seed of completion `index` of a request with `seed` (index 0 keeps the seed itself)."""
    if seed is None or index == 0:
        return seed
    return (seed * 1_000_003 + index * 7_919) & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class SampleOutput:
    """One sampled token per row; logprobs only when some row asked for them."""

    tokens: torch.Tensor  # [B] long
    logprobs: torch.Tensor | None = None  # [B] float: raw logprob of the chosen token
    top_ids: torch.Tensor | None = None  # [B, K] long
    top_logprobs: torch.Tensor | None = None  # [B, K] float


@dataclass
class _Plan:
    """What one batch composition needs; rebuilt only when rows are added or removed."""

    slots: list[int]
    index: torch.Tensor | slice  # rows of the history tensors
    greedy: list[bool]
    all_greedy: bool
    any_greedy: bool
    greedy_mask: torch.Tensor | None
    penalties: bool  # some row has a penalty: keep histories
    rep: torch.Tensor | None  # [B, 1]; None when no row uses it
    presence: torch.Tensor | None
    frequency: torch.Tensor | None
    temperature: torch.Tensor | None  # [B, 1], 1 for greedy rows
    top_k: torch.Tensor | None  # [B, 1] long, V when off; None when no row uses it
    top_p: torch.Tensor | None  # [B, 1]; None when no row uses it
    min_p: torch.Tensor | None  # [B, 1]; None when no row uses it
    candidates: int  # tokens top_k / top_p look at first (V: all)
    p_only: torch.Tensor | None  # [B, 1] bool: sampled rows with top_p and no top_k
    top_logprobs: int
    logprobs: bool
    constrained: list[int]  # rows (batch positions) with a grammar


_PARAMS_SEED = object()  # add_row's default: use params.seed


class BatchSampler:
    """Samples one token per row of [B, V] logits, each row with its own params, RNG and history."""

    def __init__(self, vocab_size: int, max_rows: int, device: torch.device | str = "cpu"):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.vocab_size = vocab_size
        self.max_rows = max_rows
        self.device = torch.device(device)
        self.params: list[SamplingParams | None] = [None] * max_rows
        self.generators: list[torch.Generator | None] = [None] * max_rows
        self.matchers: list = [None] * max_rows  # constrain.RowMatcher of rows with a constraint
        # Penalty history, allocated when the first row with a penalty arrives.
        self._seen: torch.Tensor | None = None  # [max_rows, V] bool: prompt + generated
        self._counts: torch.Tensor | None = None  # [max_rows, V] float: generated-token counts
        self._plans: dict[Any, _Plan] = {}

    # ---- rows ----------------------------------------------------------------------------
    def add_row(
        self, slot: int, params: SamplingParams, prompt_ids: Sequence[int] | torch.Tensor = (), seed: Any = _PARAMS_SEED
    ) -> None:
        """Start a new sequence in `slot`: its params, a fresh generator, history = the prompt.

        `seed` overrides `params.seed` (e.g. the n-th completion of a request).
        """
        if not 0 <= slot < self.max_rows:
            raise ValueError(f"slot {slot} out of range 0..{self.max_rows - 1}")
        self.params[slot] = params
        self.generators[slot] = (
            None if params.is_greedy else make_generator(params.seed if seed is _PARAMS_SEED else seed)
        )
        self.matchers[slot] = (
            None if params.constraint is None else params.constraint.matcher(self.vocab_size, params.max_tokens)
        )
        if params.has_penalties and self._seen is None:
            self._seen = torch.zeros(self.max_rows, self.vocab_size, dtype=torch.bool, device=self.device)
            self._counts = torch.zeros(self.max_rows, self.vocab_size, dtype=torch.float32, device=self.device)
        if self._seen is not None:
            self._seen[slot].zero_()
            self._counts[slot].zero_()
            if params.repetition_penalty != 1.0 and len(prompt_ids):
                ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device).reshape(-1)
                self._seen[slot, ids.clamp(0, self.vocab_size - 1)] = True
        self._plans.clear()

    def remove_row(self, slot: int) -> None:
        self.params[slot] = None
        self.generators[slot] = None
        self.matchers[slot] = None
        self._plans.clear()

    def record(self, slots: Sequence[int], tokens: torch.Tensor) -> None:
        """Add tokens (one per slot) to the rows' histories without sampling (e.g. forced tokens)."""
        if self._seen is None:
            return
        idx = torch.as_tensor(list(slots), dtype=torch.long, device=self.device)
        tok = tokens.to(self.device, torch.long).reshape(-1)
        self._seen[idx, tok] = True
        self._counts.index_put_((idx, tok), torch.ones_like(tok, dtype=torch.float32), accumulate=True)

    # ---- the plan for a batch composition ------------------------------------------------
    def _plan(self, slots: Sequence[int] | None, batch: int) -> _Plan:
        key = batch if slots is None else tuple(slots)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        slot_list = list(range(batch)) if slots is None else [int(s) for s in slots]
        if len(slot_list) != batch:
            raise ValueError(f"{len(slot_list)} slots given for {batch} rows of logits")
        params = []
        for s in slot_list:
            if self.params[s] is None:
                raise ValueError(f"slot {s} has no sequence (call add_row first)")
            params.append(self.params[s])
        dev = self.device

        def col(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=dev)[:, None]

        greedy = [p.is_greedy for p in params]
        penalties = any(p.has_penalties for p in params)
        sampled = [p for p in params if not p.is_greedy]
        index: torch.Tensor | slice = (
            slice(0, batch)
            if slot_list == list(range(batch))
            else torch.tensor(slot_list, dtype=torch.long, device=dev)
        )
        plan = _Plan(
            slots=slot_list,
            index=index,
            greedy=greedy,
            all_greedy=all(greedy),
            any_greedy=any(greedy),
            greedy_mask=col(greedy, torch.bool)[:, 0] if any(greedy) and not all(greedy) else None,
            penalties=penalties,
            rep=col([p.repetition_penalty for p in params])
            if any(p.repetition_penalty != 1.0 for p in params)
            else None,
            presence=col([p.presence_penalty for p in params]) if any(p.presence_penalty for p in params) else None,
            frequency=col([p.frequency_penalty for p in params]) if any(p.frequency_penalty for p in params) else None,
            temperature=col([p.temperature if p.temperature > 0 else 1.0 for p in params]) if sampled else None,
            top_k=(
                col([p.top_k if p.top_k > 0 else self.vocab_size for p in params], torch.long)
                if any(0 < p.top_k < self.vocab_size for p in sampled)
                else None
            ),
            top_p=col([p.top_p if p.top_p < 1.0 else 2.0 for p in params])
            if any(p.top_p < 1.0 for p in sampled)
            else None,
            min_p=col([p.min_p for p in params]) if any(p.min_p > 0.0 for p in sampled) else None,
            candidates=self._candidates(sampled),
            p_only=(
                col([not p.is_greedy and p.top_k == 0 and p.top_p < 1.0 for p in params], torch.bool)
                if any(p.top_k == 0 and p.top_p < 1.0 for p in sampled)
                else None
            ),
            top_logprobs=max(p.top_logprobs for p in params),
            logprobs=any(p.wants_logprobs for p in params),
            constrained=[i for i, s in enumerate(slot_list) if self.matchers[s] is not None],
        )
        self._plans[key] = plan
        return plan

    def _candidates(self, sampled: list[SamplingParams]) -> int:
        """How many top tokens the top_k / top_p filters need to look at (V when unbounded)."""
        V = self.vocab_size
        need = 0
        for p in sampled:
            if 0 < p.top_k < V:
                need = max(need, p.top_k)
            elif p.top_p < 1.0:
                need = max(need, NUCLEUS_CANDIDATES)  # checked: falls back to V if too few
            else:
                return V  # a row that keeps the whole vocabulary
        return min(need, V) if need else V

    # ---- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, logits: torch.Tensor, slots: Sequence[int] | None = None) -> SampleOutput:
        """One token per row of `logits` [B, V]; row b belongs to `slots[b]` (default b)."""
        if logits.dim() == 3:
            logits = logits[:, -1]
        plan = self._plan(slots, logits.shape[0])
        raw, allowed = logits, None
        if plan.constrained:
            logits, allowed = self._constrained(logits, plan)
        if plan.all_greedy and not plan.penalties:
            tokens = logits.argmax(-1)
        else:
            x = self.processed_logits(logits, plan)
            greedy_tokens = x.argmax(-1) if plan.any_greedy else None
            if plan.all_greedy:
                tokens = greedy_tokens
            else:
                sampled = self._draw(*self._probabilities(x, plan), plan)
                tokens = sampled if greedy_tokens is None else torch.where(plan.greedy_mask, greedy_tokens, sampled)
        if plan.constrained:
            tokens = self._advance(plan, tokens, allowed)
        if plan.penalties:
            self._record(plan, tokens)
        out = SampleOutput(tokens=tokens)
        if plan.logprobs:
            logp = torch.log_softmax(raw.float(), dim=-1)
            out.logprobs = logp.gather(-1, tokens[:, None])[:, 0]
            if plan.top_logprobs:
                out.top_logprobs, out.top_ids = logp.topk(plan.top_logprobs, dim=-1)
        return out

    def _constrained(self, logits: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits with what the constrained rows' grammars disallow at -inf, and their masks."""
        allowed = allowed_tokens([self.matchers[plan.slots[i]] for i in plan.constrained], logits.shape[-1])
        return mask_logits(logits, plan.constrained, allowed), allowed

    def _advance(self, plan: _Plan, tokens: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The constrained rows' matchers take their tokens (the finish guard may change one)."""
        picked = tokens[plan.constrained].tolist()
        taken = advance([self.matchers[plan.slots[i]] for i in plan.constrained], picked, allowed)
        if taken != picked:
            tokens = tokens.clone()
            tokens[plan.constrained] = torch.tensor(taken, dtype=tokens.dtype, device=tokens.device)
        return tokens

    def processed_logits(self, logits: torch.Tensor, plan: _Plan) -> torch.Tensor:
        """Float32 logits after the penalties (a new tensor; the input is not modified)."""
        x = logits.to(torch.float32, copy=True)
        if plan.rep is not None:
            # seen tokens: divide positive logits by the penalty, multiply negative ones by it
            rep = plan.rep
            x = torch.where(self._seen[plan.index], torch.where(x > 0, x / rep, x * rep), x)
        if plan.frequency is not None:
            x -= self._counts[plan.index] * plan.frequency
        if plan.presence is not None:
            x -= (self._counts[plan.index] > 0).to(x.dtype) * plan.presence
        return x

    def _probabilities(self, x: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Filtered, unnormalised probabilities and (if sorted) the sort order."""
        x = x / plan.temperature
        if plan.top_k is None and plan.top_p is None:
            probs = torch.softmax(x, dim=-1)
            if plan.min_p is not None:
                probs = probs.masked_fill(probs < plan.min_p * probs.amax(-1, keepdim=True), 0.0)
            return probs, None
        if plan.candidates < x.shape[-1]:
            got = self._filtered(x, plan, plan.candidates)
            if got is not None:
                return got
        return self._filtered(x, plan, x.shape[-1])

    def _filtered(self, x: torch.Tensor, plan: _Plan, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """top_k / top_p / min_p over the k likeliest tokens (k = V: a full sort).

        With k < V, returns None when some top_p-only row's nucleus does not close within the
        k candidates (the caller then sorts the whole vocabulary), so the result is always exact.
        """
        if k < x.shape[-1]:
            vals, order = x.topk(k, dim=-1)
        else:
            vals, order = x.sort(dim=-1, descending=True)
        if plan.top_k is not None:
            rank = torch.arange(k, device=x.device)
            vals = vals.masked_fill(rank[None] >= plan.top_k, float("-inf"))
        lse = torch.logsumexp(vals, dim=-1, keepdim=True)
        if plan.p_only is not None and k < x.shape[-1]:
            # rows with top_p but no top_k: probabilities of the whole vocabulary
            lse = torch.where(plan.p_only, torch.logsumexp(x, dim=-1, keepdim=True), lse)
        probs = (vals - lse).exp()
        if plan.top_p is not None:
            cum = probs.cumsum(-1)
            if plan.p_only is not None and k < x.shape[-1]:
                if bool((plan.p_only & (cum[:, -1:] < plan.top_p)).any()):
                    return None
            drop = (cum - probs) >= plan.top_p
            drop[:, 0] = False
            probs = probs.masked_fill(drop, 0.0)
        if plan.min_p is not None:
            probs = probs.masked_fill(probs < plan.min_p * probs[:, :1], 0.0)
        return probs, order

    def _draw(self, probs: torch.Tensor, order: torch.Tensor | None, plan: _Plan) -> torch.Tensor:
        """One draw per row by inverse CDF with the row's own generator (greedy rows: anything)."""
        gens = [self.generators[s] for s in plan.slots]
        u = [0.0 if g is None else float(torch.rand((), generator=g)) for g in gens]
        cdf = probs.to(torch.float64).cumsum(-1)
        target = torch.tensor(u, dtype=torch.float64, device=probs.device)[:, None] * cdf[:, -1:]
        idx = torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
        if order is not None:
            idx = order.gather(-1, idx)
        return idx[:, 0]

    def _record(self, plan: _Plan, tokens: torch.Tensor) -> None:
        if isinstance(plan.index, slice):
            seen, counts = self._seen[plan.index], self._counts[plan.index]
            seen.scatter_(1, tokens[:, None], True)
            counts.scatter_add_(1, tokens[:, None], torch.ones(tokens.shape[0], 1, device=counts.device))
        else:
            self._seen[plan.index, tokens] = True
            self._counts.index_put_(
                (plan.index, tokens), torch.ones(tokens.shape[0], device=self.device), accumulate=True
            )

    # ---- inspection (tests, explanations) ------------------------------------------------
    @torch.no_grad()
    def distribution(self, logits: torch.Tensor, slots: Sequence[int] | None = None) -> torch.Tensor:
        """The exact [B, V] distribution `sample` draws from (one-hot for greedy rows)."""
        if logits.dim() == 3:
            logits = logits[:, -1]
        plan = self._plan(slots, logits.shape[0])
        if plan.constrained:
            logits = self._constrained(logits, plan)[0]
        x = self.processed_logits(logits, plan)
        out = torch.zeros_like(x)
        if plan.any_greedy:
            out.scatter_(1, x.argmax(-1, keepdim=True), 1.0)
        if not plan.all_greedy:
            probs, order = self._probabilities(x, plan)
            probs = probs / probs.sum(-1, keepdim=True)
            if order is not None:
                probs = torch.zeros_like(x).scatter_(1, order, probs)
            mask = torch.tensor(plan.greedy, device=x.device)[:, None]
            out = torch.where(mask, out, probs)
        return out


__all__ = [
    "SamplingParams",
    "BatchSampler",
    "SampleOutput",
    "MODEL_CARD_DEFAULTS",
    "make_generator",
    "derived_seed",
    "generation_config_defaults",
    "generation_config_eos",
]
