"""torchrun for the other recipes: DPO, GRPO and distillation in two processes (gloo, CPU, DDP;
distillation and DPO with FSDP2 too) give the per-step losses of one process on the same global
batch, including a step that leaves the second process without a row (it runs its plan's empty
micro-batch and takes part in every collective).

Both sides are real CLI runs with one thread per process (the one-process side through torchrun
with one process, so GRPO samples its rollouts from bit-identical logits); the timeout is only
a hang guard."""

import functools
from pathlib import Path

import pytest
from checkpoints import make_checkpoint
from dpo_helpers import TEXT
from train_helpers import CHATS, PROMPT_COMPLETIONS, TEXTS, tiny_model_dir, torchrun, write_jsonl

from lfmkit.train.metrics import read_metrics

STEPS = 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    tiny_model_dir(root / "model")
    make_checkpoint(root / "teacher", layout="small", seed=23, with_tokenizer=True)
    write_jsonl(root / "sft.jsonl", CHATS + PROMPT_COMPLETIONS[:1] + TEXTS[:1])
    write_jsonl(root / "pairs.jsonl", TEXT + TEXT[:1])  # 5 pairs: a step of 4, then a step of 1
    write_jsonl(
        root / "prompts.jsonl", [{"prompt": f"Count with me: {w}"} for w in ("one", "two", "three", "four", "five")]
    )
    (root / "toy_rewards.py").write_text(
        "def digits(messages, completion):\n    return sum(c.isdigit() for c in completion) / max(1, len(completion))\n"
    )
    return root


# (command, settings): each has a step whose rows give process 0 more micro-batches than process 1.
RECIPES = {
    "dpo": (
        ("train", "dpo"),
        dict(data=["pairs.jsonl"], batch_size=4, grad_accum=2, max_length=64, learning_rate=1e-3),
    ),
    "grpo": (
        ("train", "grpo"),
        dict(
            prompts=["prompts.jsonl"],
            rewards=["toy_rewards:digits"],
            batch_size=12,  # 4 prompts x 3 completions; the epoch's last step has 1 prompt: 3 rows
            num_generations=3,
            grad_accum=3,
            max_completion_length=5,
            learning_rate=3e-3,
            num_iterations=1,
        ),
    ),
    "distill": (
        ("train", "distill"),
        dict(
            data=["sft.jsonl"],
            teacher="teacher",
            batch_size=4,
            grad_accum=2,
            max_length=128,
            learning_rate=1e-2,
            temperature=1.0,
        ),
    ),
}


@functools.cache  # each run once per module: the DDP and FSDP tests share the one-process run
def run(root: Path, recipe: str, processes: int, strategy: str = "ddp") -> list[dict]:
    command, values = RECIPES[recipe]
    values = dict(
        model="model",
        output=f"{recipe}-{processes}-{strategy}",
        max_steps=STEPS,
        save_every=0,
        seed=3,
        progress=False,
        **values,
        **({"distributed": strategy} if processes > 1 else {}),
    )
    stdout = torchrun(values, command, processes=processes, cwd=root)
    if processes > 1:
        assert f"on 2 processes ({strategy}), cpu" in stdout
    return read_metrics(root / values["output"] / "metrics.jsonl")


@pytest.mark.parametrize(("recipe", "strategy"), [(r, "ddp") for r in RECIPES] + [("distill", "fsdp"), ("dpo", "fsdp")])
def test_two_processes_train_what_one_process_trains(root, recipe, strategy):
    one, two = run(root, recipe, 1), run(root, recipe, 2, strategy)
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))  # process 0 alone wrote them
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # the same global batches
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5, abs=1e-6)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    if recipe == "grpo":
        for key in ("reward", "completion_length", "logprob_diff", "clip_region"):
            assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-5, abs=1e-6), key
