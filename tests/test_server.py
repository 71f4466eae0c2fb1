"""`lfmkit serve` over real HTTP on 127.0.0.1, driven by the official `openai` client.

A tiny random-weight checkpoint with the test tokenizer is served by uvicorn in a thread.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time

import httpx
import openai
import pytest

from lfmkit import LFM2
from lfmkit.inference.engine import Engine, EngineConfig
from lfmkit.inference.generate import generate
from lfmkit.inference.sampling import SamplingParams, generation_config_defaults
from lfmkit.serve.app import ServerContext, create_app
from lfmkit.text.tokenizer import Tokenizer

MODEL = "tiny-lfm2"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


class ServerThread:
    """uvicorn serving `create_app(context)` on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, context: ServerContext):
        import uvicorn

        self.context = context
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(context), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.context.engine.start()
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.context.engine.stop()

    def client(self, **kw) -> openai.OpenAI:
        kw.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=60, **kw)


def serve(path, model=None, tokenizer=None, api_key=None, **engine_kw) -> ServerThread:
    model = model or LFM2.from_pretrained(path).eval()
    tokenizer = tokenizer or Tokenizer.from_pretrained(path)
    engine_kw.setdefault("max_length", 4096)
    engine = Engine(model, tokenizer, EngineConfig(**engine_kw))
    context = ServerContext(engine, tokenizer, MODEL, defaults=generation_config_defaults(path), api_key=api_key)
    return ServerThread(context)


def wait_idle(url: str, timeout: float = 20.0) -> dict:
    deadline = time.time() + timeout
    while True:
        health = httpx.get(url + "/health").json()
        if health["running"] == 0 and health["queued"] == 0:
            return health
        if time.time() > deadline:
            raise AssertionError(f"the engine did not go idle: {health}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("serve"), layout="small", seed=5, with_tokenizer=True)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return LFM2.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return Tokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint, model, tokenizer):
    with serve(checkpoint, model, tokenizer, max_concurrent=8, max_queued=64) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def greedy(model, tokenizer, prompt, max_tokens, **kw):
    return generate(model, prompt, SamplingParams.greedy(max_tokens=max_tokens, **kw), tokenizer=tokenizer)


# ---- the happy paths -------------------------------------------------------------------------
def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["max_concurrent"] == 8


def test_chat_greedy_equals_generate(client, model, tokenizer):
    want = greedy(model, tokenizer, MESSAGES, 16, ignore_eos=True)
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=16,
        temperature=0,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.message.content
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(want.prompt_ids)
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == len(want.prompt_ids) + 16


def test_server_defaults_are_the_model_card_sampling(client, model, tokenizer):
    """Without parameters the server samples as generate does by default (same seed, same text)."""
    want = generate(model, MESSAGES, SamplingParams(max_tokens=12, seed=7, ignore_eos=True), tokenizer=tokenizer)
    r = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=12, seed=7, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].message.content == want.message.content


def test_completions_greedy_equals_generate_with_echo_and_logprobs(client, model, tokenizer):
    prompt = "The quick brown fox"
    want = greedy(model, tokenizer, prompt, 10, ignore_eos=True, logprobs=True, top_logprobs=2)
    r = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=10,
        temperature=0,
        logprobs=2,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    choice = r.choices[0]
    assert choice.text == want.text
    assert choice.finish_reason == "length"
    assert choice.logprobs.token_logprobs == pytest.approx([lp.logprob for lp in want.logprobs], abs=1e-4)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert r.usage.prompt_tokens == len(want.prompt_ids)
    echo = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=10,
        temperature=0,
        echo=True,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    assert echo.choices[0].text == prompt + want.text
    ids = client.completions.create(
        model=MODEL,
        prompt=want.prompt_ids,
        max_tokens=10,
        temperature=0,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    assert ids.choices[0].text == want.text


def test_chat_logprobs(client, model, tokenizer):
    want = greedy(model, tokenizer, MESSAGES, 5, ignore_eos=True, logprobs=True, top_logprobs=3)
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx([lp.logprob for lp in want.logprobs], abs=1e-4)
    assert "".join(c.token for c in content) == want.text
    assert all(len(c.top_logprobs) == 3 for c in content)


def test_stream_chat_matches_non_stream_and_reports_usage(client):
    kw = dict(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=20,
        temperature=0,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_wire_format_ends_with_done(server):
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(p["object"] == "text_completion" and "usage" not in p for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_n_choices_and_seed(client):
    kw = dict(
        model=MODEL, messages=MESSAGES, max_tokens=8, n=3, temperature=1.0, seed=123, extra_body={"ignore_eos": True}
    )
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens == 24
    stream = list(
        client.completions.create(
            model=MODEL, prompt="Hi", max_tokens=5, n=2, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
    )
    texts = {0: "", 1: ""}
    for c in stream:
        for ch in c.choices:
            texts[ch.index] += ch.text
    assert texts[0] == texts[1] != ""


def test_stop_strings(client):
    kw = dict(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=24,
        temperature=0,
        extra_body={"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True},
    )
    full = client.completions.create(**kw).choices[0].text
    stop = full[5:8]
    assert len(stop) == 3
    r = client.completions.create(stop=[stop, "\u2603never"], **kw)
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kw) if c.choices)
    assert streamed == full[: full.index(stop)]


def test_sixteen_concurrent_streaming_clients(server, client):
    """16 clients at once (8 slots, so half wait in the queue): every stream is complete and right."""
    prompts = [f"Story number {i}:" for i in range(16)]
    extra = {"min_p": 0.0, "repetition_penalty": 1.0, "ignore_eos": True}
    want = {
        p: client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0, extra_body=extra)
        .choices[0]
        .text
        for p in prompts[:4]
    }

    def one(prompt: str):
        text, reasons = "", []
        for chunk in server.client().completions.create(
            model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True, extra_body=extra
        ):
            for ch in chunk.choices:
                text += ch.text
                if ch.finish_reason:
                    reasons.append(ch.finish_reason)
        return prompt, text, reasons

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, prompts))
    assert len(results) == 16
    for prompt, text, reasons in results:
        assert reasons == ["length"]
        if prompt in want:
            assert text == want[prompt]
    wait_idle(server.url)


def test_disconnecting_clients_free_their_slots(server):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    for _ in range(3):
        streams = []
        for _ in range(10):  # 10 > 8 slots: two of them wait in the queue
            cm = httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30)
            streams.append((cm, cm.__enter__()))
        deadline = time.time() + 10
        while True:  # 8 hold the slots, 2 wait
            health = httpx.get(server.url + "/health").json()
            if (health["running"], health["queued"]) == (8, 2) or time.time() > deadline:
                break
            time.sleep(0.005)
        assert (health["running"], health["queued"]) == (8, 2)
        for _, response in streams[:8]:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # streaming has started
            del lines  # (dropping the iterator hangs up too)
        for cm, _ in streams:
            cm.__exit__(None, None, None)  # hang up
        wait_idle(server.url, timeout=10)
    metrics = httpx.get(server.url + "/metrics").text
    assert "lfmkit_queue_depth 0" in metrics and "lfmkit_running_sequences 0" in metrics


def test_non_streaming_disconnect_cancels(server):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.3)
    wait_idle(server.url, timeout=10)


def test_metrics_exposition(server, client):
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for name in (
        "lfmkit_requests_total",
        "lfmkit_prompt_tokens_total",
        "lfmkit_generation_tokens_total",
        "lfmkit_queue_depth",
        "lfmkit_time_to_first_token_seconds_bucket",
        "lfmkit_time_per_output_token_seconds_bucket",
    ):
        assert name in text
    assert 'lfmkit_requests_total{endpoint="/v1/completions",status="200"}' in text
    counts = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert counts["lfmkit_generation_tokens_total"] >= 3
    assert (
        counts['lfmkit_time_to_first_token_seconds_bucket{le="+Inf"}']
        == counts["lfmkit_time_to_first_token_seconds_count"]
        >= 1
    )


# ---- bad requests ------------------------------------------------------------------------------
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


def nested(depth: int) -> list:
    """A list nested `depth` levels deep."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_REQUESTS = [
    # (path, raw body or JSON, status, param)
    (CHAT, "{not json", 400, None),
    (CHAT, "", 400, None),
    (CHAT, "[1, 2]", 400, None),
    (CHAT, {"model": "gpt-4", "messages": OK_MSG}, 404, "model"),
    (CHAT, {"messages": OK_MSG}, 400, "model"),
    (CHAT, {"model": MODEL}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user"}]}, 400, "messages[0]"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "temperature": "hot"}, 400, "temperature"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "temperature": -1}, 400, "temperature"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "top_p": 0}, 400, "top_p"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "max_tokens": 0}, 400, "max_tokens"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "max_tokens": 1.5}, 400, "max_tokens"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "max_tokens": True}, 400, "max_tokens"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "n": 0}, 400, "n"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "n": 9}, 400, None),  # > max_concurrent
    (CHAT, {"model": MODEL, "messages": OK_MSG, "top_logprobs": 50, "logprobs": True}, 400, "top_logprobs"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "top_logprobs": 2}, 400, "top_logprobs"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "stop": ["ok", 3]}, 400, "stop"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "presence_penalty": 3}, 400, "presence_penalty"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "stream": "yes"}, 400, "stream"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "max_tokens": 100000}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "word " * 5000}]}, 400, "messages"),
    (
        CHAT,
        {"model": MODEL, "messages": OK_MSG, "tools": [{"type": "function", "function": {"name": "bad name"}}]},
        400,
        "tools[0].function.name",
    ),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "tools": [{"type": "function"}]}, 400, "tools[0].function"),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": OK_MSG,
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": {}, "required": ["x"]}},
                }
            ],
        },
        400,
        "tools[0].function.parameters",
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": OK_MSG,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
        },
        400,
        "tools[0].function.parameters",
    ),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "tool_choice": "required"}, 400, "tool_choice"),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": OK_MSG,
            "tool_choice": {"type": "function", "function": {"name": "g"}},
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        400,
        "tool_choice",
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ],
        },
        400,
        "messages[0].tool_calls[0].function.arguments",
    ),
    (COMP, {"model": MODEL}, 400, "prompt"),
    (COMP, {"model": MODEL, "prompt": ""}, 400, "prompt"),
    (COMP, {"model": MODEL, "prompt": [1, 999999]}, 400, None),
    (COMP, {"model": MODEL, "prompt": "x", "logprobs": 21}, 400, "logprobs"),
    (COMP, {"model": MODEL, "prompt": "x", "suffix": "y"}, 400, "suffix"),
    (COMP, {"model": MODEL, "prompt": {"a": 1}}, 400, "prompt"),
    # integers beyond their range, as OpenAI bounds them
    (CHAT, {"model": MODEL, "messages": OK_MSG, "seed": 2**64 + 1}, 400, "seed"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "seed": -(2**63) - 1}, 400, "seed"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "top_k": 10**20}, 400, "top_k"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "max_tokens": 2**40}, 400, "max_tokens"),
    (CHAT, {"model": MODEL, "messages": OK_MSG, "stop_token_ids": [2**63]}, 400, "stop_token_ids[0]"),
    (COMP, {"model": MODEL, "prompt": [1, 2**64]}, 400, "prompt[1]"),
    (COMP, {"model": MODEL, "prompt": [[1], []]}, 400, "prompt[1]"),
    (COMP, {"model": MODEL, "prompt": ["a"] * 100}, 400, "prompt"),  # > slots + queue
    # a tool result must say which call it answers
    (CHAT, {"model": MODEL, "messages": OK_MSG + [{"role": "tool", "content": "42"}]}, 400, "messages[1]"),
    # JSON nesting: tool-call arguments and tool parameters are rendered recursively
    (
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": ' + "[" * 189 + "]" * 189 + "}"},
                        }
                    ],
                }
            ]
            + OK_MSG,
        },
        400,
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": ' + "[" * 100000 + "]" * 100000 + "}"},
                        }
                    ],
                }
            ]
            + OK_MSG,
        },
        400,
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": OK_MSG,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"x": {"default": nested(70)}}},
                    },
                }
            ],
        },
        400,
        "tools[0].function.parameters",
    ),
    (CHAT, '{"model": "%s", "messages": [], "extra": %s%s}' % (MODEL, "[" * 300, "]" * 300), 400, None),
]


@pytest.mark.parametrize(
    "path,body,status,param",
    BAD_REQUESTS,
    ids=[f"{i}-{p.rsplit('/', 1)[-1]}" for i, (p, *_rest) in enumerate(BAD_REQUESTS)],
)
def test_bad_requests_get_openai_errors(server, path, body, status, param):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param, err
    # ... and the server keeps serving
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_oversized_body_is_refused_unread(server, monkeypatch):
    monkeypatch.setattr(server.context, "max_body_bytes", 1000)
    r = httpx.post(server.url + COMP, content=json.dumps({"model": MODEL, "prompt": "x" * 2000}))
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    assert r.headers["allow"] == "POST"


def test_openai_client_raises_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=OK_MSG)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=OK_MSG, temperature=5)
    assert info.value.body["param"] == "temperature"


# ---- limits and auth ---------------------------------------------------------------------------
def test_queue_full_gets_429_with_retry_after(checkpoint, model, tokenizer):
    with serve(checkpoint, model, tokenizer, max_concurrent=1, max_queued=1) as s:
        body = {"model": MODEL, "prompt": "Hi", "max_tokens": 4000, "stream": True, "ignore_eos": True}
        first = httpx.stream("POST", s.url + COMP, json=body, timeout=30)
        r1 = first.__enter__()
        lines1 = r1.iter_lines()  # (keep a reference: a dropped iterator closes the stream)
        next(lines1)  # holds the only slot
        second = httpx.stream("POST", s.url + COMP, json=body, timeout=30)
        r2 = second.__enter__()  # waits in the queue
        r3 = httpx.post(s.url + COMP, json=body, timeout=30)
        assert r3.status_code == 429
        assert int(r3.headers["retry-after"]) >= 1
        assert r3.json()["error"]["type"] == "server_overloaded"
        first.__exit__(None, None, None)
        assert next(line for line in r2.iter_lines() if line).startswith("data: ")  # its turn came
        second.__exit__(None, None, None)
        wait_idle(s.url)
        assert "lfmkit_requests_rejected_total 1" in httpx.get(s.url + "/metrics").text


def test_api_key(checkpoint, model, tokenizer):
    with serve(checkpoint, model, tokenizer, api_key="sekret", max_concurrent=2) as s:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        r = httpx.post(s.url + COMP, json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert [m.id for m in s.client(api_key="sekret").models.list().data] == [MODEL]
        out = s.client(api_key="sekret").completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert out.usage.completion_tokens >= 1
        assert httpx.get(s.url + "/health").status_code == 200  # health stays open for probes


# ---- fuzzing: nothing a client sends is a 5xx ---------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_fields = {
    "model": st.one_of(st.just(MODEL), _json),
    "messages": st.one_of(
        st.just(OK_MSG),
        st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]), "content": _json}
            ),
            max_size=2,
        ),
        _json,
    ),
    "prompt": st.one_of(st.just("Hi"), st.lists(st.integers(-5, 600), max_size=4), _json),
    "max_tokens": st.one_of(st.integers(-2, 3), _json),
    "n": st.one_of(st.integers(-1, 3), _json),
    "temperature": _json,
    "top_p": _json,
    "top_k": _json,
    "min_p": _json,
    "seed": _json,
    "stop": _json,
    "logprobs": _json,
    "top_logprobs": _json,
    "stream": st.booleans(),
    "tools": _json,
    "tool_choice": _json,
    "stream_options": _json,
    "presence_penalty": _json,
    "echo": _json,
}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(path=st.sampled_from([CHAT, COMP]), body=st.fixed_dictionaries({}, optional=_fields))
def test_fuzzed_requests_never_get_5xx(server, path, body):
    body.setdefault("max_tokens", 2)
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] > 3:
        body["max_tokens"] = 2
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
