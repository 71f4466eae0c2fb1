"""Shared pieces of the fine-tuning tests: tiny data in every format and a tiny checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from checkpoints import make_checkpoint

from lfmkit.train.losses import CausalLMLoss
from lfmkit.train.metrics import read_metrics

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string", "description": "The city"}},
                "required": ["location"],
            },
        },
    }
]

CHATS = [
    {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant trained by Liquid AI."},
            {"role": "user", "content": "What is the weather like in Paris?"},
            {
                "role": "assistant",
                "content": "Let me check the weather for you.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}
                ],
            },
            {"role": "tool", "content": '{"temperature": 21, "unit": "celsius"}'},
            {"role": "assistant", "content": "It is sunny and 21 degrees."},
        ],
        "tools": TOOLS,
    },
    {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "<think>2 + 2 = 4</think>The answer is 4."},
            {"role": "user", "content": "And 4 * 3?"},
            {"role": "assistant", "reasoning_content": "Then 4 * 3 = 12.", "content": "So the answer is 12."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Tell me a story about a robot."},
            {
                "role": "assistant",
                "content": "Once upon a time, there was a small robot who wanted to "
                "learn how to paint the sea and the sky.",
            },
        ]
    },
]
PROMPT_COMPLETIONS = [
    {"prompt": "Hello! How are you", "completion": " today? I am fine, thank you."},
    {
        "prompt": [{"role": "user", "content": "What is C. elegans?"}],
        "completion": [{"role": "assistant", "content": "It's a tiny nematode that lives in temperate soil."}],
    },
]
TEXTS = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "Le renard brun saute par-dessus le chien paresseux."},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_model_dir(directory: Path, layout: str = "small", **overrides) -> Path:
    """A random-weight checkpoint with the test tokenizer (vocab 512)."""
    path, _ = make_checkpoint(directory, layout=layout, seed=11, with_tokenizer=True, **overrides)
    return path


def tiny_run(root: Path, model_dir: Path, data: list[str], name: str, steps: int, **overrides) -> dict:
    """The small packed run the trainer tests vary: `steps` optimizer steps of 4 sequences (two
    micro-batches) of at most 128 tokens, lr 2e-3, a checkpoint every 2 steps, written to
    root/name; `overrides` replace or add any setting."""
    values = dict(
        model=str(model_dir),
        data=data,
        output=str(root / name),
        max_steps=steps,
        batch_size=4,
        grad_accum=2,
        max_length=128,
        learning_rate=2e-3,
        packing=True,
        save_every=2,
        progress=False,
    )
    return values | overrides


def logged_losses(output) -> list[float]:
    """The per-step losses a run wrote to its metrics.jsonl."""
    return [r["loss"] for r in read_metrics(Path(output) / "metrics.jsonl")]


class Interrupt(Exception):
    pass


def interrupting_loss(after_calls):
    """The default loss, raising once `after_calls` micro-batches have run (a crash mid-step)."""
    loss, calls = CausalLMLoss(), [0]

    def fn(model, batch):
        calls[0] += 1
        if calls[0] > after_calls:
            raise Interrupt
        return loss(model, batch)

    return fn


# ---- torchrun ------------------------------------------------------------------------------
HANG_GUARD_S = 600
FLAGS = {"rewards": "--reward"}  # settings whose flag is not the setting's name


def cli_args(values: dict) -> list[str]:
    """Command-line flags of a settings dict (lists repeat their flag)."""
    args = []
    for key, value in values.items():
        flag = FLAGS.get(key, "--" + key.replace("_", "-"))
        if key == "progress":
            args += [] if value else ["--no-progress"]
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        elif isinstance(value, bool):
            args += [flag] if value else [f"--no-{key.replace('_', '-')}"]
        else:
            args += [flag, str(value)]
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(values: dict, command: tuple[str, ...] = ("train", "sft"), processes: int = 2, cwd=None) -> str:
    """Run `lfmkit <command>` under torchrun with `processes` processes of one thread each; its stdout."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "lfmkit",
        *command,
        *cli_args(values),
    ]
    path = [str(cwd)] if cwd else []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path + sys.path))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=cwd)
    errors = "\n".join(line for line in proc.stderr.splitlines() if "error:" in line)  # lfmkit's one-line errors
    assert proc.returncode == 0, errors + "\n" + proc.stderr[-4000:]
    return proc.stdout
