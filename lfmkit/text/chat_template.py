"""Chat-template rendering that matches `transformers`' `apply_chat_template` byte for byte.

A checkpoint's template is untrusted Jinja from the Hub, so it runs in Jinja's immutable
sandbox with exactly the environment transformers gives it: `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, the `{% generation %}` block, a `tojson` filter
that keeps key order and does not HTML-escape, and the globals `raise_exception`,
`strftime_now`, `dict` and `namespace`. Messages are prepared the same way too (keys whose
value is None dropped, reasoning aliased under `reasoning_content` / `thinking`, everything
rebuilt from plain JSON types) and `continue_final_message` cuts the text after the final
message the same way.

One deliberate addition: an assistant message's `tool_calls[].function.arguments` given as a
JSON string (how OpenAI clients send them) is parsed into a dict before rendering, as vLLM
does, because templates (LFM2's among them) iterate over the arguments as a mapping. Pass
`parse_tool_arguments=False` to `render_chat_template` to get transformers' behaviour exactly.

`LFM2_CHAT_TEMPLATE` is the built-in template used when a checkpoint ships none: the format of
DESIGN §2 / seeds/002 — tool list in the system message, assistant `tool_calls` rendered as a
Pythonic call list, tool results wrapped in the tool-response tokens.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import TokenizerError

# The LFM2 chat format. Whitespace is controlled with `-` markers throughout, so the text
# renders the same with or without trim_blocks / lstrip_blocks.
LFM2_CHAT_TEMPLATE = r"""{{- bos_token -}}
{%- set keep_past_thinking = keep_past_thinking | default(false) -%}
{#- A Python literal for a JSON value: how LFM2 writes tool-call arguments. -#}
{%- macro py_literal(value) -%}
    {%- if value is none -%}
        {{- "None" -}}
    {%- elif value is boolean -%}
        {{- "True" if value else "False" -}}
    {%- elif value is string or value is number -%}
        {{- value | tojson -}}
    {%- elif value is mapping -%}
        {{- "{" -}}
        {%- for key, item in value.items() -%}
            {{- (key | string | tojson) + ": " + py_literal(item) -}}
            {%- if not loop.last -%}{{- ", " -}}{%- endif -%}
        {%- endfor -%}
        {{- "}" -}}
    {%- elif value is iterable -%}
        {{- "[" -}}
        {%- for item in value -%}
            {{- py_literal(item) -}}
            {%- if not loop.last -%}{{- ", " -}}{%- endif -%}
        {%- endfor -%}
        {{- "]" -}}
    {%- else -%}
        {{- value | tojson -}}
    {%- endif -%}
{%- endmacro -%}
{#- Message content: a string, or OpenAI content parts (text parts joined). -#}
{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is mapping -%}
        {{- content | tojson -}}
    {%- elif content is iterable -%}
        {%- for part in content -%}
            {%- if part is string -%}
                {{- part -}}
            {%- elif part is mapping and part.type == "text" -%}
                {{- part.text -}}
            {%- else -%}
                {{- part | tojson -}}
            {%- endif -%}
        {%- endfor -%}
    {%- elif content is not none -%}
        {{- content | tojson -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro tool_calls_text(tool_calls) -%}
    {{- "<|tool_call_start|>[" -}}
    {%- for call in tool_calls -%}
        {%- set fn = call.function if call.function is defined else call -%}
        {{- fn.name + "(" -}}
        {%- if fn.arguments is mapping -%}
            {%- for key, value in fn.arguments.items() -%}
                {{- key + "=" + py_literal(value) -}}
                {%- if not loop.last -%}{{- ", " -}}{%- endif -%}
            {%- endfor -%}
        {%- elif fn.arguments is defined and fn.arguments -%}
            {{- raise_exception("tool call arguments must be a mapping, got: " + (fn.arguments | string)) -}}
        {%- endif -%}
        {{- ")" -}}
        {%- if not loop.last -%}{{- ", " -}}{%- endif -%}
    {%- endfor -%}
    {{- "]<|tool_call_end|>" -}}
{%- endmacro -%}
{%- set ns = namespace(system_prompt="", last_assistant=-1) -%}
{%- if messages and messages[0].role == "system" -%}
    {%- set ns.system_prompt = text_of(messages[0].content) -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
    {%- set tool_ns = namespace(items=[]) -%}
    {%- for tool in tools -%}
        {%- if tool is string -%}
            {%- set tool_ns.items = tool_ns.items + [tool] -%}
        {%- elif tool.function is defined and tool.type == "function" -%}
            {%- set tool_ns.items = tool_ns.items + [tool.function | tojson] -%}
        {%- else -%}
            {%- set tool_ns.items = tool_ns.items + [tool | tojson] -%}
        {%- endif -%}
    {%- endfor -%}
    {%- set ns.system_prompt = ns.system_prompt + ("\n" if ns.system_prompt else "") + "List of tools: <|tool_list_start|>[" + (tool_ns.items | join(", ")) + "]<|tool_list_end|>" -%}
{%- endif -%}
{%- if ns.system_prompt -%}
    {{- "<|im_start|>system\n" + ns.system_prompt + "<|im_end|>\n" -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == "assistant" -%}
        {%- set ns.last_assistant = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}
{%- for message in messages -%}
    {{- "<|im_start|>" + message.role + "\n" -}}
    {%- set content = text_of(message.content) if message.content is defined else "" -%}
    {%- if message.role == "assistant" -%}
        {%- set keep_thinking = keep_past_thinking or loop.index0 == ns.last_assistant -%}
        {%- if not keep_thinking and "</think>" in content -%}
            {%- set content = content.split("</think>")[-1] | trim -%}
        {%- endif -%}
        {%- generation -%}
        {%- if message.reasoning_content is defined and message.reasoning_content is string and keep_thinking and "<think>" not in content -%}
            {{- "<think>" + message.reasoning_content + "</think>" -}}
        {%- endif -%}
        {%- if message.tool_calls is defined and message.tool_calls -%}
            {{- tool_calls_text(message.tool_calls) -}}
        {%- endif -%}
        {{- content + "<|im_end|>\n" -}}
        {%- endgeneration -%}
    {%- elif message.role == "tool" -%}
        {{- "<|tool_response_start|>" + content + "<|tool_response_end|><|im_end|>\n" -}}
    {%- else -%}
        {{- content + "<|im_end|>\n" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
{%- endif -%}
"""

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_TRACKER_VARIABLE = "_lfmkit_generation_tracker"
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def has_generation_blocks(source: str) -> bool:
    """Whether a chat template marks assistant text with `{% generation %}` (what training masks need)."""
    return bool(_GENERATION_TAG.search(source))


class SpanTracker:
    """Collects the text of each `{% generation %}` block and where the render emitted it.

    The render runs through `template.generate()`; a block's text is found at the output length
    reached when it was emitted (the same bookkeeping as transformers' AssistantTracker), and
    checked there, so a block hidden in a macro or a `set` capture is an error, never a wrong span.
    """

    def __init__(self):
        self.blocks: list[str] = []
        self.spans: list[tuple[int, int]] = []

    def render(self, template, variables: dict) -> str:
        pieces: list[str] = []
        length = 0
        for piece in template.generate(**variables, **{_TRACKER_VARIABLE: self}):
            while len(self.spans) < len(self.blocks):  # blocks emitted since the last piece
                text = self.blocks[len(self.spans)]
                self.spans.append((length, length + len(text)))
            pieces.append(piece)
            length += len(piece)
        rendered = "".join(pieces)
        while len(self.spans) < len(self.blocks):
            self.spans.append((length, length + len(self.blocks[len(self.spans)])))
        for (start, end), text in zip(self.spans, self.blocks):
            if rendered[start:end] != text:
                raise TokenizerError(
                    "chat template: a {% generation %} block is not emitted where it is "
                    "rendered (inside a macro or a captured block?); cannot mark assistant text"
                )
        return rendered


_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _raise_exception(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(source: str):
    """Compile `source` in the sandboxed environment transformers uses (cached by text)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}…{% endgeneration %}` marks assistant text for training masks; renders
        its body, and reports it to the render's `SpanTracker` when there is one."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        @jinja2.pass_context
        def _render(self, context, caller):
            text = caller()
            tracker = context.get(_TRACKER_VARIABLE)
            if isinstance(tracker, SpanTracker):
                tracker.blocks.append(text)
            return text

    class TemplateDict:
        """`dict(...)` without exposing the type itself to the template."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore attributes (no route to interpreter internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore attributes on a namespace ({name!r})"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TokenizerError(f"chat template does not compile: {exc} (line {exc.lineno})") from None


def plain_data(value: Any) -> Any:
    """Rebuild `value` from plain JSON types, so the sandbox only ever sees inert objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        return plain_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _parse_arguments(messages: list[dict]) -> list[dict]:
    """JSON-string tool-call arguments (OpenAI style) → dicts, in their original key order."""
    for message in messages:
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for call in calls:
            fn = call.get("function", call) if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                text = fn["arguments"]
                try:
                    parsed = json.loads(text) if text.strip() else {}
                except ValueError:
                    raise TokenizerError(
                        f"tool call {fn.get('name')!r}: arguments are not valid JSON: {text[:200]!r}"
                    ) from None
                if isinstance(parsed, dict):
                    fn["arguments"] = parsed
    return messages


def prepare_messages(messages, parse_tool_arguments: bool = True) -> list[dict]:
    """Messages as transformers hands them to a template (a fresh copy; the caller's are untouched)."""
    if hasattr(messages, "messages"):
        messages = messages.messages
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"messages must be a list of dicts, got {type(messages).__name__}")
    prepared = []
    for i, message in enumerate(messages):
        message = plain_data(message)
        if not isinstance(message, dict):
            raise TokenizerError(f"messages[{i}] must be a dict with 'role' and 'content', got {message!r:.80}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    if parse_tool_arguments:
        prepared = _parse_arguments(prepared)
    return prepared


def render_chat_template(
    source: str,
    messages,
    tools=None,
    documents=None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    special_tokens: Mapping[str, str] | None = None,
    parse_tool_arguments: bool = True,
    generation_spans: list | None = None,
    **kwargs,
) -> str:
    """Render one conversation with template `source`, the way transformers' apply_chat_template does.

    `special_tokens` are the named tokens (bos_token, eos_token, pad_token, ...) exposed to the
    template; `kwargs` are extra template variables and override them. Pass a list as
    `generation_spans` to receive the (start, end) character spans of the `{% generation %}`
    blocks (the assistant text a training mask keeps, as transformers'
    `return_assistant_tokens_mask` finds it).
    """
    import jinja2

    if isinstance(messages, (list, tuple)) and not messages:
        raise TokenizerError("cannot apply a chat template to an empty conversation")
    if continue_final_message and add_generation_prompt:
        raise TokenizerError("continue_final_message and add_generation_prompt cannot both be set")
    template = compile_template(source)
    chat = prepare_messages(messages, parse_tool_arguments)
    if tools is not None:
        schemas = []
        for i, tool in enumerate(tools):
            if isinstance(tool, dict):
                schemas.append(tool)
            elif callable(tool):
                try:  # optional: only for Python functions, described from their signature and docstring
                    from transformers.utils import get_json_schema

                    schemas.append(get_json_schema(tool))
                except ImportError:
                    raise TokenizerError(
                        f"tools[{i}] is a function; describing it needs transformers "
                        f"installed, or pass its JSON schema instead"
                    ) from None
                except Exception as exc:  # noqa: BLE001 - transformers raises its own types
                    raise TokenizerError(
                        f"tools[{i}]: cannot describe function {getattr(tool, '__name__', tool)!r}: {exc}"
                    ) from None
            else:
                raise TokenizerError(f"tools[{i}] must be a JSON schema dict, got {type(tool).__name__}")
        tools = plain_data(schemas)
    documents = plain_data(documents)
    variables = plain_data({**(special_tokens or {}), **kwargs})

    final_text = None
    if continue_final_message:
        field = continue_final_message if isinstance(continue_final_message, str) else "content"
        final = chat[-1].get(field)
        if final is None:
            raise TokenizerError(f'continue_final_message: the final message has no "{field}" to continue')
        fields = [field]
        if field in _REASONING_FIELDS:
            fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
        if not any(f in source for f in fields):
            raise TokenizerError(f'continue_final_message: "{field}" is not used by the chat template')
        if isinstance(final, (list, tuple)):
            for block in reversed(final):
                if isinstance(block, dict) and "text" in block:
                    final_text = block["text"]
                    block["text"] = block["text"] + _CONTINUE_TAG
                    break
            else:
                raise TokenizerError("continue_final_message: no text to continue in the final message")
        else:
            final_text = final
            for f in fields:
                chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
    if generation_spans is not None and continue_final_message:
        raise TokenizerError("generation_spans and continue_final_message cannot both be set")
    variables = dict(
        variables, messages=chat, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt
    )
    try:
        if generation_spans is None:
            rendered = template.render(**variables)
        else:
            tracker = SpanTracker()
            rendered = tracker.render(template, variables)
            generation_spans.extend(tracker.spans)
    except jinja2.exceptions.TemplateError as exc:
        raise TokenizerError(f"chat template failed to render: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TokenizerError(f"chat template failed to render: {type(exc).__name__}: {exc}") from None
    if continue_final_message:
        tag = _CONTINUE_TAG.strip()
        if str(final_text).strip() not in rendered or tag not in rendered:
            raise TokenizerError("continue_final_message: the chat template drops part of the final message")
        at = rendered.rindex(tag)
        if rendered[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
            rendered = rendered[:at]
        else:
            rendered = rendered[:at].rstrip()
    return rendered
