"""Evaluation speed: lfmkit against lm-eval's Hugging Face backend, same model, data and batch size.

Builds a random-weight checkpoint of a preset (real shapes) with the test tokenizer, writes an
MMLU-style 5-shot multiple-choice set and a GSM8K-style generation set, and times, in one run:

- `lfmkit.evals.evaluate` (mmlu, --mc-rule choices; gsm8k greedy generation),
- lm-eval's `simple_evaluate` with `LMEvalModel` (model `lfmkit`) on the same prompts as a custom task,
- lm-eval's `simple_evaluate` with its `hf` backend (transformers), the same task.

    python benchmarks/eval_speed.py [--preset lfm2-350m] [--questions 64] [--gen-questions 16]
                                    [--max-tokens 32] [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import json
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
    gen = [
        {
            "question": f"{rng.choice(WORDS)} has {a} apples and gets {b} more. How many?",
            "answer": f"{a} + {b} = {a + b}\n#### {a + b}",
        }
        for a, b in ((rng.randrange(100), rng.randrange(100)) for _ in range(n_gen))
    ]
    write_jsonl(data / "gsm8k" / "test.jsonl", gen)
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "speed_mc.yaml").write_text(
        MC_YAML.format(test=data / "mmlu" / "test.jsonl", dev=data / "mmlu" / "dev.jsonl")
    )
    (tasks / "speed_gen.yaml").write_text(GEN_YAML.format(test=data / "gsm8k" / "test.jsonl", max_tokens=max_tokens))
    return data


def timed(fn):
    t = time.perf_counter()
    out = fn()
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
    bs = args.batch_size

    rows = []
    t_ours_mc, ours_mc = timed(lambda: evaluate(str(model_dir), "mmlu", data, mc_rule="choices", batch_size=bs))
    t_ours_gen, ours_gen = timed(
        lambda: evaluate(str(model_dir), "gsm8k", data, batch_size=bs, max_tokens=args.max_tokens)
    )
    lm = LMEvalModel(pretrained=str(model_dir), batch_size=bs)
    t_lmk_mc, _ = timed(lambda: lm_eval.simple_evaluate(model=lm, tasks=["speed_mc"], task_manager=manager))
    t_lmk_gen, _ = timed(lambda: lm_eval.simple_evaluate(model=lm, tasks=["speed_gen"], task_manager=manager))
    hf_args = f"pretrained={model_dir},dtype=float32"
    t_hf_mc, hf_mc = timed(
        lambda: lm_eval.simple_evaluate(
            model="hf", model_args=hf_args, tasks=["speed_mc"], task_manager=manager, batch_size=bs, device="cpu"
        )
    )
    t_hf_gen, _ = timed(
        lambda: lm_eval.simple_evaluate(
            model="hf", model_args=hf_args, tasks=["speed_gen"], task_manager=manager, batch_size=bs, device="cpu"
        )
    )
    rows.append(("multiple choice, 5-shot", args.questions, t_ours_mc, t_lmk_mc, t_hf_mc))
    rows.append((f"generation, {args.max_tokens} tokens", args.gen_questions, t_ours_gen, t_lmk_gen, t_hf_gen))
    acc_ours, acc_hf = ours_mc["results"]["mmlu"]["score"], hf_mc["results"]["speed_mc"]["acc,none"]

    print(
        f"{args.preset} (random weights, float32), batch size {bs}, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"mc accuracy: lfmkit {acc_ours:.4f} / lm-eval hf {acc_hf:.4f} (same prompts and rule)")
    print(f"{'workload':<28}{'items':>6}{'lfmkit eval':>13}{'lm-eval+lfmkit':>16}{'lm-eval hf':>12}{'speed-up':>10}")
    for name, n, a, b, c in rows:
        print(f"{name:<28}{n:>6}{a:>12.1f}s{b:>15.1f}s{c:>11.1f}s{c / a:>9.1f}x")
    print(
        json.dumps(
            {
                "preset": args.preset,
                "batch_size": bs,
                "rows": rows,
                "acc": [acc_ours, acc_hf],
                "gen_score": ours_gen["results"]["gsm8k"]["score"],
            }
        )
    )


if __name__ == "__main__":
    main()
