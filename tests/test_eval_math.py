"""The consolidated math answer extractor (examples and properties) and the GSM8K / MGSM tasks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit.evals import answers_match, evaluate, extract_answer

EXAMPLES = [
    # boxed wins over everything, braces balanced, LaTeX fractions
    ("First 3+4=7, then \\boxed{18}. The answer is 5.", "18"),
    ("so \\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{\\dfrac{1}{3}}", "1/3"),
    ("\\boxed{x = 1{,}250}", "1250"),
    ("\\fbox{-7}", "-7"),
    # "the answer is" in many languages
    ("Natalia sold 48 clips in April. The answer is 72.", "72"),
    ("The final answer is: $1,234.50", "1234.5"),
    ("La respuesta es 12.", "12"),
    ("Donc, la réponse est 3,5 kg.", "3.5"),
    ("Die Antwort lautet 1.000.", "1"),
    ("Ответ — 40", "40"),
    ("所以答案是18。", "18"),
    ("答えは１２です。", "12"),
    ("คำตอบคือ 7", "7"),
    ("Jibu ni 25.", "25"),
    ("উত্তর হল ৪২", "42"),
    ("الإجابة هي ٣٠", "30"),
    ("따라서 정답은 9입니다.", "9"),
    ("The answer is 3 + 4 = 7", "7"),
    # GSM8K's reference format, then the last number
    ("Janet has 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", "18"),
    ("She pays 5 dollars, then 10 dollars, total 15.0", "15"),
    ("It costs €2,000,000 in all.", "2000000"),
    ("The rate grew 12%.", "12"),
    ("On 2023-11-20 it was 4 degrees", "4"),
    ("The temperature is -5 degrees.", "-5"),
    ("That is 0.50 of it", "0.5"),
    # reasoning traces: stripped; unclosed means no answer yet
    ("<think>maybe 3? no, 4</think>The answer is 5.", "5"),
    ("<think>the answer is 3, hmm", None),
    ("no numbers at all", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXAMPLES)
def test_extract_answer_examples(text, expected):
    assert extract_answer(text) == expected


def test_answers_match_is_numeric():
    assert answers_match("18", "18.0") and answers_match("1234.5", "1,234.50") and answers_match("0.75", "3/4")
    assert answers_match("72", "Natalia sold 48/2 = 24 clips.\n#### 72")
    assert not answers_match("17", "18") and not answers_match(None, "18") and not answers_match("0", "0.1")
    assert answers_match("0", "0")


def fmt(n: int, style: str) -> str:
    body = f"{abs(n):,}" if style in ("comma", "dollar") else str(abs(n))
    sign = "-" if n < 0 else ""
    return {"comma": f"{sign}{body}", "dollar": f"{sign}${body}", "dot0": f"{sign}{body}.0", "plain": f"{sign}{body}"}[
        style
    ]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(-(10**9), 10**9),
    style=st.sampled_from(["comma", "dollar", "dot0", "plain"]),
    wrapper=st.sampled_from(["boxed", "answer_is", "hashes", "last", "think"]),
    noise=st.integers(0, 999),
)
def test_any_integer_in_any_wrapper_comes_back_normalized(n, style, wrapper, noise):
    number = fmt(n, style)
    text = {
        "boxed": f"We add {noise} and more. \\boxed{{{number}}}",
        "answer_is": f"Step 1: {noise} apples.\nThe answer is {number}.",
        "hashes": f"Compute {noise} first.\n#### {number}",
        "last": f"There were {noise} at first, so in the end {number}",
        "think": f"<think>It could be {noise}.</think> So the answer is {number}",
    }[wrapper]
    assert extract_answer(text) == str(n)


@settings(max_examples=100, deadline=None)
@given(st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False, allow_infinity=False))
def test_decimals_round_trip_numerically(d):
    assert answers_match(extract_answer(f"the answer is {d}"), str(d))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_never_raises_and_returns_a_number_or_none(text):
    out = extract_answer(text)
    assert out is None or isinstance(out, str)


# ---- the tasks on a tiny model: greedy generation, scored by the extractor --------------------
def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("evalmath")
    path, _ = make_checkpoint(root / "model", layout="small", seed=4, with_tokenizer=True)
    data = root / "data"
    write_jsonl(
        data / "gsm8k" / "test.jsonl",
        [
            {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
            {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
            {"question": "A robot paints 10 skies a day. How many in 2 days?", "answer": "#### 20"},
        ],
    )
    write_jsonl(data / "gsm8k" / "train.jsonl", [{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}])
    write_jsonl(
        data / "mgsm" / "de" / "test.jsonl",
        [{"question": "Wie viel ist 2 + 3?", "answer": None, "answer_number": 5, "equation_solution": None}],
    )
    write_jsonl(
        data / "mgsm" / "de" / "train.jsonl",
        [
            {
                "question": "Frage: Wie viel ist 1 + 1?",
                "answer": "Schritt-für-Schritt-Antwort: 1 + 1 = 2. Die Antwort lautet 2.",
                "answer_number": 2,
            }
        ],
    )
    return path, data


def test_gsm8k_scores_greedy_outputs_with_the_extractor(setup, tmp_path):
    from lfmkit import generate, load
    from lfmkit.inference.sampling import SamplingParams
    from lfmkit.text.tokenizer import Tokenizer

    path, data = setup
    summary = evaluate(str(path), "gsm8k", data, tmp_path, max_tokens=12, num_fewshot=1, batch_size=2)
    samples = [json.loads(x) for x in (tmp_path / "samples_gsm8k.jsonl").read_text().splitlines()]
    model, tok = load(path), Tokenizer.from_pretrained(path)
    shot = "Question: What is 1 + 1?\nAnswer: 1 + 1 = 2\n#### 2\n\n"
    for s, q in zip(
        samples,
        [
            "Tom has 3 apples and buys 4 more. How many?",
            "What is 2 + 2?",
            "A robot paints 10 skies a day. How many in 2 days?",
        ],
    ):
        assert s["prompt"] == f"{shot}Question: {q}\nAnswer:"
        alone = generate(
            model,
            s["prompt"],
            SamplingParams.greedy(max_tokens=12, stop=["Question:", "</s>", "<|im_end|>"]),
            tokenizer=tok,
        )
        assert s["output"] == alone.text  # batched = alone, greedy
        assert s["prediction"] == extract_answer(alone.text)
        assert s["correct"] == answers_match(s["prediction"], s["target"])
    assert [s["target"] for s in samples] == ["7", "4", "20"]
    r = summary["results"]["gsm8k"]
    assert r["n"] == 3 and r["score"] == sum(s["correct"] for s in samples) / 3 and "extract_answer" in r["method"]


def test_mgsm_native_prompt_and_chat_turns(setup, tmp_path):
    path, data = setup
    evaluate(str(path), "mgsm", data, tmp_path, max_tokens=4, num_fewshot=1)
    s = json.loads((tmp_path / "samples_mgsm.jsonl").read_text().splitlines()[0])
    assert s["prompt"] == (
        "Frage: Wie viel ist 1 + 1?\nSchritt-für-Schritt-Antwort: 1 + 1 = 2. Die Antwort lautet 2."
        "\n\nFrage: Wie viel ist 2 + 3?\nSchritt-für-Schritt-Antwort:"
    )
    assert s["target"] == "5" and s["subtask"] == "de"
    evaluate(str(path), "mgsm", data, tmp_path, max_tokens=4, num_fewshot=1, apply_chat_template=True)
    s = json.loads((tmp_path / "samples_mgsm.jsonl").read_text().splitlines()[0])
    assert s["prompt"] == (
        "<|startoftext|><|im_start|>user\nWie viel ist 1 + 1?<|im_end|>\n<|im_start|>assistant\n"
        "1 + 1 = 2. Die Antwort lautet 2.<|im_end|>\n<|im_start|>user\nWie viel ist 2 + 3?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
