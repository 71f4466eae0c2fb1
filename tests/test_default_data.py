"""The default model's data generator (recipes/default/data.py): the same seed writes the same
bytes, and the held-out sets share no prompt, tool, entity, template or topic with training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "default"
sys.path.insert(0, str(RECIPE))

import data  # noqa: E402
import pools  # noqa: E402

SCALE = 0.02


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    data.generate(out, seed=0, scale=SCALE)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _prompt_key(row: dict) -> str:
    """The user's request of a training conversation or held-out row."""
    if "messages" in row:
        return next(m["content"] for m in row["messages"] if m["role"] == "user")
    if isinstance(row.get("prompt"), list):
        return next(m["content"] for m in row["prompt"] if m["role"] == "user")
    return row.get("question") or row["prompt"]


def test_same_seed_same_bytes_other_seed_other_data(generated, tmp_path):
    data.generate(tmp_path / "again", seed=0, scale=SCALE)
    data.generate(tmp_path / "other", seed=1, scale=SCALE)
    first = _files(generated)
    assert first == _files(tmp_path / "again")
    other = _files(tmp_path / "other")
    assert first.keys() == other.keys()
    assert first["train/tools.jsonl"] != other["train/tools.jsonl"]
    assert first["bench/gsm8k/test.jsonl"] != other["bench/gsm8k/test.jsonl"]


def test_pools_are_split(generated):
    for kind, (train, test) in pools.ENTITIES.items():
        assert not set(train) & set(test), kind
    assert not {t[0] for t in pools.TRAIN_TOOLS} & {t[0] for t in pools.TEST_TOOLS}
    assert not set(pools.TRAIN_REQUESTS) & set(pools.TEST_REQUESTS)
    assert not set(pools.TOPICS[0]) & set(pools.TOPICS[1])


def test_held_out_sets_are_disjoint_from_training(generated):
    train_rows = [r for p in sorted((generated / "train").glob("*.jsonl")) for r in _rows(p)]
    train_text = "\n".join(json.dumps(r) for r in train_rows)
    train_prompts = {_prompt_key(r) for r in train_rows}
    held_out = {
        "test/tools_seen.jsonl": _rows(generated / "test/tools_seen.jsonl"),
        "test/tools_unseen.jsonl": _rows(generated / "test/tools_unseen.jsonl"),
        "test/extract.jsonl": _rows(generated / "test/extract.jsonl"),
        "bench/gsm8k/test.jsonl": _rows(generated / "bench/gsm8k/test.jsonl"),
        "bench/ifeval/train.jsonl": _rows(generated / "bench/ifeval/train.jsonl"),
    }
    for name, rows in held_out.items():
        assert rows, name
        assert not {_prompt_key(r) for r in rows} & train_prompts, name
    # no held-out tool name and no held-out entity appears anywhere in the training files
    for row in held_out["test/tools_unseen.jsonl"]:
        assert row["tool_calls"][0]["name"] not in train_text
    for kind, (_, test) in pools.ENTITIES.items():
        for value in test:
            assert f'"{value}' not in train_text and f" {value}" not in train_text, (kind, value)
    for row in held_out["bench/ifeval/train.jsonl"]:
        assert any(t in row["prompt"] for t in pools.TOPICS[1])


def test_rows_are_what_the_verifiers_expect(generated):
    """Every training answer passes its own task's verifier: the data teaches what is scored."""
    import verify

    for path in ("grpo/prompts.jsonl", "answer_key.jsonl"):
        for row in _rows(generated / path):
            assert row["task"] in data.TASKS
    for task in data.TASKS:
        rng = data.random.Random(task)
        for _ in range(40):
            ex = data.make(task, rng, "train")
            row = data.grpo_row(task, ex)
            reply = ex["messages"][2] if task == "tools" else ex["messages"][-1]
            if task == "tools":
                call = reply["tool_calls"][0]["function"]
                args = ", ".join(f"{k}={json.dumps(v)}" for k, v in call["arguments"].items())
                text = f"<|tool_call_start|>[{call['name']}({args})]<|tool_call_end|>"
            elif task == "math":
                text = f"<think>{reply['reasoning_content']}</think>{reply['content']}"
            else:
                text = reply["content"]
            assert verify.verify(row, ex["prompt"], text) == 1.0, (task, ex["prompt"], text)
