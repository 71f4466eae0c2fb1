"""A chat request's structured-output constraint: `response_format` and `tool_choice`.

`tool_choice: "required"` and a named function constrain the answer (after the forced
`<|tool_call_start|>[` / `...[name(` prefix chat.py puts in the prompt) to calls to the offered
tools with arguments of their parameter schemas; `response_format` `json_object` / `json_schema`
constrain it to JSON (valid against the schema). A forced tool call wins over `response_format`.
`strict` is accepted either way: the schema is always enforced, and a schema (or tool) that cannot
be enforced is a 400 naming the unsupported keywords and where they are.

Compiled constraints are kept (LRU, per tokenizer) by their canonical JSON, so an agent that
sends the same schema or tools with every request compiles them once.
"""

from __future__ import annotations

import functools
import json

from ..inference.constrain import Constraint, GrammarError
from ..text.tool_grammar import ToolGrammarError
from .schema import ChatCompletionRequest, NamedToolChoice, RequestError


@functools.lru_cache(maxsize=128)
def _compiled(tokenizer, kind: str, spec: str) -> Constraint:
    if kind == "json_object":
        return Constraint.json_object(tokenizer)
    data = json.loads(spec)
    if kind == "tools":
        return Constraint.tool_calls(data["tools"], tokenizer, name=data["name"], parallel=data["parallel"])
    return Constraint.json_schema(data, tokenizer)


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _tool_schema_error(tokenizer, tools: list[dict], exc: GrammarError) -> RequestError:
    """A 400 naming the first tool whose parameter schema cannot be enforced (and why)."""
    for i, tool in enumerate(tools):
        try:
            Constraint.json_schema(tool["parameters"], tokenizer)
        except GrammarError as own:
            param = f"tools[{i}].function.parameters"
            return RequestError(f"invalid parameter '{param}': {own}", param=param)
    return RequestError(f"cannot constrain tool calls to these tools: {exc}", param="tools")


def request_constraint(tokenizer, req: ChatCompletionRequest, vocab_size: int) -> Constraint | None:
    """The constraint for a chat request, or None; RequestError (400) naming what cannot be enforced.
    Its matcher for the model's `vocab_size` logits is built here, so the engine only copies it."""
    constraint = _request_constraint(tokenizer, req)
    if constraint is not None and req.ignore_eos:
        raise RequestError(
            "'ignore_eos' cannot be combined with 'response_format' or a forced 'tool_choice': "
            "a constrained answer ends where its grammar does",
            param="ignore_eos",
        )
    if constraint is not None:
        try:
            constraint.matcher(vocab_size, 1)
        except GrammarError as exc:
            raise RequestError(f"cannot enforce this request's output format: {exc}") from None
    return constraint


def _request_constraint(tokenizer, req: ChatCompletionRequest) -> Constraint | None:
    choice = req.tool_choice
    if req.tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        name = choice.function.name if isinstance(choice, NamedToolChoice) else None
        spec = {"tools": [t.to_template() for t in req.tools], "name": name, "parallel": req.parallel_tool_calls}
        try:
            return _compiled(tokenizer, "tools", _canonical(spec))
        except ToolGrammarError as exc:
            raise RequestError(f"cannot constrain tool calls: {exc}", param=exc.param) from None
        except GrammarError as exc:
            raise _tool_schema_error(tokenizer, spec["tools"], exc) from None
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    param = "response_format.json_schema.schema" if fmt.type == "json_schema" else "response_format"
    try:
        if fmt.type == "json_object":
            return _compiled(tokenizer, "json_object", "")
        return _compiled(tokenizer, "json_schema", _canonical(fmt.json_schema.schema_))
    except GrammarError as exc:
        raise RequestError(f"invalid parameter '{param}': {exc}", param=param) from None


__all__ = ["request_constraint"]
