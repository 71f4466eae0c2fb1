"""What an LFM2 assistant message means: tool calls, reasoning and content, whole or streamed.

LFM2 calls tools with a Pythonic list between special tokens,
`<|tool_call_start|>[get_weather(location="Paris"), get_time(tz="CET")]<|tool_call_end|>`,
possibly followed by text; the 2.6B model reasons in `<think>…</think>` before answering.

- `parse_tool_calls(text)` → `list[ToolCall]` and `format_tool_calls(calls)`, its inverse, live
  in `tool_calls.py` (the call grammar, read with `ast`, never evaluated) and are re-exported here.
- `split_reasoning(text)` → `(reasoning or None, answer)`.
- `parse_assistant_message(text)` → `AssistantMessage(content, reasoning, tool_calls, error)`;
  it never raises: a call block that does not parse stays in `content` (markers included) and
  its message goes to `error`.
- `StreamParser`: `feed(piece) -> list[Event]`, `finish() -> list[Event]`, for a server that
  streams deltas. Events:
    * `ContentDelta(text)` — answer text, in order;
    * `ReasoningDelta(text)` — text inside `<think>…</think>`;
    * `ToolCallEvent(call, index)` — one complete call (index counts calls in the message);
    * `ToolCallError(message, raw)` — a call block failed to parse; its raw text is also
      sent as a `ContentDelta`.
  A piece that ends in the middle of a tag is held back until the tag is decided. Feeding the
  text whole or in any split gives the same events concatenated, and `parser.message` equals
  `parse_assistant_message(text)`.

Reasoning rules, shared by all three: a message opens reasoning only if it starts (after
whitespace) with `<think>`, or with `in_reasoning=True` for prompts whose generation prompt
already ends in `<think>`. Reasoning runs to `</think>` (or the end of the text) and is
stripped of surrounding whitespace; whitespace after `</think>` is dropped from the answer.
Tool calls are recognised in the answer only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tool_calls import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    CallSyntaxError,
    ToolCall,
    format_tool_calls,
    parse_call_block,
    parse_tool_calls,
)

THINK_START = "<think>"
THINK_END = "</think>"

__all__ = [
    "ToolCall",
    "parse_tool_calls",
    "format_tool_calls",
    "split_reasoning",
    "parse_assistant_message",
    "AssistantMessage",
    "StreamParser",
    "ContentDelta",
    "ReasoningDelta",
    "ToolCallEvent",
    "ToolCallError",
]


@dataclass
class AssistantMessage:
    """A parsed assistant turn. `error` says why a tool-call block was left as text."""

    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None


@dataclass
class ContentDelta:
    text: str


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ToolCallEvent:
    call: ToolCall
    index: int


@dataclass
class ToolCallError:
    message: str
    raw: str


Event = ContentDelta | ReasoningDelta | ToolCallEvent | ToolCallError


def split_reasoning(text: str, in_reasoning: bool = False) -> tuple[str | None, str]:
    """`(reasoning, answer)`: reasoning is None when the text has no `<think>` block."""
    if in_reasoning:
        body = text
    else:
        stripped = text.lstrip()
        if not stripped.startswith(THINK_START):
            return None, text
        body = stripped[len(THINK_START) :]
    end = body.find(THINK_END)
    if end < 0:
        return body.strip(), ""
    return body[:end].strip(), body[end + len(THINK_END) :].lstrip()


def parse_assistant_message(text: str, in_reasoning: bool = False) -> AssistantMessage:
    """Content, reasoning and tool calls of a whole assistant message. Never raises."""
    try:
        parser = StreamParser(in_reasoning=in_reasoning)
        parser.feed(text)
        parser.finish()
        return parser.message
    except Exception as exc:  # noqa: BLE001 - a promise to callers: bad model output never crashes them
        return AssistantMessage(
            content=text if isinstance(text, str) else str(text),
            error=f"cannot parse assistant message: {type(exc).__name__}: {exc}",
        )


# ---- streaming -----------------------------------------------------------------------------


def _partial_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


class StreamParser:
    """Incremental version of `parse_assistant_message` (see the module docstring for events)."""

    _START, _REASONING, _ANSWER_START, _CONTENT, _TOOL, _DONE = range(6)

    def __init__(self, in_reasoning: bool = False):
        self._state = self._REASONING if in_reasoning else self._START
        self._buffer = ""
        self._reasoning_started = False  # first non-space reasoning character seen
        self._space = ""  # reasoning whitespace held until more text follows
        self._content: list[str] = []
        self._reasoning: list[str] | None = [] if in_reasoning else None
        self._calls: list[ToolCall] = []
        self._error: str | None = None
        self._block: list[str] = []  # TOOL state: the call block read so far

    @property
    def message(self) -> AssistantMessage:
        """Everything parsed so far, as parse_assistant_message would return it."""
        reasoning = None if self._reasoning is None else "".join(self._reasoning)
        return AssistantMessage("".join(self._content), reasoning, list(self._calls), self._error)

    def feed(self, text: str) -> list[Event]:
        if self._state == self._DONE:
            raise RuntimeError("StreamParser.feed() after finish()")
        self._buffer += text
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """End of the message: release held text, parse an unterminated call block."""
        events: list[Event] = []
        while self._step(events):
            pass
        state, buffer = self._state, self._buffer
        self._buffer = ""
        if state == self._START:
            self._emit_content(buffer, events)
        elif state == self._REASONING:
            self._emit_reasoning(buffer, events, final=True)
        elif state == self._CONTENT:
            self._emit_content(buffer, events)
        elif state == self._TOOL:
            self._emit_block("".join(self._block) + buffer, events, terminated=False)
        self._state = self._DONE
        return events

    # each step consumes what can be decided now; returns True if it changed state
    def _step(self, events: list[Event]) -> bool:
        buffer = self._buffer
        if self._state == self._START:
            stripped = buffer.lstrip()
            if stripped.startswith(THINK_START):
                self._buffer = stripped[len(THINK_START) :]
                self._reasoning = []
                self._state = self._REASONING
                return True
            if not stripped or THINK_START.startswith(stripped):
                return False  # still undecided
            self._state = self._CONTENT
            return True
        if self._state == self._REASONING:
            end = buffer.find(THINK_END)
            if end >= 0:
                self._emit_reasoning(buffer[:end], events, final=True)
                self._buffer = buffer[end + len(THINK_END) :]
                self._state = self._ANSWER_START
                return True
            keep = _partial_suffix(buffer, (THINK_END,))
            self._emit_reasoning(buffer[: len(buffer) - keep], events, final=False)
            self._buffer = buffer[len(buffer) - keep :]
            return False
        if self._state == self._ANSWER_START:
            stripped = buffer.lstrip()
            self._buffer = stripped
            if not stripped:
                return False
            self._state = self._CONTENT
            return True
        if self._state == self._CONTENT:
            start = buffer.find(TOOL_CALL_START)
            if start >= 0:
                self._emit_content(buffer[:start], events)
                self._buffer = buffer[start + len(TOOL_CALL_START) :]
                self._state = self._TOOL
                return True
            keep = _partial_suffix(buffer, (TOOL_CALL_START,))
            self._emit_content(buffer[: len(buffer) - keep], events)
            self._buffer = buffer[len(buffer) - keep :]
            return False
        if self._state == self._TOOL:
            end = buffer.find(TOOL_CALL_END)
            if end < 0:  # park all but a possible partial end marker: long blocks stay linear
                keep = _partial_suffix(buffer, (TOOL_CALL_END,))
                self._block.append(buffer[: len(buffer) - keep])
                self._buffer = buffer[len(buffer) - keep :]
                return False
            block, self._block = "".join(self._block) + buffer[:end], []
            self._emit_block(block, events, terminated=True)
            self._buffer = buffer[end + len(TOOL_CALL_END) :]
            self._state = self._CONTENT
            return True
        return False

    def _emit_content(self, text: str, events: list[Event]) -> None:
        if text:
            self._content.append(text)
            events.append(ContentDelta(text))

    def _emit_reasoning(self, text: str, events: list[Event], final: bool) -> None:
        text = self._space + text
        self._space = ""
        if not self._reasoning_started:
            text = text.lstrip()
        body = text.rstrip()
        if not final:
            self._space = text[len(body) :]
        if body:
            self._reasoning_started = True
            self._reasoning.append(body)
            events.append(ReasoningDelta(body))

    def _emit_block(self, block: str, events: list[Event], terminated: bool) -> None:
        try:
            calls = parse_call_block(block)
        except Exception as exc:  # noqa: BLE001 - CallSyntaxError, or anything else: model output never crashes us
            detail = str(exc) if isinstance(exc, CallSyntaxError) else f"{type(exc).__name__}: {exc}"
            raw = TOOL_CALL_START + block + (TOOL_CALL_END if terminated else "")
            message = f"cannot parse tool call: {detail}: {block.strip()[:200]!r}"
            self._error = self._error or message
            events.append(ToolCallError(message, raw))
            self._emit_content(raw, events)
            return
        for call in calls:
            events.append(ToolCallEvent(call, len(self._calls)))
            self._calls.append(call)
