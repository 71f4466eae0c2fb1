"""A grammar that generates exactly LFM2 tool calls to given tools, in llguidance's Lark dialect.

LFM2 writes calls as a Pythonic list between special tokens (tool_calls.py):
`<|tool_call_start|>[get_weather(location="Paris", days=3)]<|tool_call_end|>`. `tool_call_grammar`
writes a grammar for the text that follows `forced_prefix(tools, name)`: `<|tool_call_start|>[`
(`tool_choice: "required"`: one or more calls, or exactly one with `parallel=False`), or
`<|tool_call_start|>[name(` (a named function: that call's arguments), up to and including
`<|tool_call_end|>`, where the matcher stops and only the end-of-turn token remains. The server
puts that prefix into the prompt (serve/chat.py), so the grammar starts where the model starts
writing.

Every call names an offered function and passes keyword arguments in the order of the schema's
`properties`: each required argument, and optional ones that may be left out. Each value is JSON
(llguidance's `%json` with the property's schema), written compactly with `", "` / `": "`
separators and only the escapes JSON and Python read alike (`\\n \\r \\t \\b \\f \\" \\\\`; no
`\\u` or `\\/`), so it is also a Python literal with the same value (JSON's true / false / null
are read by our parser): `parse_tool_calls` reads every generated call back, with arguments
that validate against the schema. A tool whose name or argument names Python cannot write
(`my-tool(...)`, `f(user-id=1)`, a keyword as the function name) is called JSON-style instead,
`{"name": "my-tool", "arguments": {...}}`, which the parser reads too.
"""

from __future__ import annotations

import json
import keyword
from typing import Any

from ..errors import GenerationError

TOOL_CALL_START_TOKEN = "<|tool_call_start|>"
TOOL_CALL_END_TOKEN = "<|tool_call_end|>"
# How JSON values are written inside calls and in JSON output: compact, one form per value.
JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Escapes that mean the same in JSON and in a Python string literal.
CALL_ESCAPES = 'nrbtf\\"'


class ToolGrammarError(GenerationError):
    """A tool that cannot be called in LFM2's Pythonic syntax; `.param` names where."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    """The function of a tool given in OpenAI's shape ({"type", "function"}) or bare."""
    return tool["function"] if isinstance(tool.get("function"), dict) else tool


def _json_value(schema: Any) -> str:
    """A `%json` lexeme for one argument's schema, with the call-safe JSON format."""
    schema = {} if schema is True else dict(schema)
    schema["x-guidance"] = {**JSON_FORMAT, "json_allowed_escapes": CALL_ESCAPES, **schema.get("x-guidance", {})}
    return "%json " + json.dumps(schema, ensure_ascii=False)


def pythonic(fn: dict[str, Any]) -> bool:
    """Whether calls to `fn` can be written in LFM2's Pythonic syntax (name and argument names
    are Python identifiers, the name not a keyword)."""
    name = fn.get("name")
    props = (fn.get("parameters") or {}).get("properties") or {}
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and all(isinstance(a, str) and a.isidentifier() for a in props)
    )


def forced_prefix(tools: list[dict[str, Any]], name: str | None) -> str:
    """What the answer is started with for a forced call: `<|tool_call_start|>[`, plus `name(`
    for a named function that is called in Pythonic syntax."""
    fn = next((f for f in map(_function, tools) if f.get("name") == name), None)
    return TOOL_CALL_START_TOKEN + "[" + (f"{name}(" if fn is not None and pythonic(fn) else "")


def _check_schemas(fn: dict[str, Any], where: str) -> None:
    for arg, schema in ((fn.get("parameters") or {}).get("properties") or {}).items():
        if not (isinstance(schema, dict) or schema is True):
            raise ToolGrammarError(
                f"{where}: the schema of argument {arg!r} must be a JSON schema object",
                param=f"{where}.function.parameters.properties.{arg}",
            )


def _arguments(fn: dict[str, Any], k: int) -> list[str]:
    """Rules `a{k}_{i}f` / `a{k}_{i}a` for the arguments from position i on, with nothing / something
    written before them (so the ", " separators fall right with optional arguments left out)."""
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    rules = []
    names = list(props)
    for i, name in enumerate(names):
        value = f"v{k}_{i}"
        rules.append(f"{value}: {_json_value(props[name])}")
        nxt_first, nxt_after = (f"a{k}_{i + 1}f", f"a{k}_{i + 1}a") if i + 1 < len(names) else ("", "")
        first = f'"{name}=" {value} {nxt_after}'.rstrip()
        after = f'", {name}=" {value} {nxt_after}'.rstrip()
        if name not in required:
            first += f" | {nxt_first}" if nxt_first else " |"
            after += f" | {nxt_after}" if nxt_after else " |"
        rules.append(f"a{k}_{i}f: {first}")
        rules.append(f"a{k}_{i}a: {after}")
    return rules


def _args_rule(fn: dict, k: int) -> str:
    """The rule holding function k's whole (Pythonic) argument list, possibly empty."""
    has_args = bool((fn.get("parameters") or {}).get("properties"))
    return f"a{k}_0f" if has_args else '""'


def _call_rules(fn: dict[str, Any], k: int) -> list[str]:
    """Rule `c{k}`: one call to function k, Pythonic where Python can write it, else JSON-style
    (`{"name": "my-tool", "arguments": {...}}`, which the call parser reads too)."""
    if pythonic(fn):
        return _arguments(fn, k) + [f'c{k}: "{fn["name"]}(" {_args_rule(fn, k)} ")"']
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    head = json.dumps('{"name": ' + json.dumps(fn.get("name"), ensure_ascii=False) + ', "arguments": ')
    return [f"v{k}: {_json_value(params)}", f'c{k}: {head} v{k} "}}"']


def tool_call_grammar(tools: list[dict[str, Any]], name: str | None = None, parallel: bool = True) -> str:
    """The Lark grammar for the rest of a tool-call answer, after `forced_prefix(tools, name)`.

    `tools`: dicts with `name` and `parameters` (a JSON schema of type object), bare or as
    OpenAI's {"type": "function", "function": {...}}. `name`: the one function to call; None:
    any of them, several if `parallel`.
    """
    fns = [_function(t) for t in tools]
    if not fns:
        raise ToolGrammarError("tool calls need at least one tool", param="tools")
    rules, calls = [], []
    for k, fn in enumerate(fns):
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ToolGrammarError(
                f"tools[{k}]: a tool needs a non-empty string name", param=f"tools[{k}].function.name"
            )
        _check_schemas(fn, f"tools[{k}]")
        rules += _call_rules(fn, k)
        calls.append(f"c{k}")
    if name is not None:
        at = next((k for k, fn in enumerate(fns) if fn.get("name") == name), None)
        if at is None:
            raise ToolGrammarError(f"the named function {name!r} is not among the tools", param="tool_choice")
        rest = f'{_args_rule(fns[at], at)} ")]"' if pythonic(fns[at]) else f'c{at} "]"'
        start = f"start: {rest} {TOOL_CALL_END_TOKEN}"
    else:
        more = ' (", " call)*' if parallel else ""
        start = f'start: call{more} "]" {TOOL_CALL_END_TOKEN}'
        rules.append("call: " + " | ".join(calls))
    return "\n".join([start, *rules]) + "\n"


__all__ = [
    "tool_call_grammar",
    "forced_prefix",
    "pythonic",
    "ToolGrammarError",
    "JSON_FORMAT",
    "CALL_ESCAPES",
    "TOOL_CALL_END_TOKEN",
]
