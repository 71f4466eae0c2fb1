"""The GRPO rewards on texts in many formats: math answers (boxed, fractions, "the answer is" in
several languages, `####`, last number, reasoning traces), IFEval constraints, multiple-choice
letters, short exact answers, tool calls (Pythonic and JSON, any order, numbers 1 == 1.0), the
`<think>` format; combining with weights and per-task routing; loading `module:function`; and
user errors named in one line."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit.errors import ConfigError, DataError
from lfmkit.train.rewards import (
    Reward,
    as_reward_set,
    choice_letter,
    exact_answer,
    instruction_following,
    load_function,
    math_answer,
    multiple_choice,
    parse_reward,
    think_format,
    tool_call,
)

CALL_START, CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
MSGS = [{"role": "user", "content": "question"}]


# ---- math ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion,answer,score",
    [
        ("So the result is \\boxed{42}.", 42, 1.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("\\boxed{\\dfrac{3}{4}}", "3/4", 1.0),
        ("The answer is $1,234.", 1234, 1.0),
        ("The answer is 1,234.50 dollars", "1234.5", 1.0),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "Natalia sold 48 + 24 = 72.\n#### 72", 1.0),
        ("<think>5 + 5 = 10, or is it 11?</think>The answer is 10.", 10, 1.0),
        ("<think>5 + 5 = 10, or is it 11?</think>The answer is 10.", 11, 0.0),
        ("<think>still thinking about 10", 10, 0.0),  # unclosed trace: no answer
        ("First 3 apples, then 4 more: x = 7.0", 7, 1.0),  # the last number
        ("It drops to -7 degrees.", -7, 1.0),
        ("答案是18", 18, 1.0),
        ("Die Antwort lautet 12.", "12", 1.0),
        ("La réponse est 3,5", 3.5, 1.0),
        ("The answer is 41.", 42, 0.0),
        ("I do not know.", 42, 0.0),
    ],
)
def test_math_answer(completion, answer, score):
    assert math_answer(MSGS, completion, answer=answer) == score


def test_math_answer_without_a_reference_does_not_apply():
    assert math_answer(MSGS, "42") is None


FORMATS = [
    "\\boxed{{{}}}",
    "The answer is {}.",
    "#### {}",
    "Work... so it is {}",
    "Final answer: {}",
    "<think>maybe {}0</think>The answer is {}",
]


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**5), 10**5), st.sampled_from(FORMATS), st.booleans())  # (1e-6 relative tolerance)
def test_math_answer_reads_numbers_in_every_format(n, form, thousands):
    text = f"{n:,}" if thousands and form.startswith("The answer") else str(n)
    completion = form.format(text, text) if form.count("{}") == 2 else form.format(text)
    assert math_answer(MSGS, completion, answer=n) == 1.0
    assert math_answer(MSGS, completion, answer=n + 1) == 0.0


# ---- instruction following ---------------------------------------------------------------
@pytest.mark.parametrize(
    "completion,ids,kwargs,score",
    [
        ("all of this is lower case", ["change_case:english_lowercase"], [{}], 1.0),
        ("This Has Capitals", ["change_case:english_lowercase"], [{}], 0.0),
        (
            "no commas here but only four",
            ["punctuation:no_comma", "length_constraints:number_words"],
            [{}, {"relation": "at least", "num_words": 10}],
            0.5,
        ),
        (
            "<think>Hmm, commas, in the trace, are fine</think>no commas in the answer at all",
            ["punctuation:no_comma"],
            [{}],
            1.0,
        ),
        ("<think>unfinished", ["punctuation:no_comma"], [{}], 0.0),
        (
            "Here it is. Is there anything else I can help with?",
            ["startend:end_checker"],
            [{"end_phrase": "Is there anything else I can help with?", "num_words": None}],
            1.0,
        ),
    ],
)
def test_instruction_following(completion, ids, kwargs, score):
    assert instruction_following(MSGS, completion, instruction_id_list=ids, kwargs=kwargs) == score


def test_instruction_following_without_instructions_does_not_apply():
    assert instruction_following(MSGS, "text") is None


# ---- knowledge -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion,letter",
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("A) Paris", "A"),
        ("B. Paris is the capital", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("**Answer:** B", "B"),
        ("\\boxed{A}", "A"),
        ("Looking at the options, I pick... the answer is J", "J"),
        ("I am not sure", None),
    ],
)
def test_choice_letter(completion, letter):
    assert choice_letter(completion) == letter


@pytest.mark.parametrize(
    "completion,answer,choices,score",
    [
        ("The answer is B", "B", None, 1.0),
        ("The answer is B", 1, None, 1.0),  # a 0-based index
        ("(b)", "(B)", None, 0.0),  # lower-case letters are words, not options
        ("Paris", "B", ["London", "Paris", "Rome"], 1.0),
        ("<think>A or B? A is wrong</think>Answer: B", "B", None, 1.0),
        ("<think>the answer is B", "B", None, 0.0),
        ("C", "B", None, 0.0),
    ],
)
def test_multiple_choice(completion, answer, choices, score):
    assert multiple_choice(MSGS, completion, answer=answer, choices=choices) == score


@pytest.mark.parametrize(
    "completion,answer,score",
    [
        ("Paris", "paris", 1.0),
        ("The answer is Paris.", "Paris", 1.0),
        ("\\boxed{Paris}", "Paris", 1.0),
        ("new york city!", ["NYC", "New York City"], 1.0),
        ("The Beatles", "beatles", 1.0),
        ("Paris, France", "Paris", 0.0),
        ("<think>Paris?</think>Lyon", "Paris", 0.0),
    ],
)
def test_exact_answer(completion, answer, score):
    assert exact_answer(MSGS, completion, answer=answer) == score


# ---- tool use --------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris", "days": 2}'}}
TIME = {"name": "get_time", "arguments": {"tz": "CET"}}


@pytest.mark.parametrize(
    "completion,expected,score",
    [
        (f'{CALL_START}[get_weather(location="Paris", days=2)]{CALL_END}', [WEATHER], 1.0),
        (f'{CALL_START}[get_weather(days=2.0, location="Paris")]{CALL_END}', [WEATHER], 1.0),  # 2 == 2.0, any order
        (
            f'{CALL_START}[{{"name": "get_weather", "arguments": {{"location": "Paris", "days": 2}}}}]{CALL_END}',
            [WEATHER],
            1.0,
        ),
        (
            f'<think>I need the weather and the time</think>{CALL_START}[get_time(tz="CET"), '
            f'get_weather(location="Paris", days=2)]{CALL_END}',
            [WEATHER, TIME],
            1.0,
        ),
        (f'{CALL_START}[get_time(tz="CET")]{CALL_END}', [WEATHER, TIME], 0.5),
        (f'{CALL_START}[get_weather(location="Paris", days=2), get_news()]{CALL_END}', [WEATHER], 0.5),
        (f'{CALL_START}[get_weather(location="Lyon", days=2)]{CALL_END}', [WEATHER], 0.0),
        (f"{CALL_START}[get_weather(location=Paris)]{CALL_END}", [WEATHER], 0.0),  # does not parse
        ("It is sunny in Paris.", [WEATHER], 0.0),
        ("It is sunny in Paris.", [], 1.0),
        (f'{CALL_START}[get_time(tz="CET")]{CALL_END}', [], 0.0),
    ],
)
def test_tool_call(completion, expected, score):
    assert tool_call(MSGS, completion, tool_calls=expected) == score


# ---- format ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion,score",
    [
        ("<think>2 + 2 = 4</think>The answer is 4.", 1.0),
        ("  <think>\nreason\n</think>\n\nanswer", 1.0),
        ("The answer is 4.", 0.0),
        ("<think>2 + 2 = 4", 0.0),
        ("<think></think>4", 0.0),
        ("<think>2 + 2 = 4</think>", 0.0),
        ("<think>a</think><think>b</think>4", 0.0),
        ("4 <think>a</think>b", 0.0),
    ],
)
def test_think_format(completion, score):
    assert think_format(MSGS, completion) == score


# ---- combining and routing -------------------------------------------------------------------
def test_weights_and_per_task_routing():
    rewards = as_reward_set(["math=math", "ifeval=ifeval:0.5", "think_format:0.25"])
    assert rewards.names == ["math/math", "ifeval/ifeval", "think_format"]
    math_row = {"task": "math", "answer": 4}
    total, values = rewards.score(MSGS, "<think>2+2</think>The answer is 4", math_row)
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == 1.0 and total == 1.25
    if_row = {"task": "ifeval", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
    total, values = rewards.score(MSGS, "all lower", if_row)
    assert math.isnan(values[0]) and values[1] == 1.0 and values[2] == 0.0 and total == 0.5


def test_nothing_applies_is_nan():
    total, values = as_reward_set(["math"]).score(MSGS, "42", {"task": "other"})
    assert math.isnan(total) and math.isnan(values[0])


def test_rewards_receive_only_the_fields_they_name():
    seen = {}

    def plain(messages, completion):
        return float(len(completion))

    def named(messages, completion, answer):
        seen["answer"] = answer
        return 1.0

    def everything(messages, completion, **fields):
        seen["fields"] = fields
        return True  # a bool counts as 1.0

    rewards = as_reward_set([plain, (named, 2.0), everything])
    total, values = rewards.score(MSGS, "abc", {"answer": 7, "task": "x", "extra": [1]})
    assert values == [3.0, 1.0, 1.0] and total == 6.0
    assert seen == {"answer": 7, "fields": {"answer": 7, "task": "x", "extra": [1]}}


def test_reward_specs(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def short(messages, completion):\n    return -len(completion)\n")
    (tmp_path / "other.py").write_text("def long(messages, completion):\n    return len(completion)\n")
    monkeypatch.chdir(tmp_path)
    r = parse_reward("my_rewards:short:-0.1")
    assert (r.weight, r.task, r.name, r.fn(MSGS, "abcd")) == (-0.1, None, "short", -4)
    r = parse_reward(f"code={tmp_path / 'other.py'}:long:2")
    assert (r.weight, r.task, r.fn(MSGS, "ab")) == (2.0, "code", 2)
    assert parse_reward("math").fn is math_answer and parse_reward("tool_call:3").weight == 3.0
    assert as_reward_set(["math", "math"]).names == ["math", "math#2"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nothing_like_this", "expected a built-in name"),
        ("no_such_module_xyz:fn", "cannot import no_such_module_xyz"),
        ("os:not_a_function_here", "has no function"),
        ("missing_file.py:fn", "no such file"),
        ("=math", "expected TASK=TARGET"),
    ],
)
def test_bad_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_function(spec) if "=" not in spec else parse_reward(spec)


@pytest.mark.parametrize("returned,message", [("1.0", "must be a finite number"), (math.inf, "finite"), (None, None)])
def test_a_reward_returning_a_non_number_or_raising_names_the_row(returned, message):
    rewards = as_reward_set([Reward(lambda m, c: returned, name="mine")])
    if message is None:
        assert math.isnan(rewards.score(MSGS, "x", {}, "prompts.jsonl:3")[0])
        return
    with pytest.raises(DataError, match=f"prompts.jsonl:3: reward mine failed: TypeError: returned .*{message}"):
        rewards.score(MSGS, "x", {}, "prompts.jsonl:3")
    failing = as_reward_set([Reward(lambda m, c: 1 / 0, name="div")])
    with pytest.raises(DataError, match="prompts.jsonl:4: reward div failed: ZeroDivisionError"):
        failing.score(MSGS, "x", {}, "prompts.jsonl:4")
