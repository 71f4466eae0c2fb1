"""The verifiers of the default model's tasks: a GRPO reward for extraction, and the judge
`lfmkit prefs build` uses to rank samples.

- `extraction(messages, completion, answer)`: the fraction of the expected JSON fields the
  completion's JSON object holds with equal values (numbers compared as numbers); 0 when the
  completion is not a JSON object. A GRPO reward (`--reward extract=verify:extraction`).
- `judge(messages, completion)`: looks the conversation's last user message up in the answer key
  data.py wrote ($LFMKIT_DEFAULT_DATA/answer_key.jsonl) and scores the completion with the
  task's own verifier (lfmkit's math, IFEval and tool-call rewards, `extraction` above), 0..10.
  An LLM judge is not needed: every task here has a checkable answer.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from lfmkit.train.rewards import instruction_following, math_answer, tool_call


def _json_object(text: str):
    text = text.split("</think>")[-1].strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(a - b) < 1e-6
    return a == b


def extraction(messages, completion: str, answer=None, **_) -> float | None:
    """The share of the expected fields present with equal values; extra keys count against."""
    if not isinstance(answer, dict):
        return None
    got = _json_object(completion)
    if got is None:
        return 0.0
    right = sum(1 for k, v in answer.items() if k in got and _same(got[k], v))
    return right / max(len(answer), len(got))


@lru_cache(maxsize=1)
def _answer_key(path: str) -> dict:
    with open(path) as f:
        return {row["user"]: row for row in map(json.loads, f)}


def verify(row: dict, messages, completion: str) -> float:
    """The task's verifier on one completion, 0..1."""
    task = row["task"]
    if task == "tools":
        score = tool_call(messages, completion, tool_calls=row["tool_calls"])
    elif task == "extract":
        score = extraction(messages, completion, answer=row["answer"])
    elif task == "math":
        score = math_answer(messages, completion, answer=row["answer"])
    else:
        score = instruction_following(messages, completion, row["instruction_id_list"], row["kwargs"])
    return float(score or 0.0)


def judge(messages, completion: str) -> float:
    """0..10 by the task's verifier, looked up by the last user message in the answer key."""
    data = Path(os.environ.get("LFMKIT_DEFAULT_DATA", "runs/default/data"))
    key = _answer_key(str(data / "answer_key.jsonl"))
    user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return 10.0 * verify(key[user], messages, completion)
