"""torchrun: `lfmkit train sft` in two processes (gloo, CPU) trains exactly what one process
trains on the same global batch: the same per-step losses and final model, with DDP and with
FSDP2, full fine-tuning and LoRA; a two-process run resumes exactly; only process 0 writes.

Each two-process run is a real `python -m torch.distributed.run --nproc_per_node 2` of the CLI
on a tiny model for a few steps (seconds); the timeout is only a hang guard."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import CHATS, PROMPT_COMPLETIONS, TEXTS, tiny_model_dir, torchrun, write_jsonl

from lfmkit.errors import ConfigError
from lfmkit.train.batching import DataPlan, micro_batches
from lfmkit.train.config import SFTConfig
from lfmkit.train.metrics import read_metrics
from lfmkit.train.sft import load_data, sft

STEPS = 3
# Full fine-tuning packs; LoRA pads, with accumulation, and its 5 documents leave a step of one
# row, where the second process has nothing to run but must still take part.
RUNS = {
    "full": dict(batch_size=4, grad_accum=1, packing=True, max_length=64),
    "lora": dict(batch_size=4, grad_accum=2, packing=False, max_length=128, lora_r=4, lora_alpha=8.0),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    model_dir = tiny_model_dir(root / "model")
    data = write_jsonl(root / "data.jsonl", CHATS + PROMPT_COMPLETIONS[:1] + TEXTS[:1])
    return root, model_dir, data


def settings(setup, kind: str, output: str, **overrides) -> dict:
    root, model_dir, data = setup
    values = dict(
        model=str(model_dir),
        data=[str(data)],
        output=str(root / output),
        max_steps=STEPS,
        learning_rate=2e-3,
        warmup_steps=1,
        save_every=1,
        seed=5,
        progress=False,
        **RUNS[kind],
    )
    values.update(overrides)
    return values


def losses(output) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(output) / "metrics.jsonl")]


def final_tensors(output) -> dict[str, torch.Tensor]:
    out = Path(output)
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(out / name))


@pytest.fixture(scope="module")
def one_process(setup):
    """The reference: each kind of run in this process."""
    return {kind: sft(SFTConfig(**settings(setup, kind, f"one-{kind}")), verbose=False) for kind in RUNS}


@pytest.fixture(scope="module")
def two_processes(setup):
    """Two-process runs, started on first use: (kind, strategy) -> (output dir, stdout)."""
    done = {}

    def run(kind: str, strategy: str):
        if (kind, strategy) not in done:
            values = settings(setup, kind, f"two-{kind}-{strategy}", distributed=strategy)
            done[kind, strategy] = Path(values["output"]), torchrun(values)
        return done[kind, strategy]

    return run


def test_the_lora_data_has_a_step_where_the_second_process_has_no_row(setup):
    cfg = SFTConfig(**settings(setup, "lora", "unused"))
    from lfmkit.text.tokenizer import Tokenizer

    docs, weights = load_data(cfg, Tokenizer.from_pretrained(cfg.model), verbose=False)
    plan = DataPlan(docs, weights, cfg.batch_size, cfg.max_length, cfg.packing, cfg.seed)
    shares = [[len(micro_batches(plan.step_rows(s)[1], cfg.grad_accum, r, 2)) for r in (0, 1)] for s in range(STEPS)]
    assert [1, 0] in shares and [2, 2] in shares


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind", list(RUNS))
def test_two_processes_train_what_one_process_trains(setup, one_process, two_processes, kind, strategy):
    out, stdout = two_processes(kind, strategy)
    reference = Path(one_process[kind].output)
    got, want = read_metrics(out / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # process 0 alone wrote them
    assert [r["tokens"] for r in got] == [r["tokens"] for r in want]  # the same global batches
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-5, abs=1e-6)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in want], rel=1e-4)
    mine, theirs = final_tensors(out), final_tensors(reference)
    assert set(mine) == set(theirs)
    # AdamW divides by sqrt(v): an element whose gradient is ~0 moves by up to lr per step on float
    # rounding alone (the gradient sums run in another order), so the weights get a looser atol
    # than the losses and gradient norms above.
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, rtol=1e-4, atol=1e-4, msg=name)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{s}" for s in range(1, STEPS + 1)]
    assert (out / "checkpoints" / "step-1" / "rng-rank1.pt").is_file()
    assert stdout.count("trained 3 steps") == 1  # printed by process 0 only
    assert f"on 2 processes ({strategy}), cpu" in stdout


def test_a_two_process_fsdp_run_resumes_exactly(setup, two_processes):
    """A run stopped after its step-1 checkpoint (what is left after a kill), resumed in two
    processes, gives the uninterrupted run's losses and final tensors bit for bit: the sharded
    parameters and optimizer state, and each process's RNG, are restored."""
    kind = "full"
    full, _ = two_processes(kind, "fsdp")
    values = settings(setup, kind, f"resumed-{kind}", distributed="fsdp", resume=True)
    out = Path(values["output"])
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-1", out / "checkpoints" / "step-1")
    for name in ("train_config.json", "metrics.jsonl"):
        shutil.copy(full / name, out / name)
    stdout = torchrun(values)
    assert "resumed at step 1" in stdout
    assert losses(out) == losses(full)
    for name, tensor in final_tensors(full).items():
        assert torch.equal(final_tensors(out)[name], tensor), name


def test_resuming_with_another_number_of_processes_is_refused(setup, two_processes):
    out, _ = two_processes("full", "ddp")
    values = settings(setup, "full", out.name, resume=True)
    with pytest.raises(ConfigError, match=r"saved by 2 processes \(ddp\), this run has 1 process"):
        sft(SFTConfig(**values), verbose=False)
    assert json.loads((out / "checkpoints" / "step-3" / "trainer_state.json").read_text())["world_size"] == 2
