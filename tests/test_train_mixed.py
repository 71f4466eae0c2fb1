"""bf16_weights (mixed precision): bfloat16 working weights, float32 masters in the optimizer.

The loss curve follows the float32 run's within bfloat16 rounding, the working weights are the
masters rounded after every step, accumulation over micro-batches happens in float32, the final
model and the checkpoints hold the float32 masters, and a crashed run resumes exactly."""

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import (
    CHATS,
    TEXTS,
    Interrupt,
    interrupting_loss,
    logged_losses,
    tiny_model_dir,
    tiny_run,
    write_jsonl,
)

from lfmkit import LFM2
from lfmkit.errors import ConfigError
from lfmkit.train.metrics import read_metrics
from lfmkit.train.mixed import MasterWeights
from lfmkit.train.sft import sft

STEPS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return root, tiny_model_dir(root / "model"), [str(write_jsonl(root / "data.jsonl", CHATS + TEXTS))]


def config(setup, name, **overrides):
    return tiny_run(*setup, name, STEPS, **overrides)


@pytest.fixture(scope="module")
def runs(setup):
    fp32 = sft(config(setup, "fp32"), verbose=False)
    mixed = sft(config(setup, "mixed", bf16_weights=True), verbose=False)
    return fp32, mixed


def test_loss_follows_the_float32_run_and_goes_down(runs):
    fp32, mixed = runs
    assert len(mixed.losses) == STEPS
    assert mixed.losses[-1] < mixed.losses[0]
    for ours, ref in zip(mixed.losses, fp32.losses):
        assert abs(ours - ref) / ref < 2e-2


def test_the_final_model_holds_the_float32_masters(runs):
    _, mixed = runs
    saved = load_file(str(mixed.output / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    w = saved["model.layers.0.feed_forward.w1.weight"]
    assert not torch.equal(w, w.bfloat16().float())  # not merely the rounded working weights
    kept = load_file(str(mixed.checkpoint / "trainable.safetensors"))
    assert torch.equal(kept["model.layers.0.feed_forward.w1.weight"], w)
    assert LFM2.from_pretrained(mixed.output).dtype == torch.float32


def test_a_crashed_run_resumes_exactly(setup, runs):
    _, mixed = runs
    cfg = config(setup, "crashed", bf16_weights=True)
    with pytest.raises(Interrupt):  # dies in step 4: checkpoint step-2 stands
        sft(cfg, loss=interrupting_loss(after_calls=6), verbose=False)
    result = sft(cfg | {"resume": True}, verbose=False)
    assert result.resumed_from == 2
    assert logged_losses(cfg["output"]) == logged_losses(mixed.output)
    ours, ref = load_file(f"{cfg['output']}/model.safetensors"), load_file(str(mixed.output / "model.safetensors"))
    for name, tensor in ref.items():
        assert torch.equal(ours[name], tensor), name


def test_working_weights_are_the_rounded_masters_and_gradients_accumulate_in_float32(setup):
    model = LFM2.from_pretrained(setup[1])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    mixed = MasterWeights(model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    for (name, _), m in zip(model.named_parameters(), mixed.masters):
        assert m.dtype == torch.float32 and torch.equal(m, start[name])
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    for _ in range(2):  # two micro-batches
        model(ids).float().square().mean().backward()
        mixed.fold_grads()
    assert all(p.grad is None for p in model.parameters())
    assert all(m.grad is not None and m.grad.dtype == torch.float32 for m in mixed.masters)
    torch.optim.SGD(mixed.masters, lr=0.1).step()
    mixed.write_back()
    for p, m in zip(model.parameters(), mixed.masters):
        assert torch.equal(p, m.to(torch.bfloat16))
    with mixed.master_view():
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_quantized_model_is_refused(setup):
    from lfmkit.fast import optimize

    model = optimize(LFM2.from_pretrained(setup[1]), quant="int8")
    with pytest.raises(ConfigError, match="bf16_weights: the model has quantized layers"):
        MasterWeights(model)


def test_grpo_rollouts_read_the_bf16_weights(setup, tmp_path):
    """GRPO under bf16_weights: rollouts and training forward read the same bfloat16 weights
    (the sampler's and the forward's log-probs agree to bfloat16 rounding), the frozen reference
    is bfloat16 too (KL starts at 0), and the reward still drives training."""
    from lfmkit.train.grpo import grpo

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Count: {w}"} for w in "one two three four".split()])
    seen = []

    def digits(messages, completion):
        return sum(c.isdigit() for c in completion) / max(1, len(completion))

    def prepare(model):
        seen.append(model)
        return model

    values = dict(
        model=str(setup[1]),
        prompts=[str(prompts)],
        output=str(tmp_path / "grpo"),
        max_steps=3,
        batch_size=8,
        num_generations=4,
        max_completion_length=6,
        learning_rate=3e-3,
        beta=0.05,
        save_every=0,
        progress=False,
        bf16_weights=True,
    )
    result = grpo(values, rewards=[digits], prepare_model=prepare, verbose=False)
    records = read_metrics(tmp_path / "grpo" / "metrics.jsonl")
    assert len(result.losses) == 3
    assert records[0]["kl"] == 0.0 and records[-1]["kl"] > 0
    assert all(0 < r["logprob_diff"] < 5e-2 for r in records), [r["logprob_diff"] for r in records]
    assert {p.dtype for p in seen[0].parameters()} == {torch.bfloat16}  # what the rollouts ran on
    assert load_file(str(tmp_path / "grpo" / "model.safetensors"))["model.embed_tokens.weight"].dtype == torch.float32


def test_dpo_scores_its_reference_in_the_training_precision(setup, tmp_path):
    """Under bf16_weights the starting model's reference log-probs are bfloat16 too, so the
    policy starts exactly at the reference: the first step's sigmoid loss is ln 2, margins 0."""
    import math

    from dpo_helpers import TEXT

    from lfmkit.train.dpo import dpo

    pairs = write_jsonl(tmp_path / "pairs.jsonl", TEXT)
    values = dict(
        model=str(setup[1]),
        data=[str(pairs)],
        output=str(tmp_path / "dpo"),
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        save_every=0,
        progress=False,
        bf16_weights=True,
    )
    result = dpo(values, verbose=False)
    first = read_metrics(tmp_path / "dpo" / "metrics.jsonl")[0]
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert result.losses[1] < result.losses[0]


def test_bf16_on_a_cpu_with_slow_bf16_gemms_is_warned_about(setup, monkeypatch, capsys):
    """Without AVX-512 BF16 / AMX (kernels/gemm.py), bf16 training gets one stderr line saying
    its products are slow loops there; where the GEMMs are fast, no line."""
    from lfmkit.kernels import gemm

    monkeypatch.setenv(gemm.ENV, "bf16")
    sft(config(setup, "warned", bf16_weights=True, max_steps=1), verbose=False)
    assert "warning: bf16_weights on a CPU without AVX-512 BF16 or AMX" in capsys.readouterr().err
    monkeypatch.setattr(gemm, "bf16_gemm_fast", lambda: True)
    sft(config(setup, "quiet", bf16=True, max_steps=1), verbose=False)
    assert "warning" not in capsys.readouterr().err
