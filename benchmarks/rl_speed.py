"""GRPO speed: `lfmkit train grpo` against TRL's `GRPOTrainer` (transformers generation, as users
without vLLM run it), same model shape, prompts, batch and settings, in one run.

Builds a random-weight checkpoint of a preset (real shapes, float32) with the test tokenizer and
a prompt file, then runs a few GRPO steps with each trainer: `prompts` prompts x `generations`
completions per step, up to `max_tokens` tokens each (a random model almost never samples eos,
so both generate `max_tokens`; lfmkit counts the tokens it generated, TRL the generated width),
loss dapo, beta 0, one iteration, no gradient checkpointing. `--modes`:

- full (full fine-tuning): TRL trains and generates in float32; lfmkit in each of
  `--lfmkit-precision` (fp32: float32 weights; bf16-weights: bfloat16 working weights with
  float32 masters, lfmkit's `bf16_weights`, so the rollouts read bfloat16 weights);
- lora (LoRA r 16, alpha 32 on lfmkit's default targets, q/k/v/out/in_proj/w1/w2/w3): TRL with
  a peft `LoraConfig` in float32 (its generation runs the unmerged peft model); lfmkit over each
  base of `--lora-base` (fp32: float32 base; int8 / int4: lfmkit's `base_quant`, the base's
  linears quantized and the rollouts through the fused quantized decode step with the adapters).

Reports per step (the first step of each is a warm-up and left out):

- rollout tokens/s: completion tokens generated / time in generation (lfmkit: `generate` on
  the training weights; TRL: `model.generate`, timed by wrapping it), per wall-clock second
  and per second of the process's CPU time (which a busy shared machine inflates much less);
- step time: one whole optimizer step (generation, rewards, forward, backward, AdamW);
- logprob_diff (lfmkit): the mean |sampler log-prob - training forward log-prob| per token.

    python benchmarks/rl_speed.py [--preset lfm2-350m] [--prompts 2] [--generations 4]
                                  [--max-tokens 64] [--steps 3] [--threads N] [--dir DIR]
                                  [--modes full,lora] [--lfmkit-precision fp32,bf16-weights]
                                  [--lora-base fp32,int8,int4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lfmkit import LFM2, LFM2Config
from lfmkit.testing import build_test_tokenizer

PROMPTS = [
    "What is the capital of France?",
    "Tell me a story about a robot.",
    "What is the weather like in Paris?",
    "What is C. elegans?",
    "Hello! How are you today?",
    "Let me think step by step about 2 + 2.",
    "Le renard brun saute par-dessus le chien paresseux.",
    "List of tools: get_weather, get_time.",
]


def digits(messages, completion):
    """A cheap verifiable reward (lfmkit's convention: one completion)."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def digits_batched(prompts, completions, **_):
    """The same reward in TRL's convention (a batch of completions)."""
    return [digits(None, c) for c in completions]


def setup(root: Path, preset: str, n_prompts: int) -> tuple[Path, Path]:
    model_dir = root / f"model-{preset}"
    if not (model_dir / "model.safetensors").is_file():
        LFM2.from_config(LFM2Config.from_preset(preset), seed=0).save_pretrained(model_dir)
        build_test_tokenizer(model_dir)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": PROMPTS[i % len(PROMPTS)]}) + "\n" for i in range(n_prompts)))
    return model_dir, prompts


LORA_R, LORA_ALPHA = 16, 32  # TRL's CLI defaults, as docs/training.md recommends
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]  # lfmkit's default


def run_lfmkit(model_dir: Path, prompts: Path, args, out: Path, precision: str, lora: bool) -> list[dict]:
    """lfmkit's `train grpo` in full mode at `precision` (fp32, bf16-weights) or, with `lora`,
    LoRA over a base in `precision` (fp32, int8, int4)."""
    from lfmkit.train.grpo import grpo
    from lfmkit.train.metrics import read_metrics

    config = dict(
        model=str(model_dir),
        prompts=[str(prompts)],
        output=str(out),
        max_steps=args.steps,
        batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.max_tokens,
        learning_rate=1e-6,
        save_every=0,
        progress=False,
        bf16_weights=precision == "bf16-weights",
    )
    if lora:
        config.update(lora_r=LORA_R, lora_alpha=LORA_ALPHA, base_quant=None if precision == "fp32" else precision)
    grpo(config, rewards=[digits], verbose=False)
    records = read_metrics(out / "metrics.jsonl")
    previous = 0.0
    rows = []
    for r in records:
        rows.append(
            {
                "step_s": r["elapsed_s"] - previous,
                "rollout_s": r["rollout_s"],
                "rollout_cpu_s": r["rollout_cpu_s"],
                "rollout_tokens": round(r["completion_length"] * args.prompts * args.generations),
                "logprob_diff": r.get("logprob_diff"),
            }
        )
        previous = r["elapsed_s"]
    return rows


def run_trl(model_dir: Path, prompts: Path, args, out: Path, lora: bool) -> list[dict]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        max_completion_length=args.max_tokens,
        max_steps=args.steps,
        learning_rate=1e-6,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=42,
    )
    dataset = load_dataset("json", data_files=str(prompts), split="train")
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[digits_batched],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    rows: list[dict] = []
    generate = trainer.model.generate

    def timed_generate(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        output = generate(*a, **k)
        rows[-1]["rollout_s"] += time.perf_counter() - t
        rows[-1]["rollout_cpu_s"] += time.process_time() - c
        rows[-1]["rollout_tokens"] += int(output.shape[0] * (output.shape[1] - k["input_ids"].shape[1]))
        return output

    trainer.model.generate = timed_generate

    class Steps(TrainerCallback):
        def on_step_begin(self, *a, **k):
            rows.append({"step_s": -time.perf_counter(), "rollout_s": 0.0, "rollout_cpu_s": 0.0, "rollout_tokens": 0})

        def on_step_end(self, *a, **k):
            rows[-1]["step_s"] += time.perf_counter()

    trainer.add_callback(Steps())
    trainer.train()
    return rows


def summary(rows: list[dict]) -> dict:
    measured = rows[1:] or rows
    seconds = sum(r["rollout_s"] for r in measured)
    diffs = [r["logprob_diff"] for r in rows if r.get("logprob_diff") is not None]
    return {
        "steps": len(measured),
        "step_s": statistics.fmean(r["step_s"] for r in measured),
        "rollout_s": seconds / len(measured),
        "rollout_tokens_per_s": sum(r["rollout_tokens"] for r in measured) / max(seconds, 1e-9),
        "rollout_tokens_per_cpu_s": sum(r["rollout_tokens"] for r in measured)
        / max(sum(r["rollout_cpu_s"] for r in measured), 1e-9),
    } | ({"logprob_diff_max": max(diffs)} if diffs else {})


def print_table(mode: str, ours: dict[str, dict], theirs: dict) -> None:
    """One mode's table: each lfmkit configuration, its ratio to TRL's, and TRL's figures."""
    print(f"{mode}:")
    print(f"{'':<26}" + "".join(f"{'lfmkit ' + p:>22}" for p in ours) + f"{'TRL fp32':>12}")
    rows = [
        ("rollout tokens/s", "rollout_tokens_per_s", lambda a, b: a / b),
        ("rollout tokens/CPU-s", "rollout_tokens_per_cpu_s", lambda a, b: a / b),
        ("rollout s per step", "rollout_s", lambda a, b: b / a),
        ("step s", "step_s", lambda a, b: b / a),
    ]
    for label, key, ratio in rows:
        cells = "".join(f"{o[key]:>14.2f} ({ratio(o[key], theirs[key]):>4.1f}x)" for o in ours.values())
        print(f"{label:<26}{cells}{theirs[key]:>12.2f}")
    diffs = "".join(f"{o.get('logprob_diff_max', float('nan')):>22.2e}" for o in ours.values())
    print(f"{'logprob_diff (max)':<26}{diffs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--generations", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per completion")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per trainer (the first is a warm-up)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--modes", default="full,lora", help="comma-separated, run in this order: full and/or lora")
    ap.add_argument(
        "--lfmkit-precision", default="fp32,bf16-weights", help="full mode, comma-separated: fp32, bf16-weights"
    )
    ap.add_argument("--lora-base", default="fp32,int8,int4", help="lora mode, comma-separated: fp32, int8, int4")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.dir or tempfile.mkdtemp(prefix="lfmkit-rl-speed-"))
    model_dir, prompts = setup(root, args.preset, args.prompts)
    stamp = time.strftime("%H%M%S")
    record = {
        "preset": args.preset,
        "prompts": args.prompts,
        "generations": args.generations,
        "max_tokens": args.max_tokens,
        "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tables = {}
    for mode in [m for m in args.modes.split(",") if m]:
        lora = mode == "lora"
        precisions = [p for p in (args.lora_base if lora else args.lfmkit_precision).split(",") if p]
        key = "" if mode == "full" else "-lora"
        ours = {}
        for p in precisions:
            ours[p] = summary(run_lfmkit(model_dir, prompts, args, root / f"lfmkit-{mode}-{p}-{stamp}", p, lora))
            print(json.dumps({f"lfmkit{key}-{p}": ours[p]}), flush=True)  # each result as soon as it is known
        theirs = summary(run_trl(model_dir, prompts, args, root / f"trl-{mode}-{stamp}", lora))
        print(json.dumps({f"trl{key}": theirs}), flush=True)
        tables[mode] = (ours, theirs)
        record |= {f"trl{key}": theirs} | {f"lfmkit{key}-{p}": o for p, o in ours.items()}
    print(
        f"{args.preset} (random weights), {args.prompts} prompts x {args.generations} completions x "
        f"{args.max_tokens} tokens per step, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}"
    )
    for mode, (ours, theirs) in tables.items():
        print_table(mode, ours, theirs)
    print(json.dumps(record | {"finished": time.strftime("%Y-%m-%d %H:%M:%S")}))


if __name__ == "__main__":
    main()
