"""Bounded work per request: the body limit holds for chunked bodies, big prompts are refused
before they are tokenized, and preparing a request never blocks the event loop (`/health` and
running streams keep answering). Also: API keys compared as UTF-8 bytes, and responses that
always encode.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import MODEL, serve

from lfmkit.serve.app import create_app
from lfmkit.serve.schema import to_json

CHAT, COMP = "/v1/chat/completions", "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("limits"), layout="small", seed=6, with_tokenizer=True)
    with serve(path, max_concurrent=2, max_queued=4) as s:
        yield s


# ---- the body limit while the body streams in ---------------------------------------------
def test_a_chunked_body_is_cut_off_at_the_limit(server, monkeypatch):
    """100 MB sent chunked (no Content-Length): the server stops reading at the limit (413)."""
    import asyncio

    monkeypatch.setattr(server.context, "max_body_bytes", 2**20)
    sent = []

    async def body():  # 100 chunks of 1 MiB, counted as the server pulls them
        for _ in range(100):
            sent.append(1)
            yield b"x" * 2**20

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(server.context))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(COMP, content=body())

    r = asyncio.run(post())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large" and set(r.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert len(sent) <= 3, f"the server read {len(sent)} MiB of a body limited to 1 MiB"

    # the same over real HTTP, chunked
    monkeypatch.setattr(server.context, "max_body_bytes", 1000)
    r = httpx.post(server.url + COMP, content=iter([b"{" * 1000] * 3), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


# ---- prompt size: refused before tokenizing -----------------------------------------------
def _poll_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        assert httpx.get(url + "/health", timeout=5).status_code == 200  # (a hang guard, not a benchmark)
        latencies.append(time.perf_counter() - start)
        time.sleep(0.01)


@pytest.mark.parametrize(
    "path,body,param",
    [
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x" * 30_000_000}]}, "messages"),
        (COMP, {"model": MODEL, "prompt": "x " * 15_000_000}, "prompt"),
    ],
    ids=["chat", "completions"],
)
def test_a_30_mb_prompt_is_refused_and_health_answers_meanwhile(server, path, body, param):
    stop, latencies = threading.Event(), []
    poller = threading.Thread(target=_poll_health, args=(server.url, stop, latencies))
    poller.start()
    try:
        r = httpx.post(server.url + path, content=json.dumps(body), timeout=60)
    finally:
        stop.set()
        poller.join()
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "context_length_exceeded"
    assert latencies, "/health was never answered"


def test_a_prompt_just_under_the_bound_is_tokenized_and_measured(server):
    bound = server.context.bound
    text = "ab " * (bound.max_chars // 3 - 10)  # fits the character bound, not the context
    r = httpx.post(
        server.url + CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": text}]}, timeout=60
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize("method", ["apply_chat_template", "encode"])
def test_preparing_a_request_does_not_block_the_event_loop(server, monkeypatch, method):
    """While a prompt is being rendered / tokenized, /health and other requests are answered."""
    tokenizer = server.context.tokenizer
    entered, release = threading.Event(), threading.Event()
    original = getattr(tokenizer, method)

    def slow(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(tokenizer, method, slow)
    result = {}

    def chat():
        result["r"] = httpx.post(
            server.url + CHAT, json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2}, timeout=60
        )

    client = threading.Thread(target=chat)
    client.start()
    try:
        assert entered.wait(30)
        assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "ok"
        assert httpx.get(server.url + "/v1/models", timeout=5).status_code == 200
    finally:
        release.set()
        client.join(60)
    assert result["r"].status_code == 200


# ---- auth: UTF-8 bytes ---------------------------------------------------------------------
def test_a_non_ascii_api_key_matches_its_utf8_bytes(server):
    key = "sékret-✓"
    with serve(
        server.context.tokenizer.path,
        tokenizer=server.context.tokenizer,
        model=server.context.engine.model,
        api_key=key,
        max_concurrent=1,
    ) as s:

        def models(token: bytes) -> int:
            return httpx.get(s.url + "/v1/models", headers={b"authorization": b"Bearer " + token}).status_code

        assert models(key.encode("utf-8")) == 200
        assert models("sékret-".encode("latin-1") + b"?") == 401
        assert models(b"wrong") == 401


# ---- output always encodes -----------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))))
def test_to_json_always_encodes(text):
    out = to_json({"content": text, "tool_calls": [{"arguments": text}]})
    out.encode("utf-8")  # never raises
    back = json.loads(out)["content"]
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert back == text  # valid text is untouched
    assert len(back) <= len(text)


def test_to_json_joins_pairs_and_replaces_lone_surrogates():
    assert json.loads(to_json({"a": "x\ud83d\ude00y\ud800z"})) == {"a": "x\U0001f600y\ufffdz"}
