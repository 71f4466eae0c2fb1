"""What the server does with awkward REAL model output (a tiny checkpoint overfitted in the test).

- a call to a function the request never offered (`os.system`) comes back as text in
  `content`, never as `tool_calls`, streamed or not;
- a tool argument the model writes as `"\\ud800"` (a lone surrogate once parsed) still makes an
  encodable response: U+FFFD in its place, and the stream ends with `[DONE]`.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch
from test_server import MODEL, serve
from test_server_tools import TOOLS, _overfit

from lfmkit import LFM2
from lfmkit.text.tokenizer import Tokenizer

SHELL = [{"role": "user", "content": "List the files."}]
SHELL_CALL = '<|tool_call_start|>[os.system(command="ls")]<|tool_call_end|>'
ODD = [{"role": "user", "content": "Weather in the odd city?"}]
ODD_CALL = '<|tool_call_start|>[get_weather(location="\\ud800")]<|tool_call_end|>'
GREEDY = {"temperature": 0, "min_p": 0.0, "repetition_penalty": 1.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("output"),
        layout="small",
        seed=3,
        with_tokenizer=True,
        hidden_size=64,
        intermediate_size=192,
    )
    tok = Tokenizer.from_pretrained(path)
    tools = [t["function"] for t in TOOLS]
    examples = [
        (
            tok.encode(tok.apply_chat_template(q, tools=tools, add_generation_prompt=True)),
            tok.encode(call + "<|im_end|>"),
        )
        for q, call in ((SHELL, SHELL_CALL), (ODD, ODD_CALL))
    ]
    model = LFM2.from_pretrained(path).train().requires_grad_(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loss = _overfit(model, examples)
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    assert loss < 0.05, f"overfitting did not converge (loss {loss:.3f})"
    with serve(path, model, tok, max_concurrent=2) as s:
        yield s


def _chat(server, messages, stream: bool):
    body = {"model": MODEL, "messages": messages, "tools": TOOLS, "max_tokens": 40, "stream": stream, **GREEDY}
    if not stream:
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        raw = r.read()
    raw.decode("utf-8")  # the whole stream is valid UTF-8
    lines = [line for line in raw.decode().splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def _joined(chunks) -> tuple[str, list, list]:
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return content, calls, reasons


def test_a_call_to_a_function_never_offered_is_text(server):
    whole = _chat(server, SHELL, stream=False)["choices"][0]
    assert "tool_calls" not in whole["message"]
    assert whole["message"]["content"] == SHELL_CALL
    assert whole["finish_reason"] == "stop"
    content, calls, reasons = _joined(_chat(server, SHELL, stream=True))
    assert (content, calls, reasons) == (SHELL_CALL, [], ["stop"])


def test_a_lone_surrogate_in_a_tool_argument_is_replaced(server):
    whole = _chat(server, ODD, stream=False)["choices"][0]
    [call] = whole["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "\ufffd"}
    assert whole["finish_reason"] == "tool_calls"
    content, calls, reasons = _joined(_chat(server, ODD, stream=True))
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"location": "\ufffd"}]
    assert content == "" and reasons == ["tool_calls"]
