"""Between OpenAI's chat/completions shapes and LFM2's text: prompts in, messages and deltas out.

In: a validated request becomes prompt ids through the checkpoint's chat template. Tools are
rendered into the system prompt (LFM2's tool list). `tool_choice` is honoured by steering the
output, not by hoping: "none" leaves the tools out of the prompt; "required" starts the
assistant's answer with `<|tool_call_start|>[` so the model must write a call; a named function
starts it with `<|tool_call_start|>[name(` (`[` alone for a name Python cannot call, which is
called JSON-style); the rest is constrained by a grammar (structured.py). That forced prefix is
part of the answer when it is parsed. Rendering and tokenizing are the expensive part of a
request: the server runs them in a worker thread, bounded by `limits` (template-input depth,
prompt length).

Out: `ChatOutput` follows one choice token by token. Its deltas come from `chat.StreamParser`
(content, `reasoning_content` for `<think>` traces, whole tool calls), and the non-streamed
message is those deltas joined, so both say the same. A call block that does not parse is
returned as plain content rather than dropped. A call is returned in `tool_calls` only if it
names a function the request offered; any other call (no `tools`, `tool_choice: "none"`, or a
name not among `tools`, such as `os.system`) is returned as text in `content`, in LFM2's call
syntax, so a client that runs tool calls only ever sees the functions it offered.
`CompletionOutput` does the same for `/v1/completions` (plain text, legacy logprobs shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import LFMKitError, TokenizerError, ToolCallParseError
from ..inference.generate import encode_prompt as generate_encode_prompt
from ..text.chat import ContentDelta, ReasoningDelta, StreamParser, ToolCall, ToolCallEvent, format_tool_calls
from ..text.tool_grammar import forced_prefix
from .limits import PromptBound, check_depth, parse_json_arguments
from .schema import ChatCompletionRequest, NamedToolChoice, RequestError

TOOL_CALL_START = "<|tool_call_start|>"
TOOL_CALL_END = "<|tool_call_end|>"


@dataclass
class ChatPrompt:
    ids: list[int]
    forced: str  # text the assistant's answer starts with (already in the prompt)
    offered: frozenset  # names of the functions offered: only calls to these become `tool_calls`


def _messages_for_template(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the template takes them; tool-call arguments checked (JSON objects, bounded depth)."""
    messages = []
    for i, m in enumerate(req.messages):
        msg = m.to_template()
        for j, call in enumerate(msg.get("tool_calls") or []):
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            if not isinstance(parse_json_arguments(call["function"]["arguments"], param), dict):
                raise RequestError(f"invalid parameter '{param}': must be a JSON object", param=param)
        messages.append(msg)
    return messages


def _tools_for_template(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The tools as the template takes them; each `parameters` schema of bounded depth."""
    for i, tool in enumerate(req.tools or []):
        check_depth(tool.function.parameters, f"tools[{i}].function.parameters")
    return [t.to_template() for t in req.tools or []]


def build_chat_prompt(tokenizer, req: ChatCompletionRequest, bound: PromptBound) -> ChatPrompt:
    """Prompt ids for a chat request, with `tool_choice` turned into a forced answer prefix.

    A rendered prompt longer than `bound` allows is refused before it is tokenized.
    """
    if tokenizer is None:
        raise RequestError(
            "this server has no tokenizer, so it cannot render chat messages; use /v1/completions with token ids",
            param="messages",
        )
    choice = req.tool_choice
    use_tools = bool(req.tools) and choice != "none"
    forced = ""
    if use_tools and choice == "required":
        forced = forced_prefix([], None)
    elif use_tools and isinstance(choice, NamedToolChoice):
        forced = forced_prefix([t.to_template() for t in req.tools], choice.function.name)
    messages = _messages_for_template(req)
    tools = _tools_for_template(req) if use_tools else None
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True) + forced
    except TokenizerError as exc:
        raise RequestError(
            f"the messages cannot be rendered with this model's chat template: {exc}", param="messages"
        ) from None
    bound.check(text, "messages")
    offered = frozenset(t.function.name for t in req.tools) if use_tools else frozenset()
    return ChatPrompt(tokenizer.encode(text), forced, offered)


def encode_prompt(tokenizer, prompt, bound: PromptBound) -> list[int]:
    """A /v1/completions prompt as token ids: ids as given; text with a leading bos, as
    `lfmkit.generate` (and llama.cpp) encode it. Too long for `bound`: refused untokenized."""
    if isinstance(prompt, list):
        bound.check_ids(prompt, "prompt")
        return [int(t) for t in prompt]
    if tokenizer is None:
        raise RequestError("this server has no tokenizer: send 'prompt' as token ids", param="prompt")
    if not prompt:
        raise RequestError("'prompt' must not be empty", param="prompt")
    bound.check(prompt, "prompt")
    try:
        return generate_encode_prompt(prompt, tokenizer)
    except LFMKitError as exc:
        raise RequestError(f"invalid parameter 'prompt': {exc}", param="prompt") from None


def _token_text(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return f"token_id:{token_id}"
    try:
        return tokenizer.decode([token_id], skip_special_tokens=False)
    except TokenizerError:
        return f"token_id:{token_id}"


def chat_logprobs(tokenizer, ev) -> dict[str, Any]:
    """The `logprobs.content[i]` entry of one token (OpenAI chat shape)."""
    text = _token_text(tokenizer, ev.token_id)
    top = []
    for tid, lp in ev.top_logprobs or []:
        t = _token_text(tokenizer, tid)
        top.append({"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))})
    return {"token": text, "logprob": ev.logprob, "bytes": list(text.encode("utf-8")), "top_logprobs": top}


def _call_text(call: ToolCall) -> str:
    """A call returned as text: LFM2's Pythonic syntax, or JSON-style where that cannot spell it."""
    try:
        return format_tool_calls([call])
    except ToolCallParseError:  # e.g. an argument name that is not a Python identifier
        return (
            TOOL_CALL_START
            + json.dumps([{"name": call.name, "arguments": call.arguments}], ensure_ascii=False)
            + TOOL_CALL_END
        )


class ChatOutput:
    """One chat choice, followed token by token (deltas for streaming, a message at the end)."""

    def __init__(self, tokenizer, prompt: ChatPrompt, want_logprobs: bool = False):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.want_logprobs = want_logprobs
        self.text = prompt.forced
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.logprobs: list[dict] = []
        self.last_logprobs: dict | None = None
        self.tool_calls: list[dict] = []  # as streamed: {"index", "id", "type", "function"}
        self._content: list[str] = []
        self._parser = StreamParser()
        self._pending_forced = prompt.forced

    # ---- streaming -----------------------------------------------------------------------
    def _deltas(self, events) -> list[dict]:
        out: list[dict] = []
        for ev in events:
            if isinstance(ev, ContentDelta) and ev.text:
                out.append({"content": ev.text})
            elif isinstance(ev, ReasoningDelta) and ev.text:
                out.append({"reasoning_content": ev.text})
            elif isinstance(ev, ToolCallEvent):
                if ev.call.name in self.prompt.offered:
                    call = {"index": len(self.tool_calls), **ev.call.to_openai()}
                    self.tool_calls.append(call)
                    out.append({"tool_calls": [call]})
                else:  # not offered: a call is just text
                    out.append({"content": _call_text(ev.call)})
            # ToolCallError: its raw text also arrives as a ContentDelta
        self._content.extend(d["content"] for d in out if "content" in d)
        return out

    def _feed(self, text: str) -> list[dict]:
        if self._pending_forced:
            text, self._pending_forced = self._pending_forced + text, ""
        return self._deltas(self._parser.feed(text)) if text else []

    def on_token(self, ev) -> list[dict]:
        self.completion_tokens += 1
        self.text += ev.text
        self.last_logprobs = None
        if self.want_logprobs and ev.logprob is not None:
            entry = chat_logprobs(self.tokenizer, ev)
            self.logprobs.append(entry)
            self.last_logprobs = {"content": [entry]}
        return self._feed(ev.text)

    def on_finish(self, ev) -> list[dict]:
        self.text += ev.text
        deltas = self._feed(ev.text)
        deltas += self._deltas(self._parser.finish())
        self.finish_reason = ev.reason
        if ev.reason == "stop" and self.tool_calls:
            self.finish_reason = "tool_calls"
        return deltas

    # ---- the whole message: the deltas joined --------------------------------------------
    def final_choice(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        reasoning = self._parser.message.reasoning
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        content = "".join(self._content)
        if self.tool_calls:
            message["content"] = content or None
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in self.tool_calls]
        else:
            message["content"] = content
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.want_logprobs else None,
            "finish_reason": self.finish_reason,
        }


class CompletionOutput:
    """One /v1/completions choice, with the legacy logprobs shape."""

    def __init__(self, tokenizer, echo: str = ""):
        self.tokenizer = tokenizer
        self.text = echo
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.logprobs: dict[str, list] | None = None

    def on_token(self, ev) -> dict | None:
        """Record a token; return its logprobs entry (for a stream chunk), if asked for."""
        self.completion_tokens += 1
        offset = len(self.text)
        self.text += ev.text
        if ev.logprob is None:
            return None
        top = {_token_text(self.tokenizer, t): lp for t, lp in ev.top_logprobs or []}
        entry = {
            "tokens": [_token_text(self.tokenizer, ev.token_id)],
            "token_logprobs": [ev.logprob],
            "top_logprobs": [top],
            "text_offset": [offset],
        }
        if self.logprobs is None:
            self.logprobs = {k: [] for k in entry}
        for k, v in entry.items():
            self.logprobs[k].extend(v)
        return entry

    def on_finish(self, ev) -> None:
        self.text += ev.text
        self.finish_reason = ev.reason

    def final_choice(self, index: int) -> dict[str, Any]:
        return {"index": index, "text": self.text, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


__all__ = ["ChatPrompt", "build_chat_prompt", "encode_prompt", "ChatOutput", "CompletionOutput", "chat_logprobs"]
