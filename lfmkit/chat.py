"""What an LFM2 assistant message means: tool calls, reasoning and content, whole or streamed.

LFM2 calls tools with a Pythonic list between special tokens,
`<|tool_call_start|>[get_weather(location="Paris"), get_time(tz="CET")]<|tool_call_end|>`,
possibly followed by text; the 2.6B model reasons in `<think>…</think>` before answering.

- `parse_tool_calls(text)` → `list[ToolCall]`. Call lists are read with `ast` only, never
  evaluated: a call is a plain (optionally dotted) name with keyword arguments whose values are
  Python literals (strings, numbers, True/False/None, lists, tuples, dicts, nested; JSON's
  true/false/null are accepted too). JSON-style calls (`[{"name": ..., "arguments": {...}}]`,
  also wrapped as `{"function": {...}}`, arguments as an object or a JSON string) are accepted.
  Anything else (positional arguments, `**kw`, attribute access on calls, operators, names,
  comprehensions) raises `ToolCallParseError` whose `.raw` is the text given. Text without
  the markers is parsed only when it starts with `[` or `{`; other text has no calls.
- `format_tool_calls(calls)` writes calls back in the Pythonic form (the same text the LFM2
  chat template renders), so `parse_tool_calls(format_tool_calls(calls)) == calls`.
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

import ast
import io
import json
import keyword
import math
import tokenize
import uuid
from dataclasses import dataclass, field
from typing import Any

from .errors import ToolCallParseError

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
MAX_CALL_TEXT = 1_000_000  # characters; larger blocks are refused rather than parsed

_JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


@dataclass
class ToolCall:
    """One function call: a name and JSON-ready keyword arguments (key order kept)."""

    name: str
    arguments: dict = field(default_factory=dict)
    id: str | None = None

    def __eq__(self, other):
        if not isinstance(other, ToolCall):
            return NotImplemented
        return (self.name == other.name and self.id == other.id
                and json.dumps(self.arguments, default=repr) == json.dumps(other.arguments, default=repr))

    def to_openai(self, id: str | None = None) -> dict:
        """The OpenAI `tool_calls[]` entry (arguments as a JSON string); makes an id if none."""
        call_id = id or self.id or f"call_{uuid.uuid4().hex[:24]}"
        return {"id": call_id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}

    @classmethod
    def from_openai(cls, entry: dict) -> "ToolCall":
        """From an OpenAI `tool_calls[]` entry (or a bare {"name", "arguments"} dict)."""
        try:
            call = _call_from_mapping(entry)
        except _Reject as exc:
            raise ToolCallParseError(str(exc), raw=json.dumps(entry, ensure_ascii=False, default=str)) from None
        return cls(call.name, call.arguments, entry.get("id"))


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


# ---- reading literals and calls from the AST ---------------------------------------------

class _Reject(Exception):
    """Internal: the AST holds something that is not a call list of literals."""


def _literal(node: ast.AST) -> Any:
    """A JSON-ready value for a literal node; anything executable is rejected."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _Reject("non-finite number")
            return value
        raise _Reject(f"unsupported constant {type(value).__name__}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        value = node.operand.value
        value = -value if isinstance(node.op, ast.USub) else value
        if isinstance(value, float) and not math.isfinite(value):
            raise _Reject("non-finite number")
        return value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key_node, value_node in zip(node.keys, node.values):
            if key_node is None:
                raise _Reject("'**' in a dict")
            key = _literal(key_node)
            if isinstance(key, bool) or key is None or not isinstance(key, (str, int)):
                raise _Reject(f"dict key {key!r} is not a string")
            result[str(key)] = _literal(value_node)
        return result
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise _Reject(f"{type(node).__name__} is not a literal")


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # namespaced tools: web.search(...)
        return f"{_call_name(node.value)}.{node.attr}"
    raise _Reject("the called object must be a plain name")


def _call_from_node(node: ast.AST) -> ToolCall:
    if isinstance(node, ast.Call):
        name = _call_name(node.func)
        if node.args:
            raise _Reject(f"positional argument in call to {name}; only keyword arguments are allowed")
        arguments = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise _Reject(f"'**' argument in call to {name}")
            if keyword.arg in arguments:
                raise _Reject(f"argument {keyword.arg!r} repeated in call to {name}")
            arguments[keyword.arg] = _literal(keyword.value)
        return ToolCall(name, arguments)
    if isinstance(node, ast.Dict):
        return _call_from_mapping(_literal(node))
    raise _Reject(f"{type(node).__name__} is not a function call")


def _call_from_mapping(entry: Any) -> ToolCall:
    """A JSON-style call: {"name", "arguments"|"parameters"} or {"function": {...}}."""
    if not isinstance(entry, dict):
        raise _Reject("a JSON-style call must be an object")
    fn = entry.get("function") if isinstance(entry.get("function"), dict) else entry
    name = fn.get("name")
    arguments = fn.get("arguments", fn.get("parameters", {}))
    if not isinstance(name, str) or not name:
        raise _Reject("a JSON-style call needs a non-empty string 'name'")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise _Reject(f"arguments of {name} are not valid JSON") from None
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        raise _Reject(f"arguments of {name} must be an object")
    _check_json_ready(arguments)
    return ToolCall(name, arguments)


def _check_json_ready(value: Any, depth: int = 0) -> None:
    if depth > 200:
        raise _Reject("arguments nest too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Reject("non-finite number")
    if isinstance(value, dict):
        for v in value.values():
            _check_json_ready(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json_ready(v, depth + 1)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _parse_call_list(block: str) -> list[ToolCall]:
    """Calls in one block (the text between the markers, or a bare list). Raises _Reject."""
    text = block.strip()
    if not text:
        return []
    if len(text) > MAX_CALL_TEXT:
        raise _Reject(f"tool-call text is too long ({len(text)} characters)")
    if text[0] in "[{":
        try:  # JSON first: it differs from Python on escapes like "\/"
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            data = None
        if data is not None:
            items = data if isinstance(data, list) else [data]
            if all(isinstance(item, dict) for item in items):
                return [_call_from_mapping(item) for item in items]
    renamed: dict[str, str] = {}
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        # Parameters named like Python keywords (`convert(from="USD", to="EUR")`) are written
        # that way by LFM2's template; rename them for the parser, then back.
        text, renamed = _rename_keyword_arguments(text)
        try:
            tree = ast.parse(text, mode="eval") if renamed else None
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            tree = None
        if tree is None:
            raise _Reject(f"not a Python call list ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise _Reject(f"not a Python call list ({type(exc).__name__})") from None
    body = tree.body
    items = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    try:
        calls = [_call_from_node(item) for item in items]
    except RecursionError:
        raise _Reject("tool-call text nests too deeply") from None
    if renamed:
        for call in calls:
            call.arguments = {renamed.get(k, k): v for k, v in call.arguments.items()}
    return calls


def _rename_keyword_arguments(text: str) -> tuple[str, dict[str, str]]:
    """Replace `(kw=` / `, kw=` where kw is a Python keyword by a placeholder name (lexing only)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return text, {}
    line_starts = [0]
    for line in text.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    significant = [t for t in tokens if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT,
                                                       tokenize.INDENT, tokenize.DEDENT)]
    edits, renamed = [], {}
    for prev, tok, nxt in zip(significant, significant[1:], significant[2:]):
        if (tok.type == tokenize.NAME and keyword.iskeyword(tok.string) and prev.string in ("(", ",")
                and nxt.type == tokenize.OP and nxt.string == "="):
            placeholder = f"lfmkit_keyword_{tok.string}"
            while placeholder in text:
                placeholder += "_"
            renamed[placeholder] = tok.string
            start = line_starts[tok.start[0] - 1] + tok.start[1]
            edits.append((start, start + len(tok.string), placeholder))
    for start, end, placeholder in reversed(edits):
        text = text[:start] + placeholder + text[end:]
    return text, renamed


# ---- public API ----------------------------------------------------------------------------

def _call_blocks(text: str) -> list[str] | None:
    """The text of each marked block, or None when there is no start marker."""
    if TOOL_CALL_START not in text:
        return None
    blocks = []
    rest = text
    while True:
        at = rest.find(TOOL_CALL_START)
        if at < 0:
            return blocks
        rest = rest[at + len(TOOL_CALL_START):]
        end = rest.find(TOOL_CALL_END)
        if end < 0:  # unterminated (generation stopped): the rest is the block
            blocks.append(rest)
            return blocks
        blocks.append(rest[:end])
        rest = rest[end + len(TOOL_CALL_END):]


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every tool call in `text`. Raises ToolCallParseError (with `.raw = text`) on a bad call list."""
    if not isinstance(text, str):
        raise ToolCallParseError(f"tool-call text must be a str, got {type(text).__name__}", raw=repr(text))
    blocks = _call_blocks(text)
    if blocks is None:
        stripped = text.strip()
        if not stripped or stripped[0] not in "[{":
            return []
        blocks = [stripped]
    calls = []
    for block in blocks:
        try:
            calls.extend(_parse_call_list(block))
        except _Reject as exc:
            raise ToolCallParseError(f"cannot parse tool call: {exc}: {block.strip()[:200]!r}", raw=text) from None
    return calls


def _py_literal(value: Any) -> str:
    """Python literal text for a JSON value, written as the LFM2 chat template writes it."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (str, int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolCallParseError(f"cannot write non-finite number {value!r} in a tool call", raw=repr(value))
        # lone surrogates cannot be written raw in source text; escape them
        ascii_only = isinstance(value, str) and any("\ud800" <= c <= "\udfff" for c in value)
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_py_literal(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    raise ToolCallParseError(f"cannot write a {type(value).__name__} in a tool call", raw=repr(value))


def format_tool_calls(calls, markers: bool = True) -> str:
    """Calls → `<|tool_call_start|>[f(a="x", n=2), g()]<|tool_call_end|>` (markers optional)."""
    parts = []
    for call in calls:
        if isinstance(call, dict):
            call = ToolCall.from_openai(call)
        for key in call.arguments:  # keywords (from=...) are fine: the parser reads them back
            if not (isinstance(key, str) and key.isidentifier()):
                raise ToolCallParseError(f"argument name {key!r} of {call.name} is not a Python identifier",
                                         raw=repr(call.arguments))
        args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call.arguments.items())
        parts.append(f"{call.name}({args})")
    text = "[" + ", ".join(parts) + "]"
    return f"{TOOL_CALL_START}{text}{TOOL_CALL_END}" if markers else text


def split_reasoning(text: str, in_reasoning: bool = False) -> tuple[str | None, str]:
    """`(reasoning, answer)`: reasoning is None when the text has no `<think>` block."""
    if in_reasoning:
        body = text
    else:
        stripped = text.lstrip()
        if not stripped.startswith(THINK_START):
            return None, text
        body = stripped[len(THINK_START):]
    end = body.find(THINK_END)
    if end < 0:
        return body.strip(), ""
    return body[:end].strip(), body[end + len(THINK_END):].lstrip()


def parse_assistant_message(text: str, in_reasoning: bool = False) -> AssistantMessage:
    """Content, reasoning and tool calls of a whole assistant message. Never raises."""
    try:
        parser = StreamParser(in_reasoning=in_reasoning)
        parser.feed(text)
        parser.finish()
        return parser.message
    except Exception as exc:  # noqa: BLE001 - a promise to callers: bad model output never crashes them
        return AssistantMessage(content=text if isinstance(text, str) else str(text),
                                error=f"cannot parse assistant message: {type(exc).__name__}: {exc}")


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
        self._reasoning_started = False   # first non-space reasoning character seen
        self._space = ""                  # reasoning whitespace held until more text follows
        self._content: list[str] = []
        self._reasoning: list[str] | None = [] if in_reasoning else None
        self._calls: list[ToolCall] = []
        self._error: str | None = None
        self._block: list[str] = []       # TOOL state: the call block read so far

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
                self._buffer = stripped[len(THINK_START):]
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
                self._buffer = buffer[end + len(THINK_END):]
                self._state = self._ANSWER_START
                return True
            keep = _partial_suffix(buffer, (THINK_END,))
            self._emit_reasoning(buffer[:len(buffer) - keep], events, final=False)
            self._buffer = buffer[len(buffer) - keep:]
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
                self._buffer = buffer[start + len(TOOL_CALL_START):]
                self._state = self._TOOL
                return True
            keep = _partial_suffix(buffer, (TOOL_CALL_START,))
            self._emit_content(buffer[:len(buffer) - keep], events)
            self._buffer = buffer[len(buffer) - keep:]
            return False
        if self._state == self._TOOL:
            end = buffer.find(TOOL_CALL_END)
            if end < 0:  # park all but a possible partial end marker: long blocks stay linear
                keep = _partial_suffix(buffer, (TOOL_CALL_END,))
                self._block.append(buffer[:len(buffer) - keep])
                self._buffer = buffer[len(buffer) - keep:]
                return False
            block, self._block = "".join(self._block) + buffer[:end], []
            self._emit_block(block, events, terminated=True)
            self._buffer = buffer[end + len(TOOL_CALL_END):]
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
            self._space = text[len(body):]
        if body:
            self._reasoning_started = True
            self._reasoning.append(body)
            events.append(ReasoningDelta(body))

    def _emit_block(self, block: str, events: list[Event], terminated: bool) -> None:
        try:
            calls = _parse_call_list(block)
        except Exception as exc:  # noqa: BLE001 - _Reject, or anything else: model output never crashes us
            detail = str(exc) if isinstance(exc, _Reject) else f"{type(exc).__name__}: {exc}"
            raw = TOOL_CALL_START + block + (TOOL_CALL_END if terminated else "")
            message = f"cannot parse tool call: {detail}: {block.strip()[:200]!r}"
            self._error = self._error or message
            events.append(ToolCallError(message, raw))
            self._emit_content(raw, events)
            return
        for call in calls:
            events.append(ToolCallEvent(call, len(self._calls)))
            self._calls.append(call)
