"""The OpenAI wire format: request validation and response / stream-chunk shapes.

Requests are validated strictly from the raw JSON body (wrong types are errors, not coerced)
so every problem maps to a 400 that names the offending parameter, in OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`). Unknown fields are ignored, as vLLM
and llama.cpp do, so clients that send extras keep working. Integers are bounded as OpenAI
bounds them (`seed` is a signed 64-bit integer; counts and token ids fit 32 bits). Responses are
plain dicts, written by `to_json` so they always encode (see there). `request_schemas` gives the
JSON Schemas of the two request bodies for `/openapi.json`, rules across fields included.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from ..errors import GenerationError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INT32_MAX = 2**31 - 1  # counts and token ids
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seed (as OpenAI bounds it)
MAX_BODY_DEPTH = 200  # JSON nesting the parser accepts (pydantic-core's own recursion limit)
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]


class RequestError(GenerationError):
    """A client error: becomes HTTP `status` with OpenAI's error body."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        type_: str = "invalid_request_error",
        code: str | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code


def error_body(
    message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    def check(self) -> None:
        """Rules across fields, raising RequestError (overridden by the request types)."""


# ---- messages and tools -------------------------------------------------------------------
class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCallIn(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


# The rules across a message's fields (Message._content_rules), as JSON Schema for /openapi.json.
_PRESENT = {"not": {"type": "null"}}
_MESSAGE_RULES = {
    "allOf": [
        {
            "if": {"properties": {"role": {"enum": ["system", "developer", "user", "tool"]}}},
            "then": {"required": ["content"], "properties": {"content": _PRESENT}},
        },
        {
            "if": {"properties": {"role": {"const": "tool"}}},
            "then": {"required": ["tool_call_id"], "properties": {"tool_call_id": _PRESENT}},
        },
        {
            "if": {"properties": {"role": {"const": "assistant"}}},
            "then": {
                "anyOf": [
                    {"required": ["content"], "properties": {"content": _PRESENT}},
                    {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
                ]
            },
        },
        {
            "if": {"properties": {"role": {"not": {"const": "assistant"}}}},
            "then": {"properties": {"tool_calls": {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}}},
        },
    ]
}


class Message(_Strict):
    model_config = ConfigDict(json_schema_extra=_MESSAGE_RULES)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self):
        if self.role in ("system", "developer", "user", "tool") and self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a 'tool' message needs 'tool_call_id' (the id of the call it answers)")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an 'assistant' message needs 'content' or 'tool_calls'")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only 'assistant' messages carry 'tool_calls'")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def to_template(self) -> dict[str, Any]:
        """The message as the chat template takes it (OpenAI shape, text content)."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOOL_NAME.match(v):
            raise ValueError(f"tool name {v!r} must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'")
        return v

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if v.get("type", "object") != "object":
            raise ValueError(f"'parameters' must be a JSON schema of type 'object', not {v.get('type')!r}")
        props = v.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(p, dict) for p in props.values()):
            raise ValueError("'parameters.properties' must map each argument name to a JSON schema object")
        required = v.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError("'parameters.required' must be a list of argument names")
        missing = [r for r in required if r not in props]
        if missing:
            raise ValueError(f"'parameters.required' names {missing[0]!r}, which is not in 'properties'")
        return v


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef

    def to_template(self) -> dict[str, Any]:
        """The tool as it is rendered into the system prompt (keys in OpenAI's order)."""
        f = self.function
        out: dict[str, Any] = {"name": f.name}
        if f.description is not None:
            out["description"] = f.description
        out["parameters"] = f.parameters if f.parameters is not None else {"type": "object", "properties": {}}
        return out


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Strict):
    name: str
    description: str | None = None
    schema_: Union[dict[str, Any], bool] = Field({}, alias="schema")
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOOL_NAME.match(v):
            raise ValueError(f"schema name {v!r} must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'")
        return v


class ResponseFormat(_Strict):
    """`response_format`: free text, any JSON object, or JSON valid against a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("'json_schema' is required when 'type' is 'json_schema'")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


# ---- sampling shared by both endpoints ----------------------------------------------------
class _Sampling(_Strict):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: Union[str, list[str], None] = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 16:
            raise ValueError("at most 16 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def sampling_kwargs(self) -> dict[str, Any]:
        """Only the parameters the client set (the server fills the rest from its defaults)."""
        names = (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "seed",
        )
        out = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        if self.top_k == -1:
            out["top_k"] = 0  # vLLM spells "no top-k" as -1
        out["n"] = self.n
        out["stop"] = self.stop_list()
        out["stop_token_ids"] = list(self.stop_token_ids or [])
        out["ignore_eos"] = self.ignore_eos
        return out


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    skip_special_tokens: bool = False

    def check(self) -> None:
        """Rules across fields; RequestError names the parameter."""
        if self.top_logprobs and not self.logprobs:
            raise RequestError("'top_logprobs' requires 'logprobs': true", param="top_logprobs")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise RequestError("'tool_choice' needs 'tools'", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or []]
            if self.tool_choice.function.name not in names:
                raise RequestError(
                    f"'tool_choice' names {self.tool_choice.function.name!r}, which is not among "
                    f"the tools ({', '.join(names)})",
                    param="tool_choice",
                )

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _prompt_shape(value: Any) -> str | None:
    """Which prompt shape a value is, judged by its first item, so only that shape is validated
    (trying every shape would build one error per item of a long token list)."""
    if isinstance(value, str):
        return "str"
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    if isinstance(first, str):
        return "list[str]"
    if isinstance(first, list):
        return "list[list[int]]"
    return "list[int]"


Prompt = Annotated[
    Union[
        Annotated[str, Tag("str")],
        Annotated[list[str], Field(min_length=1), Tag("list[str]")],
        Annotated[list[TokenId], Field(min_length=1), Tag("list[int]")],
        Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1), Tag("list[list[int]]")],
    ],
    Discriminator(
        _prompt_shape,
        custom_error_type="prompt_type",
        custom_error_message="expected a string, a list of strings, a list of token ids or a list of token-id lists",
    ),
]


class CompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1, le=INT32_MAX)  # OpenAI's default for legacy completions
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=128)
    skip_special_tokens: bool = True

    def check(self) -> None:
        """Rules across fields; RequestError names the parameter."""
        if self.suffix:
            raise RequestError("'suffix' (fill-in-the-middle) is not supported by LFM2 models", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise RequestError("'best_of' other than 'n' is not supported", param="best_of")

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):  # one prompt of token ids (the shape was validated)
            return [list(p)]
        return list(p)


def parse_request(model_cls: type[_Strict], body: bytes) -> Any:
    """Validate a JSON body into `model_cls`, or raise RequestError naming the parameter."""
    if not body.strip():
        raise RequestError("the request body is empty; send a JSON object")
    try:
        request = model_cls.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        err = errors[0]
        if err["type"] == "json_invalid" and "recursion limit" in err["msg"]:
            raise RequestError(
                f"the request body nests JSON more than {MAX_BODY_DEPTH} levels deep", code="request_too_complex"
            ) from None
        if err["type"] in ("json_invalid", "json_type"):
            raise RequestError(f"the request body is not valid JSON: {err['msg']}") from None
        param = _param(err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        same_place = [e["msg"] for e in errors if _param(e["loc"]) == _param(err["loc"])]
        if err["type"] == "missing":
            msg = f"missing required parameter '{param}'"
        elif err["type"] == "model_type" and not err["loc"]:
            msg = "the request body must be a JSON object"
        elif len(same_place) > 1:  # a union: say every shape that would have been accepted
            msg = f"invalid parameter '{param}': expected one of: " + "; ".join(
                dict.fromkeys(m.removeprefix("Input should be ") for m in same_place)
            )
        else:
            msg = f"invalid parameter '{param}': {msg}" if param else msg
        raise RequestError(msg, param=param) from None
    request.check()
    return request


def _param(loc) -> str:
    return _dotted([str(x) for x in loc if not _is_union_tag(x)])


_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_union_tag(x) -> bool:
    """Pydantic puts the tried union member ('str', 'list[int]', ...) into error locations."""
    if isinstance(x, int):
        return False
    return not _FIELD.match(x) or x in _TYPE_TAGS


def _dotted(loc: list[str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


# ---- responses ----------------------------------------------------------------------------
def to_json(payload: Any) -> str:
    """JSON text for a response or stream event that always encodes as UTF-8.

    Model output can hold code points UTF-8 cannot carry: a tool argument the model wrote as
    `"\\ud800"` parses (as the Python literal it is) to a lone surrogate. Surrogate pairs are
    joined into the character they spell; a lone surrogate becomes U+FFFD.
    """
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def request_schemas(model_name: str) -> dict[str, dict]:
    """JSON Schemas (OpenAPI components) of the request bodies; `model` can only be `model_name`."""
    ref = "#/components/schemas/{model}"
    schemas: dict[str, dict] = {}
    for cls in (ChatCompletionRequest, CompletionRequest):
        schema = cls.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schema["properties"]["model"] = {
            "type": "string",
            "enum": [model_name],
            "description": "the served model's name",
        }
        schemas[cls.__name__] = schema
    schemas["ErrorResponse"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    }
    return schemas


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's `usage`; `cached_tokens`: prompt tokens resumed from the prefix cache, not prefilled."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def model_list(model_id: str, created: int, max_model_len: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model_id,
                "object": "model",
                "created": created,
                "owned_by": "lfmkit",
                "max_model_len": max_model_len,
            }
        ],
    }


def chat_chunk(rid: str, created: int, model: str, choices: list[dict], **extra: Any) -> dict:
    """One `chat.completion.chunk`; `extra` adds fields such as `usage`."""
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }


def completion_chunk(rid: str, created: int, model: str, choices: list[dict], **extra: Any) -> dict:
    """One streamed `text_completion` chunk; `extra` adds fields such as `usage`."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        **extra,
    }


__all__ = [
    "RequestError",
    "error_body",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Message",
    "Tool",
    "NamedToolChoice",
    "parse_request",
    "new_id",
    "now",
    "usage",
    "model_list",
    "chat_chunk",
    "completion_chunk",
    "to_json",
    "request_schemas",
    "MAX_BODY_DEPTH",
]
