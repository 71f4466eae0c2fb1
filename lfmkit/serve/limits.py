"""Bounds on the work one request can cause, checked cheaply before the expensive step they guard.

- the body: at most `MAX_BODY_BYTES`, counted while it streams in (a chunked body has no
  Content-Length to trust), and at most `MAX_BODY_VALUES` JSON separators and containers
  (`,` `[` `{`, counted in the raw bytes: an upper bound on what the parser would build), so
  parsing and validation stay short; its nesting depth is the JSON parser's limit
  (`schema.MAX_BODY_DEPTH`);
- template inputs (a tool's `parameters` schema, an assistant tool call's `arguments`): at most
  `MAX_TEMPLATE_DEPTH` levels, because the chat template renders them recursively;
- the prompt: a text longer than the context times the longest vocabulary entry cannot fit the
  context, so it is refused before it is tokenized (see `PromptBound`).

Every check raises `RequestError` (HTTP 400, or 413 for the body size) naming the parameter.
"""

from __future__ import annotations

from typing import Any

import pydantic_core

from .schema import RequestError

MAX_BODY_BYTES = 32 * 2**20  # bytes, Content-Length or counted as a chunked body streams in
MAX_BODY_VALUES = 2**18  # ',' '[' '{' characters in a body (bounds parse and validation time)
MAX_TEMPLATE_DEPTH = 64  # nesting of tool parameters and tool-call arguments


class BodyTooLarge(RequestError):
    """The request body is over MAX_BODY_BYTES (HTTP 413)."""

    def __init__(self, limit: int):
        super().__init__(f"the request body must be at most {limit} bytes", status=413, code="request_too_large")


def check_body_values(body: bytes) -> None:
    """Refuse a body with more than MAX_BODY_VALUES separators and containers (C-speed counts)."""
    count = body.count(b",") + body.count(b"[") + body.count(b"{")
    if count > MAX_BODY_VALUES:
        raise RequestError(
            f"the request body has {count} ',', '[' and '{{' characters; at most {MAX_BODY_VALUES} "
            f"are allowed (a JSON body of at most that many values)",
            code="request_too_complex",
        )


def nesting_depth(value: Any) -> int:
    """Levels of lists and dicts in a parsed JSON value (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth


def check_depth(value: Any, param: str) -> None:
    """Refuse a template input nested deeper than MAX_TEMPLATE_DEPTH."""
    depth = nesting_depth(value)
    if depth > MAX_TEMPLATE_DEPTH:
        raise RequestError(
            f"invalid parameter '{param}': nested {depth} levels deep; at most {MAX_TEMPLATE_DEPTH} are allowed",
            param=param,
        )


def parse_json_arguments(text: str, param: str) -> Any:
    """A tool call's JSON-string `arguments`, parsed with a bounded depth (never a RecursionError)."""
    if not text.strip():
        return {}
    try:
        value = pydantic_core.from_json(text, allow_inf_nan=False)
    except ValueError as exc:
        message = str(exc)
        if "recursion limit" in message:
            message = f"nested more than {MAX_TEMPLATE_DEPTH} levels deep"
        raise RequestError(f"invalid parameter '{param}': not valid JSON ({message})", param=param) from None
    check_depth(value, param)
    return value


class PromptBound:
    """The longest prompt text that can still fit a context of `max_length` tokens.

    No token of the vocabulary covers more characters than its longest entry (byte-level
    entries spell one character per byte; added tokens are spelled out), so a text longer than
    `max_length` times that length needs more than `max_length` tokens: it is refused without
    tokenizing it. Anything shorter is tokenized and measured exactly.
    """

    def __init__(self, tokenizer, max_length: int):
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True) if tokenizer is not None else {}
        self.token_chars = max((len(entry) for entry in vocab), default=1)
        self.max_length = max_length
        self.max_chars = max_length * self.token_chars

    def check(self, text: str, param: str) -> None:
        if len(text) > self.max_chars:
            raise RequestError(
                f"this model's maximum context length is {self.max_length} tokens; the prompt has "
                f"{len(text)} characters, more than {self.max_length} tokens of up to "
                f"{self.token_chars} characters each can hold",
                param=param,
                code="context_length_exceeded",
            )

    def check_ids(self, ids: list[int], param: str) -> None:
        if len(ids) >= self.max_length:
            raise RequestError(
                f"this model's maximum context length is {self.max_length} tokens, but the prompt "
                f"has {len(ids)} tokens, leaving no room for the completion",
                param=param,
                code="context_length_exceeded",
            )


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_BODY_VALUES",
    "MAX_TEMPLATE_DEPTH",
    "BodyTooLarge",
    "check_body_values",
    "nesting_depth",
    "check_depth",
    "parse_json_arguments",
    "PromptBound",
]
