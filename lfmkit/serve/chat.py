"""Between OpenAI's chat/completions shapes and LFM2's text: prompts in, messages and deltas out.

In: a validated request becomes prompt ids through the checkpoint's chat template. Tools are
rendered into the system prompt (LFM2's tool list). `tool_choice` is honoured by steering the
output, not by hoping: "none" leaves the tools out of the prompt; "required" starts the
assistant's answer with `<|tool_call_start|>[` so the model must write a call; a named function
starts it with `<|tool_call_start|>[name(`. That forced prefix is part of the answer when it is
parsed.

Out: `ChatOutput` follows one choice token by token. Streaming deltas come from
`chat.StreamParser` (content, `reasoning_content` for `<think>` traces, whole tool calls), and
the final message from `chat.parse_assistant_message`; a tool call that does not parse is
returned as plain content rather than dropped. `CompletionOutput` does the same for
`/v1/completions` (plain text, legacy logprobs shape).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..text.chat import (ContentDelta, ReasoningDelta, StreamParser, ToolCallEvent, format_tool_calls,
                   parse_assistant_message, split_reasoning)
from ..errors import LFMKitError, TokenizerError
from ..inference.generate import encode_prompt as generate_encode_prompt
from .schema import ChatCompletionRequest, NamedToolChoice, RequestError

TOOL_CALL_START = "<|tool_call_start|>"


@dataclass
class ChatPrompt:
    ids: list[int]
    forced: str          # text the assistant's answer starts with (already in the prompt)
    parse_tools: bool    # whether tool calls in the output become `tool_calls`


def _messages_for_template(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    messages = []
    for i, m in enumerate(req.messages):
        msg = m.to_template()
        for j, call in enumerate(msg.get("tool_calls") or []):
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            try:
                args = json.loads(call["function"]["arguments"] or "{}")
            except json.JSONDecodeError as exc:
                raise RequestError(f"invalid parameter '{param}': not valid JSON ({exc.msg})", param=param) from None
            if not isinstance(args, dict):
                raise RequestError(f"invalid parameter '{param}': must be a JSON object", param=param)
        messages.append(msg)
    return messages


def build_chat_prompt(tokenizer, req: ChatCompletionRequest) -> ChatPrompt:
    """Prompt ids for a chat request, with `tool_choice` turned into a forced answer prefix."""
    if tokenizer is None:
        raise RequestError("this server has no tokenizer, so it cannot render chat messages; "
                           "use /v1/completions with token ids", param="messages")
    choice = req.tool_choice
    use_tools = bool(req.tools) and choice != "none"
    tools = [t.to_template() for t in req.tools] if use_tools else None
    forced = ""
    if use_tools and choice == "required":
        forced = TOOL_CALL_START + "["
    elif use_tools and isinstance(choice, NamedToolChoice):
        forced = f"{TOOL_CALL_START}[{choice.function.name}("
    try:
        text = tokenizer.apply_chat_template(_messages_for_template(req), tools=tools,
                                             add_generation_prompt=True)
        ids = tokenizer.encode(text + forced)
    except TokenizerError as exc:
        raise RequestError(f"the messages cannot be rendered with this model's chat template: {exc}",
                           param="messages") from None
    return ChatPrompt(ids, forced, use_tools)


def encode_prompt(tokenizer, prompt) -> list[int]:
    """A /v1/completions prompt as token ids: ids as given; text with a leading bos, as
    `lfmkit.generate` (and llama.cpp) encode it."""
    if isinstance(prompt, list):
        return [int(t) for t in prompt]
    if tokenizer is None:
        raise RequestError("this server has no tokenizer: send 'prompt' as token ids", param="prompt")
    if not prompt:
        raise RequestError("'prompt' must not be empty", param="prompt")
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
        self.tool_calls_sent = 0
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
                if self.prompt.parse_tools:
                    call = {"index": self.tool_calls_sent, **ev.call.to_openai()}
                    out.append({"tool_calls": [call]})
                    self.tool_calls_sent += 1
                else:                      # no tools offered: a call is just text
                    out.append({"content": format_tool_calls([ev.call])})
            # ToolCallError: its raw text also arrives as a ContentDelta
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
        if ev.reason == "stop" and self.tool_calls_sent:
            self.finish_reason = "tool_calls"
        return deltas

    # ---- the whole message ---------------------------------------------------------------
    def final_choice(self, index: int) -> dict[str, Any]:
        reason = self.finish_reason
        parsed = parse_assistant_message(self.text)
        message: dict[str, Any] = {"role": "assistant"}
        if parsed.reasoning is not None:
            message["reasoning_content"] = parsed.reasoning
        if self.prompt.parse_tools and parsed.tool_calls:
            message["content"] = parsed.content or None
            message["tool_calls"] = [c.to_openai() for c in parsed.tool_calls]
            if reason == "stop":
                reason = "tool_calls"
        elif parsed.tool_calls:            # no tools offered: calls stay text
            message["content"] = split_reasoning(self.text)[1]
        else:
            message["content"] = parsed.content
        return {"index": index, "message": message,
                "logprobs": {"content": self.logprobs} if self.want_logprobs else None,
                "finish_reason": reason}


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
        entry = {"tokens": [_token_text(self.tokenizer, ev.token_id)], "token_logprobs": [ev.logprob],
                 "top_logprobs": [top], "text_offset": [offset]}
        if self.logprobs is None:
            self.logprobs = {k: [] for k in entry}
        for k, v in entry.items():
            self.logprobs[k].extend(v)
        return entry

    def on_finish(self, ev) -> None:
        self.text += ev.text
        self.finish_reason = ev.reason

    def final_choice(self, index: int) -> dict[str, Any]:
        return {"index": index, "text": self.text, "logprobs": self.logprobs,
                "finish_reason": self.finish_reason}


__all__ = ["ChatPrompt", "build_chat_prompt", "encode_prompt", "ChatOutput", "CompletionOutput",
           "chat_logprobs"]
