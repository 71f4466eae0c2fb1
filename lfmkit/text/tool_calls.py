"""LFM2's tool-call grammar: Pythonic (or JSON-style) call lists, read with `ast`, never run.

LFM2 calls tools with a Python list of calls between special tokens,
`<|tool_call_start|>[get_weather(location="Paris"), get_time(tz="CET")]<|tool_call_end|>`.

- `parse_tool_calls(text)` → `list[ToolCall]`. A call is a plain (optionally dotted) name with
  keyword arguments whose values are Python literals (strings, numbers, True/False/None, lists,
  tuples, dicts, nested; JSON's true/false/null too). JSON-style calls
  (`[{"name": ..., "arguments": {...}}]`, also wrapped as `{"function": {...}}`, arguments as an
  object or a JSON string) are accepted. Anything else (positional arguments, `**kw`, attribute
  access on calls, operators, names, comprehensions) raises `ToolCallParseError` whose `.raw`
  is the text given. Text without the markers is parsed only when it starts with `[` or `{`.
- `format_tool_calls(calls)` writes calls back in the Pythonic form the LFM2 chat template
  renders, so `parse_tool_calls(format_tool_calls(calls)) == calls`.
- `parse_call_block(block)` reads one block (the text between the markers) and raises
  `CallSyntaxError`; the stream parser in `chat.py` uses it.
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

from ..errors import ToolCallParseError

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"
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
        return (
            self.name == other.name
            and self.id == other.id
            and json.dumps(self.arguments, default=repr) == json.dumps(other.arguments, default=repr)
        )

    def to_openai(self, id: str | None = None) -> dict:
        """The OpenAI `tool_calls[]` entry (arguments as a JSON string); makes an id if none."""
        call_id = id or self.id or f"call_{uuid.uuid4().hex[:24]}"
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }

    @classmethod
    def from_openai(cls, entry: dict) -> "ToolCall":
        """From an OpenAI `tool_calls[]` entry (or a bare {"name", "arguments"} dict)."""
        try:
            call = _call_from_mapping(entry)
        except CallSyntaxError as exc:
            raise ToolCallParseError(str(exc), raw=json.dumps(entry, ensure_ascii=False, default=str)) from None
        return cls(call.name, call.arguments, entry.get("id"))


# ---- reading literals and calls from the AST ---------------------------------------------


class CallSyntaxError(Exception):
    """The block holds something that is not a call list of literals."""


def _literal(node: ast.AST) -> Any:
    """A JSON-ready value for a literal node; anything executable is rejected."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CallSyntaxError("non-finite number")
            return value
        raise CallSyntaxError(f"unsupported constant {type(value).__name__}")
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        value = node.operand.value
        value = -value if isinstance(node.op, ast.USub) else value
        if isinstance(value, float) and not math.isfinite(value):
            raise CallSyntaxError("non-finite number")
        return value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key_node, value_node in zip(node.keys, node.values):
            if key_node is None:
                raise CallSyntaxError("'**' in a dict")
            key = _literal(key_node)
            if isinstance(key, bool) or key is None or not isinstance(key, (str, int)):
                raise CallSyntaxError(f"dict key {key!r} is not a string")
            result[str(key)] = _literal(value_node)
        return result
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise CallSyntaxError(f"{type(node).__name__} is not a literal")


def _call_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):  # namespaced tools: web.search(...)
        return f"{_call_name(node.value)}.{node.attr}"
    raise CallSyntaxError("the called object must be a plain name")


def _call_from_node(node: ast.AST) -> ToolCall:
    if isinstance(node, ast.Call):
        name = _call_name(node.func)
        if node.args:
            raise CallSyntaxError(f"positional argument in call to {name}; only keyword arguments are allowed")
        arguments = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise CallSyntaxError(f"'**' argument in call to {name}")
            if keyword.arg in arguments:
                raise CallSyntaxError(f"argument {keyword.arg!r} repeated in call to {name}")
            arguments[keyword.arg] = _literal(keyword.value)
        return ToolCall(name, arguments)
    if isinstance(node, ast.Dict):
        return _call_from_mapping(_literal(node))
    raise CallSyntaxError(f"{type(node).__name__} is not a function call")


def _call_from_mapping(entry: Any) -> ToolCall:
    """A JSON-style call: {"name", "arguments"|"parameters"} or {"function": {...}}."""
    if not isinstance(entry, dict):
        raise CallSyntaxError("a JSON-style call must be an object")
    fn = entry.get("function") if isinstance(entry.get("function"), dict) else entry
    name = fn.get("name")
    arguments = fn.get("arguments", fn.get("parameters", {}))
    if not isinstance(name, str) or not name:
        raise CallSyntaxError("a JSON-style call needs a non-empty string 'name'")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            raise CallSyntaxError(f"arguments of {name} are not valid JSON") from None
    arguments = {} if arguments is None else arguments
    if not isinstance(arguments, dict):
        raise CallSyntaxError(f"arguments of {name} must be an object")
    _check_json_ready(arguments)
    return ToolCall(name, arguments)


def _check_json_ready(value: Any, depth: int = 0) -> None:
    if depth > 200:
        raise CallSyntaxError("arguments nest too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise CallSyntaxError("non-finite number")
    if isinstance(value, dict):
        for v in value.values():
            _check_json_ready(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json_ready(v, depth + 1)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def parse_call_block(block: str) -> list[ToolCall]:
    """Calls in one block (the text between the markers, or a bare list). Raises CallSyntaxError."""
    text = block.strip()
    if not text:
        return []
    if len(text) > MAX_CALL_TEXT:
        raise CallSyntaxError(f"tool-call text is too long ({len(text)} characters)")
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
            raise CallSyntaxError(f"not a Python call list ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise CallSyntaxError(f"not a Python call list ({type(exc).__name__})") from None
    body = tree.body
    items = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    try:
        calls = [_call_from_node(item) for item in items]
    except RecursionError:
        raise CallSyntaxError("tool-call text nests too deeply") from None
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
    significant = [
        t
        for t in tokens
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
    ]
    edits, renamed = [], {}
    for prev, tok, nxt in zip(significant, significant[1:], significant[2:]):
        if (
            tok.type == tokenize.NAME
            and keyword.iskeyword(tok.string)
            and prev.string in ("(", ",")
            and nxt.type == tokenize.OP
            and nxt.string == "="
        ):
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
        rest = rest[at + len(TOOL_CALL_START) :]
        end = rest.find(TOOL_CALL_END)
        if end < 0:  # unterminated (generation stopped): the rest is the block
            blocks.append(rest)
            return blocks
        blocks.append(rest[:end])
        rest = rest[end + len(TOOL_CALL_END) :]


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
            calls.extend(parse_call_block(block))
        except CallSyntaxError as exc:
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
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_py_literal(v)}" for k, v in value.items())
            + "}"
        )
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
                raise ToolCallParseError(
                    f"argument name {key!r} of {call.name} is not a Python identifier", raw=repr(call.arguments)
                )
        args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call.arguments.items())
        parts.append(f"{call.name}({args})")
    text = "[" + ", ".join(parts) + "]"
    return f"{TOOL_CALL_START}{text}{TOOL_CALL_END}" if markers else text
