"""Tool calls and reasoning through HTTP from a REAL model output.

A tiny checkpoint is overfitted in the test (a few seconds of Adam on our LFM2) to answer
a weather question with `<think>…</think>` and a Pythonic tool call, to continue a forced
`[get_weather(` prefix, and to answer once the tool result is in. The server must hand the
`openai` client parsed `tool_calls` with finish_reason "tool_calls", `reasoning_content`,
and take the tool result back in the next request.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_server import MODEL, serve

from lfmkit import LFM2
from lfmkit.text.tokenizer import Tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string", "description": "The city"}},
                "required": ["location"],
            },
        },
    }
]
QUESTION = [{"role": "user", "content": "What is the weather like in Paris?"}]
CALL_TEXT = '<|tool_call_start|>[get_weather(location="Paris")]<|tool_call_end|>'
THOUGHT = "The user wants the weather."
ANSWER = "It is sunny and 21 degrees."
RESULT = '{"temperature": 21, "sky": "sunny"}'
GREEDY = {"temperature": 0, "extra_body": {"min_p": 0.0, "repetition_penalty": 1.0}}


def _examples(tok: Tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) pairs the model must learn."""
    tools = [t["function"] for t in TOOLS]
    ask = tok.apply_chat_template(QUESTION, tools=tools, add_generation_prompt=True)
    after = QUESTION + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps({"location": "Paris"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
    ]
    answer_prompt = tok.apply_chat_template(after, tools=tools, add_generation_prompt=True)
    forced = CALL_TEXT[: CALL_TEXT.index("(") + 1]
    pairs = [
        (ask, f"<think>{THOUGHT}</think>{CALL_TEXT}<|im_end|>"),
        (ask + forced, CALL_TEXT[len(forced) :] + "<|im_end|>"),
        (answer_prompt, ANSWER + "<|im_end|>"),
    ]
    return [(tok.encode(p), tok.encode(c)) for p, c in pairs]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("tools"),
        layout="small",
        seed=2,
        with_tokenizer=True,
        hidden_size=64,
        intermediate_size=192,
    )
    tok = Tokenizer.from_pretrained(path)
    model = LFM2.from_pretrained(path).train().requires_grad_(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10x faster on a busy 2-core machine
    try:
        loss = _overfit(model, _examples(tok))
    finally:
        torch.set_num_threads(threads)
    model.eval().requires_grad_(False)
    assert loss < 0.05, f"overfitting did not converge (loss {loss:.3f})"
    return path, model, tok


def _overfit(model, examples, steps: int = 300) -> float:
    """Adam on the completion tokens only, until the summed loss is ~0 (about 30 steps)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = 0.0
        for prompt, completion in examples:
            ids = torch.tensor([prompt + completion])
            logits = model(ids[:, :-1])[0, len(prompt) - 1 :]
            loss = loss + torch.nn.functional.cross_entropy(logits.float(), ids[0, len(prompt) :])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    return loss.item()


@pytest.fixture(scope="module")
def server(trained):
    path, model, tok = trained
    with serve(path, model, tok, max_concurrent=4) as s:
        yield s


def test_tool_call_and_reasoning_round_trip(server):
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.model_extra["reasoning_content"] == THOUGHT
    assert not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    # The client runs the tool and sends the result back: the model answers in text.
    follow = QUESTION + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    follow[1].pop("reasoning_content", None)
    r2 = client.chat.completions.create(model=MODEL, messages=follow, tools=TOOLS, **GREEDY)
    assert r2.choices[0].message.content == ANSWER
    assert r2.choices[0].finish_reason == "stop"
    assert not r2.choices[0].message.tool_calls


def test_streamed_tool_call(server):
    client = server.client()
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, stream=True, **GREEDY))
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert reasoning == THOUGHT
    assert content == ""
    assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        (0, "get_weather", {"location": "Paris"})
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_choice(server):
    client = server.client()
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in (named, "required"):
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=choice, **GREEDY)
        assert r.choices[0].finish_reason == "tool_calls", choice
        assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # "none": the tools are not offered, so nothing is parsed as a call
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none", max_tokens=20, **GREEDY
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    assert not r.choices[0].message.tool_calls
