"""Generation: prefill once, then one-token decode steps on a preallocated `LFM2State`.

    result = generate(model, "Once upon a time", tokenizer=tok, params=SamplingParams(max_tokens=64))
    result.text, result.token_ids, result.finish_reason, result.usage

    for chunk in stream_generate(model, [{"role": "user", "content": "Hi"}], tokenizer=tok):
        print(chunk.text, end="")                # chunk.events: reasoning / tool-call events

A prompt is text (encoded with a leading bos), a conversation (a list of message dicts,
rendered with the chat template), or token ids (a list of ints or a 1-D tensor). A list of
prompts is a batch: rows are left-padded to one length, run together, and each row stops on its
own; every row's tokens are those it would get alone. With `n > 1` the n completions of a
prompt share its prefill (the prefilled row is copied into n state rows) and draw from their
own generators (seed, seed-derived for the others).

Stopping: eos (config.json, generation_config.json and the tokenizer's eos; not with
`ignore_eos`), `stop_token_ids`, `stop` strings (text that might begin a stop string is held
back, and the stop string itself is never returned) and `max_tokens`. `token_ids` holds every
generated token, a final stop token included; `text` leaves stop tokens and stop strings out.

Context: a prompt plus `max_tokens` that does not fit the model's context (or the state passed
in) raises `ContextLengthError` with the numbers, unless `truncate=True`, which drops the oldest
prompt tokens to make room.

Per step the loop does one forward of [rows, 1] tokens, one batched sample and one `tolist()`;
finished rows are moved out of the running block (the last running row takes their place), so
a batch gets cheaper as its rows finish.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ContextLengthError, GenerationError
from ..model.state import LFM2State
from .completion import (
    FINISH_ABORT,
    Completion,
    StopStringMatcher,
    TokenLogprob,
    left_padded,
    logprob_entries,
    stop_token_ids,
)
from .sampling import GENERATION_CONFIG, BatchSampler, SamplingParams, derived_seed, generation_config_eos
from .shared_prefix import prefill_shared, worth_sharing
from .speculative import DEFAULT_K, Speculator, speculator


# ---- results ---------------------------------------------------------------------------------
@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    prefill_tokens: int = 0  # prompt tokens this call actually ran through the model

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationResult:
    """One completion: its tokens, text, why it stopped, and what it cost."""

    token_ids: list[int]
    text: str | None
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_ids: list[int]
    usage: Usage
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it
    logprobs: list[TokenLogprob] | None = None
    index: int = 0  # which of the prompt's n completions
    prompt_index: int = 0  # which prompt of the batch

    @functools.cached_property
    def message(self):
        """The text parsed as an assistant message (content, reasoning, tool calls)."""
        from ..text.chat import parse_assistant_message

        return parse_assistant_message(self.text or "")


@dataclass
class GenerationChunk:
    """What one decode step added to a streamed completion."""

    text: str  # newly visible text (may be empty)
    token_ids: list[int]  # the token(s) this step produced
    events: list = field(default_factory=list)  # lfmkit.chat.StreamParser events for `text`
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    result: GenerationResult | None = None  # set on the last chunk


# ---- per-row bookkeeping ---------------------------------------------------------------------
class _Row:
    """One sequence being generated: its prompt, tokens, text and logprobs; the stop rule is a
    `Completion` (completion.py), shared with the serving engine."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        stop_ids: frozenset[int],
        tokenizer,
        prompt_index: int,
        index: int,
        prefill_tokens: int,
    ):
        self.prompt_ids = prompt_ids
        self.params = params
        self.prompt_index = prompt_index
        self.index = index
        self.prefill_tokens = prefill_tokens
        self.token_ids: list[int] = []
        self.pieces: list[str] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.wants_logprobs else None
        decoder = tokenizer.incremental_decoder() if tokenizer is not None else None
        self.completion = Completion(stop_ids, params.max_tokens, decoder, params.stop)

    @property
    def finish_reason(self) -> str | None:
        return self.completion.finish_reason

    @property
    def has_text(self) -> bool:
        return self.completion.decoder is not None

    def accept(self, token: int, logprob: TokenLogprob | None) -> str:
        """Take one sampled token; return the text it makes visible (with the held-back tail
        when it finishes the row)."""
        self.token_ids.append(token)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        text = self.completion.accept(token)
        if self.completion.finish_reason is not None:
            text += self.completion.flush()
        self.pieces.append(text)
        return text

    def abort(self) -> str:
        self.completion.finish_reason = FINISH_ABORT
        text = self.completion.flush()
        self.pieces.append(text)
        return text

    def result(self) -> GenerationResult:
        return GenerationResult(
            token_ids=list(self.token_ids),
            text="".join(self.pieces) if self.has_text else None,
            finish_reason=self.finish_reason or FINISH_ABORT,
            prompt_ids=self.prompt_ids,
            usage=Usage(len(self.prompt_ids), len(self.token_ids), self.prefill_tokens),
            stop_reason=self.completion.stop_reason,
            logprobs=self.logprobs,
            index=self.index,
            prompt_index=self.prompt_index,
        )


# ---- prompts ---------------------------------------------------------------------------------
def _is_single_prompt(prompts: Any) -> bool:
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, torch.Tensor):
        return prompts.dim() == 1
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise GenerationError("prompt: empty list (give text, token ids or messages)")
        first = prompts[0]
        if isinstance(first, (list, tuple, str, torch.Tensor)):
            return False  # a batch of prompts
        return True  # token ids (ints, numpy ints) or message dicts
    raise GenerationError(f"prompt: expected text, token ids or messages, got {type(prompts).__name__}")


def encode_prompt(prompt: Any, tokenizer, tools=None, chat_template_kwargs: dict | None = None) -> list[int]:
    """Token ids for one prompt: ids as given, text with a leading bos, messages via the template."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() != 1:
            raise GenerationError(f"prompt: a token-id tensor must be 1-D, got shape {tuple(prompt.shape)}")
        return [int(t) for t in prompt.tolist()]
    if isinstance(prompt, str):
        if tokenizer is None:
            raise GenerationError("prompt: text needs a tokenizer (pass tokenizer=...)")
        bos = tokenizer.bos_token
        return tokenizer.encode(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
        if tokenizer is None:
            raise GenerationError("prompt: messages need a tokenizer with a chat template (pass tokenizer=...)")
        text = tokenizer.apply_chat_template(
            list(prompt), tools=tools, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
        return tokenizer.encode(text)
    if isinstance(prompt, (list, tuple)):
        ids = []
        for t in prompt:
            if isinstance(t, bool) or not hasattr(t, "__index__"):
                raise GenerationError(f"prompt: token ids must be integers, got {t!r}")
            ids.append(int(t))
        return ids
    raise GenerationError(f"prompt: expected text, token ids or messages, got {type(prompt).__name__}")


@functools.lru_cache(maxsize=16)
def _generation_config_eos(path: str, mtime_ns: int) -> tuple[int, ...]:
    return tuple(generation_config_eos(path))


def eos_token_ids(model, tokenizer=None) -> set[int]:
    """Every id that ends a completion: config.json, generation_config.json, the tokenizer."""
    ids = set(model.config.eos_token_ids)
    path = getattr(model, "source_path", None)
    if path:
        try:  # read once per version of the file
            mtime = (Path(path) / GENERATION_CONFIG).stat().st_mtime_ns
        except OSError:
            mtime = 0
        if mtime:
            ids.update(_generation_config_eos(str(path), mtime))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def load_tokenizer_for(model):
    """The tokenizer shipped with a loaded checkpoint (None when it has none; a TokenizerError
    naming the file when it ships one that does not load)."""
    from ..text.tokenizer import Tokenizer

    path = getattr(model, "source_path", None)
    return None if path is None else Tokenizer.from_checkpoint(path)


def _context_check(
    model, prompt_ids: list[int], params: SamplingParams, truncate: bool, limit: int, what: str, index: int | None
) -> list[int]:
    """The prompt, or its newest tokens when truncating; ContextLengthError when it cannot fit."""
    who = "prompt" if index is None else f"prompt {index}"
    if not prompt_ids:
        raise GenerationError(f"{who}: no tokens")
    need = len(prompt_ids) + params.max_tokens
    if need <= limit:
        return prompt_ids
    if truncate and params.max_tokens < limit:
        return prompt_ids[len(prompt_ids) - (limit - params.max_tokens) :]
    raise ContextLengthError(
        f"{who} has {len(prompt_ids)} tokens and max_tokens is {params.max_tokens}: {need} tokens do not fit "
        f"{what} of {limit} tokens (shorten the prompt, lower max_tokens, or pass truncate=True)"
    )


# ---- the decode loop -------------------------------------------------------------------------
@torch.no_grad()
def decode_rows(
    model,
    state: LFM2State,
    logits: torch.Tensor,
    rows: list[_Row],
    sampler: BatchSampler,
    should_stop: Callable[[], bool] | None = None,
    spec: Speculator | None = None,
    drafters: list | None = None,
) -> Iterator[list[tuple[_Row, str, int]]]:
    """Sample and feed tokens until every row has finished.

    `logits` [len(rows), V] are the prefill's last-position logits; row i of the state and
    slot i of the sampler belong to rows[i]. Yields, per step, (row, new text, token) for each
    row that got a token. A finished row's last token is never fed to the model; the running
    rows are kept in the first state rows (a finished row's place is taken by the last one).
    With `spec`, tokens are drafted and verified several per forward (speculative.py), with
    the same results and one yield per emitted position; `drafters` (one per row) default to
    fresh ones.
    """
    if spec is not None:
        yield from spec.decode_rows(model, state, logits, rows, sampler, should_stop, drafters)
        return
    running = list(range(len(rows)))  # running[i]: the row (and sampler slot) in state row i
    step_ids = torch.empty(len(rows), 1, dtype=torch.long, device=logits.device)
    while True:
        if should_stop is not None and should_stop():
            yield [(rows[r], rows[r].abort(), -1) for r in running]
            return
        out = sampler.sample(logits, running)
        tokens = out.tokens.tolist()
        entries = logprob_entries(out, [rows[r].params for r in running])
        step = []
        for i, r in enumerate(running):
            text = rows[r].accept(tokens[i], entries[i])
            step.append((rows[r], text, tokens[i]))
        yield step
        done = [i for i, r in enumerate(running) if rows[r].finish_reason is not None]
        if len(done) == len(running):
            return
        if done:
            # Fill each finished row's place with the last running row (highest place first).
            keep = out.tokens
            for i in reversed(done):
                last = len(running) - 1
                if i != last:
                    state.copy_row(state, last, i)
                    keep[i] = keep[last]
                    running[i] = running[last]
                running.pop()
            state = state.rows(0, len(running))
            step_ids = step_ids[: len(running)]
            step_ids[:, 0].copy_(keep[: len(running)])
        else:
            step_ids[:, 0].copy_(out.tokens)
        logits = model(step_ids, state=state)[:, -1]


@torch.no_grad()
def prefill(
    model, state: LFM2State, prompts: list[list[int]], pad_id: int | None = None, chunk_size: int | None = None
) -> torch.Tensor:
    """Run left-padded prompts (one per state row) into the state; return last logits [B, V]."""
    ids, mask = left_padded(prompts, model.config.pad_token_id if pad_id is None else pad_id)
    device = model.device
    return model.prefill(
        ids.to(device), state, attention_mask=mask.to(device) if mask is not None else None, chunk_size=chunk_size
    )[:, -1]


def _prepare(model, prompts, params, tokenizer, tools, chat_template_kwargs, overrides):
    single = _is_single_prompt(prompts)
    prompt_list = [prompts] if single else list(prompts)
    if params is None:
        params = SamplingParams.for_model(model, **overrides)
    elif overrides:
        params = params.replace(**overrides) if isinstance(params, SamplingParams) else params
    params_list = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompt_list)
    if len(params_list) != len(prompt_list):
        raise GenerationError(f"params: {len(params_list)} SamplingParams for {len(prompt_list)} prompts")
    for p in params_list:
        if not isinstance(p, SamplingParams):
            raise GenerationError(f"params: expected SamplingParams, got {type(p).__name__}")
        p.validate()
    needs_text = any(
        isinstance(p, str) or (isinstance(p, (list, tuple)) and p and isinstance(p[0], dict)) for p in prompt_list
    ) or any(p.stop for p in params_list)
    if tokenizer is None and needs_text:
        tokenizer = load_tokenizer_for(model)
        if tokenizer is None:
            raise GenerationError(
                "text prompts, messages and stop strings need a tokenizer, and the model's "
                "checkpoint has none: pass tokenizer=..."
            )
    ids = [encode_prompt(p, tokenizer, tools, chat_template_kwargs) for p in prompt_list]
    return single, ids, params_list, tokenizer


def _start(
    model,
    prompts,
    params,
    tokenizer,
    *,
    tools=None,
    chat_template_kwargs=None,
    truncate=False,
    max_length=None,
    prefill_chunk=None,
    headroom=0,
    share_prefix=False,
    **overrides,
):
    """Encode, check, allocate, prefill; return (single, rows, state, logits, sampler).
    `headroom`: state slots past the longest prompt plus max_tokens (drafts verified there)."""
    single, ids, params_list, tokenizer = _prepare(
        model, prompts, params, tokenizer, tools, chat_template_kwargs, overrides
    )
    context = model.config.max_position_embeddings
    for i, (p, sp) in enumerate(zip(ids, params_list)):
        ids[i] = _context_check(model, p, sp, truncate, context, "the model's context", None if single else i)
    width = max(len(p) for p in ids)
    need = width + max(sp.max_tokens for sp in params_list)
    if max_length is not None and need > max_length:
        raise ContextLengthError(
            f"the longest prompt ({width} tokens) plus max_tokens "
            f"({need - width}) needs {need} tokens; max_length is {max_length}"
        )
    vocab = model.config.vocab_size
    for i, p in enumerate(ids):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise GenerationError(
                f"prompt{'' if single else f' {i}'}: token id {bad[0]} is outside the model's vocabulary (size {vocab})"
            )
    n_rows = sum(sp.n for sp in params_list)
    state = model.new_state(batch_size=n_rows, max_length=(max_length or need) + headroom)
    sampler = BatchSampler(vocab, n_rows, device=model.device)
    rows: list[_Row] = []
    for i, (p, sp) in enumerate(zip(ids, params_list)):
        stop_ids = stop_token_ids(sp, eos_token_ids(model, tokenizer))
        for k in range(sp.n):
            sampler.add_row(len(rows), sp, p, seed=derived_seed(sp.seed, k))
            rows.append(_Row(p, sp, stop_ids, tokenizer, i, k, len(p) if k == 0 else 0))
    if n_rows == len(ids) and share_prefix:
        logits = _prefill_unpadded(model, state, ids, prefill_chunk)
    elif n_rows == len(ids):
        logits = prefill(model, state, ids, chunk_size=prefill_chunk)
    else:
        # n > 1: prefill each prompt once into a side state, then copy it into its n rows
        # without its left padding (padding-free rows take the fused decode step).
        side = model.new_state(batch_size=len(ids), max_length=width)
        first = prefill(model, side, ids, chunk_size=prefill_chunk)
        for row, p in enumerate(ids):
            side.drop_left_padding(row, width - len(p))
        owner = [r.prompt_index for r in rows]
        for row, src in enumerate(owner):
            state.copy_row(side, src, row)
        logits = first[torch.tensor(owner, device=first.device)]
        del side
    return single, rows, state, logits, sampler


def _prefill_unpadded(model, state: LFM2State, ids: list[list[int]], chunk_size: int | None) -> torch.Tensor:
    """Prefill leaving every row unpadded: a long common prefix once (shared_prefix.py), else one
    left-padded pass whose padding is then dropped (padding-free rows take the fused decode step)."""
    shared = worth_sharing(ids)
    if shared:
        return prefill_shared(model, state, ids, shared)
    logits = prefill(model, state, ids, chunk_size=chunk_size)
    width = max(len(p) for p in ids)
    for row, p in enumerate(ids):
        state.drop_left_padding(row, width - len(p))
    return logits


def generate(
    model,
    prompts,
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    tokenizer=None,
    tools=None,
    chat_template_kwargs: dict | None = None,
    truncate: bool = False,
    max_length: int | None = None,
    prefill_chunk: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    draft=None,
    draft_k: int = DEFAULT_K,
    share_prefix: bool = False,
    **overrides,
):
    """Generate completions for one prompt or a batch.

    Returns one `GenerationResult` for a single prompt with n == 1, else a list (prompt-major:
    all n completions of prompt 0, then of prompt 1, ...). `params` defaults to the checkpoint's
    generation_config.json / the model card; keyword overrides (max_tokens=..., seed=...) apply
    on top. `params` may also be one SamplingParams per prompt.

    draft: speculative decoding (speculative.py): a draft model with the same vocabulary,
    "ngram" (prompt lookup) or a `Speculator`; `draft_k` tokens drafted per step. Greedy output
    is the same as without it; sampled output has the same distribution.

    `share_prefix` (n == 1) prefills a batch's long common prefix (few-shot examples) once and
    leaves rows unpadded.
    """
    spec = speculator(draft, draft_k)
    single, rows, state, logits, sampler = _start(
        model,
        prompts,
        params,
        tokenizer,
        tools=tools,
        chat_template_kwargs=chat_template_kwargs,
        truncate=truncate,
        max_length=max_length,
        prefill_chunk=prefill_chunk,
        headroom=spec.k if spec is not None else 0,
        share_prefix=share_prefix,
        **overrides,
    )
    for _ in decode_rows(model, state, logits, rows, sampler, should_stop, spec):
        pass
    results = [r.result() for r in rows]
    return results[0] if single and len(results) == 1 else results


def stream_generate(
    model,
    prompt,
    params: SamplingParams | None = None,
    *,
    tokenizer=None,
    tools=None,
    chat_template_kwargs: dict | None = None,
    truncate: bool = False,
    max_length: int | None = None,
    prefill_chunk: int | None = None,
    parse: bool = True,
    should_stop: Callable[[], bool] | None = None,
    draft=None,
    draft_k: int = DEFAULT_K,
    **overrides,
) -> Iterator[GenerationChunk]:
    """Stream one completion of one prompt: a `GenerationChunk` per generated token.

    Each chunk carries the newly visible text and, with `parse=True` and a tokenizer, the
    `lfmkit.chat.StreamParser` events for it (reasoning, content, tool calls). The last chunk
    has `finish_reason` and the whole `result`. `draft` / `draft_k`: as in `generate`.
    """
    spec = speculator(draft, draft_k)
    if not _is_single_prompt(prompt):
        raise GenerationError("stream_generate takes one prompt; use generate() for a batch")
    single, rows, state, logits, sampler = _start(
        model,
        prompt,
        params,
        tokenizer,
        tools=tools,
        chat_template_kwargs=chat_template_kwargs,
        truncate=truncate,
        max_length=max_length,
        prefill_chunk=prefill_chunk,
        headroom=spec.k if spec is not None else 0,
        **overrides,
    )
    if len(rows) != 1:
        raise GenerationError("stream_generate streams one completion: 'n' must be 1")
    yield from stream_rows(model, state, logits, rows[0], sampler, parse=parse, should_stop=should_stop, spec=spec)


def stream_rows(
    model,
    state,
    logits,
    row: _Row,
    sampler,
    parse: bool = True,
    should_stop: Callable[[], bool] | None = None,
    spec: Speculator | None = None,
    drafters: list | None = None,
) -> Iterator[GenerationChunk]:
    """The streaming form of `decode_rows` for one row (used by stream_generate and ChatSession)."""
    parser = None
    if parse and row.has_text:
        from ..text.chat import StreamParser

        parser = StreamParser()
    for step in decode_rows(model, state, logits, [row], sampler, should_stop, spec, drafters):
        for r, text, token in step:
            events = parser.feed(text) if parser is not None and text else []
            chunk = GenerationChunk(
                text=text,
                token_ids=[token] if token >= 0 else [],
                events=events,
                logprobs=[r.logprobs[-1]] if r.logprobs and token >= 0 else [],
            )
            if r.finish_reason is not None:
                if parser is not None:
                    chunk.events = chunk.events + parser.finish()
                chunk.finish_reason = r.finish_reason
                chunk.result = r.result()
            yield chunk


__all__ = [
    "generate",
    "stream_generate",
    "GenerationResult",
    "GenerationChunk",
    "TokenLogprob",
    "Usage",
    "StopStringMatcher",
    "prefill",
    "decode_rows",
    "eos_token_ids",
    "encode_prompt",
]
