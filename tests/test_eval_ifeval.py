"""IFEval: each of the 25 verifiers on a following and a violating response; strict vs loose;
the four metrics of the task."""

from __future__ import annotations

import json

import pytest

from lfmkit.errors import EvalError
from lfmkit.evals import evaluate, follows
from lfmkit.evals.ifeval_checks import VERIFIERS, split_into_sentences

LONG_EN = "This is a simple answer written in plain English about the weather in the city today."

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["robot", "sea"]}, "A Robot by the sea.", "A robot in the sky."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat cat Cat", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "badge is fine", "this is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}, "zZ", "z"),
    (
        "language:response_language",
        {"language": "fr"},
        "Bonjour, je suis très heureux de vous rencontrer aujourd'hui à Paris.",
        LONG_EN,
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "One. Two.",
        "One. Two. Three.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "at least"},
        "Dr. Smith left. He came back!",
        "Dr. Smith paid $3.50 for it.",
    ),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\nSecond.", "First.\n***\n\n***\nx"),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "at least"},
        "one two three four five",
        "one two three",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        'Intro here.\n\n"Then, the end.',
        "Intro here.\n\nSo, the end.",
    ),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name] at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi. PS bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\np. p. s. more", "Hi.\nP.S. more"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "I think: My answer is maybe.", "Maybe."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* and **"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nfoo\nSection 2\nbar",
        "Section 1\nfoo",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "<< >> text"),
    ("combination:two_responses", {}, "first answer\n******\nsecond answer", "same\n******\nsame"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "say hi. Hi!", "Hi! Say hi."),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Done. Any other questions?"',
        "Any other questions? Done.",
    ),
    ("startend:quotation", {}, '"quoted all the way"', '"not closed'),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "THIS is VERY-GOOD",
        "This is GOOD",
    ),
    ("change_case:english_capital", {}, LONG_EN.upper(), LONG_EN),
    ("change_case:english_lowercase", {}, LONG_EN.lower(), LONG_EN),
    ("punctuation:no_comma", {}, "no commas here", "one, two"),
]


def test_every_instruction_type_has_cases():
    assert len(VERIFIERS) == 25
    assert {c[0] for c in CASES} == set(VERIFIERS)


@pytest.mark.parametrize("instruction,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_verifier_true_and_false(instruction, kwargs, good, bad):
    assert follows(good, instruction, kwargs) is True
    assert follows(bad, instruction, kwargs) is False


def test_loose_drops_first_last_lines_and_asterisks():
    response = 'Sure, here it is:\n"all quoted"\nHope this helps'
    assert not follows(response, "startend:quotation", {})
    assert follows(response, "startend:quotation", {}, loose=True)
    assert not follows("a, b\nno, comma\nc, d", "punctuation:no_comma", {}, loose=True)
    assert follows("**Title**\nno, comma", "punctuation:no_comma", {}, loose=True)  # last line dropped
    assert follows("<<T>>\n**bold** start", "detectable_format:title", {}, loose=True)
    assert follows("*hello*", "detectable_format:number_highlighted_sections", {"num_highlights": 1})
    assert not follows("", "punctuation:no_comma", {}) and not follows("  ", "punctuation:no_comma", {}, loose=True)


def test_none_kwargs_are_dropped_and_bad_ones_named():
    kwargs = {"num_highlights": 1, "keywords": None, "relation": None, "language": None}
    assert follows("*a*", "detectable_format:number_highlighted_sections", kwargs)
    with pytest.raises(EvalError, match="keywords:frequency"):
        follows("x", "keywords:frequency", {"keyword": "x"})
    with pytest.raises(EvalError, match="unknown instruction id"):
        follows("x", "keywords:nope", {})


def test_sentence_splitter_keeps_abbreviations_and_decimals():
    assert split_into_sentences("Mr. Smith paid 3.50 at example.com today. Then he left! Why?") == [
        "Mr. Smith paid 3.50 at example.com today.",
        "Then he left!",
        "Why?",
    ]


class Scripted:
    """A backend answering each prompt with a fixed reply (the runner's generation interface)."""

    name = "scripted"

    def __init__(self, replies: dict[str, str]):
        self.replies = replies

    def generate(self, prompts, max_tokens, stop):
        return [self.replies[p] for p in prompts]

    def score_mc(self, prompts, continuations):
        raise AssertionError("not a multiple-choice task")


def test_ifeval_task_reports_four_metrics(tmp_path):
    rows = [
        {
            "key": 1,
            "prompt": "Write without commas, in lowercase.",
            "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
            "kwargs": [{}, {}],
        },
        {
            "key": 2,
            "prompt": "Wrap your answer in double quotes.",
            "instruction_id_list": ["startend:quotation"],
            "kwargs": [{"num_words": None}],
        },
    ]
    (tmp_path / "ifeval").mkdir()
    (tmp_path / "ifeval" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = Scripted(
        {
            rows[0]["prompt"]: "this is plain lowercase english text without any such marks in it",
            rows[1]["prompt"]: 'Here you go:\n"a quoted answer"',
        }
    )
    r = evaluate(backend, "ifeval", tmp_path, tmp_path / "out")["results"]["ifeval"]
    assert r["metrics"] == {
        "prompt_level_strict_acc": 0.5,
        "inst_level_strict_acc": 2 / 3,
        "prompt_level_loose_acc": 1.0,
        "inst_level_loose_acc": 1.0,
    }
    assert r["score"] == 0.5 and r["n"] == 2
    sample = json.loads((tmp_path / "out" / "samples_ifeval.jsonl").read_text().splitlines()[1])
    assert sample["inst_strict"] == [False] and sample["inst_loose"] == [True]
