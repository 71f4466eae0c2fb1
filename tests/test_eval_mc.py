"""Multiple choice (MMLU, MMMLU, GPQA) under both rules equals a direct computation with
transformers' model on the same tiny random checkpoint and the same fixture files.

The oracle below writes lm-eval's prompts out by hand (not with lfmkit's code), tokenizes them
with transformers' tokenizer and scores them with `Lfm2ForCausalLM`, one prompt at a time.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from lfmkit.cli import main
from lfmkit.errors import EvalError
from lfmkit.evals import evaluate

LETTERS = "ABCD"


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def mmlu_rows(n, subject, seed):
    rng = random.Random(seed)
    words = ["the capital", "of France", "a robot", "the sea", "is Paris", "paint", "the sky", "weather"]
    return [
        {
            "question": f"What is {rng.choice(words)} {i}?",
            "subject": subject,
            "choices": [f"{rng.choice(words)} {k}" for k in range(4)],
            "answer": rng.randrange(4),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from checkpoints import make_checkpoint
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("evalmc")
    path, ref = make_checkpoint(root / "model", layout="small", seed=3, with_tokenizer=True)
    data = root / "data"
    write_jsonl(data / "mmlu" / "dev.jsonl", mmlu_rows(3, "astronomy", 1) + mmlu_rows(2, "high_school_biology", 2))
    write_jsonl(data / "mmlu" / "test.jsonl", mmlu_rows(3, "astronomy", 3) + mmlu_rows(3, "high_school_biology", 4))
    for lang, seed in (("FR_FR", 5), ("DE_DE", 6)):
        rows = [
            {
                "Question": r["question"],
                **dict(zip(LETTERS, r["choices"])),
                "Answer": LETTERS[r["answer"]],
                "Subject": r["subject"],
            }
            for r in mmlu_rows(4, "world_religions", seed)
        ]
        write_jsonl(data / "mmmlu" / lang / "test.jsonl", rows)
    write_jsonl(
        data / "gpqa" / "train.jsonl",
        [
            {
                "Question": f"Which one is {w}?",
                "Correct Answer": f"right {w}",
                "Incorrect Answer 1": "wrong  one",
                "Incorrect Answer 2": "no [title] way",
                "Incorrect Answer 3": f" other {w} ",
            }
            for w in ("blue", "red", "a robot", "the sea")
        ],
    )
    return path, ref.eval(), AutoTokenizer.from_pretrained(path), data


# ---- the oracle: lm-eval's prompts by hand, transformers' model ------------------------------
def block(question, choices):
    return question.strip() + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, choices)) + "\nAnswer:"


def mmlu_prompts(data, shots):
    dev = [json.loads(x) for x in (data / "mmlu" / "dev.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (data / "mmlu" / "test.jsonl").read_text().splitlines()]
    out = []
    for subject in sorted({r["subject"] for r in test}):
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        ex = [r for r in dev if r["subject"] == subject][:shots]
        head += "".join(block(r["question"], r["choices"]) + " " + LETTERS[r["answer"]] + "\n\n" for r in ex)
        out += [(head + block(r["question"], r["choices"]), r["answer"]) for r in test if r["subject"] == subject]
    return out


def mmmlu_prompts(data, shots):
    out = []
    for lang, name in (("DE_DE", "German"), ("FR_FR", "French")):
        rows = [json.loads(x) for x in (data / "mmmlu" / lang / "test.jsonl").read_text().splitlines()]
        head = f"The following are multiple choice questions (with answers) about world religions ({name}).\n\n"
        for i, r in enumerate(rows):
            ex = [x for j, x in enumerate(rows[: shots + 1]) if j != i][:shots]
            text = head + "".join(
                block(x["Question"], [x[k] for k in LETTERS]) + " " + x["Answer"] + "\n\n" for x in ex
            )
            out.append((text + block(r["Question"], [r[k] for k in LETTERS]), LETTERS.index(r["Answer"])))
    return out


def gpqa_prompts(data, rule, seed=0):
    rows = [json.loads(x) for x in (data / "gpqa" / "train.jsonl").read_text().splitlines()]
    rng, out = random.Random(seed), []
    for r in rows:
        clean = [
            r[k].strip().replace(" [title]", ". ").replace("  ", " ")
            for k in ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3", "Correct Answer")
        ]
        correct = clean[3]
        rng.shuffle(clean)
        fmt = "({}) {}" if rule == "choices" else "{}. {}"
        listed = "\n".join(fmt.format(letter, c) for letter, c in zip(LETTERS, clean))
        out.append(
            (
                f"What is the correct answer to this question:{r['Question']}\nChoices:\n{listed}\nAnswer:",
                clean.index(correct),
            )
        )
    return out


@torch.no_grad()
def oracle(ref, hf_tok, prompts, rule, labels=LETTERS, chat=False):
    """Per prompt: (prediction, log-likelihoods) as lm-eval's HF backend / the model card compute them."""
    preds, lls = [], []
    for text, _ in prompts:
        if chat:
            text = hf_tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        ctx = hf_tok(text)["input_ids"] if not chat else hf_tok(text, add_special_tokens=False)["input_ids"]
        if rule == "vocab":
            logits = ref(torch.tensor([ctx])).logits[0, -1]
            preds.append(hf_tok.decode([int(logits.argmax())]).strip())
            continue
        scores = []
        for label in labels:
            whole = hf_tok(text + " " + label, add_special_tokens=not chat)["input_ids"]
            cont = whole[len(ctx) :]
            logp = ref(torch.tensor([ctx + cont[:-1]])).logits[0].float().log_softmax(-1)
            scores.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        lls.append(scores)
        preds.append(LETTERS[max(range(4), key=lambda k: scores[k])])
    return preds, lls


def check(summary_task, samples, prompts, preds, lls, rule):
    assert [s["prediction"] for s in samples] == preds
    targets = [LETTERS[t] for _, t in prompts]
    assert [s["target"] for s in samples] == targets
    correct = [p == t for p, t in zip(preds, targets)]
    assert [s["correct"] for s in samples] == correct
    assert summary_task["score"] == pytest.approx(sum(correct) / len(correct))
    assert summary_task["n"] == len(prompts)
    if rule == "choices":
        got = [s["output"]["logliks"] for s in samples]
        assert torch.allclose(torch.tensor(got), torch.tensor(lls), atol=2e-4), (got, lls)
    assert [s["prompt"] for s in samples] == [t for t, _ in prompts]


def samples_of(out, task):
    return [json.loads(x) for x in (out / f"samples_{task}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rule", ["vocab", "choices"])
def test_mmlu_and_mmmlu_few_shot_equal_transformers(setup, tmp_path, rule):
    path, ref, hf_tok, data = setup
    summary = evaluate(str(path), "mmlu,mmmlu", data, tmp_path, mc_rule=rule, batch_size=4, num_fewshot=2)
    results = summary["results"]
    for task, prompts in (("mmlu", mmlu_prompts(data, 2)), ("mmmlu", mmmlu_prompts(data, 2))):
        preds, lls = oracle(ref, hf_tok, prompts, rule)
        check(results[task], samples_of(tmp_path, task), prompts, preds, lls, rule)
        assert results[task]["mc_rule"] == rule and rule in results[task]["method"]
    assert set(results["mmlu"]["subtasks"]) == {"astronomy", "high_school_biology"}
    assert set(results["mmmlu"]["subtasks"]) == {"DE_DE", "FR_FR"}


@pytest.mark.parametrize("rule", ["vocab", "choices"])
def test_gpqa_zero_shot_equals_transformers(setup, tmp_path, rule):
    path, ref, hf_tok, data = setup
    summary = evaluate(str(path), ["gpqa"], data, tmp_path, mc_rule=rule, batch_size=3, seed=0)
    prompts = gpqa_prompts(data, rule)
    labels = [f"({x})" for x in LETTERS] if rule == "choices" else LETTERS
    preds, lls = oracle(ref, hf_tok, prompts, rule, labels=labels)
    check(summary["results"]["gpqa"], samples_of(tmp_path, "gpqa"), prompts, preds, lls, rule)


def test_chat_template_prompts_equal_transformers(setup, tmp_path):
    path, ref, hf_tok, data = setup
    summary = evaluate(str(path), ["gpqa"], data, tmp_path, mc_rule="vocab", apply_chat_template=True)
    prompts = gpqa_prompts(data, "vocab")
    preds, _ = oracle(ref, hf_tok, prompts, "vocab", chat=True)
    samples = samples_of(tmp_path, "gpqa")
    assert [s["prediction"] for s in samples] == preds
    assert all(s["prompt"].startswith("<|startoftext|><|im_start|>user\n") for s in samples)
    assert summary["config"]["apply_chat_template"] is True


def test_results_json_and_cli_table(setup, tmp_path, capsys):
    path, _, _, data = setup
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                str(path),
                "--tasks",
                "mmlu",
                "--data",
                str(data),
                "--output",
                str(out),
                "--limit",
                "2",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mmlu" in printed and "astronomy" in printed and "mc-rule vocab" in printed
    results = json.loads((out / "results.json").read_text())
    r = results["results"]["mmlu"]
    assert results["lfmkit_version"] and results["config"]["mc_rule"] == "vocab"
    assert r["n"] == 4 and r["num_fewshot"] == 5 and 0 <= r["score"] <= 1 and r["stderr"] >= 0
    assert len(r["data"]["sha256"]) == 64 and len(r["data"]["files"]) == 2  # test + dev
    assert set(samples_of(out, "mmlu")[0]) >= {"prompt", "output", "prediction", "target", "correct"}


def test_missing_data_is_one_line_naming_the_file(setup, tmp_path, capsys):
    path, _, _, _ = setup
    (tmp_path / "mmlu").mkdir()
    assert main(["eval", str(path), "--tasks", "mmlu", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "mmlu" / "test.jsonl") in err and "cais/mmlu" in err
    with pytest.raises(EvalError, match="mmmlu/<CONFIG>/test.jsonl"):
        evaluate(str(path), "mmmlu", tmp_path)
    with pytest.raises(EvalError, match="unknown task 'nope'"):
        evaluate(str(path), "nope", tmp_path)


def test_bad_rows_name_file_and_line(setup, tmp_path):
    path, _, _, _ = setup
    write_jsonl(tmp_path / "mmlu" / "test.jsonl", [{"question": "q", "subject": "s", "choices": ["a"] * 4}])
    with pytest.raises(EvalError, match=r"test.jsonl: line 1 has no column 'answer'"):
        evaluate(str(path), "mmlu", tmp_path, num_fewshot=0)
    (tmp_path / "mmlu" / "test.jsonl").write_text('{"question": \n')
    with pytest.raises(EvalError, match=r"test.jsonl: line 1 is not JSON"):
        evaluate(str(path), "mmlu", tmp_path, num_fewshot=0)


def test_csv_and_parquet_read_like_jsonl(setup, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, _, _, data = setup
    rows = [json.loads(x) for x in (data / "mmlu" / "test.jsonl").read_text().splitlines()]
    (tmp_path / "mmlu").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmlu" / "test.parquet")
    a = evaluate(str(path), "mmlu", tmp_path, num_fewshot=0)["results"]["mmlu"]
    b = evaluate(str(path), "mmlu", data, num_fewshot=0)["results"]["mmlu"]
    assert (a["score"], a["n"]) == (b["score"], b["n"])
    lines = ["question,subject,choices,answer"] + [
        f'"{r["question"]}",{r["subject"]},"{json.dumps(r["choices"]).replace(chr(34), chr(34) * 2)}",{r["answer"]}'
        for r in rows
    ]
    (tmp_path / "csv" / "mmlu").mkdir(parents=True)
    (tmp_path / "csv" / "mmlu" / "test.csv").write_text("\n".join(lines) + "\n")
    c = evaluate(str(path), "mmlu", tmp_path / "csv", num_fewshot=0)["results"]["mmlu"]
    assert (c["score"], c["n"]) == (b["score"], b["n"])


def test_long_rows_split_across_passes_score_the_same(setup, tmp_path, monkeypatch):
    from lfmkit.evals import scoring

    path, ref, hf_tok, data = setup
    monkeypatch.setattr(scoring, "ROW_TOKENS_PER_PASS", 16)  # a few tokens per row per pass
    summary = evaluate(str(path), "mmlu", data, tmp_path, mc_rule="choices", batch_size=4, num_fewshot=2)
    prompts = mmlu_prompts(data, 2)
    preds, lls = oracle(ref, hf_tok, prompts, "choices")
    check(summary["results"]["mmlu"], samples_of(tmp_path, "mmlu"), prompts, preds, lls, "choices")
