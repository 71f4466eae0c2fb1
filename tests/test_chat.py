"""Tool calls, reasoning and the streaming parser: tricky and hostile inputs, and properties."""

import builtins
import json
import keyword

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit import (
    StreamParser,
    ToolCall,
    ToolCallParseError,
    format_tool_calls,
    parse_assistant_message,
    parse_tool_calls,
    split_reasoning,
)
from lfmkit.text.chat import AssistantMessage, ContentDelta, ReasoningDelta, ToolCallError, ToolCallEvent

S, E = "<|tool_call_start|>", "<|tool_call_end|>"

# text -> expected [(name, arguments)]
GOOD = [
    (
        f'{S}[get_weather(location="Paris"), get_time(tz="CET")]{E}',
        [("get_weather", {"location": "Paris"}), ("get_time", {"tz": "CET"})],
    ),
    ('[get_candidate_status(candidate_id="12345")]', [("get_candidate_status", {"candidate_id": "12345"})]),
    ("[f()]", [("f", {})]),
    ("[]", []),
    (f"{S}[]{E}", []),
    ("   ", []),
    ("no calls here", []),
    (f"{S} [ f( a = 1 ) ] {E}", [("f", {"a": 1})]),
    (f"{S}f(a=1){E}", [("f", {"a": 1})]),  # a single call without the list
    (
        '[f(s="quote \\" backslash \\\\ newline \\n tab \\t unicode \\u00e9 \\U0001F642")]',
        [("f", {"s": 'quote " backslash \\ newline \n tab \t unicode é 🙂'})],
    ),
    (
        '[f(s=\'single quotes\', t="""triple""", r=r\'\\d+\')]',
        [("f", {"s": "single quotes", "t": "triple", "r": "\\d+"})],
    ),
    ('[f(s="东京 🙂 <|im_end|> ) ] , g(")]', [("f", {"s": "东京 🙂 <|im_end|> ) ] , g("})]),
    (
        "[f(n=-3, x=2.5e-3, big=123456789012345678901234567890, h=0x1F, u=+4)]",
        [("f", {"n": -3, "x": 0.0025, "big": 123456789012345678901234567890, "h": 31, "u": 4})],
    ),
    (
        "[f(a=True, b=False, c=None, d=true, e=false, g=null)]",
        [("f", {"a": True, "b": False, "c": None, "d": True, "e": False, "g": None})],
    ),
    (
        '[f(l=[1, "a", [2, (3, 4)]], d={"k": {"z": [None]}, 1: "int key"}, t=(), e={})]',
        [("f", {"l": [1, "a", [2, [3, 4]]], "d": {"k": {"z": [None]}, "1": "int key"}, "t": [], "e": {}})],
    ),
    ('[web.search(query="x"), a.b.c(d=1)]', [("web.search", {"query": "x"}), ("a.b.c", {"d": 1})]),
    ('[{"name": "f", "arguments": {"a": 1, "b": [true, null]}}]', [("f", {"a": 1, "b": [True, None]})]),
    ('{"name": "f", "arguments": "{\\"a\\": \\"x\\\\/y\\"}"}', [("f", {"a": "x/y"})]),
    (
        '[{"type": "function", "function": {"name": "f", "arguments": {"a": 2}}}, {"name": "g", "parameters": {}}]',
        [("f", {"a": 2}), ("g", {})],
    ),
    (f'{S}[{{"name": "f", "arguments": {{}}}}]{E}', [("f", {})]),
    (f'{S}[f(a=1)]{E} and {S}[g(b="2")]{E}', [("f", {"a": 1}), ("g", {"b": "2"})]),
    (f"{S}[f(a=1)]", [("f", {"a": 1})]),  # generation stopped before the end marker
    # parameters named like Python keywords, as LFM2's template writes them
    ('[convert(from="USD", to="EUR", amount=3)]', [("convert", {"from": "USD", "to": "EUR", "amount": 3})]),
    (
        '[f(s="东京 from=", class=[1], lambda={"if": None})]',
        [("f", {"s": "东京 from=", "class": [1], "lambda": {"if": None}})],
    ),
    ('[获取天气(城市="北京")]', [("获取天气", {"城市": "北京"})]),
    ("[f(a=1,), ]", [("f", {"a": 1})]),
    ("[f(\n  a=1,\n  b='x'\n)]", [("f", {"a": 1, "b": "x"})]),
]

# Each must raise ToolCallParseError, never run anything, never raise anything else.
HOSTILE = [
    '[__import__("os").system("touch /tmp/lfmkit_pwned")]',
    f'{S}[__import__("os").system("x")]{E}',
    '[exec("print(1)")]',  # a positional argument
    "[f(1)]",
    '[f("a", b=2)]',
    "[f(*args)]",
    "[f(**kwargs)]",
    "[f(a=b)]",
    "[f(a=os.environ)]",
    "[f(a=1+2)]",
    "[f(a=-x)]",
    "[f(a=not True)]",
    "[f(a=[i for i in range(10)])]",
    "[f(a=lambda: 0)]",
    "[f(a=(yield))]",
    "[f(a=f'{x}')]",
    "[f(a=b'bytes')]",
    "[f(a=1j)]",
    "[f(a={1, 2})]",
    "[f(a=...)]",
    "[f(a=1e999)]",
    "[f(a={**x})]",
    "[f(a={None: 1})]",
    "[f(a=1, a=2)]",
    "[f(from)]",
    "[f(from=1, from=2)]",
    "[f(a=1) for f in x]",
    "[f(a=g(b=1))]",
    "[f()()]",
    "[f()[0](a=1)]",
    "[(lambda: 0)()]",
    "[f(a=1).g(b=2)]",
    "['a'.join(x=1)]",
    "[f(a=1)] + [g()]",
    "[f(a=1)]; import os",
    "[f(a=1)] trailing text",
    "[f(a=1), 3]",
    '[f(a="unterminated)]',
    "[f(a=1",
    "[" * 300 + "]" * 300,
    "[f(a=" + "[" * 1000 + "]" * 1000 + ")]",
    "[f(a=" + "-" * 100000 + "1)]",
    '[{"arguments": {"a": 1}}]',
    '[{"name": "", "arguments": {}}]',
    '[{"name": "f", "arguments": [1, 2]}]',
    '[{"name": "f", "arguments": "not json"}]',
    '{"name": "f", "arguments": {"x": NaN}}',
    "[1, 2, 3]",
    '["f(a=1)"]',
    "{}",
]


@pytest.mark.parametrize("text,expected", GOOD)
def test_tool_calls_parse(text, expected):
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == expected
    for call in calls:
        json.dumps(call.arguments, allow_nan=False)  # JSON-ready


@pytest.mark.parametrize("text", HOSTILE)
def test_bad_tool_calls_are_parse_errors_carrying_the_raw_text(text, monkeypatch, tmp_path):
    def forbidden(*args, **kwargs):
        raise AssertionError("tool-call parsing must never evaluate code")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    with pytest.raises(ToolCallParseError) as info:
        parse_tool_calls(text)
    assert info.value.raw == text
    message = parse_assistant_message(f"Sure.{S}{text}{E}tail")
    assert message.tool_calls == [] and message.error
    assert message.content == f"Sure.{S}{text}{E}tail"


def test_names_are_data_never_called(tmp_path):
    marker = tmp_path / "pwned"
    calls = parse_tool_calls(f'[system(command="touch {marker}"), eval(source="1+1")]')
    assert [c.name for c in calls] == ["system", "eval"] and not marker.exists()


def test_non_string_input_is_a_parse_error():
    with pytest.raises(ToolCallParseError):
        parse_tool_calls(None)


def test_format_tool_calls_matches_the_seed_and_round_trips():
    calls = [ToolCall("get_candidate_status", {"candidate_id": "12345"})]
    assert format_tool_calls(calls) == f'{S}[get_candidate_status(candidate_id="12345")]{E}'
    assert format_tool_calls(calls, markers=False) == '[get_candidate_status(candidate_id="12345")]'
    assert format_tool_calls([]) == f"{S}[]{E}"
    openai = calls[0].to_openai(id="call_1")
    assert openai == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_candidate_status", "arguments": '{"candidate_id": "12345"}'},
    }
    assert ToolCall.from_openai(openai) == ToolCall("get_candidate_status", {"candidate_id": "12345"}, "call_1")
    assert format_tool_calls([openai]) == format_tool_calls(calls)
    with pytest.raises(ToolCallParseError):
        format_tool_calls([ToolCall("f", {"not an identifier": 1})])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
identifiers = st.builds(lambda a, b: a + b, st.sampled_from(NAME_START), st.text(NAME_START + "0123456789", max_size=8))
tool_calls = st.builds(
    ToolCall,
    name=st.lists(identifiers.filter(lambda s: not keyword.iskeyword(s)), min_size=1, max_size=2).map(".".join),
    # argument names may be Python keywords (from=..., class=...)
    arguments=st.dictionaries(identifiers | st.sampled_from(keyword.kwlist), json_values, max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(tool_calls, max_size=3))
def test_format_then_parse_round_trips(calls):
    text = format_tool_calls(calls)
    assert parse_tool_calls(text) == calls
    assert parse_assistant_message(text).tool_calls == calls


# ---- reasoning -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>\nI should add.\n</think>\n\n4", ("I should add.", "4")),
        ("  <think>a</think>b", ("a", "b")),
        ("<think></think>answer", ("", "answer")),
        ("<think>unfinished thoughts ", ("unfinished thoughts", "")),
        ("plain answer", (None, "plain answer")),
        ("answer <think>late</think>", (None, "answer <think>late</think>")),
        ("stray </think> close", (None, "stray </think> close")),
        ("<think>a</think>b</think>c", ("a", "b</think>c")),
    ],
)
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected
    message = parse_assistant_message(text)
    assert (message.reasoning, message.content) == expected


def test_reasoning_opened_by_the_prompt():
    assert split_reasoning("thinking...</think>answer", in_reasoning=True) == ("thinking...", "answer")
    message = parse_assistant_message("thinking...</think>answer", in_reasoning=True)
    assert (message.reasoning, message.content) == ("thinking...", "answer")


def test_assistant_message_with_everything():
    text = f'<think>The user wants the weather.</think>\n{S}[get_weather(location="Paris")]{E}Checking the weather.'
    message = parse_assistant_message(text)
    assert message == AssistantMessage(
        content="Checking the weather.",
        reasoning="The user wants the weather.",
        tool_calls=[ToolCall("get_weather", {"location": "Paris"})],
        error=None,
    )


def test_tool_call_markers_inside_reasoning_are_reasoning():
    message = parse_assistant_message(f"<think>maybe {S}[f()]{E}?</think>no")
    assert message.tool_calls == [] and message.reasoning == f"maybe {S}[f()]{E}?" and message.content == "no"


# ---- streaming -------------------------------------------------------------------------------


def run_stream(pieces, in_reasoning=False):
    parser = StreamParser(in_reasoning=in_reasoning)
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    events.extend(parser.finish())
    return events, parser.message


def summary(events):
    """Events with adjacent deltas merged: what a client ends up showing."""
    merged = []
    for event in events:
        if merged and type(event) in (ContentDelta, ReasoningDelta) and type(merged[-1]) is type(event):
            merged[-1] = type(event)(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged


def test_stream_events_in_order_one_character_at_a_time():
    text = f"<think>plan</think> Sure.{S}[f(a=1), g()]{E} Done <3"
    events, message = run_stream(list(text))
    assert summary(events) == [
        ReasoningDelta("plan"),
        ContentDelta("Sure."),
        ToolCallEvent(ToolCall("f", {"a": 1}), 0),
        ToolCallEvent(ToolCall("g", {}), 1),
        ContentDelta(" Done <3"),
    ]
    assert message == parse_assistant_message(text)


def test_stream_holds_back_partial_tags():
    parser = StreamParser()
    assert parser.feed("Hello <|tool_") == [ContentDelta("Hello ")]
    assert parser.feed("call_start|>[f(a=") == []
    assert parser.feed("1)]<|tool_call_end|>") == [ToolCallEvent(ToolCall("f", {"a": 1}), 0)]
    parser = StreamParser()
    assert parser.feed(" <thi") == []
    assert parser.feed("nk>x</thi") == [ReasoningDelta("x")]
    assert parser.feed("s is not the end") == [ReasoningDelta("</this is not the end")]
    assert parser.finish() == []


def test_stream_bad_block_becomes_content_and_error():
    events, message = run_stream([f"a{S}[f(1)]{E}b"])
    assert isinstance(events[1], ToolCallError) and events[1].raw == f"{S}[f(1)]{E}"
    assert message.content == f"a{S}[f(1)]{E}b" and message.error and message.tool_calls == []


def test_stream_finish_parses_an_unterminated_block():
    events, message = run_stream([f"{S}[f(a=", "1)]"])
    assert events == [ToolCallEvent(ToolCall("f", {"a": 1}), 0)]
    parser = StreamParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


FRAGMENTS = st.sampled_from(
    [
        "<think>",
        "</think>",
        S,
        E,
        "<",
        "<|",
        "<|tool_",
        "</thi",
        "<thi",
        "[f(a=1)]",
        "[g()]",
        "[f(1)]",
        '[h(s="x]<|tool_call_end|>")]',
        "[",
        "]",
        "(",
        ")",
        "=",
        '"',
        " ",
        "\n",
        "a",
        "é",
        "🙂",
        "Sure.",
        "{",
        '{"name": "j", "arguments": {}}',
        "<|im_end|>",
        "\\",
    ]
)
texts = st.lists(st.one_of(FRAGMENTS, st.text(max_size=6)), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(0, 200), max_size=8), in_reasoning=st.booleans())
def test_stream_gives_the_same_result_in_any_split(text, cuts, in_reasoning):
    whole_events, whole = run_stream([text], in_reasoning)
    points = sorted({c for c in cuts if c <= len(text)})
    pieces = [text[a:b] for a, b in zip([0] + points, points + [len(text)])]
    split_events, split = run_stream(pieces, in_reasoning)
    assert split == whole == parse_assistant_message(text, in_reasoning)
    assert summary(split_events) == summary(whole_events)
    # the parts add back up to the message
    assert "".join(e.text for e in split_events if isinstance(e, ContentDelta)) == whole.content
    assert [e.call for e in split_events if isinstance(e, ToolCallEvent)] == whole.tool_calls
    reasoning, _ = split_reasoning(text, in_reasoning)
    assert whole.reasoning == reasoning


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_parsers_never_raise_unexpected_errors_on_arbitrary_text(text):
    message = parse_assistant_message(text)
    assert isinstance(message.content, str)
    try:
        parse_tool_calls(text)
    except ToolCallParseError as exc:
        assert exc.raw == text
    split_reasoning(text)
    events, streamed = run_stream([text[: len(text) // 2], text[len(text) // 2 :]])
    assert streamed == message
