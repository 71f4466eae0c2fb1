"""What `Engine.submit` returns: a `RequestHandle`, whose events are `TokenEvent`s, one
`FinishEvent` per choice, or one `ErrorEvent` (after which nothing follows).

The engine thread pushes events (`_push`); the consumer iterates, asynchronously when the
handle was made for an event loop, else synchronously, and may `cancel()` at any time.
"""

from __future__ import annotations

import asyncio
import queue
import time
from dataclasses import dataclass


@dataclass
class TokenEvent:
    """One generated token of choice `index`; `text` is the newly visible text (may be empty)."""

    index: int
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class FinishEvent:
    """Choice `index` ended. `reason`: "stop", "length" or "cancelled"; `text`: held-back text."""

    index: int
    reason: str
    text: str = ""
    completion_tokens: int = 0


@dataclass
class ErrorEvent:
    """The request failed inside the engine (not the client's fault); no more events follow."""

    message: str


class RequestHandle:
    """What `Engine.submit` returns: iterate (async if a loop was given, else sync); `cancel()`."""

    def __init__(self, request_id: str, n: int, prompt_tokens: int, loop: asyncio.AbstractEventLoop | None):
        self.request_id = request_id
        self.n = n
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0  # prompt tokens restored from the prefix cache (set before any event)
        self.created = time.perf_counter()
        self.cancelled = False
        self._loop = loop
        self._queue: asyncio.Queue | queue.Queue = asyncio.Queue() if loop is not None else queue.Queue()
        self._wake = None
        self._open = n  # choices whose FinishEvent the consumer has not seen

    def _push(self, event) -> None:
        """Deliver an event (called from the engine thread)."""
        if self._loop is None:
            self._queue.put(event)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening
            self.cancelled = True

    def _seen(self, event) -> None:
        if isinstance(event, ErrorEvent):
            self._open = 0
        elif isinstance(event, FinishEvent):
            self._open -= 1

    def __iter__(self):
        while self._open > 0:
            event = self._queue.get()
            self._seen(event)
            yield event

    async def __aiter__(self):
        while self._open > 0:
            event = await self._queue.get()
            self._seen(event)
            yield event

    def ready(self) -> list:
        """The events delivered so far and not yet taken, without waiting (a synchronous handle
        whose engine the caller steps itself)."""
        out = []
        while self._open > 0:
            try:
                event = self._queue.get_nowait()
            except (queue.Empty, asyncio.QueueEmpty):
                break
            self._seen(event)
            out.append(event)
        return out

    def cancel(self) -> None:
        """Stop generating for this request; its slots are freed at the engine's next step."""
        if not self.cancelled:
            self.cancelled = True
            if self._wake is not None:
                self._wake()


__all__ = ["RequestHandle", "TokenEvent", "FinishEvent", "ErrorEvent"]
