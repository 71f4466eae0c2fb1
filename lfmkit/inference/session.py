"""A multi-turn chat that keeps the model's hybrid state between turns.

    chat = ChatSession(model, tokenizer, system="You are terse.", tools=[...])
    reply = chat.send("What's the weather in Paris?")     # a GenerationResult
    reply.message.tool_calls                               # parsed by lfmkit.chat
    reply = chat.send_tool_results([{"temp_c": 21}])       # the model continues
    for chunk in chat.stream("And tomorrow?"): ...         # streamed turn
    chat.undo()                                            # back to before the last turn

Turn N prefills only what is new: the closing of the previous reply (`<|im_end|>\n`, less what
the model already generated), the new messages as the chat template renders them, and the
generation prompt. The session keeps the exact token sequence it has fed (`tokens`), generated
tokens included, so its state always equals a fresh prefill of `tokens` (tests check this).
Past reasoning stays in that sequence (as with the template's `keep_past_thinking=True`).

With `draft=` (a draft model or "ngram", see speculative.py) each turn decodes speculatively:
the same replies (greedy; sampled: the same distribution), several tokens per forward. The
draft keeps its own state across turns too. The slots a turn's rejected drafts wrote are
forgotten, so a snapshot from an abandoned branch past the current end no longer restores.

`snapshot()` / `restore()` go back to an earlier point (the conv windows are a few KB; K/V
below that point is never rewritten), `undo()` drops the last turn, `fork()` makes an
independent branch. `prefilled_tokens` / `last_prefill_tokens` count the tokens run through
the model as prompt, so tests (and curious users) can see the reuse.

With a `PrefixCache` (prefix_cache.py, the one the server's engine uses; pass the same object
to share it) the session stores a snapshot at the end of every prompt and reply and resumes
from the cache whenever it holds more of the conversation than the state does: a new session
(or a `reset()` one) replaying the same history, a `load()`ed chat, or a `restore()` to a point
whose K/V was overwritten since (without a cache that is an error).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from ..errors import ContextLengthError, GenerationError
from ..model.state import StateSnapshot
from .generate import GenerationChunk, GenerationResult, _Row, eos_token_ids, load_tokenizer_for, prefill, stream_rows
from .prefix_cache import PrefixCache
from .sampling import BatchSampler, SamplingParams
from .speculative import DEFAULT_K, speculator

DEFAULT_MAX_LENGTH = 8192


@dataclass
class SessionSnapshot:
    """A point in a session to come back to (taken by `snapshot()`)."""

    state: StateSnapshot
    tokens: list[int]
    pending: list[int]
    messages: list[dict]
    turns: int


class ChatSession:
    """A conversation with one model whose state carries over from turn to turn."""

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        system: str | None = None,
        tools: list | None = None,
        params: SamplingParams | None = None,
        max_length: int | None = None,
        chat_template_kwargs: dict | None = None,
        draft=None,
        draft_k: int = DEFAULT_K,
        cache: PrefixCache | None = None,
    ):
        self.model = model
        if cache is not None:
            cache.check_model(model)
        self.cache = cache
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer_for(model)
        if self.tokenizer is None:
            raise GenerationError("ChatSession needs a tokenizer: the model's checkpoint has none; pass tokenizer=...")
        self.tools = tools
        self.params = params if params is not None else SamplingParams.for_model(model)
        context = model.config.max_position_embeddings
        self.max_length = min(max_length or DEFAULT_MAX_LENGTH, context)
        self.template_kwargs = {"keep_past_thinking": True, **(chat_template_kwargs or {})}
        self.spec = speculator(draft, draft_k)
        headroom = self.spec.k if self.spec is not None else 0  # verified drafts may run past the end
        self.state = model.new_state(batch_size=1, max_length=self.max_length + headroom)
        self._drafter = self.spec.new_drafter(self.max_length) if self.spec is not None else None
        self.stop_ids = frozenset(eos_token_ids(model, self.tokenizer))
        self._closing = self._closing_ids()
        self.system = system
        self.prefilled_tokens = 0
        self.last_prefill_tokens = 0
        self.last_cached_tokens = 0  # tokens of the last prefill resumed from the prefix cache
        self.reset()

    # ---- history -------------------------------------------------------------------------
    def reset(self, system: Any = ..., tools: Any = ...) -> None:
        """Start over (optionally with a new system prompt / tools); keeps the allocation."""
        if system is not ...:
            self.system = system
        if tools is not ...:
            self.tools = tools
        self.state.reset()
        self.tokens: list[int] = []  # fed to the model, in order
        self.pending: list[int] = []  # generated but not yet fed (the reply's last token)
        self._kv: list[int] = []  # what the state's K/V slots hold (may run past `tokens`)
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []
        self._turns: list[SessionSnapshot] = []

    @property
    def context_used(self) -> int:
        """Tokens of the conversation so far (fed plus the reply's unfed last token)."""
        return len(self.tokens) + len(self.pending)

    @property
    def turns(self) -> int:
        return len(self._turns)

    def _closing_ids(self) -> list[int]:
        """Ids the template puts after an assistant message's content (LFM2: `<|im_end|>\\n`)."""
        marker = "\u2063lfmkit\u2063"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
        )
        tail = text[text.rfind(marker) + len(marker) :] if marker in text else ""
        if not tail:
            tail = (self.tokenizer.eos_token or "<|im_end|>") + "\n"
        return self.tokenizer.encode(tail)

    def _render(self, messages: list[dict], generation_prompt: bool, tools=None) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, **self.template_kwargs
        )

    def _new_ids(self, new_messages: list[dict]) -> list[int]:
        """Tokens to feed for `new_messages` and the generation prompt, given what is fed already."""
        if not self.tokens and not self.pending:
            return self.tokenizer.encode(self._render(self.messages + new_messages, True, self.tools))
        closing = list(self._closing)
        if self.pending and closing and self.pending[-1] == closing[0]:
            closing = closing[1:]
        before = self._render(self.messages, False, self.tools)
        after = self._render(self.messages + new_messages, True, self.tools)
        if after.startswith(before):
            delta = after[len(before) :]
        else:  # a template that re-renders history differently: render the new messages alone
            delta = self._render(new_messages, True)
            bos = self.tokenizer.bos_token
            if bos and delta.startswith(bos):
                delta = delta[len(bos) :]
        return self.pending + closing + self.tokenizer.encode(delta)

    # ---- turns ---------------------------------------------------------------------------
    def send(
        self,
        content: str | list | None = None,
        *,
        role: str = "user",
        params: SamplingParams | None = None,
        should_stop: Callable[[], bool] | None = None,
        **overrides,
    ) -> GenerationResult:
        """Add a message and generate the reply; returns it (tool calls in `.message.tool_calls`)."""
        result = None
        for chunk in self.stream(content, role=role, params=params, should_stop=should_stop, parse=False, **overrides):
            result = chunk.result or result
        return result

    def stream(
        self,
        content: str | list | None = None,
        *,
        role: str = "user",
        params: SamplingParams | None = None,
        should_stop: Callable[[], bool] | None = None,
        parse: bool = True,
        messages: list[dict] | None = None,
        **overrides,
    ) -> Iterator[GenerationChunk]:
        """Add a message (or `messages`) and stream the reply, one chunk per decode step."""
        new = list(messages) if messages is not None else []
        if content is not None:
            new.append({"role": role, "content": content})
        if not new:
            raise GenerationError("send: no message given")
        yield from self._turn(new, params, should_stop, parse, overrides)

    def send_tool_results(
        self,
        results: Any,
        *,
        params: SamplingParams | None = None,
        should_stop: Callable[[], bool] | None = None,
        **overrides,
    ) -> GenerationResult:
        """Give the model the results of its tool calls (one per call) and let it continue."""
        result = None
        for chunk in self.stream_tool_results(
            results, params=params, should_stop=should_stop, parse=False, **overrides
        ):
            result = chunk.result or result
        return result

    def stream_tool_results(self, results: Any, **kwargs) -> Iterator[GenerationChunk]:
        return self.stream(messages=tool_messages(results), **kwargs)

    def _turn(
        self, new_messages: list[dict], params: SamplingParams | None, should_stop, parse: bool, overrides: dict
    ) -> Iterator[GenerationChunk]:
        params = params or self.params
        if overrides:
            params = params.replace(**overrides)
        params.validate()
        if params.n != 1:
            raise GenerationError("sampling parameter 'n': a chat session generates one reply per turn")
        mark = self.snapshot()
        if self.spec is not None:  # rejected drafts overwrite the slots past what is fed
            del self._kv[len(self.tokens) :]
        feed = self._new_ids(new_messages)
        start = len(self.tokens)
        need = start + len(feed) + params.max_tokens
        if need > self.max_length:
            raise ContextLengthError(
                f"the conversation has {self.context_used} tokens, the new message adds "
                f"{len(feed) - len(self.pending)} "
                f"and max_tokens is {params.max_tokens}: {need} tokens do not fit the session's "
                f"{self.max_length}-token state (reset the chat, lower max_tokens, or use a larger max_length)"
            )
        vocab = self.model.config.vocab_size
        sampler = BatchSampler(vocab, 1, device=self.model.device)
        try:
            logits = self._prefill(feed)
            self.pending = []
            self.messages.extend(new_messages)
            prompt = list(self.tokens)
            sampler.add_row(0, params, prompt)
            row = _Row(prompt, params, self.stop_ids, self.tokenizer, 0, 0, len(feed))
            drafters = None
            if self._drafter is not None:
                self.spec.start(self._drafter, params, params.seed)
                drafters = [self._drafter]
            for chunk in stream_rows(
                self.model,
                self.state,
                logits,
                row,
                sampler,
                parse=parse,
                should_stop=should_stop,
                spec=self.spec,
                drafters=drafters,
            ):
                if chunk.result is not None:
                    self._finish_turn(chunk.result, mark)
                yield chunk
        except BaseException:
            # Interrupted mid-turn (Ctrl-C, an error, or the caller stopped iterating before
            # the end): the turn never happened.
            if len(self._turns) == mark.turns:
                self.restore(mark)
            raise

    def _prefill(self, feed: list[int], need_logits: bool = True) -> torch.Tensor | None:
        """Run `feed` into the state after `tokens` (first resuming from the prefix cache when it
        holds more of the conversation; pausing at its snapshot points); return the next-token
        logits [1, V] (None when not `need_logits` and the cache held all of it)."""
        target = self.tokens + feed
        self.last_cached_tokens = 0
        logits = None
        stops: list[int] = []
        if self.cache is not None:
            plan = self.cache.lookup(target, need_logits)
            if plan.tokens > len(self.tokens):
                plan = self.cache.resume(target, self.state, 0, need_logits)
                self.last_cached_tokens = plan.tokens - len(self.tokens)
                self._fed(target[len(self.tokens) : plan.tokens])
                logits = plan.logits[None] if plan.logits is not None else None
            stops = plan.stops
        start = len(self.tokens)
        ends = [s for s in stops if start < s < len(target)] + ([len(target)] if start < len(target) else [])
        for end in ends:
            logits = prefill(self.model, self.state, [target[len(self.tokens) : end]])
            self._fed(target[len(self.tokens) : end])
            if self.cache is not None:
                self.cache.store(self.tokens, self.state, 0, logits[0] if end == len(target) else None)
        self.prefilled_tokens += len(target) - start
        self.last_prefill_tokens = len(target) - start
        return logits

    def _fed(self, ids: list[int]) -> None:
        n = len(self.tokens)
        self.tokens.extend(ids)
        self._kv[n : n + len(ids)] = ids

    def _finish_turn(self, result: GenerationResult, mark: SessionSnapshot) -> None:
        generated = result.token_ids
        fed = int(self.state.lengths[0]) - len(self.tokens)  # the state knows what went in
        self._fed(generated[:fed])
        if self.cache is not None:
            self.cache.store(self.tokens, self.state, 0)
        self.pending = list(generated[fed:])
        self.messages.append({"role": "assistant", "content": result.text or ""})
        self._turns.append(mark)

    # ---- going back ----------------------------------------------------------------------
    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(
            self.state.snapshot(), list(self.tokens), list(self.pending), copy.deepcopy(self.messages), len(self._turns)
        )

    def restore(self, snap: SessionSnapshot) -> None:
        """Go back to a snapshot of this session. Once its tokens were overwritten, the state is
        rebuilt from the prefix cache (and prefill); without a cache that is an error."""
        n = len(snap.tokens)
        if self._kv[:n] == snap.tokens:
            self.state.restore(snap.state)
        elif self.cache is None:
            raise GenerationError(
                "restore: this snapshot's tokens were overwritten since it was taken "
                "(take a fork() to keep two branches alive, or give the session a prefix cache)"
            )
        else:
            self.state.reset()
            self.tokens, self._kv = [], []
            if snap.tokens:
                self._prefill(list(snap.tokens), need_logits=False)
        self.tokens = list(snap.tokens)
        self.pending = list(snap.pending)
        self.messages = copy.deepcopy(snap.messages)
        del self._turns[snap.turns :]

    def undo(self) -> bool:
        """Drop the last turn (message and reply); False when there is none."""
        if not self._turns:
            return False
        self.restore(self._turns[-1])
        return True

    def fork(self) -> "ChatSession":
        """An independent copy (own state) to branch the conversation."""
        other = copy.copy(self)
        other.state = self.state.clone()
        if self.spec is not None:  # its own draft state (it catches up on the first turn)
            other._drafter = self.spec.new_drafter(self.max_length)
        other.tokens, other.pending, other._kv = list(self.tokens), list(self.pending), list(self._kv)
        other.messages = copy.deepcopy(self.messages)
        other._turns = list(self._turns)
        return other

    # ---- saving --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "messages": copy.deepcopy(self.messages),
            "tools": self.tools,
            "tokens": list(self.tokens),
            "pending": list(self.pending),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the conversation (messages, tools, exact tokens) as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)
            f.write("\n")

    def load(self, path: str | os.PathLike) -> None:
        """Continue a saved conversation: its tokens are prefilled once."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            messages, tokens, pending = data["messages"], data["tokens"], data.get("pending", [])
        except (ValueError, KeyError, TypeError) as exc:
            raise GenerationError(f"{path}: not a saved chat ({exc})") from None
        if len(tokens) + len(pending) > self.max_length:
            raise ContextLengthError(
                f"{path}: {len(tokens) + len(pending)} tokens do not fit the session's {self.max_length}-token state"
            )
        self.tools = data.get("tools", self.tools)
        self.reset()
        if tokens:
            self._prefill(list(tokens), need_logits=False)
        self.pending = list(pending)
        self.messages = messages
        sys_msgs = [m for m in messages[:1] if m.get("role") == "system"]
        self.system = sys_msgs[0]["content"] if sys_msgs else None

    def __repr__(self) -> str:
        return (
            f"ChatSession(turns={self.turns}, tokens={self.context_used}/{self.max_length}, "
            f"prefilled={self.prefilled_tokens})"
        )


def tool_messages(results: Any) -> list[dict]:
    """`tool` messages for results: one per item of a list (str as is, anything else as JSON)."""
    items = results if isinstance(results, list) else [results]
    out = []
    for item in items:
        if isinstance(item, dict) and item.get("role") == "tool":
            out.append(item)
            continue
        content = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
        out.append({"role": "tool", "content": content})
    if not out:
        raise GenerationError("send_tool_results: no results given")
    return out


__all__ = ["ChatSession", "SessionSnapshot", "tool_messages"]
