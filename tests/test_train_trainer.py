"""The trainer: the loss goes down; a run interrupted (an exception, or SIGKILL at any moment)
and resumed gives exactly the per-step losses and final weights of an uninterrupted run; the
final model loads in transformers with the same logits; metrics, plot and checkpoints are
where users look; adapters plug in through prepare_model / save_model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import (
    CHATS,
    PROMPT_COMPLETIONS,
    TEXTS,
    Interrupt,
    interrupting_loss,
    tiny_model_dir,
    tiny_run,
    write_jsonl,
)

from lfmkit import LFM2
from lfmkit.errors import CheckpointError, ConfigError
from lfmkit.train.checkpoints import latest_checkpoint
from lfmkit.train.config import SFTConfig
from lfmkit.train.losses import CausalLMLoss
from lfmkit.train.metrics import read_metrics
from lfmkit.train.sft import sft

STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model_dir = tiny_model_dir(root / "model")
    chat = write_jsonl(root / "chat.jsonl", CHATS)
    other = write_jsonl(root / "other.jsonl", PROMPT_COMPLETIONS + TEXTS)
    return root, model_dir, [f"{chat}:2", str(other)]


def config(setup, name, **overrides):
    return SFTConfig(**tiny_run(*setup, name, STEPS, **(dict(warmup_steps=2, lr_scheduler="cosine") | overrides)))


@pytest.fixture(scope="module")
def uninterrupted(setup):
    result = sft(config(setup, "full"), verbose=False)
    return result, Path(setup[0] / "full")


def losses(output):
    return [r["loss"] for r in read_metrics(Path(output) / "metrics.jsonl")]


def weights(output):
    return load_file(str(Path(output) / "model.safetensors"))


def data_loss(model_dir, cfg):
    """Mean loss of the model over every training document (one padded batch)."""
    from lfmkit.text.tokenizer import Tokenizer
    from lfmkit.train.batching import collate
    from lfmkit.train.sft import load_data

    docs, _ = load_data(cfg, Tokenizer.from_pretrained(cfg.model), verbose=False)
    batch = collate([[d] for source in docs for d in source], 0, packed=False)
    with torch.no_grad():
        return float(CausalLMLoss()(LFM2.from_pretrained(model_dir), batch).total) / batch.trained_tokens


def test_loss_goes_down(setup, uninterrupted):
    result, out = uninterrupted
    assert len(result.losses) == STEPS
    cfg = config(setup, "full")
    before, after = data_loss(cfg.model, cfg), data_loss(out, cfg)
    assert after < 0.9 * before
    assert result.losses[-1] < result.losses[0]


def test_output_holds_model_metrics_plot_and_checkpoints(uninterrupted):
    _, out = uninterrupted
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.jsonl",
        "train_config.json",
    ):
        assert (out / name).is_file(), name
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("loss", "learning_rate", "grad_norm", "tokens", "trained_tokens", "tokens_per_s", "epoch"):
        assert all(key in r for r in records), key
    assert records[0]["learning_rate"] == 0.0 and records[2]["learning_rate"] == pytest.approx(2e-3)  # warmup
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]
    if pytest.importorskip("matplotlib"):
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_model_loads_in_transformers_with_the_same_logits(uninterrupted, tok):
    from transformers import AutoTokenizer, Lfm2ForCausalLM

    _, out = uninterrupted
    ref = Lfm2ForCausalLM.from_pretrained(out).eval()
    ours = LFM2.from_pretrained(out)
    ids = torch.tensor([tok.encode("The capital of France is Paris.", add_special_tokens=True)])
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, ours(ids), rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    start = LFM2.from_pretrained(setup_model_dir(out))
    with torch.no_grad():
        assert not torch.allclose(start(ids), ours(ids))  # it did train


def setup_model_dir(out):
    return json.loads((out / "train_config.json").read_text())["model"]


def micro_batch_counts(cfg):
    from lfmkit.text.tokenizer import Tokenizer
    from lfmkit.train.batching import DataPlan, micro_batches
    from lfmkit.train.sft import load_data

    docs, weights = load_data(cfg, Tokenizer.from_pretrained(cfg.model), verbose=False)
    plan = DataPlan(docs, weights, cfg.batch_size, cfg.max_length, cfg.packing, cfg.seed)
    return [len(micro_batches(plan.step_rows(s)[1], cfg.grad_accum)) for s in range(STEPS)]


def test_resume_after_a_crash_equals_the_uninterrupted_run(setup, uninterrupted):
    _, full = uninterrupted
    cfg = config(setup, "crashed", save_every=3)
    calls = sum(micro_batch_counts(cfg)[:4])
    with pytest.raises(Interrupt):  # dies in step 5, after step 4 was logged: checkpoint step-3 stands
        sft(cfg, loss=interrupting_loss(after_calls=calls), verbose=False)
    out = Path(cfg.output)
    assert latest_checkpoint(out).name == "step-3" and len(losses(out)) == 4
    result = sft(config(setup, "crashed", resume=True), verbose=False)
    assert result.resumed_from == 3 and len(result.losses) == STEPS - 3
    assert losses(out) == losses(full)  # exactly, step by step
    for name, tensor in weights(full).items():
        assert torch.equal(weights(out)[name], tensor), name


def test_sigkill_at_any_moment_then_resume_equals_the_uninterrupted_run(setup, uninterrupted):
    """A real `kill -9` of the CLI once a checkpoint exists (wherever it is then: mid-step,
    mid-save or done), then --resume in a fresh process state."""
    _, full = uninterrupted
    cfg = config(setup, "killed", save_every=1)
    argv = [
        sys.executable,
        "-m",
        "lfmkit",
        "train",
        "sft",
        "--no-progress",
        "--model",
        cfg.model,
        "--output",
        cfg.output,
        "--max-steps",
        str(STEPS),
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--max-length",
        "128",
        "--learning-rate",
        "2e-3",
        "--warmup-steps",
        "2",
        "--lr-scheduler",
        "cosine",
        "--packing",
        "--save-every",
        "1",
    ]
    for spec in cfg.data:
        argv += ["--data", spec]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = Path(cfg.output)
    deadline = time.monotonic() + 300
    while latest_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    sft(config(setup, "killed", save_every=1, resume=True), verbose=False)
    assert losses(out) == losses(full)
    for name, tensor in weights(full).items():
        assert torch.equal(weights(out)[name], tensor), name


def test_a_fresh_run_refuses_an_output_that_holds_a_run(setup, uninterrupted):
    with pytest.raises(ConfigError, match="holds an earlier run; pass --resume"):
        sft(config(setup, "full"), verbose=False)


def test_resuming_with_other_settings_is_refused(setup, uninterrupted):
    with pytest.raises(ConfigError, match="learning_rate was 0.002 there, now 0.001"):
        sft(config(setup, "full", resume=True, learning_rate=1e-3), verbose=False)


def test_half_written_checkpoints_are_ignored(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step-3").mkdir(parents=True)
    (ckpts / "step-3" / "trainer_state.json").write_text("{}")
    (ckpts / "step-5").mkdir()  # no trainer_state.json: incomplete
    (ckpts / ".tmp-step-7-123").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-3"


def test_prepare_model_trains_only_what_requires_grad_and_save_model_is_delegated(setup):
    saved = []

    def prepare(model):
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("norm.weight"))
        return model

    cfg = config(setup, "adapter", max_steps=2, save_every=2)
    sft(cfg, prepare_model=prepare, save_model=lambda m, out: saved.append((m, out)), verbose=False)
    ((model, out),) = saved
    start = LFM2.from_pretrained(cfg.model)
    for (name, p), (_, p0) in zip(model.named_parameters(), start.named_parameters()):
        assert torch.equal(p, p0) != name.endswith("norm.weight"), name
    kept = load_file(str(out / "checkpoints" / "step-2" / "trainable.safetensors"))
    assert set(kept) == {n for n, _ in model.named_parameters() if n.endswith("norm.weight")}
    assert not (out / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="trainable parameters do not match"):
        sft(config(setup, "adapter", max_steps=2, save_every=2, resume=True), verbose=False)


def test_bf16_autocast_and_gradient_checkpointing_train(setup, uninterrupted):
    result, _ = uninterrupted
    got = sft(config(setup, "bf16", bf16=True, gradient_checkpointing=True, save_every=0), verbose=False)
    assert len(got.losses) == STEPS
    for ours, fp32 in zip(got.losses, result.losses):  # the float32 run's curve, within bf16 rounding
        assert abs(ours - fp32) / fp32 < 2e-2
