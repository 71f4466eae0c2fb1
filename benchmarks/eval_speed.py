"""Evaluation speed: lfmkit against lm-eval's Hugging Face backend, same model, data and batch size.

Builds a random-weight checkpoint of a preset (real shapes) with the test tokenizer, writes an
MMLU-style 5-shot multiple-choice set, a GSM8K-style 0-shot generation set and the same
questions 5-shot (MGSM's layout: five worked examples before each question), and times, in one run:

- `lfmkit.evals.evaluate` (mmlu, --mc-rule choices; gsm8k greedy generation, 0- and 5-shot),
  in `--dtype` (float32 by default: the same numbers as transformers) and, as a user would
  choose it, with `--quant int8` (not the same numbers: a speed column only; --skip-int8),
- lm-eval's `simple_evaluate` with `LMEvalModel` (model `lfmkit`) on the same prompts as a custom
  task (skipped with --skip-lm-eval-lfmkit),
- lm-eval's `simple_evaluate` with its `hf` backend (transformers, `dtype=` the same `--dtype`),
  the same tasks.

Each cell is the wall time and the process's CPU time (all its threads) of one call, model
loading included: on a shared machine the CPU seconds are the fairer figure.

The `gen0eos` workload is GSM8K's own setting (lm-eval's `max_gen_toks` 256) on a model whose
answers end at different lengths, as a real model's do: the same random checkpoint with its end
token's (tied) embedding row scaled by `--eos-scale` (2.0: greedy answers end at the end token
after 5 to 256 tokens, median about 80 on these questions), so both engines stop each row where
the model emits it. The other generation workloads never end early (`--max-tokens` each).

    python benchmarks/eval_speed.py [--preset lfm2-350m] [--questions 64] [--gen-questions 16]
                                    [--max-tokens 32] [--batch-size 8] [--threads N]
                                    [--dtype float32|bfloat16] [--workloads mc,gen0,gen5,gen0eos]
                                    [--eos-scale 2.0] [--skip-int8] [--skip-lm-eval-lfmkit] [--json FILE]
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

GEN_YAML = """task: {task}
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
    test = data / "gsm8k" / "test.jsonl"
    (tasks / "speed_gen.yaml").write_text(GEN_YAML.format(task="speed_gen", test=test, max_tokens=max_tokens))
    # GSM8K's own budget, lm-eval's default max_gen_toks
    (tasks / "speed_gen_eos.yaml").write_text(GEN_YAML.format(task="speed_gen_eos", test=test, max_tokens=256))
    (tasks / "speed_gen_fs.yaml").write_text(
        GEN_FS_YAML.format(
            test=data / "gsm8k" / "test.jsonl", train=data / "gsm8k" / "train.jsonl", max_tokens=max_tokens
        )
    )
    return data


def timed(fn, *args, **kwargs):
    """(wall seconds, process CPU seconds, result) of one call."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--questions", type=int, default=64, help="multiple-choice questions (5-shot)")
    ap.add_argument("--gen-questions", type=int, default=16, help="generation questions")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens generated per question (no eos: random model)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="both engines' weights")
    ap.add_argument("--workloads", default="mc,gen0,gen5,gen0eos", help="a subset of mc, gen0, gen5, gen0eos")
    ap.add_argument("--eos-scale", type=float, default=2.0, help="gen0eos: the end token's embedding row times this")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--skip-int8", action="store_true", help="leave out the lfmkit --quant int8 column")
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
    eos_dir = root / f"model-eos{args.eos_scale:g}"
    if "gen0eos" in args.workloads and not (eos_dir / "model.safetensors").is_file():
        model = LFM2.from_pretrained(model_dir)
        with torch.no_grad():
            model.model.embed_tokens.weight[model.config.eos_token_id] *= args.eos_scale
        model.save_pretrained(eos_dir)
        build_test_tokenizer(eos_dir)
        del model
    data = make_data(root, args.questions, args.gen_questions, args.max_tokens)
    manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    bs, mt, dtype = args.batch_size, args.max_tokens, args.dtype
    started = time.strftime("%H:%M UTC", time.gmtime())
    load_before = os.getloadavg()

    # key: (workload, items, lfmkit evaluate kwargs, lm-eval task, checkpoint)
    every = {
        "mc": (
            "multiple choice, 5-shot",
            args.questions,
            {"tasks": "mmlu", "mc_rule": "choices"},
            "speed_mc",
            model_dir,
        ),
        "gen0": (
            f"generation 0-shot, {mt} tokens",
            args.gen_questions,
            {"tasks": "gsm8k", "max_tokens": mt},
            "speed_gen",
            model_dir,
        ),
        "gen5": (
            f"generation 5-shot, {mt} tokens",
            args.gen_questions,
            {"tasks": "gsm8k", "max_tokens": mt, "num_fewshot": 5},
            "speed_gen_fs",
            model_dir,
        ),
        "gen0eos": (
            "generation 0-shot, to the end token (<= 256)",
            args.gen_questions,
            {"tasks": "gsm8k", "max_tokens": 256},
            "speed_gen_eos",
            eos_dir,
        ),
    }
    workloads = [every[k.strip()] for k in args.workloads.split(",")]
    # engine -> [(wall, cpu)] per workload
    times: dict[str, list[tuple[float, float]]] = {"lfmkit": [], "lfmkit_int8": [], "lm_eval_lfmkit": [], "hf": []}
    scores, hf_scores, texts = {}, {}, {}
    for name, _, kw, _, ckpt in workloads:
        out_dir = root / "out" / name.split(",")[0].replace(" ", "_")
        t, c, out = timed(evaluate, str(ckpt), data=data, batch_size=bs, dtype=dtype, output=out_dir, **kw)
        times["lfmkit"].append((t, c))
        scores[name] = out["results"][kw["tasks"]]["score"]
        if kw["tasks"] == "gsm8k":
            rows = [json.loads(line) for line in (out_dir / "samples_gsm8k.jsonl").read_text().splitlines()]
            texts[name] = [r["output"] for r in rows]
    if not args.skip_int8:
        for _, _, kw, _, ckpt in workloads:
            t, c, _ = timed(evaluate, str(ckpt), data=data, batch_size=bs, quant="int8", **kw)
            times["lfmkit_int8"].append((t, c))
    if not args.skip_lm_eval_lfmkit:
        for *_, task, ckpt in workloads:
            lm = LMEvalModel(pretrained=str(ckpt), batch_size=bs, dtype=dtype)
            t, c, _ = timed(lm_eval.simple_evaluate, model=lm, tasks=[task], task_manager=manager)
            times["lm_eval_lfmkit"].append((t, c))
    same = {}
    for name, *_, task, ckpt in workloads:
        t, c, out = timed(
            lm_eval.simple_evaluate,
            model="hf",
            model_args=f"pretrained={ckpt},dtype={dtype}",
            tasks=[task],
            task_manager=manager,
            batch_size=bs,
            device="cpu",
            log_samples=name in texts,
        )
        times["hf"].append((t, c))
        metric = "acc,none" if task == "speed_mc" else "exact_match,none"
        hf_scores[name] = out["results"][task][metric]
        if name in texts:  # the same answers? (doc order in both: the data file's)
            theirs = [s["resps"][0][0] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]
            same[name] = sum(a == b for a, b in zip(texts[name], theirs))
    load_after = os.getloadavg()

    print(
        f"{args.preset} (random weights), {dtype}, batch size {bs}, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, started {started}, load average {load_before[0]:.1f} "
        f"before / {load_after[0]:.1f} after"
    )
    for name, n, *_ in workloads:
        agree = f"; the same answer text for {same[name]} of {n} questions" if name in same else ""
        print(
            f"{name}: score lfmkit {scores[name]:.4f} / lm-eval hf {hf_scores[name]:.4f} (same prompts and rule){agree}"
        )

    def cell(pair) -> str:
        return f"{pair[0]:.1f}s / {pair[1]:.1f}s" if pair else "-"

    print(f"{'workload':<32}{'items':>6}  wall / CPU: lfmkit | int8 | lm-eval+lfmkit | hf | hf/lfmkit wall, CPU")
    rows = []
    for k, (name, n, *_) in enumerate(workloads):
        got = {e: (v[k] if v else None) for e, v in times.items()}
        ours, hf = got["lfmkit"], got["hf"]
        ratio = f"{hf[0] / ours[0]:.2f}x, {hf[1] / ours[1]:.2f}x"
        print(
            f"{name:<32}{n:>6}  {cell(ours)} | {cell(got['lfmkit_int8'])} | {cell(got['lm_eval_lfmkit'])} | "
            f"{cell(hf)} | {ratio}"
        )
        rows.append({"workload": name, "items": n, **{e: list(v) if v else None for e, v in got.items()}})
    line = json.dumps(
        {
            "preset": args.preset,
            "dtype": dtype,
            "batch_size": bs,
            "threads": torch.get_num_threads(),
            "started": started,
            "loadavg": [load_before[0], load_after[0]],
            "rows": rows,
            "scores": {name: [scores[name], hf_scores[name]] for name, *_ in workloads},
            "same_answers": same,
            "eos_scale": args.eos_scale,
        }
    )
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
