"""A grammar that generates exactly LFM2 tool calls to given tools, in llguidance's Lark dialect.

LFM2 writes calls as a Pythonic list between special tokens (tool_calls.py):
`<|tool_call_start|>[get_weather(location="Paris", days=3)]<|tool_call_end|>`. `tool_call_grammar`
writes a grammar for the text that follows `<|tool_call_start|>[` (`tool_choice: "required"`: one
or more calls, or exactly one with `parallel=False`) or `<|tool_call_start|>[name(` (a named
function: that call's arguments), up to and including `<|tool_call_end|>`, where the matcher
stops and only the end-of-turn token remains. The server puts that prefix into the prompt
(serve/chat.py), so the grammar starts where the model starts writing.

Every call names an offered function and passes keyword arguments in the order of the schema's
`properties`: each required argument, and optional ones that may be left out. Each value is JSON
(llguidance's `%json` with the property's schema), written compactly with `", "` / `": "`
separators and only the escapes JSON and Python read alike (`\\n \\r \\t \\b \\f \\" \\\\`; no
`\\u` or `\\/`), so it is also a Python literal with the same value (JSON's true / false / null
are read by our parser): `parse_tool_calls` reads every generated call back, with arguments
that validate against the schema. A tool or argument name that Python cannot write as a call
(`my-tool(...)`, `f(user-id=1)`, a keyword as the function name) raises `ToolGrammarError`.
"""

from __future__ import annotations

import json
import keyword
from typing import Any

from ..errors import GenerationError

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


def _arguments(fn: dict[str, Any], k: int, where: str) -> list[str]:
    """Rules `a{k}_{i}f` / `a{k}_{i}a` for the arguments from position i on, with nothing / something
    written before them (so the ", " separators fall right with optional arguments left out)."""
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    rules = []
    names = list(props)
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise ToolGrammarError(
                f"{where}: argument name {name!r} cannot be written as a Python keyword argument",
                param=f"{where}.function.parameters.properties.{name}",
            )
        if not (isinstance(props[name], dict) or props[name] is True):
            raise ToolGrammarError(
                f"{where}: the schema of argument {name!r} must be a JSON schema object",
                param=f"{where}.function.parameters.properties.{name}",
            )
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
    """The rule holding function k's whole argument list (possibly empty)."""
    has_args = bool((fn.get("parameters") or {}).get("properties"))
    return f"a{k}_0f" if has_args else '""'


def tool_call_grammar(tools: list[dict[str, Any]], name: str | None = None, parallel: bool = True) -> str:
    """The Lark grammar for the rest of a tool-call answer (see the module docstring).

    `tools`: dicts with `name` and `parameters` (a JSON schema of type object), bare or as
    OpenAI's {"type": "function", "function": {...}}. `name`: the one function to call (the text
    so far ends with `name(`); None: any of them (it ends with `[`), several if `parallel`.
    """
    fns = [_function(t) for t in tools]
    if not fns:
        raise ToolGrammarError("tool calls need at least one tool", param="tools")
    rules, calls = [], []
    for k, fn in enumerate(fns):
        where = f"tools[{k}]"
        fname = fn.get("name")
        if not isinstance(fname, str) or not fname.isidentifier() or keyword.iskeyword(fname):
            raise ToolGrammarError(
                f"{where}: the tool name {fname!r} cannot be written as a Python call in LFM2's tool-call "
                "syntax (use letters, digits and '_', not starting with a digit)",
                param=f"{where}.function.name",
            )
        rules += _arguments(fn, k, where)
        rules.append(f'c{k}: "{fname}(" {_args_rule(fn, k)} ")"')
        calls.append(f"c{k}")
    if name is not None:
        at = next((k for k, fn in enumerate(fns) if fn.get("name") == name), None)
        if at is None:
            raise ToolGrammarError(f"the named function {name!r} is not among the tools", param="tool_choice")
        start = f'start: {_args_rule(fns[at], at)} ")]" {TOOL_CALL_END_TOKEN}'
    else:
        more = ' (", " call)*' if parallel else ""
        start = f'start: call{more} "]" {TOOL_CALL_END_TOKEN}'
        rules.append("call: " + " | ".join(calls))
    return "\n".join([start, *rules]) + "\n"


__all__ = ["tool_call_grammar", "ToolGrammarError", "JSON_FORMAT", "CALL_ESCAPES", "TOOL_CALL_END_TOKEN"]
