"""IFBench: each of the 58 constraint types on a following and a violating response (hand-checked
cases), properties of the counting rules, strict vs loose, kwargs as the test set spells them, and
the task end to end on a file in IFBench_test's format."""

from __future__ import annotations

import json
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ifbench_cases import CASES

from lfmkit.errors import EvalError
from lfmkit.evals import evaluate
from lfmkit.evals.ifbench_checks import VERIFIERS, follows_ifbench
from lfmkit.evals.ifbench_text import STOP_WORDS, word_tokens

# The constraint types of allenai/IFBench_test (its 300 rows use exactly these 58).
IFBENCH_TEST_TYPES = {
    *("count:" + x for x in "conjunctions keywords_multiple numbers person_names pronouns punctuation".split()),
    *("count:" + x for x in "unique_word_count word_count_range words_japanese".split()),
    *("custom:" + x for x in "character_reverse csv_city csv_quotes csv_special_character date_format_list".split()),
    *("custom:" + x for x in "european_capitals_sort mcq_count_length multiples reverse_newline".split()),
    *("custom:" + x for x in "sentence_alphabet word_reverse".split()),
    *("format:" + x for x in "emoji line_indent list newline no_bullets_bullets no_whitespace options".split()),
    *("format:" + x for x in "output_template parentheses quote_unquote quotes sub-bullets thesis title_case".split()),
    *("ratio:" + x for x in "overlap sentence_balance sentence_type sentence_words stop_words".split()),
    *("repeat:" + x for x in "repeat_change repeat_simple repeat_span".split()),
    *("sentence:" + x for x in "alliteration_increment increment keyword".split()),
    *("words:" + x for x in "alphabet consonants keywords_specific_position last_first no_consecutive".split()),
    *("words:" + x for x in "odd_even_syllables palindrome paragraph_last_first prime_lengths repeats".split()),
    *("words:" + x for x in "start_verb vowel words_position".split()),
}
# Every key the test set's kwargs objects carry (all of them on every row, most None).
KWARG_KEYS = (
    "N capital_frequency capital_relation end_phrase first_word forbidden_words frequency keyword keyword1 keyword2 "
    "keyword3 keyword4 keyword5 keywords language let_frequency let_relation letter m max_words min_words n n_end "
    "n_start nth_paragraph num_bullets num_highlights num_paragraphs num_placeholders num_sections num_sentences "
    "num_words options percentage postscript_marker prompt_to_repeat reference_text relation section_spliter sep "
    "small_n word"
).split()


def as_test_set_kwargs(kwargs: dict) -> dict:
    return {k: kwargs.get(k) for k in KWARG_KEYS}


def test_the_58_types_are_implemented_and_each_has_a_case():
    assert set(VERIFIERS) == IFBENCH_TEST_TYPES and len(VERIFIERS) == 58
    assert {c[0] for c in CASES} == IFBENCH_TEST_TYPES


@pytest.mark.parametrize("instruction_id,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_verifier_on_a_following_and_a_violating_response(instruction_id, kwargs, good, bad):
    assert follows_ifbench(good, instruction_id, kwargs)
    assert not follows_ifbench(bad, instruction_id, kwargs)
    # The test set's kwargs (every key present, most None) give the same verdicts.
    assert follows_ifbench(good, instruction_id, as_test_set_kwargs(kwargs))
    assert not follows_ifbench(bad, instruction_id, as_test_set_kwargs(kwargs))


def test_only_none_kwargs_are_dropped():
    """n_start 0 is a value in IFBench (IFEval's rule would drop it and fail)."""
    kw = as_test_set_kwargs({"prompt_to_repeat": "Hello world, again.", "n_start": 0, "n_end": 4})
    assert follows_ifbench("Hello", "repeat:repeat_span", kw)
    assert not follows_ifbench("world", "repeat:repeat_span", kw)


def test_loose_drops_the_first_or_last_line_and_asterisks():
    response = "Sure, here it is:\nno_spaces_here"
    assert not follows_ifbench(response, "format:no_whitespace")
    assert follows_ifbench(response, "format:no_whitespace", loose=True)
    lettered = {"options": "a), b), c), d)"}
    assert not follows_ifbench("**b)**", "format:options", lettered)
    assert follows_ifbench("**b)**", "format:options", lettered, loose=True)
    assert not follows_ifbench("   ", "format:no_whitespace", loose=True)  # an empty answer never follows


def test_errors_name_the_constraint():
    with pytest.raises(EvalError, match="IFBench: unknown instruction id 'count:nope'"):
        follows_ifbench("x", "count:nope")
    with pytest.raises(EvalError, match="count:numbers: bad kwargs"):
        follows_ifbench("x", "count:numbers", {"wrong": 3})
    # IFEval's 25 types are accepted, as in the reference's registry.
    assert follows_ifbench("no commas here", "punctuation:no_comma")


def test_word_tokens_are_treebank_tokens_per_sentence():
    assert word_tokens('"Hello," she said. I don\'t know.') == [
        "``",
        "Hello",
        ",",
        "''",
        "she",
        "said",
        ".",
        "I",
        "do",
        "n't",
        "know",
        ".",
    ]


WORD = st.text(alphabet=string.ascii_letters + "0123456789_", min_size=1, max_size=8)
TEXT = st.lists(st.tuples(WORD, st.sampled_from([" ", "\n", ", ", ". ", "! ", "-", "  "])), max_size=20).map(
    lambda parts: "".join(w + s for w, s in parts)
)


@settings(max_examples=60, deadline=None)
@given(text=TEXT, low=st.integers(0, 15), span=st.integers(0, 10))
def test_word_count_range_counts_word_characters_runs(text, low, span):
    n = len(re.findall(r"\w+", text))
    expected = bool(text.strip()) and low <= n <= low + span
    assert follows_ifbench(text, "count:word_count_range", {"min_words": low, "max_words": low + span}) == expected


@settings(max_examples=60, deadline=None)
@given(text=TEXT, percentage=st.integers(1, 100))
def test_stop_words_share(text, percentage):
    tokens = re.findall(r"\w+", text)
    share = 100 * sum(t.lower() in STOP_WORDS for t in tokens) / len(tokens) if tokens else None
    expected = share is not None and share <= percentage
    assert follows_ifbench(text, "ratio:stop_words", {"percentage": percentage}) == expected


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 8), min_size=5, max_size=5), filler=st.lists(WORD, max_size=5))
def test_keywords_multiple_needs_exactly_1_2_3_5_7(counts, filler):
    keys = ["alpha", "bravo", "charlie", "delta", "echo"]
    words = [k for k, c in zip(keys, counts) for _ in range(c)] + [w for w in filler if w.lower() not in "".join(keys)]
    kwargs = {f"keyword{i + 1}": k.upper() for i, k in enumerate(keys)}
    text = " ".join(words) or "-"
    assert follows_ifbench(text, "count:keywords_multiple", kwargs) == (counts == [1, 2, 3, 5, 7])


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 25), n=st.integers(1, 30), tail=st.text(alphabet="xyz", max_size=5))
def test_alphabet_chain_follows_and_a_broken_link_does_not(start, n, tail):
    letters = string.ascii_lowercase
    words = [letters[(start + i) % 26] + tail for i in range(n)]
    assert follows_ifbench(", ".join(words).capitalize() + ".", "words:alphabet")
    if n > 1:
        words[-1] = letters[(start + n) % 26] + tail  # skips a letter
        assert not follows_ifbench(" ".join(words), "words:alphabet")


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(1, 3), max_size=8), words=st.lists(WORD, min_size=9, max_size=9))
def test_line_indent_staircase(steps, words):
    indents = [0]
    for s in steps:
        indents.append(indents[-1] + s)
    lines = [" " * k + w for k, w in zip(indents, words)]
    assert follows_ifbench("\n".join(lines), "format:line_indent")
    if len(lines) > 1:
        assert not follows_ifbench("\n".join(lines + [lines[-1]]), "format:line_indent")


@settings(max_examples=60, deadline=None)
@given(prompt=st.text(alphabet=string.ascii_letters + " .,", min_size=2, max_size=40), data=st.data())
def test_repeat_span_is_the_inclusive_character_span(prompt, data):
    a = data.draw(st.integers(0, len(prompt) - 1))
    b = data.draw(st.integers(a, len(prompt) - 1))
    kwargs = {"prompt_to_repeat": prompt, "n_start": a, "n_end": b}
    span = prompt[a : b + 1]
    assert follows_ifbench(span, "repeat:repeat_span", kwargs) == bool(span.strip())
    assert not follows_ifbench(span + " extra", "repeat:repeat_span", kwargs)


class Scripted:
    """A backend answering each prompt with a fixed response."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, prompts, max_tokens, stop):
        return [self.answers[p] for p in prompts]

    def score_mc(self, prompts, continuations):
        raise AssertionError("not a multiple-choice task")


def ifbench_rows():
    rows = [
        ("Answer without any space.", ["format:no_whitespace"], [{}]),
        (
            "Repeat part of this: Tell me about Rome.",
            ["repeat:repeat_span", "count:numbers"],
            [{"prompt_to_repeat": "Tell me about Rome.", "n_start": 0, "n_end": 6}, {"N": 0}],
        ),
        ("Write three words on three lines.", ["format:newline"], [{}]),
    ]
    return [
        {"key": str(i), "prompt": p, "instruction_id_list": ids, "kwargs": [as_test_set_kwargs(k) for k in kwargs]}
        for i, (p, ids, kwargs) in enumerate(rows)
    ]


IFBENCH_ANSWERS = {
    "Answer without any space.": "<think>Let me think about it.</think>no_space",  # trace stripped: follows
    "Repeat part of this: Tell me about Rome.": "Tell me",  # both constraints followed
    "Write three words on three lines.": "Here it is:\none\ntwo\nthree",  # loose only (first line dropped)
}


def write_ifbench(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ifbench_rows()))


def check_ifbench_results(result):
    assert result["n"] == 3 and result["metric"] == "prompt_level_strict_acc"
    assert result["metrics"] == {
        "prompt_level_strict_acc": pytest.approx(2 / 3),
        "inst_level_strict_acc": pytest.approx(3 / 4),
        "prompt_level_loose_acc": 1.0,
        "inst_level_loose_acc": 1.0,
    }
    assert "58 offline instruction verifiers" in result["method"]


def test_ifbench_task_from_files(tmp_path):
    write_ifbench(tmp_path / "data" / "ifbench")
    summary = evaluate(Scripted(IFBENCH_ANSWERS), "ifbench", tmp_path / "data", tmp_path / "out")
    result = summary["results"]["ifbench"]
    check_ifbench_results(result)
    assert result["data"]["dataset"] == "allenai/IFBench_test"
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples_ifbench.jsonl").read_text().splitlines()]
    assert [s["inst_strict"] for s in samples] == [[True], [True, True], [False]]


def test_ifbench_rejects_unknown_ids_and_fewshot(tmp_path):
    rows = ifbench_rows()
    rows[1]["instruction_id_list"][1] = "count:nope"
    (tmp_path / "ifbench").mkdir()
    (tmp_path / "ifbench" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(EvalError, match="row 2: unknown instruction id 'count:nope'"):
        evaluate(Scripted(IFBENCH_ANSWERS), "ifbench", tmp_path)
    with pytest.raises(EvalError, match="ifbench is 0-shot"):
        evaluate(Scripted(IFBENCH_ANSWERS), "ifbench", tmp_path, num_fewshot=1)
