"""Continuous batching: many concurrent requests share one running batch.

One background thread owns the model and an `LFM2State` with `max_concurrent` rows (slots).
Every step it

1. drops cancelled requests, freeing their slots at once;
2. prefills waiting requests in arrival order, at most `prefill_chunk` prompt tokens per step
   while other streams are running (so they stall for at most one chunk). Short prompts are
   prefilled together in ONE left-padded forward straight into free rows, and each row's left
   padding is then removed (`LFM2State.drop_left_padding`), so a row holds only its own tokens
   and its prompt plus max_tokens always fit; a prompt longer than the budget is prefilled
   chunk by chunk in a batch-1 side state over several steps and then copied
   (`LFM2State.copy_row`) into a free row. `n` choices share one prefill (row copies);
3. runs ONE batched forward over all running sequences (rows at different lengths: the state
   writes each row's K/V at its own slot), samples one token per row with that row's own
   parameters, RNG and penalty history (`sampling.BatchSampler`: one sampler row per
   sequence, independent of the state row it occupies), and hands each token to its request.

With a prefix cache (`cache_mb` > 0; prefix_cache.py) a prompt first looks for its longest
cached prefix: one that resumes from it (or that the cache wants snapshotted part-way, at an
interval of a long prompt or where it leaves a cached path) goes through the side state, its
prefix restored there, and prefills only the rest, pausing at those snapshot points; every
prompt's end (with its logits) and every finished answer's end are offered to the cache. A
row's K/V and windows are then what a fresh prefill gives, so outputs do not change (tests
compare with `cache_mb=0`); `RequestHandle.cached_tokens` says how many prompt tokens came back.

Running sequences always occupy the lowest slots `[0, running)`: when one ends, the last row
is moved into its hole. The decode forward runs on a zero-copy view of those rows, so a
half-empty batch costs what a small batch costs.

Requests are isolated: whatever raises while serving one request (its prefill, its decode, its
sampling, its stop check, its cancel) ends that request alone with an `ErrorEvent`. A forward
that fails for a group of rows is retried row by row (a failed decode first puts the rows back
as they were), so only a row that fails by itself is blamed. `_fail_all` is left for a broken
engine (its own bookkeeping raising), never for one request's trouble.

With `EngineConfig.draft` (a draft model or "ngram"), step 3 is speculative (speculative.py): each
sequence has its own drafter, ONE forward verifies every row's drafts (rows padded to the
longest draft), and each row takes its accepted drafts plus the target's next token; a row's
output is what it gets without drafts and alone in the batch.

Consumers get a `RequestHandle` (handle.py): an (async or sync) iterator of `TokenEvent`,
`FinishEvent` and `ErrorEvent`, and `cancel()`. Text is detokenized incrementally here, and
stop strings are matched here (held back until they can no longer start a stop string, and
never sent).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import ContextLengthError, GenerationError
from ..model.state import LFM2State
from .completion import Completion, logprob_entries, stop_token_ids
from .generate import eos_token_ids, prefill
from .handle import ErrorEvent, FinishEvent, RequestHandle, TokenEvent
from .metrics import ServingMetrics
from .prefix_cache import DEFAULT_CACHE_MB, DEFAULT_INTERVAL, PrefixCache, Resume
from .sampling import BatchSampler, SamplingParams, derived_seed
from .speculative import DEFAULT_K, SpecRow, speculator

log = logging.getLogger("lfmkit.engine")


class EngineOverloadedError(GenerationError):
    """Too many requests are waiting (HTTP 429), or the engine is stopped (HTTP 503)."""

    def __init__(self, message: str, retry_after: float = 1.0, stopped: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.stopped = stopped


@dataclass
class EngineConfig:
    max_concurrent: int = 8  # batch slots = sequences decoded together
    max_queued: int = 64  # requests allowed to wait for a slot; beyond: 429
    max_length: int | None = None  # tokens per slot (prompt + completion); None: min(context, 4096)
    prefill_chunk: int = 128  # prompt tokens prefilled per step while streams are running
    draft: object = None  # speculative decoding: a draft model (same vocabulary) or "ngram"
    draft_k: int = DEFAULT_K  # tokens drafted per sequence per step
    cache_mb: float = DEFAULT_CACHE_MB  # prefix cache budget (prefix_cache.py); 0: no cache
    cache_interval: int = DEFAULT_INTERVAL  # tokens between prefix-cache snapshots in a long prompt

    def validate(self) -> None:
        for name in ("max_concurrent", "prefill_chunk"):
            if int(getattr(self, name)) < 1:
                raise GenerationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queued < 0:
            raise GenerationError(f"max_queued must be >= 0, got {self.max_queued}")
        if self.max_length is not None and self.max_length < 2:
            raise GenerationError(f"max_length must be >= 2, got {self.max_length}")
        if not self.cache_mb >= 0:
            raise GenerationError(f"cache_mb must be >= 0, got {self.cache_mb}")
        if self.cache_interval < 1:
            raise GenerationError(f"cache_interval must be >= 1, got {self.cache_interval}")


@dataclass(eq=False)
class _Request:
    handle: RequestHandle
    prompt: list[int]
    params: SamplingParams
    max_new: int  # completion tokens allowed per choice
    skip_special_tokens: bool
    prefilled: int = 0
    open: int = 0  # choices still generating
    resume: Resume = field(default_factory=Resume)  # what the prefix cache restored, where to snapshot


@dataclass(eq=False)
class _Sequence:
    """One choice of a request, living in one batch slot."""

    request: _Request
    index: int
    slot: int
    completion: Completion  # its stop rule and text (shared with generate)
    sampler_slot: int  # its row in the BatchSampler (stable while it lives)
    filled: int  # state slots its row uses (prompt and tokens fed, no padding)
    tokens: list[int] = field(default_factory=list)
    last_time: float = 0.0
    drafter: object = None  # its drafter (speculative decoding), with the draft's own state


class Engine:
    """Continuous-batching generation over one model (see the module docstring)."""

    def __init__(
        self, model, tokenizer=None, config: EngineConfig | None = None, metrics: ServingMetrics | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.config = cfg = config or EngineConfig()
        cfg.validate()
        self.max_length = cfg.max_length or min(model.config.max_position_embeddings, 4096)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.vocab_size = model.config.vocab_size
        self.spec = speculator(cfg.draft, cfg.draft_k)
        if self.spec is not None:
            self.spec.check(model)
        headroom = self.spec.k if self.spec is not None else 0  # verified drafts run past a row's end
        self.state: LFM2State = model.new_state(cfg.max_concurrent, self.max_length + headroom)
        self._side: LFM2State = model.new_state(1, self.max_length)
        # one drafter per sampler slot, reused by the sequences that hold it (memory reserved once)
        self._drafters = (
            [self.spec.new_drafter(self.max_length) for _ in range(cfg.max_concurrent)] if self.spec else []
        )
        self.sampler = BatchSampler(self.vocab_size, cfg.max_concurrent, device=model.device)
        self._free_sampler_slots = list(range(cfg.max_concurrent - 1, -1, -1))
        self.cache = PrefixCache.from_mb(model, cfg.cache_mb, cfg.cache_interval)
        self.metrics = metrics or ServingMetrics()
        self.metrics.bind_cache(self.cache)
        self.metrics.queue_depth.bind(self.queue_depth)
        self.metrics.running.bind(self.active_sequences)
        self.metrics.slots.set(cfg.max_concurrent)
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._waiting: deque[_Request] = deque()  # guarded by _cv
        self._running: list[_Sequence] = []  # _running[i].slot == i; engine thread only
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0

    # ---- public API ----------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lfmkit-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop thread; requests still waiting or running get an ErrorEvent."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            req.handle._push(ErrorEvent("the server is shutting down"))
        for req in {id(s.request): s.request for s in self._running}.values():
            req.handle._push(ErrorEvent("the server is shutting down"))
        self._running = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def queue_depth(self) -> int:
        """Requests accepted but not yet generating (waiting for a slot or being prefilled)."""
        return len(self._waiting)

    def active_sequences(self) -> int:
        """Sequences holding a batch slot."""
        return len(self._running)

    def check_request(self, prompt: list[int], params: SamplingParams) -> int:
        """Raise if the request can never run here; return its completion-token limit."""
        params.validate()
        if not prompt:
            raise GenerationError("the prompt is empty: give at least one token")
        bad = next((t for t in prompt if not 0 <= int(t) < self.vocab_size), None)
        if bad is not None:
            raise GenerationError(f"prompt token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        room = self.max_length - len(prompt)
        if room < 1:
            raise ContextLengthError(
                f"this model's maximum context length is {self.max_length} tokens, but the prompt has "
                f"{len(prompt)} tokens, leaving no room for the completion"
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthError(
                f"this model's maximum context length is {self.max_length} tokens, but {len(prompt)} prompt "
                f"tokens plus max_tokens={params.max_tokens} need {len(prompt) + params.max_tokens}"
            )
        n = params.n or 1
        if n > self.config.max_concurrent:
            raise GenerationError(
                f"n={n} is more than this server's {self.config.max_concurrent} concurrent sequences (--max-concurrent)"
            )
        return room if params.max_tokens is None else int(params.max_tokens)

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        request_id: str | None = None,
        skip_special_tokens: bool = True,
    ) -> RequestHandle:
        """Queue a request; events arrive on the returned handle (async iteration if `loop`).

        Raises ContextLengthError / GenerationError for a request that can never run here and
        EngineOverloadedError when the queue is full or the engine is not running.
        """
        if not self.running:
            self.check_request(prompt, params)
            raise EngineOverloadedError("the engine is not running", retry_after=5.0, stopped=True)
        return self.enqueue(prompt, params, loop=loop, request_id=request_id, skip_special_tokens=skip_special_tokens)

    def enqueue(
        self,
        prompt: list[int],
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        request_id: str | None = None,
        skip_special_tokens: bool = True,
    ) -> RequestHandle:
        """`submit` without the loop thread: for a caller that runs `step()` itself (offline.py)."""
        max_new = self.check_request(prompt, params)
        n = params.n or 1
        handle = RequestHandle(request_id or f"req-{next(self._ids)}", n, len(prompt), loop)
        handle._wake = self._wake
        req = _Request(handle, [int(t) for t in prompt], params, max_new, skip_special_tokens, open=n)
        with self._cv:
            if len(self._waiting) >= self.config.max_queued + self._free_slots():
                self.metrics.rejected.inc()
                raise EngineOverloadedError(
                    f"the server is busy: {len(self._waiting)} requests are waiting for a slot "
                    f"(limit {self.config.max_queued}); retry later",
                    retry_after=self._retry_after(),
                )
            self._waiting.append(req)
            self._cv.notify_all()
        return handle

    def _free_slots(self) -> int:
        return max(0, self.config.max_concurrent - len(self._running))

    def _retry_after(self) -> float:
        """A rough wait: the mean time per request so far, at least one second."""
        h = self.metrics.request_latency
        return max(1.0, h.total / h.count) if h.count else 1.0

    # ---- the loop ------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._running):
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:  # never let one bad step kill the server
                log.exception("engine step failed")
                self._fail_all(f"internal error during generation ({type(exc).__name__})")

    @torch.no_grad()
    def step(self) -> None:
        """One scheduling step: drop cancelled work, prefill within budget, one decode forward.
        The engine thread calls it; a test (or a caller without the thread) may call it directly."""
        self.steps += 1
        self._drop_cancelled()
        budget = self.config.prefill_chunk if self._running else max(self.config.prefill_chunk, 2048)
        while budget > 0:
            with self._cv:
                head = self._waiting[0] if self._waiting else None
            if head is None:
                break
            if head.prefilled or len(head.prompt) > budget or self._alone(head):
                # A long prompt, or one the prefix cache resumes or snapshots part-way: chunk by
                # chunk in the side state, FIFO (nobody overtakes it).
                if not head.prefilled and head.handle.n > self._free_slots():
                    break
                budget -= self._prefill_chunk(head, budget)
                continue
            group = self._take_group(budget)
            if not group:
                break  # not enough free slots yet
            budget -= self._prefill_group(group)
        if self._running:
            began, before = time.perf_counter(), self.metrics.generation_tokens.value()
            (self._speculate if self.spec is not None else self._decode)(list(self._running))
            self.metrics.decode_seconds.inc(time.perf_counter() - began)
            self.metrics.decode_tokens.inc(self.metrics.generation_tokens.value() - before)

    def _take_group(self, budget: int) -> list[_Request]:
        """Waiting requests (from the front) whose left-padded prompts fit `budget` together."""
        group: list[_Request] = []
        longest, slots = 0, self._free_slots()
        with self._cv:
            for req in self._waiting:
                size = max(longest, len(req.prompt)) * (len(group) + 1)
                if req.prefilled or size > budget or req.handle.n > slots or self._alone(req):
                    break
                group.append(req)
                longest, slots = max(longest, len(req.prompt)), slots - req.handle.n
        return group

    def _alone(self, req: _Request) -> bool:
        """The prefix cache would resume this prompt, or snapshot it part-way: it is prefilled
        alone (a left-padded group cannot start rows at different points)."""
        if self.cache is None:
            return False
        plan = self.cache.lookup(req.prompt)
        return bool(plan.tokens or plan.stops)

    def _snapshot(self, tokens: list[int], state: LFM2State, row: int, logits: torch.Tensor | None = None) -> None:
        """Offer a state row to the prefix cache; a failure to store is logged, never a request's."""
        if self.cache is None:
            return
        try:
            self.cache.store(tokens, state, row, logits)
        except Exception:
            log.exception("the prefix cache could not store a snapshot")

    def _drop_cancelled(self) -> None:
        with self._cv:
            gone = [r for r in self._waiting if r.handle.cancelled]
            for req in gone:
                self._waiting.remove(req)
        for req in gone:
            if req.prefilled:
                self._side.reset()
            with self._blame(req, "the cancel"):
                for index in range(req.handle.n):
                    req.handle._push(FinishEvent(index, "cancelled"))
        for seq in [s for s in self._running if s.request.handle.cancelled]:
            if self._alive(seq):
                with self._blame(seq.request, "the cancel"):
                    self._finish(seq, "cancelled")

    def _prefill_group(self, group: list[_Request]) -> int:
        """Take `group` off the queue and prefill it (see `_prefill_rows`); return its cost."""
        with self._cv:
            for _ in group:
                self._waiting.popleft()
        self.metrics.prompt_tokens.inc(sum(len(r.prompt) for r in group))
        if self.cache is not None:
            self.cache.count_misses(len(group))
        self._prefill_rows(group)
        return len(group) * max(len(r.prompt) for r in group)

    def _prefill_rows(self, group: list[_Request]) -> None:
        """Prefill whole prompts in ONE left-padded forward straight into the next free rows, drop
        each row's padding and start the sequences. If the forward fails, each prompt is retried
        alone, so only a prompt that fails by itself is blamed."""
        first, k = len(self._running), len(group)
        width = max(len(r.prompt) for r in group)
        view = self.state.rows(first, first + k, [0] * k, dense=True)
        try:
            logits = prefill(self.model, view, [r.prompt for r in group], pad_id=0, chunk_size=width)
        except Exception as exc:
            self.state.reset(rows=list(range(first, first + k)))
            if k == 1:
                self._fail_request(group[0], "prefill", exc)
                return
            log.warning("a grouped prefill of %d prompts failed (%r); prefilling them one by one", k, exc)
            for req in group:
                self._prefill_rows([req])
            return
        seqs = []
        for i, req in enumerate(group):  # rows first .. first+k-1
            self.state.drop_left_padding(first + i, width - len(req.prompt))
            self._snapshot(req.prompt, self.state, first + i, logits[i])
            seqs.append(self._start_sequence(req, 0, len(req.prompt)))
        rows = list(range(k))
        for i, req in enumerate(group):
            for index in range(1, req.handle.n):  # more choices: copies
                self.state.copy_row(self.state, first + i, len(self._running))
                seqs.append(self._start_sequence(req, index, len(req.prompt)))
                rows.append(i)
        self._emit(seqs, logits[rows])

    def _prefill_chunk(self, req: _Request, budget: int) -> int:
        """Prefill up to `budget` prompt tokens of a prompt in the side state (first restoring its
        longest cached prefix; pausing at the cache's snapshot points); start its sequences when done."""
        if not req.prefilled and self.cache is not None:
            req.resume = self.cache.resume(req.prompt, self._side, 0)
            req.prefilled = req.handle.cached_tokens = req.resume.tokens
        logits = req.resume.logits  # set when the whole prompt was cached
        chunk = req.prompt[
            req.prefilled : min(req.prefilled + budget, req.resume.next_stop(req.prefilled, len(req.prompt)))
        ]
        if chunk:
            ids = torch.tensor([chunk], dtype=torch.long, device=self.model.device)
            try:
                logits = self.model(ids, state=self._side, logits_to_keep=1)[0, -1]
            except Exception as exc:
                self._fail_request(req, "prefill", exc)
                return len(chunk)
            req.prefilled += len(chunk)
            self.metrics.prompt_tokens.inc(len(chunk))
            if req.prefilled in req.resume.stops or req.prefilled == len(req.prompt):
                done = req.prefilled == len(req.prompt)
                self._snapshot(req.prompt[: req.prefilled], self._side, 0, logits if done else None)
        if req.prefilled < len(req.prompt):
            return len(chunk)
        with self._cv:
            self._waiting.popleft()
        seqs = []
        for index in range(req.handle.n):
            self.state.copy_row(self._side, 0, len(self._running))
            seqs.append(self._start_sequence(req, index, len(req.prompt)))
        self._side.reset()
        self._emit(seqs, logits[None].expand(len(seqs), -1))
        return len(chunk)

    def _start_sequence(self, req: _Request, index: int, filled: int) -> _Sequence:
        """Register choice `index` of `req` in the next running slot (its state row is ready)."""
        decoder = None
        if self.tokenizer is not None:
            decoder = self.tokenizer.incremental_decoder(skip_special_tokens=req.skip_special_tokens)
        completion = Completion(
            stop_token_ids(req.params, self.eos_ids), req.max_new, decoder, list(req.params.stop or [])
        )
        sampler_slot = self._free_sampler_slots.pop()
        self.sampler.add_row(sampler_slot, req.params, req.prompt, seed=derived_seed(req.params.seed, index))
        seq = _Sequence(req, index, len(self._running), completion, sampler_slot, filled)
        if self.spec is not None:
            seq.drafter = self._drafters[sampler_slot]
            self.spec.start(seq.drafter, req.params, derived_seed(req.params.seed, index))
        self._running.append(seq)
        return seq

    def _decode(self, seqs: list[_Sequence]) -> None:
        """One forward over `seqs` (consecutive running rows), one token each. If it fails, the
        rows are put back as they were (a snapshot of their conv windows and counters; K/V past
        each row's length is rewritten anyway) and each row is retried alone, so only a row
        that fails by itself is blamed."""
        start = seqs[0].slot
        view = self.state.rows(start, start + len(seqs), [s.filled for s in seqs], dense=True)
        saved = view.snapshot() if len(seqs) > 1 else None
        ids = torch.tensor([[s.tokens[-1]] for s in seqs], dtype=torch.long, device=self.model.device)
        try:
            logits = self.model(ids, state=view, logits_to_keep=1)[:, -1]
        except Exception as exc:
            if saved is None:
                self._fail_request(seqs[0].request, "decode", exc)
                return
            log.warning("a decode step of %d rows failed (%r); retrying each row alone", len(seqs), exc)
            view.restore(saved)
            for seq in seqs:
                if self._alive(seq):
                    self._decode([seq])
            return
        for s in seqs:
            s.filled += 1
        self._emit(seqs, logits)

    def _speculate(self, seqs: list[_Sequence]) -> None:
        """`_decode` with drafts (speculative.py): ONE verify forward over `seqs`, then each
        sequence gets its accepted drafts and the target's next token, in order, until it stops.
        A failed step is undone and retried row by row, as in `_decode`."""
        start = seqs[0].slot
        view = self.state.rows(start, start + len(seqs), [s.filled for s in seqs], dense=True)
        saved = view.snapshot() if len(seqs) > 1 else None
        rows = [
            SpecRow(
                s.request.prompt + s.tokens,
                s.drafter,
                s.sampler_slot,
                s.request.params,
                s.completion.max_tokens - s.completion.count,
                s.completion.stop_ids,
            )
            for s in seqs
        ]
        try:
            check = self.spec.verify(self.model, view, rows, self.sampler)
        except Exception as exc:
            if saved is None:
                self._fail_request(seqs[0].request, "decode", exc)
                return
            log.warning("a verify step of %d rows failed (%r); retrying each row alone", len(seqs), exc)
            view.restore(saved)
            for seq in seqs:
                if self._alive(seq):
                    self._speculate([seq])
            return
        self.metrics.draft_tokens.inc(sum(v.drafted for v in check.verdicts))
        self.metrics.accepted_tokens.inc(sum(v.accepted for v in check.verdicts))
        now = time.perf_counter()
        ends = [self._take_tokens(seq, v, now) for seq, v in zip(seqs, check.verdicts)]
        # Keep in each row only what its sequence took (a stop string may end it inside the
        # accepted drafts), before any row moves, so a finished answer's state is exact.
        check.commit([max(kept, 1) for kept, _ in ends])
        for seq, (kept, _) in zip(seqs, ends):
            seq.filled += max(kept, 1)
        for seq, (_, end) in zip(seqs, ends):
            if end is None or not self._alive(seq):
                continue
            if isinstance(end, Exception):
                self._fail_request(seq.request, "the stop check", end)
            else:
                with self._blame(seq.request, "the stop check"):
                    self._finish(seq, end)

    def _take_tokens(self, seq: _Sequence, verdict, now: float) -> tuple[int, str | Exception | None]:
        """Hand a verify step's tokens to `seq` in order, without finishing it yet: how many it
        took, and how it ends (a finish reason, "cancelled", the exception its stop check raised,
        or None while it runs on)."""
        kept = 0
        for tok, entry in zip(verdict.tokens, verdict.logprobs):
            if seq.request.handle.cancelled:
                return kept, "cancelled"
            kept += 1
            try:
                if self._accept_token(seq, tok, entry, now):
                    return kept, seq.completion.finish_reason
            except Exception as exc:
                return kept, exc
        return kept, None

    def _emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample one token per sequence from `logits` [len(seqs), V] and deliver it."""
        try:
            out = self.sampler.sample(logits, [s.sampler_slot for s in seqs])
            tokens = out.tokens.tolist()
            entries = logprob_entries(out, [s.request.params for s in seqs])
        except Exception as exc:
            if len(seqs) == 1:
                self._fail_request(seqs[0].request, "sampling", exc)
                return
            for i, seq in enumerate(seqs):  # find the row that fails alone
                if self._alive(seq):
                    self._emit([seq], logits[i : i + 1])
            return
        now = time.perf_counter()
        for seq, tok, entry in zip(seqs, tokens, entries):
            if not self._alive(seq):
                continue  # its request failed just now
            if seq.request.handle.cancelled:  # cancelled during the forward
                with self._blame(seq.request, "the cancel"):
                    self._finish(seq, "cancelled")
                continue
            with self._blame(seq.request, "the stop check"):
                self._deliver(seq, tok, entry, now)

    def _deliver(self, seq: _Sequence, tok: int, entry, now: float) -> None:
        """Hand one sampled token to its sequence: text, stop rule, event; finish it if done."""
        if self._accept_token(seq, tok, entry, now):
            self._finish(seq, seq.completion.finish_reason)

    def _accept_token(self, seq: _Sequence, tok: int, entry, now: float) -> bool:
        """One token to its sequence (text, stop rule, event, metrics); True when it finished it."""
        if not seq.tokens:
            self.metrics.ttft.observe(now - seq.request.handle.created)
        else:
            self.metrics.token_latency.observe(now - seq.last_time)
        seq.last_time = now
        self.metrics.generation_tokens.inc()
        seq.tokens.append(tok)
        text = seq.completion.accept(tok)
        seq.request.handle._push(
            TokenEvent(
                seq.index, tok, text, entry.logprob if entry else None, entry.top if entry and entry.top else None
            )
        )
        return seq.completion.finish_reason is not None

    def _finish(self, seq: _Sequence, reason: str) -> None:
        """End one choice: its held-back text (which may still complete a stop string, making a
        "length" finish a "stop", as in `generate`), its FinishEvent, its slot back."""
        req = seq.request
        tail = ""
        if reason != "cancelled":
            tail = seq.completion.flush()
            reason = seq.completion.finish_reason
            fed = seq.tokens[: seq.filled - len(req.prompt)]  # the last token was never fed
            self._snapshot(req.prompt + fed, self.state, seq.slot)
        self.metrics.finished.inc(reason=reason)
        req.handle._push(FinishEvent(seq.index, reason, tail, len(seq.tokens)))
        req.open -= 1
        if req.open == 0 and reason != "cancelled":
            self.metrics.request_latency.observe(time.perf_counter() - req.handle.created)
        self._release(seq)

    def _alive(self, seq: _Sequence) -> bool:
        """The sequence still holds its slot (it has not finished, been cancelled or failed)."""
        return seq.slot < len(self._running) and self._running[seq.slot] is seq

    def _release(self, seq: _Sequence) -> None:
        """Free a sequence's slot at once, moving the last running row into the hole."""
        if not self._alive(seq):
            return
        slot, last = seq.slot, len(self._running) - 1
        if slot != last:
            mover = self._running[last]
            self.state.copy_row(self.state, last, slot)
            mover.slot = slot
            self._running[slot] = mover
        self._running.pop()
        self.state.reset(rows=[last])
        self.sampler.remove_row(seq.sampler_slot)
        self._free_sampler_slots.append(seq.sampler_slot)

    @contextmanager
    def _blame(self, req: _Request, what: str):
        """Run one request's part of a step: if it raises, that request alone fails."""
        try:
            yield
        except Exception as exc:
            self._fail_request(req, what, exc)

    def _fail_request(self, req: _Request, what: str, exc: Exception) -> None:
        """End one request with an ErrorEvent (`what` raised `exc`): off the queue (and out of the
        side state) if it waits, its sequences out of their slots; every other request goes on."""
        log.error("request %s failed in %s", req.handle.request_id, what, exc_info=exc)
        with self._cv:
            waiting = req in self._waiting
            if waiting:
                self._waiting.remove(req)
        if waiting:  # only the prompt being prefilled in the side state fails waiting
            self._side.reset()
        for seq in [s for s in self._running if s.request is req]:
            self.metrics.finished.inc(reason="error")
            self._release(seq)
        req.open = 0
        try:
            message = f"internal error while generating this request ({type(exc).__name__} in {what})"
            req.handle._push(ErrorEvent(message))
        except Exception:  # a handle that cannot take events: nobody to tell
            log.exception("request %s: the error could not be delivered", req.handle.request_id)

    def _fail_all(self, message: str) -> None:
        """The engine itself broke (a step raised outside any one request's part): every running
        request, and the one in the side state, gets an ErrorEvent, and all state is reset."""
        failed = {id(s.request): s.request for s in self._running}
        with self._cv:
            if self._waiting and self._waiting[0].prefilled:
                req = self._waiting.popleft()
                failed[id(req)] = req
        for req in failed.values():
            req.handle._push(ErrorEvent(message))
        for seq in self._running:
            self.sampler.remove_row(seq.sampler_slot)
        self._running = []
        self._free_sampler_slots = list(range(self.config.max_concurrent - 1, -1, -1))
        self.state.reset()
        self._side.reset()


__all__ = [
    "Engine",
    "EngineConfig",
    "EngineOverloadedError",
    "RequestHandle",
    "TokenEvent",
    "FinishEvent",
    "ErrorEvent",
]
