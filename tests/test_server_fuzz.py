"""A bounded fuzz run driven by the server's own `/openapi.json` (schemathesis, in-process ASGI).

Schemathesis generates requests from the served schema, valid ones and deliberately invalid
ones, and sends them to the app in process. Whatever it sends, the answer is never a 5xx; and
a body the schema calls invalid is never accepted (every rule the schema states, the server
enforces). The other direction is checked on examples: bodies of the shapes the other server
tests send are valid under the schema and answered 200; bad requests that break a schema-level
rule are invalid under it and answered 4xx. The engine's context is tiny (64 tokens), so every
generation is short.
"""

from __future__ import annotations

import contextlib
import json

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, not_a_server_error
from test_server import MODEL

from lfmkit import LFM2
from lfmkit.inference.engine import Engine, EngineConfig
from lfmkit.serve.app import ServerContext, create_app
from lfmkit.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("fuzz"), layout="small", seed=7, with_tokenizer=True)
    return LFM2.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)


@contextlib.contextmanager
def running_app(model, tokenizer, max_length: int):
    engine = Engine(model, tokenizer, EngineConfig(max_concurrent=2, max_queued=8, max_length=max_length))
    engine.start()
    try:
        yield create_app(ServerContext(engine, tokenizer, MODEL))
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def app(served):
    with running_app(*served, max_length=64) as app:
        yield app


# Random generation only (the exhaustive "coverage" phase alone sends hundreds of requests),
# a fixed seed, a bounded number of examples per operation.
CONFIG = """
seed = 1
[generation]
max-examples = 30
[phases.coverage]
enabled = false
"""


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_str(CONFIG))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
)
def test_no_request_gets_a_5xx(case):
    case.call_and_validate(checks=[not_a_server_error, negative_data_rejection])


CHAT_OK = [
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "temperature": 0,
        "top_k": -1,
        "seed": -(2**63),
        "stop": ["x"],
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "unknown_field": {"is": "ignored"},
    },
    {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
]
COMPLETION_OK = [{"model": MODEL, "prompt": p, "max_tokens": 3} for p in ("Hi", ["a", "b"], [1, 2], [[1], [2, 3]])]
CHAT_BAD = [
    {"model": "gpt-4"},
    {"messages": "hi"},
    {"messages": []},
    {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [{"role": "tool", "content": "42"}]},
    {"messages": [{"role": "assistant"}]},
    {
        "messages": [
            {
                "role": "user",
                "content": "x",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
            }
        ]
    },
    {"temperature": "hot"},
    {"temperature": -1},
    {"top_p": 0},
    {"max_tokens": 0},
    {"max_tokens": 1.5},
    {"max_tokens": True},
    {"n": 0},
    {"stop": ["ok", 3]},
    {"presence_penalty": 3},
    {"stream": "yes"},
    {"seed": 2**64 + 1},
    {"top_k": 10**20},
    {"top_logprobs": 50},
    {"stop_token_ids": [-1]},
]
COMPLETION_BAD = [
    {"prompt": {"a": 1}},
    {"prompt": []},
    {"prompt": [[1], []]},
    {"prompt": [1, "x"]},
    {"prompt": [1, 2**40]},
    {"logprobs": 21},
]


def test_the_schema_says_what_the_server_accepts(served):
    from starlette.testclient import TestClient

    with running_app(*served, max_length=512) as app:  # room for the tool conversation
        _check_examples(TestClient(app))


def _check_examples(client) -> None:
    spec = client.get("/openapi.json").json()

    def validator(name: str):
        return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})

    for path, schema_name, good, bad in (
        ("/v1/chat/completions", "ChatCompletionRequest", CHAT_OK, CHAT_BAD),
        ("/v1/completions", "CompletionRequest", COMPLETION_OK, COMPLETION_BAD),
    ):
        check = validator(schema_name)
        for body in good:
            assert check.is_valid(body), json.dumps(body)[:200]
            assert client.post(path, json={**body, "max_tokens": 2}).status_code == 200, body
        for change in bad:
            body = {**good[0], **change}
            assert not check.is_valid(body), change
            assert client.post(path, json=body).status_code in (400, 404), change
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "requestBody" in spec["paths"][path]["post"]
