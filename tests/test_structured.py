"""Structured output with RANDOM weights, where only a real constrained decoder produces valid
output: JSON schemas (generate, the engine, the server), LFM2 tool calls our parser reads back
with arguments valid against the tools' schemas, `lfmkit run --json-schema` / `--grammar`,
400s naming unsupported schema features, and batch = single with constrained and free rows mixed.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server import MODEL, serve

from lfmkit import LFM2
from lfmkit.cli import main
from lfmkit.errors import GenerationError
from lfmkit.inference.constrain import Constraint, GrammarError
from lfmkit.inference.engine import Engine, EngineConfig, ErrorEvent, TokenEvent
from lfmkit.inference.generate import generate
from lfmkit.inference.sampling import BatchSampler, SamplingParams
from lfmkit.text.tokenizer import Tokenizer
from lfmkit.text.tool_calls import parse_tool_calls
from lfmkit.text.tool_grammar import forced_prefix

SCHEMAS = {
    "required fields": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["name", "age", "ok"],
        "additionalProperties": False,
    },
    "enums and const": {
        "type": "object",
        "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}, "v": {"const": 2}, "x": {"enum": [1, None, "a"]}},
        "required": ["unit", "v", "x"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 2, "maxItems": 3},
            "grid": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        },
        "required": ["tags", "grid"],
    },
    "nested": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "address": {"$ref": "#/$defs/address"}},
                "required": ["id", "address"],
            }
        },
        "required": ["user"],
        "$defs": {
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city"],
            }
        },
    },
    "numbers with bounds": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "minimum": 10, "maximum": 99},
            "temp": {"type": "number", "exclusiveMinimum": -40},
        },
        "required": ["score", "count", "temp"],
    },
    "string patterns and formats": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "day": {"type": "string", "format": "date"},
            "word": {"type": "string", "minLength": 2, "maxLength": 5},
        },
        "required": ["code", "day", "word"],
    },
    "unions": {
        "type": "object",
        "properties": {
            "v": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}, {"type": "null"}]},
            "w": {"type": ["boolean", "array"], "items": {"type": "integer"}},
        },
        "required": ["v", "w"],
    },
    "top-level array": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1},
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "maxLength": 20},
                    "filters": {
                        "type": "object",
                        "properties": {"lang": {"enum": ["en", "fr"]}, "safe": {"type": "boolean"}},
                        "required": ["safe"],
                        "additionalProperties": False,
                    },
                    "from": {"type": "integer"},  # a Python keyword as an argument name
                },
                "required": ["query", "filters"],
            },
        },
    },
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}},
]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
FUNCTIONS = [t["function"] for t in TOOLS]
ASK = [{"role": "user", "content": "Answer in JSON, please."}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("structured"), layout="small", seed=7, with_tokenizer=True)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return LFM2.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return Tokenizer.from_pretrained(checkpoint)


def check_calls(text: str, allowed: set[str]) -> list:
    """The calls in `text`, each to an allowed tool, with arguments valid against its schema."""
    calls = parse_tool_calls(text)
    assert calls, text
    for call in calls:
        assert call.name in allowed, text
        jsonschema.validate(call.arguments, SCHEMA_OF[call.name])
    return calls


# ---- generate --------------------------------------------------------------------------------
def test_random_weights_do_not_write_json_unconstrained(model, tokenizer):
    """The premise: without the grammar this model's answer is not JSON."""
    r = generate(model, ASK, SamplingParams.greedy(max_tokens=40), tokenizer=tokenizer)
    with pytest.raises(ValueError):
        json.loads(r.text)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_json_schema_outputs_validate(model, tokenizer, sampled):
    """Every schema in one batch (rows of different schemas decode together); each output parses,
    validates, and ends with end-of-turn inside max_tokens."""
    names = list(SCHEMAS)
    base = SamplingParams(temperature=1.0, min_p=0.0, seed=3) if sampled else SamplingParams.greedy()
    params = [base.replace(max_tokens=96, constraint=Constraint.json_schema(SCHEMAS[n], tokenizer)) for n in names]
    results = generate(model, [ASK] * len(names), params, tokenizer=tokenizer)
    for name, r in zip(names, results):
        assert r.finish_reason == "stop", (name, r.text)
        jsonschema.validate(json.loads(r.text), SCHEMAS[name])


def test_json_object_and_lark_grammar(model, tokenizer):
    r = generate(
        model,
        ASK,
        SamplingParams.greedy(max_tokens=64, constraint=Constraint.json_object(tokenizer)),
        tokenizer=tokenizer,
    )
    assert isinstance(json.loads(r.text), dict) and r.finish_reason == "stop"
    lark = 'start: "The answer is " ("yes" | "no") "." | %json {"type": "integer", "minimum": 5, "maximum": 9}'
    r = generate(
        model,
        ASK,
        SamplingParams.greedy(max_tokens=20, constraint=Constraint.lark(lark, tokenizer)),
        tokenizer=tokenizer,
    )
    assert r.text in ("The answer is yes.", "The answer is no.") or 5 <= int(r.text) <= 9, r.text


def test_chat_session_turns_with_a_schema(model, tokenizer):
    """A session's constrained turn, then a free one: the JSON answer is in the history."""
    from lfmkit.inference.session import ChatSession

    chat = ChatSession(model, tokenizer, params=SamplingParams.greedy(max_tokens=60))
    schema = SCHEMAS["enums and const"]
    r = chat.send("Weather as JSON?", constraint=Constraint.json_schema(schema, tokenizer))
    jsonschema.validate(json.loads(r.text), schema)
    chat.send("Thanks!", max_tokens=8)
    assert chat.messages[1]["content"] == r.text


def test_output_finishes_within_a_tight_max_tokens(model, tokenizer):
    """The finish guard: a budget just above the shortest answer still ends in valid JSON."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    c = Constraint.json_schema(schema, tokenizer)
    for max_tokens in (16, 24, 70):
        r = generate(model, ASK, SamplingParams.greedy(max_tokens=max_tokens, constraint=c), tokenizer=tokenizer)
        assert r.finish_reason == "stop" and len(r.token_ids) <= max_tokens
        jsonschema.validate(json.loads(r.text), schema)


@pytest.mark.parametrize("name", [None, "search", "ping"], ids=["required", "named", "named-no-args"])
def test_tool_call_grammar_gives_calls_our_parser_reads(model, tokenizer, name):
    prompt = tokenizer.apply_chat_template(ASK, tools=FUNCTIONS, add_generation_prompt=True)
    forced = forced_prefix(FUNCTIONS, name)
    assert forced == "<|tool_call_start|>[" + (f"{name}(" if name else "")
    c = Constraint.tool_calls(FUNCTIONS, tokenizer, name=name)
    params = [SamplingParams(max_tokens=80, temperature=1.0, min_p=0.0, seed=s, constraint=c) for s in range(4)]
    for r in generate(model, [prompt + forced] * 4, params, tokenizer=tokenizer):
        assert r.finish_reason == "stop", r.text
        calls = check_calls(forced + r.text, {name} if name else set(SCHEMA_OF))
        if name:
            assert len(calls) == 1


def test_single_call_without_parallel_calls(model, tokenizer):
    prompt = tokenizer.apply_chat_template(ASK, tools=FUNCTIONS, add_generation_prompt=True) + "<|tool_call_start|>["
    c = Constraint.tool_calls(FUNCTIONS, tokenizer, parallel=False)
    for seed in range(3):
        params = SamplingParams(max_tokens=80, temperature=1.5, min_p=0.0, seed=seed, constraint=c)
        r = generate(model, prompt, params, tokenizer=tokenizer)
        assert len(check_calls("<|tool_call_start|>[" + r.text, set(SCHEMA_OF))) == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), max_tokens=st.integers(40, 90), which=st.sampled_from(["tools", *SCHEMAS]))
def test_any_token_choice_within_the_grammar_parses(tokenizer, seed, max_tokens, which):
    """Property: whatever the logits (random ones here), the sampler's output under a constraint
    always ends complete: JSON that validates, or calls the parser reads with valid arguments."""
    c = (
        Constraint.tool_calls(FUNCTIONS, tokenizer)
        if which == "tools"
        else Constraint.json_schema(SCHEMAS[which], tokenizer)
    )
    sampler = BatchSampler(tokenizer.vocab_size, 1)
    sampler.add_row(0, SamplingParams(max_tokens=max_tokens, temperature=1.0, min_p=0.0, seed=seed, constraint=c))
    g = torch.Generator().manual_seed(seed)
    tokens = []
    while len(tokens) < max_tokens and (not tokens or tokens[-1] != tokenizer.eos_token_id):
        tokens.append(int(sampler.sample(torch.randn(1, tokenizer.vocab_size, generator=g) * 4).tokens[0]))
    assert tokens[-1] == tokenizer.eos_token_id
    text = tokenizer.decode(tokens[:-1])
    if which == "tools":
        check_calls("<|tool_call_start|>[" + text, set(SCHEMA_OF))
    else:
        jsonschema.validate(json.loads(text), SCHEMAS[which])


ODD = [  # names Python cannot call: such tools are called JSON-style
    {
        "name": "my-tool",
        "parameters": {"type": "object", "properties": {"user-id": {"type": "integer"}}, "required": ["user-id"]},
    },
    {"name": "import", "parameters": {"type": "object", "properties": {"path": {"type": "string", "maxLength": 8}}}},
    {"name": "ping", "parameters": {"type": "object", "properties": {}}},
]


@pytest.mark.parametrize("name", [None, "my-tool", "import"], ids=["required", "named-hyphen", "named-keyword"])
def test_tools_python_cannot_call_are_called_json_style(model, tokenizer, name):
    prompt = tokenizer.apply_chat_template(ASK, tools=ODD, add_generation_prompt=True)
    forced = forced_prefix(ODD, name)
    assert forced == "<|tool_call_start|>["
    c = Constraint.tool_calls(ODD, tokenizer, name=name)
    params = [SamplingParams(max_tokens=60, temperature=1.0, min_p=0.0, seed=s, constraint=c) for s in range(3)]
    schemas = {t["name"]: t["parameters"] for t in ODD}
    for r in generate(model, [prompt + forced] * 3, params, tokenizer=tokenizer):
        calls = parse_tool_calls(forced + r.text)
        assert calls and (name is None or [call.name for call in calls] == [name]), r.text
        for call in calls:
            jsonschema.validate(call.arguments, schemas[call.name])


def test_unsupported_schema_features_are_named(tokenizer):
    schema = {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}, "if": {}, "then": {}}
    with pytest.raises(GrammarError) as e:
        Constraint.json_schema(schema, tokenizer)
    assert e.value.features == ["if", "then", "uniqueItems"]
    assert "$.properties.a.uniqueItems" in str(e.value)
    overlapping = {"oneOf": [{"type": "object"}, {"type": "object", "properties": {"a": {"type": "integer"}}}]}
    with pytest.raises(GrammarError, match="anyOf") as e:
        Constraint.json_schema({"type": "object", "properties": {"x": overlapping}}, tokenizer)
    assert e.value.features == ["oneOf"] and "$.properties.x.oneOf" in str(e.value)
    with pytest.raises(GrammarError, match="look-around"):
        Constraint.json_schema({"type": "string", "pattern": "^(?!x).*$"}, tokenizer)
    with pytest.raises(GenerationError, match="constraint"):
        SamplingParams(constraint={"type": "object"})
    with pytest.raises(GenerationError, match="ignore_eos"):
        SamplingParams(ignore_eos=True, constraint=Constraint.json_object(tokenizer))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["string", "object", "array", "integer", "^a+$"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["type", "properties", "items", "required", "enum", "pattern", "minimum", "not", "$ref", "x"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(schema=JSON)
def test_any_schema_compiles_or_is_a_grammar_error(tokenizer, schema):
    """Whatever JSON arrives as a schema, compiling it either works or raises GrammarError (a 400)."""
    try:
        Constraint.json_schema(schema, tokenizer)
    except GrammarError as exc:
        assert str(exc)


# ---- batch = single ------------------------------------------------------------------------------
def test_engine_rows_are_independent_of_their_batch_mates(model, tokenizer):
    """Greedy, byte for byte: constrained and free rows of different lengths decoded together in the
    engine give what each gives alone (generate, batch of one)."""
    ask = [ASK, [{"role": "user", "content": "What is the weather like in Paris today?"}], ASK, "Once upon a time"]
    tools_prompt = tokenizer.apply_chat_template(ASK, tools=FUNCTIONS, add_generation_prompt=True)
    prompts = [
        tokenizer.encode(tokenizer.apply_chat_template(p, add_generation_prompt=True))
        if isinstance(p, list)
        else tokenizer.encode(p, add_special_tokens=True)
        for p in ask
    ]
    prompts.append(tokenizer.encode(tools_prompt + "<|tool_call_start|>["))
    constraints = [
        Constraint.json_schema(SCHEMAS["nested"], tokenizer),
        None,
        Constraint.json_schema(SCHEMAS["arrays"], tokenizer),
        None,
        Constraint.tool_calls(FUNCTIONS, tokenizer),
    ]
    params = [SamplingParams.greedy(max_tokens=48, constraint=c) for c in constraints]
    alone = [generate(model, p, sp, tokenizer=tokenizer).token_ids for p, sp in zip(prompts, params)]
    engine = Engine(model, tokenizer, EngineConfig(max_concurrent=5, max_length=512)).start()
    try:
        handles = [engine.submit(p, sp) for p, sp in zip(prompts, params)]
        together = []
        for h in handles:
            events = list(h)
            assert not any(isinstance(e, ErrorEvent) for e in events)
            together.append([e.token_id for e in events if isinstance(e, TokenEvent)])
    finally:
        engine.stop()
    assert together == alone
    assert alone[1] != alone[0]  # the free rows are not shaped by their constrained neighbours
    jsonschema.validate(json.loads(tokenizer.decode(alone[0][:-1])), SCHEMAS["nested"])


# ---- the server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(checkpoint, model, tokenizer):
    with serve(checkpoint, model, tokenizer, max_concurrent=4, max_length=1024) as s:
        yield s


def chat(server, **body):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 96, **body}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


@pytest.mark.parametrize("name", ["required fields", "nested", "string patterns and formats"])
def test_server_json_schema(server, name):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMAS[name], "strict": True}}
    r = chat(server, response_format=fmt, n=2, temperature=1.0, seed=1)
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMAS[name])


def test_server_json_object_streamed(server):
    r = chat(server, response_format={"type": "json_object"}, stream=True)
    parts = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in parts if p["choices"])
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    "tools,choice",
    [
        (TOOLS, "required"),
        (TOOLS, {"type": "function", "function": {"name": "search"}}),
        ([{"type": "function", "function": f} for f in ODD], {"type": "function", "function": {"name": "my-tool"}}),
    ],
    ids=["required", "named", "named-json-style"],
)
def test_server_tool_choice_always_gives_a_well_formed_call(server, tools, choice):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for seed in range(3):
        r = chat(server, tools=tools, tool_choice=choice, temperature=1.0, seed=seed)
        assert r.status_code == 200, r.text
        out = r.json()["choices"][0]
        assert out["finish_reason"] == "tool_calls", out
        names = {choice["function"]["name"]} if isinstance(choice, dict) else set(schemas)
        for call in out["message"]["tool_calls"]:
            assert call["function"]["name"] in names
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])


@pytest.mark.parametrize(
    "body,param,words",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "not": {}, "properties": {"a": {"type": "array", "contains": {}}}},
                    },
                }
            },
            "response_format.json_schema.schema",
            ["'contains'", "'not'", "$.properties.a.contains"],
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format", ["json_schema"]),
        ({"response_format": {"type": "xml"}}, "response_format.type", []),
        ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos", ["ignore_eos"]),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "string", "format": "bogus"}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools[0].function.parameters",
            ["bogus"],
        ),
    ],
    ids=["unsupported-keywords", "no-schema", "bad-type", "ignore-eos", "tool-schema"],
)
def test_server_refuses_what_it_cannot_enforce(server, body, param, words):
    r = chat(server, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    for w in words:
        assert w in err["message"], err


def test_server_streamed_forced_call_equals_the_non_streamed_one(server):
    body = dict(tools=TOOLS, tool_choice="required", temperature=0, max_tokens=60)
    whole = chat(server, **body).json()["choices"][0]["message"]["tool_calls"]
    r = chat(server, stream=True, **body)
    parts = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    streamed = [c for p in parts if p["choices"] for c in p["choices"][0]["delta"].get("tool_calls") or []]
    assert [c["function"] for c in streamed] == [c["function"] for c in whole] and whole
    assert [p["choices"][0]["finish_reason"] for p in parts if p["choices"]][-1] == "tool_calls"


# ---- the CLI -------------------------------------------------------------------------------------
def test_run_json_schema_and_grammar_files(checkpoint, tmp_path, capsys):
    schema = SCHEMAS["required fields"]
    (tmp_path / "s.json").write_text(json.dumps(schema))
    argv = ["run", str(checkpoint), "--chat", "hi", "--json", "--greedy", "--max-tokens", "60"]
    assert main(argv + ["--json-schema", str(tmp_path / "s.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(json.loads(out["text"]), schema)
    assert out["params"]["constraint"] == "json_schema"
    (tmp_path / "g.lark").write_text('start: "Paris" | "Lyon"\n')
    assert main(argv + ["--grammar", str(tmp_path / "g.lark")]) == 0
    assert json.loads(capsys.readouterr().out)["text"] in ("Paris", "Lyon")
    (tmp_path / "bad.json").write_text('{"type": "object", "dependentSchemas": {}}')
    assert main(argv + ["--json-schema", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "dependentSchemas" in err and len(err.strip().splitlines()) == 1
