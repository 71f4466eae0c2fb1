"""Evaluation speed: lfmkit against lm-eval's Hugging Face backend, same model, data and batch size.

Builds a random-weight checkpoint of a preset (real shapes) with the test tokenizer, writes an
MMLU-style 5-shot multiple-choice set, a GSM8K-style 0-shot generation set and the same
questions 5-shot (MGSM's layout: five worked examples before each question), and times, in one run:

- `lfmkit.evals.evaluate` (mmlu, --mc-rule choices; gsm8k greedy generation, 0- and 5-shot),
  in float32 and, as a user would choose it, with `--quant int8` (not the same numbers: a speed
  column only),
- lm-eval's `simple_evaluate` with `LMEvalModel` (model `lfmkit`) on the same prompts as a custom
  task (skipped with --skip-lm-eval-lfmkit),
- lm-eval's `simple_evaluate` with its `hf` backend (transformers, float32), the same tasks.

    python benchmarks/eval_speed.py [--preset lfm2-350m] [--questions 64] [--gen-questions 16]
                                    [--max-tokens 32] [--batch-size 8] [--threads N]
                                    [--skip-lm-eval-lfmkit] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from lfmkit import LFM2, LFM2Config
from lfmkit.testing import build_test_tokenizer

WORDS = (
    "the capital of France",
    "a small robot",
    "the sea and the sky",
    "the weather in Paris",
    "a story",
    "the quick brown fox",
    "the lazy dog",
    "a tiny nematode",
    "temperate soil",
    "the candidate status",
)

MC_YAML = """task: speed_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {test}, dev: {dev}}}}}
test_split: test
fewshot_split: dev
fewshot_config: {{sampler: first_n}}
num_fewshot: 5
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {{{{subject.replace('_', ' ')}}}}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\n\
C. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
"""

GEN_YAML = """task: speed_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {test}}}}}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["Question:", "</s>", "<|im_end|>"], max_gen_toks: {max_tokens}, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
"""

GEN_FS_YAML = """task: speed_gen_fs
dataset_path: json
dataset_kwargs: {{data_files: {{test: {test}, train: {train}}}}}
test_split: test
fewshot_split: train
fewshot_config: {{sampler: first_n}}
num_fewshot: 5
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["Question:", "</s>", "<|im_end|>"], max_gen_toks: {max_tokens}, do_sample: false}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_data(root: Path, n_mc: int, n_gen: int, max_tokens: int) -> Path:
    rng = random.Random(0)

    def question(i: int) -> dict:
        return {
            "question": f"What is {rng.choice(WORDS)} number {i}?",
            "subject": "miscellaneous",
            "choices": [f"{rng.choice(WORDS)} {k}" for k in range(4)],
            "answer": rng.randrange(4),
        }

    data = root / "data"
    write_jsonl(data / "mmlu" / "dev.jsonl", [question(i) for i in range(5)])
    write_jsonl(data / "mmlu" / "test.jsonl", [question(i) for i in range(n_mc)])

    def problem() -> dict:
        a, b = rng.randrange(100), rng.randrange(100)
        return {
            "question": f"{rng.choice(WORDS)} has {a} apples and gets {b} more. How many?",
            "answer": f"{rng.choice(WORDS)} had {a} apples. Then {b} more came, so {a} + {b} = {a + b}.\n#### {a + b}",
        }

    write_jsonl(data / "gsm8k" / "test.jsonl", [problem() for _ in range(n_gen)])
    write_jsonl(data / "gsm8k" / "train.jsonl", [problem() for _ in range(5)])
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "speed_mc.yaml").write_text(
        MC_YAML.format(test=data / "mmlu" / "test.jsonl", dev=data / "mmlu" / "dev.jsonl")
    )
    (tasks / "speed_gen.yaml").write_text(GEN_YAML.format(test=data / "gsm8k" / "test.jsonl", max_tokens=max_tokens))
    (tasks / "speed_gen_fs.yaml").write_text(
        GEN_FS_YAML.format(
            test=data / "gsm8k" / "test.jsonl", train=data / "gsm8k" / "train.jsonl", max_tokens=max_tokens
        )
    )
    return data


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--questions", type=int, default=64, help="multiple-choice questions (5-shot)")
    ap.add_argument("--gen-questions", type=int, default=16, help="generation questions")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens generated per question (no eos: random model)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--skip-lm-eval-lfmkit", action="store_true", help="leave out the lm-eval + LMEvalModel column")
    ap.add_argument("--json", default=None, help="append the result line to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lm_eval
    from lm_eval.tasks import TaskManager

    from lfmkit.evals import LMEvalModel, evaluate

    root = Path(args.dir or tempfile.mkdtemp(prefix="lfmkit-eval-speed-"))
    model_dir = root / "model"
    if not (model_dir / "model.safetensors").is_file():
        config = LFM2Config.from_preset(args.preset)
        LFM2.from_config(config, seed=0).save_pretrained(model_dir)
        build_test_tokenizer(model_dir)
    data = make_data(root, args.questions, args.gen_questions, args.max_tokens)
    manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    bs, mt = args.batch_size, args.max_tokens
    started = time.strftime("%H:%M UTC", time.gmtime())
    load_before = os.getloadavg()

    # (workload, items, lfmkit evaluate kwargs, lm-eval task)
    workloads = [
        ("multiple choice, 5-shot", args.questions, {"tasks": "mmlu", "mc_rule": "choices"}, "speed_mc"),
        (f"generation 0-shot, {mt} tokens", args.gen_questions, {"tasks": "gsm8k", "max_tokens": mt}, "speed_gen"),
        (
            f"generation 5-shot, {mt} tokens",
            args.gen_questions,
            {"tasks": "gsm8k", "max_tokens": mt, "num_fewshot": 5},
            "speed_gen_fs",
        ),
    ]
    times: dict[str, list[float]] = {"lfmkit": [], "lfmkit_int8": [], "lm_eval_lfmkit": [], "hf": []}
    scores = {}
    for name, _, kw, _ in workloads:
        t, out = timed(evaluate, str(model_dir), data=data, batch_size=bs, **kw)
        times["lfmkit"].append(t)
        scores[name] = out["results"][kw["tasks"]]["score"]
        t, _ = timed(evaluate, str(model_dir), data=data, batch_size=bs, quant="int8", **kw)
        times["lfmkit_int8"].append(t)
    if not args.skip_lm_eval_lfmkit:
        lm = LMEvalModel(pretrained=str(model_dir), batch_size=bs)
        for *_, task in workloads:
            t, _ = timed(lm_eval.simple_evaluate, model=lm, tasks=[task], task_manager=manager)
            times["lm_eval_lfmkit"].append(t)
    hf_args = f"pretrained={model_dir},dtype=float32"
    hf_mc = None
    for k, (*_, task) in enumerate(workloads):
        t, out = timed(
            lm_eval.simple_evaluate,
            model="hf",
            model_args=hf_args,
            tasks=[task],
            task_manager=manager,
            batch_size=bs,
            device="cpu",
        )
        times["hf"].append(t)
        if k == 0:
            hf_mc = out["results"][task]["acc,none"]
    load_after = os.getloadavg()

    print(
        f"{args.preset} (random weights), batch size {bs}, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, started {started}, load average {load_before[0]:.1f} "
        f"before / {load_after[0]:.1f} after"
    )
    print(f"mc accuracy: lfmkit {scores[workloads[0][0]]:.4f} / lm-eval hf {hf_mc:.4f} (same prompts and rule)")
    header = f"{'workload':<32}{'items':>6}{'lfmkit':>10}{'int8':>10}{'lm-eval+lfmkit':>16}{'hf':>10}{'x hf':>7}"
    print(header + f"{'int8 x hf':>11}")
    rows = []
    for k, (name, n, _, _) in enumerate(workloads):
        ours, int8, hf = times["lfmkit"][k], times["lfmkit_int8"][k], times["hf"][k]
        mid = times["lm_eval_lfmkit"][k] if times["lm_eval_lfmkit"] else None
        shown = f"{mid:.1f}s" if mid is not None else "-"
        print(f"{name:<32}{n:>6}{ours:>9.1f}s{int8:>9.1f}s{shown:>16}{hf:>9.1f}s{hf / ours:>6.1f}x{hf / int8:>10.1f}x")
        rows.append(
            {"workload": name, "items": n, "lfmkit": ours, "lfmkit_int8": int8, "lm_eval_lfmkit": mid, "hf": hf}
        )
    line = json.dumps(
        {
            "preset": args.preset,
            "batch_size": bs,
            "threads": torch.get_num_threads(),
            "started": started,
            "loadavg": [load_before[0], load_after[0]],
            "rows": rows,
            "acc": [scores[workloads[0][0]], hf_mc],
        }
    )
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
