"""Verifiable rewards for GRPO: plain functions `reward(messages, completion, **fields) -> float | None`.

`messages` is the prompt as a conversation (a text prompt is one user message), `completion`
the generated text (reasoning and tool-call markers included, the end-of-turn token not), and
`fields` the prompt row's other columns (`answer`, `task`, `instruction_id_list`, ...), as TRL
passes dataset columns to its reward functions. A function receives only the fields it names
(all of them if it takes `**kwargs`), so `def reward(messages, completion)` works too. `None`
means "does not apply to this row" (TRL's convention): it is left out of the sum and of the
per-reward mean.

Built-in rewards, each reusable on its own (`lfmkit.train.rewards:math_answer`):

- `math` (`math_answer`; field `answer`): 1 when the final answer (boxed, "the answer is",
  `####`, the last number: `lfmkit.evals.extract_answer`) equals the reference numerically;
- `ifeval` (`instruction_following`; `instruction_id_list`, `kwargs`): the fraction of IFEval
  instructions followed (the eval suite's verifiers, strict rule);
- `multiple_choice` (`multiple_choice`; `answer`: a letter or 0-based index, optional
  `choices`): 1 when the chosen option letter is the answer's;
- `exact` (`exact_answer`; `answer`: a string or a list of accepted strings): 1 when the answer
  equals one of them after SQuAD's normalization;
- `tool_call` (`tool_call`; `tool_calls`: the expected calls, OpenAI or {"name", "arguments"}
  form): calls matched / max(expected, produced), so 1 for exactly the expected calls;
- `think_format` (`think_format`): 1 when the completion is `<think>reasoning</think>answer`,
  well formed.

The answer rewards read the text after `</think>` (an unclosed `<think>` scores 0).

Combining (`RewardSet`): each reward has a weight and optionally a task; a row's reward is the
weighted sum of the rewards that apply to it (those of its `task`, and those without a task
that did not return None), so one run can mix math, instruction-following and tool-use prompts.
Specs on the command line: `[TASK=]TARGET[:WEIGHT]`, where TARGET is a built-in name,
`module:function` or `path/to/file.py:function` (e.g. `math=math`, `ifeval=ifeval:0.5`,
`my_rewards:length_penalty:-0.1`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import re
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from ..evals.answers import ANSWER_PHRASES, answers_match, extract_answer, strip_reasoning
from ..evals.ifeval_checks import follows
from ..text.chat import THINK_END, THINK_START, ToolCall, parse_assistant_message

LETTERS = "ABCDEFGHIJ"  # up to ten options (MMLU-Pro)


# ---- the built-in rewards ------------------------------------------------------------------
def math_answer(messages, completion: str, answer=None, **_) -> float | None:
    """1.0 when the completion's final answer equals `answer` numerically, else 0.0 (None
    without an answer). `answer` may be a number, "42", "3/4" or a GSM8K solution ("... #### 42")."""
    if answer is None:
        return None
    return float(answers_match(extract_answer(completion), answer))


def instruction_following(messages, completion: str, instruction_id_list=None, kwargs=None, **_) -> float | None:
    """The fraction of the row's IFEval instructions the answer follows (strict rule)."""
    if not instruction_id_list:
        return None
    response = strip_reasoning(completion)
    if response is None:
        return 0.0
    options = kwargs if isinstance(kwargs, list) else [{}] * len(instruction_id_list)
    if len(options) != len(instruction_id_list):
        raise ValueError(f"'kwargs' has {len(options)} entries for {len(instruction_id_list)} instructions")
    followed = [follows(response, i, k or {}) for i, k in zip(instruction_id_list, options)]
    return sum(followed) / len(followed)


_PHRASE = re.compile("|".join(re.escape(p) for p in sorted(ANSWER_PHRASES, key=len, reverse=True)), re.IGNORECASE)
_LETTER = rf"[{LETTERS}]"


def choice_letter(text: str, choices: list[str] | None = None) -> str | None:
    """The option letter a multiple-choice answer picks, or None: `\\boxed{B}`; a letter after
    "the answer is" / "Answer:"; the whole answer as a letter ("B", "(B)", "B."); a leading
    "B." / "(B)" / "B)"; or an answer equal to one option's text."""
    boxed = re.findall(rf"\\boxed\{{\s*\(?({_LETTER})\)?\s*\}}", text)
    if boxed:
        return boxed[-1]
    phrased = None
    for m in _PHRASE.finditer(text):
        found = re.match(rf"\s*[*:]*\s*\(?({_LETTER})\b\)?", text[m.end() :])
        if found:
            phrased = found.group(1)
    if phrased:
        return phrased
    stripped = text.strip().strip("*").strip()
    whole = re.fullmatch(rf"\(?({_LETTER})[).:]?", stripped)
    if whole:
        return whole.group(1)
    leading = re.match(rf"\(?({_LETTER})(?:\)|[.:])\s", stripped + " ")
    if leading:
        return leading.group(1)
    if choices:
        wanted = normalize_text(stripped)
        for letter, choice in zip(LETTERS, choices):
            if wanted and normalize_text(str(choice)) == wanted:
                return letter
    return None


def _letter_of(answer) -> str:
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(LETTERS):
        return LETTERS[answer]
    if isinstance(answer, str):
        text = answer.strip().strip("()").strip()
        if len(text) == 1 and text.upper() in LETTERS:
            return text.upper()
        if text.isdigit() and int(text) < len(LETTERS):
            return LETTERS[int(text)]
    raise ValueError(f"answer {answer!r} is not an option letter (A-J) or a 0-based index")


def multiple_choice(messages, completion: str, answer=None, choices=None, **_) -> float | None:
    """1.0 when the answer picks the option `answer` names (a letter, or a 0-based index)."""
    if answer is None:
        return None
    response = strip_reasoning(completion)
    if response is None:
        return 0.0
    return float(choice_letter(response, choices) == _letter_of(answer))


def normalize_text(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_answer(messages, completion: str, answer=None, **_) -> float | None:
    """1.0 when the answer, its boxed content or what follows its last "the answer is" equals
    `answer` (or one of a list of accepted answers) after `normalize_text`."""
    if answer is None:
        return None
    response = strip_reasoning(completion)
    if response is None:
        return 0.0
    accepted = {normalize_text(str(a)) for a in (answer if isinstance(answer, (list, tuple)) else [answer])}
    candidates = [response]
    phrases = list(_PHRASE.finditer(response))
    if phrases:
        candidates.append(response[phrases[-1].end() :].split("\n", 1)[0])
    candidates += re.findall(r"\\boxed\{([^{}]*)\}", response)
    return float(any(normalize_text(c) in accepted for c in candidates))


def _canonical(value):
    """A JSON-ready value with integral floats as ints and dict keys sorted (1.0 == 1)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _call_key(call: ToolCall) -> str:
    return json.dumps([call.name, _canonical(call.arguments)], ensure_ascii=False, default=repr)


def tool_call(messages, completion: str, tool_calls=None, **_) -> float | None:
    """How well the completion's tool calls (LFM2's `<|tool_call_start|>[...]<|tool_call_end|>`,
    read with lfmkit's parser) match the expected `tool_calls`: calls equal in name and arguments
    (order of calls free, 1 == 1.0) over max(expected, produced). An unparsable block counts as
    no call; expecting none and producing none scores 1."""
    if tool_calls is None:
        return None
    expected = [ToolCall.from_openai(c) if isinstance(c, dict) else c for c in tool_calls]
    produced = parse_assistant_message(completion).tool_calls
    if not expected and not produced:
        return 1.0
    left = [_call_key(c) for c in expected]
    matched = 0
    for call in produced:
        key = _call_key(call)
        if key in left:
            left.remove(key)
            matched += 1
    return matched / max(len(expected), len(produced))


def think_format(messages, completion: str, **_) -> float:
    """1.0 when the completion is `<think>` + non-empty reasoning + `</think>` + a non-empty
    answer, each tag exactly once; else 0.0."""
    text = completion.strip()
    if not text.startswith(THINK_START) or text.count(THINK_START) != 1 or text.count(THINK_END) != 1:
        return 0.0
    reasoning, answer = text[len(THINK_START) :].split(THINK_END)
    return float(bool(reasoning.strip()) and bool(answer.strip()))


BUILTIN: dict[str, Callable] = {
    "math": math_answer,
    "ifeval": instruction_following,
    "multiple_choice": multiple_choice,
    "exact": exact_answer,
    "tool_call": tool_call,
    "think_format": think_format,
}


# ---- combining -----------------------------------------------------------------------------
@dataclass
class Reward:
    """One reward function with its weight, and the task it is limited to (None: every row)."""

    fn: Callable
    weight: float = 1.0
    task: str | None = None
    name: str = ""

    def __post_init__(self):
        if not callable(self.fn):
            raise ConfigError(f"reward {self.name or self.fn!r}: not callable")
        self.name = self.name or (f"{self.task}/" if self.task else "") + getattr(self.fn, "__name__", "reward")
        try:
            params = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):
            params = []
        self._takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        self._names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def applies(self, fields: dict) -> bool:
        return self.task is None or fields.get("task") == self.task

    def __call__(self, messages: list[dict], completion: str, fields: dict) -> float | None:
        kwargs = fields if self._takes_all else {k: v for k, v in fields.items() if k in self._names}
        kwargs = {k: v for k, v in kwargs.items() if k not in ("messages", "completion")}
        value = self.fn(messages, completion, **kwargs)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"returned {value!r}; a reward must be a finite number or None")
        return float(value)


@dataclass
class RewardSet:
    """Several rewards: `score` gives each one's value (NaN where it does not apply) and the
    weighted sum (NaN when none applies: the completion is left out of its group's baseline and
    gets advantage 0, as in TRL)."""

    rewards: list[Reward] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def score(self, messages: list[dict], completion: str, fields: dict, where: str = "") -> tuple[float, list[float]]:
        values = []
        for reward in self.rewards:
            value = None
            if reward.applies(fields):
                try:
                    value = reward(messages, completion, fields)
                except Exception as exc:  # noqa: BLE001 - user code: name the reward and the row
                    raise DataError(f"{where}: reward {reward.name} failed: {type(exc).__name__}: {exc}") from exc
            values.append(math.nan if value is None else value)
        used = [(r.weight, v) for r, v in zip(self.rewards, values) if not math.isnan(v)]
        total = sum(w * v for w, v in used) if used else math.nan
        return total, values


def load_function(target: str) -> Callable:
    """A built-in reward name, `module:function` (the current directory is searched too) or
    `path/to/file.py:function`."""
    if target in BUILTIN:
        return BUILTIN[target]
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"reward {target!r}: expected a built-in name ({', '.join(BUILTIN)}), module:function or file.py:function"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"reward {target!r}: no such file {path}")
            spec = importlib.util.spec_from_file_location(f"lfmkit_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an import of user code: one line naming it
        raise ConfigError(f"reward {target!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward {target!r}: {module_name} has no function {attr!r}")
    return fn


def parse_reward(spec: str) -> Reward:
    """`[TASK=]TARGET[:WEIGHT]` → Reward (see the module docstring)."""
    task, sep, rest = spec.partition("=")
    if not sep:
        task, rest = None, spec
    elif not task.strip() or not rest:
        raise ConfigError(f"reward {spec!r}: expected TASK=TARGET[:WEIGHT]")
    weight = 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
            rest = head
        except ValueError:
            pass
    if not math.isfinite(weight):
        raise ConfigError(f"reward {spec!r}: the weight must be a finite number")
    target = rest.strip()
    return Reward(
        load_function(target),
        weight,
        task.strip() if task else None,
        name=(f"{task.strip()}/" if task else "") + target.rpartition(":")[2],
    )


def as_reward_set(rewards) -> RewardSet:
    """A RewardSet from specs (strings), Reward objects, callables, or (callable, weight) pairs."""
    if isinstance(rewards, RewardSet):
        return rewards
    if isinstance(rewards, (str, Reward)) or callable(rewards):
        rewards = [rewards]
    out = []
    for r in rewards:
        if isinstance(r, Reward):
            out.append(r)
        elif isinstance(r, str):
            out.append(parse_reward(r))
        elif isinstance(r, tuple) and len(r) == 2:
            out.append(Reward(r[0], float(r[1])))
        else:
            out.append(Reward(r))
    if not out:
        raise ConfigError("rewards: at least one reward function is needed")
    seen: dict[str, int] = {}
    for r in out:  # duplicate names get #2, #3 in order
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name}#{seen[r.name]}"
    return RewardSet(out)


__all__ = [
    "math_answer",
    "instruction_following",
    "multiple_choice",
    "exact_answer",
    "tool_call",
    "think_format",
    "choice_letter",
    "normalize_text",
    "BUILTIN",
    "Reward",
    "RewardSet",
    "load_function",
    "parse_reward",
    "as_reward_set",
]
