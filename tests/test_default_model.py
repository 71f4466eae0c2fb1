"""The model that ships with lfmkit (lfmkit/default_model, trained by recipes/default/run.sh).

transformers loads both checkpoints with the logits lfmkit computes; `lfmkit.load()` with no
path uses it and says so on stderr; int4 keeps the top-1 agreement MODEL_CARD.md states; and
through the server a held-out tool-calling request gets a well-formed call to the right tool.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

import lfmkit
from lfmkit.default_model import HERE, NAMES, default_model_path, names_a_model

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default"
sys.path.insert(0, str(RECIPE))

import data  # noqa: E402

CARD = (HERE / "MODEL_CARD.md").read_text()


def _prompt_ids(path: Path, rows: list[dict]) -> list[list[int]]:
    tok = lfmkit.Tokenizer.from_pretrained(path)
    return [
        tok.apply_chat_template(r["prompt"], tools=r.get("tools"), add_generation_prompt=True, tokenize=True)
        for r in rows
    ]


def _held_out(task: str, n: int, unseen_tools: bool = False, seed: int = 123) -> list[dict]:
    """Held-out rows drawn fresh from the test pools (a seed the shipped sets did not use)."""
    rng = data.random.Random(seed)
    return [
        data.grpo_row(task, data.make(task, rng, "test", **({"unseen_tools": True} if unseen_tools else {})))
        for _ in range(n)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_transformers_loads_it_with_lfmkit_logits(name):
    from transformers import AutoModelForCausalLM

    path = default_model_path(name)
    assert json.loads((path / "config.json").read_text())["model_type"] == "lfm2"
    ids = torch.tensor(_prompt_ids(path, _held_out("tools", 1))[:1])
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours = lfmkit.load(str(path), dtype="float32")
    with torch.no_grad():
        expected = theirs(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_shipped_size_under_60_mb():
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    assert total < 60e6


def test_load_without_a_path_uses_the_default_model(capsys):
    model = lfmkit.load()
    err = capsys.readouterr().err
    assert "no model named" in err and str(default_model_path()) in err and err.count("\n") == 1
    assert Path(model.source_path) == default_model_path()


def test_cli_without_a_model_uses_the_default_model(capsys):
    from lfmkit.cli import main

    assert main(["run", "What is 3 + 4?", "--chat", "--greedy", "--max-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert f"using the default model that ships with lfmkit ({default_model_path()}" in err
    assert names_a_model("LiquidAI/LFM2-1.2B") and names_a_model("m.gguf") and not names_a_model("What is 3 + 4?")


def _card_figure(pattern: str) -> float:
    """A percentage the model card states, found by its sentence (line breaks read as spaces)."""
    match = re.search(pattern, " ".join(CARD.split()))
    assert match, pattern
    return float(match.group(1)) / 100


@pytest.mark.parametrize("name", NAMES)
def test_int4_keeps_the_top1_agreement_the_card_states(name, tmp_path):
    """int4 vs bf16 top-1 agreement on the answers of held-out conversations (quant_table.py's
    measure, on a freshly generated held-out set), at least the model card's floor."""
    from quant_table import agreement

    floor = _card_figure(rf"int4 top-1 agreement with bf16 for the {name} is at least ([0-9.]+)%")
    data.generate(tmp_path, seed=5, scale=0.25)
    assert agreement(str(default_model_path(name)), tmp_path)["int4"]["top1_agreement"] >= floor


SERVER_REQUESTS = 12  # held-out tool-calling requests sent through the server, greedy


def _served_calls(name: str, rows: list[dict]) -> list[tuple[str, list]]:
    """(expected tool, the server's tool calls) for each request, via the official openai client."""
    from test_server import MODEL, serve

    path = default_model_path(name)
    greedy = {"temperature": 0, "extra_body": {"min_p": 0.0, "repetition_penalty": 1.0}}
    out = []
    with serve(path, max_concurrent=4) as server:
        client = server.client()
        for row in rows:
            r = client.chat.completions.create(model=MODEL, messages=row["prompt"], tools=row["tools"], **greedy)
            out.append((row["tool_calls"][0], r.choices[0].message.tool_calls or []))
    return out


def test_server_answers_held_out_tool_requests_with_calls():
    """Held-out requests for the training tools (entities, phrasings and system prompts no
    training row shows), greedy, through the server: the share the teacher answers with a call to
    an offered tool (returned as `tool_calls` with JSON arguments) and the share whose call names
    the right tool are at least what the model card states. (The student's calls name tools that
    were not offered, which the server returns as text: the card says so, and there is nothing
    to hold it to.)"""
    results = _served_calls("teacher", _held_out("tools", SERVER_REQUESTS))
    offered = [
        calls
        for _, calls in results
        if calls and all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
    ]
    floor = _card_figure(
        r"through the server the teacher answers with a call to an offered tool for at least ([0-9.]+)%"
    )
    assert len(offered) / len(results) >= floor, results
    right = sum(1 for expected, calls in results if calls and calls[0].function.name == expected["name"])
    floor = _card_figure(r"through the server the teacher calls the right tool for at least ([0-9.]+)%")
    assert right / len(results) >= floor, results


def _schema_for(answer: dict) -> dict:
    """The JSON schema a user would send for an extraction: the requested fields, typed, all required."""
    types = {str: "string", int: "integer", float: "number", bool: "boolean"}
    props = {k: {"type": types[type(v)]} for k, v in answer.items()}
    return {"type": "object", "properties": props, "required": list(answer), "additionalProperties": False}


def test_server_structured_extraction_always_matches_the_schema():
    """Held-out extraction requests through the server with `response_format` json_schema
    (greedy): every answer parses and has exactly the schema's keys with the schema's types —
    the structured-output success rate the model card states (100%, whatever the model knows);
    the card states separately how many fields are right."""
    from test_server import MODEL, serve

    rows = _held_out("extract", SERVER_REQUESTS)
    greedy = {"temperature": 0, "extra_body": {"min_p": 0.0, "repetition_penalty": 1.0}}
    right = total = 0
    with serve(default_model_path("teacher"), max_concurrent=4) as server:
        client = server.client()
        for row in rows:
            schema = _schema_for(row["answer"])
            fmt = {"type": "json_schema", "json_schema": {"name": "fields", "schema": schema, "strict": True}}
            r = client.chat.completions.create(
                model=MODEL, messages=row["prompt"], response_format=fmt, max_tokens=200, **greedy
            )
            got = json.loads(r.choices[0].message.content)
            assert set(got) == set(row["answer"]), (got, row["answer"])
            for key, value in row["answer"].items():
                assert isinstance(got[key], type(value)), (key, got)
                right += got[key] == value
                total += 1
    floor = _card_figure(
        r"with a JSON schema through the server, at least ([0-9.]+)% of the extracted fields are right"
    )
    assert right / total >= floor, (right, total)
