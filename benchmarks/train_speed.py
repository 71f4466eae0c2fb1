"""Fine-tuning speed and memory: lfmkit's SFT trainer vs TRL's SFTTrainer, in the same run.

Both train the same random-weight checkpoint (LFM2-350M shapes, or `--shape small` for a quick
run) on the same generated token rows, with the same batch, sequence length, steps, learning
rate, precision (float32) and, for LoRA, the same rank, alpha and target modules. Gradient
checkpointing is off for both, on for both, or each engine's default (`defaults`: TRL's
SFTConfig turns it on, lfmkit leaves it off). lfmkit trains its reference model (`lfmkit.LFM2`) with
`lfmkit.train.trainer.Trainer`; TRL trains transformers' `Lfm2ForCausalLM` with
`trl.SFTTrainer` (and peft for LoRA). Each engine and mode runs in a fresh subprocess, so its
peak RSS (VmHWM, which includes the Python, torch and library footprint) is its own.

    python benchmarks/train_speed.py                       # LFM2-350M shapes, full and LoRA
    python benchmarks/train_speed.py --shape small --steps 4 --seq-len 256 --batch-size 2
    python benchmarks/train_speed.py --gradient-checkpointing defaults --modes lora --json out.jsonl
    python benchmarks/train_speed.py --engines lfmkit,lfmkit-bf16,trl   # + lfmkit's bf16_weights
    python benchmarks/train_speed.py --modes full --engines lfmkit-bf16,lfmkit-bf16-8bit,trl,trl-8bit

`lfmkit-bf16` is lfmkit with `bf16_weights` (mixed precision: bfloat16 working weights, float32
masters and AdamW states); `lfmkit-bf16-8bit` adds `master_weights: kahan` (no float32 masters:
Kahan-compensated bfloat16 updates) and `optim: adamw_8bit` (block-wise 8-bit AdamW moments);
`trl-8bit` is TRL with `optim="adamw_torch_8bit"` (torchao's AdamW8bit, the same 8-bit
moments on float32 weights). Every other engine trains in float32.

tokens/s is over the timed steps (all but the first `--warmup` steps), each step timed from
the end of the previous one (data collation included), as the median step: wall-clock time,
and the process's CPU time (which a busy, shared machine inflates much less). Every row is
exactly `--seq-len` tokens, so both engines process batch x seq-len tokens per step and train
seq-len - 1 of them per row. Prints a table and the lfmkit / TRL ratios, and appends JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("lfmkit", "lfmkit-bf16", "lfmkit-bf16-8bit", "trl", "trl-8bit")
LORA_R, LORA_ALPHA = 16, 32  # TRL's CLI defaults, which docs/training.md recommends too
SHAPES = {
    "lfm2-350m": {},
    # A quick option: the 350M layer pattern and vocabulary at a quarter of the width.
    "small": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, block_ff_dim=1664),
}


# ---- the parent: checkpoint, data, subprocesses, report -----------------------------------------
def prepare(shape: str, directory: Path, rows: int, seq_len: int, seed: int) -> Path:
    """A float32 random-weight checkpoint with the test tokenizer, and `rows` token rows."""
    import random

    import torch

    from lfmkit import LFM2Config
    from lfmkit.model.lfm2 import LFM2
    from lfmkit.testing import build_test_tokenizer

    config = LFM2Config.from_preset("lfm2-350m", **SHAPES[shape])
    model = LFM2.from_config(config, dtype=torch.float32, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    build_test_tokenizer(directory)
    rng = random.Random(seed)
    data = [[rng.randrange(1, config.vocab_size) for _ in range(seq_len)] for _ in range(rows)]
    (directory / "rows.json").write_text(json.dumps(data))
    return directory


def run_worker(args, engine: str, mode: str) -> dict:
    argv = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--mode",
        mode,
        "--dir",
        str(args.dir),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--gradient-checkpointing",
        args.gradient_checkpointing,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: list[dict]) -> None:
    print(
        "| engine | mode | grad ckpt | tokens/s (wall) | tokens/CPU-s | s/step | peak RSS | RSS before the model "
        "| loss first -> last |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {r['mode']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
            f"{r['tokens_per_s']:.1f} | {r['tokens_per_cpu_s']:.1f} | {r['seconds_per_step']:.2f} | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['start_rss_mib']:.0f} MiB | "
            f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f} |"
        )
    print()
    for mode in dict.fromkeys(r["mode"] for r in results):
        by = {r["engine"]: r for r in results if r["mode"] == mode}
        pairs = [(e, peer) for peer in ("trl", "trl-8bit") if peer in by for e in by if e.startswith("lfmkit")]
        for engine, peer in pairs:
            ours, theirs = by[engine], by[peer]
            speed = ours["tokens_per_s"] / theirs["tokens_per_s"]
            cpu = ours["tokens_per_cpu_s"] / theirs["tokens_per_cpu_s"]
            memory = ours["peak_rss_mib"] / theirs["peak_rss_mib"]
            print(
                f"{mode}: {engine} / {peer} tokens/s {speed:.2f}x wall, {cpu:.2f}x CPU time "
                f"(target >= 2x: {'met' if min(speed, cpu) >= 2 else 'missed'}); peak RSS {memory:.2f}x "
                f"(target <= 0.6x: {'met' if memory <= 0.6 else 'missed'})"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="lfm2-350m")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per optimizer step")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the timing")
    p.add_argument("--modes", default="full,lora")
    p.add_argument("--engines", default="lfmkit,trl")
    p.add_argument(
        "--gradient-checkpointing",
        choices=("off", "on", "defaults"),
        default="off",
        help="off / on for both engines, or each engine's default (TRL: on, lfmkit: off)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="where the checkpoint and data go (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="append one JSON line per engine and mode")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if not 1 <= args.warmup < args.steps:
        p.error("--warmup must be at least 1 (the end of the last warmup step starts the clock) and below --steps")
    with tempfile.TemporaryDirectory(prefix="lfmkit-train-bench-") as tmp:
        args.dir = args.dir or Path(tmp)
        prepare(args.shape, args.dir, args.batch_size * args.steps, args.seq_len, args.seed)
        results = []
        for mode in args.modes.split(","):
            for engine in args.engines.split(","):
                r = run_worker(args, engine, mode)
                r.update(
                    shape=args.shape,
                    batch_size=args.batch_size,
                    seq_len=args.seq_len,
                    steps=args.steps,
                    warmup=args.warmup,
                    threads=args.threads,
                    machine=platform.processor() or platform.machine(),
                    load_avg=os.getloadavg(),
                    time=time.strftime("%Y-%m-%d %H:%M:%S"),
                )
                results.append(r)
                print(
                    f"{engine} {mode}: {r['tokens_per_s']:.1f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
        report(results)
        if args.json:
            with args.json.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in results)
    return 0


# ---- the workers: one engine, one mode, in a fresh process --------------------------------------
def rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    start = rss_mib("VmRSS")
    rows = json.loads((args.dir / "rows.json").read_text())
    trl = args.worker.startswith("trl")
    train = train_trl if trl else train_lfmkit
    checkpointing = {"off": False, "on": True, "defaults": trl}[args.gradient_checkpointing]
    clock, losses = train(args, rows, checkpointing)
    wall = [clock[i][0] - clock[i - 1][0] for i in range(args.warmup, len(clock))]
    cpu = [clock[i][1] - clock[i - 1][1] for i in range(args.warmup, len(clock))]
    tokens = args.batch_size * args.seq_len
    return {
        "engine": args.worker,
        "mode": args.mode,
        "gradient_checkpointing": checkpointing,
        "tokens_per_s": tokens / statistics.median(wall),
        "tokens_per_cpu_s": tokens / statistics.median(cpu),
        "seconds_per_step": statistics.median(wall),
        "step_seconds": [round(t, 3) for t in wall],
        "step_cpu_seconds": [round(t, 3) for t in cpu],
        "peak_rss_mib": rss_mib("VmHWM"),
        "start_rss_mib": start,
        "losses": losses,
        "torch": torch.__version__,
    }


def now() -> tuple[float, float]:
    """(wall clock, this process's CPU time), in seconds."""
    return time.perf_counter(), time.process_time()


def train_lfmkit(args, rows, checkpointing: bool) -> tuple[list, list[float]]:
    """lfmkit's Trainer on the reference model: (the `now()` of every step's end, losses)."""
    from lfmkit.model.lfm2 import LFM2
    from lfmkit.train.batching import DataPlan
    from lfmkit.train.config import SFTConfig
    from lfmkit.train.data import IGNORE_INDEX, Document
    from lfmkit.train.metrics import read_metrics
    from lfmkit.train.trainer import Trainer

    model = LFM2.from_pretrained(str(args.dir), dtype="float32")
    if args.mode == "lora":
        from lfmkit.train.lora import apply_lora

        apply_lora(model, r=LORA_R, alpha=LORA_ALPHA)
    if checkpointing:
        model.gradient_checkpointing_enable()
    docs = [Document(ids, ids[1:] + [IGNORE_INDEX]) for ids in rows]
    plan = DataPlan([docs], [1.0], args.batch_size, args.seq_len, packing=False, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="lfmkit-train-bench-run-") as out:
        config = SFTConfig(
            model=str(args.dir),
            data=["generated"],
            output=out,
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.seq_len,
            learning_rate=1e-4,
            save_every=0,
            progress=False,
            gradient_checkpointing=checkpointing,
            bf16_weights=args.worker in ("lfmkit-bf16", "lfmkit-bf16-8bit"),
            **(dict(master_weights="kahan", optim="adamw_8bit") if args.worker == "lfmkit-bf16-8bit" else {}),
        )
        trainer = Trainer(model, plan, config, pad_id=0)
        clock, step = [], trainer.step

        def timed_step(k):
            record = step(k)
            clock.append(now())
            return record

        trainer.step = timed_step
        trainer.train()
        losses = [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")]
    return clock, losses


def train_trl(args, rows, checkpointing: bool) -> tuple[list, list[float]]:
    """TRL's SFTTrainer on transformers' Lfm2ForCausalLM (peft LoRA for --mode lora): (the
    `now()` of every step's end, losses), from a callback; trl-8bit: torchao's AdamW8bit."""
    import datasets
    import torch
    from transformers import AutoTokenizer, Lfm2ForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lfmkit.train.lora import DEFAULT_TARGETS

    clock, losses = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.append(now())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    model = Lfm2ForCausalLM.from_pretrained(str(args.dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(args.dir))
    peft_config = None
    if args.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=list(DEFAULT_TARGETS), task_type="CAUSAL_LM"
        )
    with tempfile.TemporaryDirectory(prefix="lfmkit-train-bench-trl-") as out:
        config = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=checkpointing,
            max_length=args.seq_len,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
            **(dict(optim="adamw_torch_8bit") if args.worker == "trl-8bit" else {}),
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_dict({"input_ids": rows}),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[Clock()],
        )
        trainer.train()
    return clock, losses


if __name__ == "__main__":
    raise SystemExit(main())
