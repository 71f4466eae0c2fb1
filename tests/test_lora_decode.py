"""LoRA over a quantized base (QLoRA) decodes through the fused C step with its adapters: the
step computes what the module path (LoRALinear over the quantized layers) computes, reads the
adapters in place (an update is seen by the next step, with no copy), steps aside while the
adapters are off, gives the module path's greedy tokens through `generate` (n completions of
ragged prompts); and GRPO over such a base trains the adapters with its rollouts on that step,
the sampler's log-probs close to the training forward's (measured into metrics.jsonl)."""

import pytest
import torch
from checkpoints import make_checkpoint
from quant_helpers import assert_same_greedy
from test_train_grpo import MAX_COMPLETION, direct_logps, fixed_rollouts, formula, layout
from train_helpers import write_jsonl

from lfmkit import LFM2, generate, kernels
from lfmkit.cli import main
from lfmkit.inference.sampling import SamplingParams
from lfmkit.train.grpo import grpo
from lfmkit.train.grpo_loss import GRPOLoss
from lfmkit.train.lora import adapters_disabled, apply_lora, lora_layers
from lfmkit.train.lora_decode import LoRAFusedDecode, install, quantized_base
from lfmkit.train.metrics import read_metrics
from lfmkit.train.rollouts import collate_rollouts, loss_items

pytestmark = pytest.mark.skipif(kernels.load() is None, reason=f"no C++ kernels: {kernels.build_error}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Widths both formats hold (hidden 64), GQA, the test tokenizer."""
    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("qlora-decode"),
        layout="small",
        seed=5,
        hidden_size=64,
        intermediate_size=192,
        num_key_value_heads=2,
        with_tokenizer=True,
    )
    return path


def qlora(path, mode, seed=1, targets="all-linear"):
    """A quantized model with LoRA on every linear (random B: a fresh adapter is a no-op) and the
    fused step with adapters installed."""
    model = apply_lora(quantized_base(LFM2.from_pretrained(path, dtype="float32"), mode), targets=targets, r=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.weight.copy_(0.2 * torch.randn(m.lora_B.weight.shape, generator=g))
    model.eval()
    assert install(model).available(), model.fused_decode.reason
    return model


def steps(model, prompts, n_steps, fused=True):
    """Greedy one-token steps after a per-row prefill (ragged rows, no padding): logits [B, n, V]."""
    saved = model.__dict__.pop("fused_decode") if not fused else None
    try:
        state = model.new_state(len(prompts), max_length=64)
        with torch.no_grad():
            for r, row in enumerate(prompts):
                model.prefill(torch.tensor([row]), state.rows(r, r + 1, [0], dense=True))
            view = state.rows(0, len(prompts), [len(p) for p in prompts], dense=True)
            tok, out = torch.tensor([[p[-1]] for p in prompts]), []
            for _ in range(n_steps):
                out.append(model(tok, state=view))
                tok = out[-1][:, -1].argmax(-1, keepdim=True)
        return torch.cat(out, 1)
    finally:
        if saved is not None:
            model.__dict__["fused_decode"] = saved


PROMPTS = [list(range(3, 10)), list(range(20, 33)), [7, 8]]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fused_step_with_adapters_equals_the_module_path(ckpt, mode):
    model = qlora(ckpt, mode)
    fused, ref = steps(model, PROMPTS, 6), steps(model, PROMPTS, 6, fused=False)
    with adapters_disabled(model):
        base = steps(model, PROMPTS, 1, fused=False)
    # Float rounding may flip an int8 activation code (tests/test_decode_step.py); the adapters
    # (B of 0.2 * randn, far from a trained adapter's) carry a flip's error further than the base
    # alone: on an AVX-512 Xeon one prompt's first step is 1.05% of the logits' range off (the
    # other two agree to 1e-7), so twice the plain step's first-step bound.
    scale = ref.abs().amax(-1, keepdim=True)
    assert ((fused[:, 0] - ref[:, 0]).abs() <= 0.02 * scale[:, 0]).all()
    assert ((fused - ref).abs() <= 0.05 * scale).all()
    assert torch.equal(fused.argmax(-1), ref.argmax(-1))
    # ... and the adapters move the logits far more than that: the fused step applied them
    assert ((ref[:, 0] - base[:, 0]).abs().amax(-1) > 0.1 * scale[:, 0, 0]).all()


def test_the_fused_step_reads_the_adapters_in_place(ckpt):
    """An optimizer-style in-place update is seen by the very next step (no copy to refresh); a
    replaced tensor is noticed and the pointers gathered again."""
    model = qlora(ckpt, "int4")
    fused = model.fused_decode
    steps(model, PROMPTS, 1)
    plan = fused._plan
    layer = next(iter(lora_layers(model).values()))
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.weight.mul_(-1.5)  # in place, as AdamW's step
    after, ref = steps(model, PROMPTS, 1), steps(model, PROMPTS, 1, fused=False)
    assert fused._plan is plan
    assert ((after - ref).abs() <= 0.01 * ref.abs().amax(-1, keepdim=True)).all()
    layer.lora_B.weight.data = torch.zeros_like(layer.lora_B.weight)  # a new tensor
    after, ref = steps(model, PROMPTS, 1), steps(model, PROMPTS, 1, fused=False)
    assert fused._plan is not plan
    assert ((after - ref).abs() <= 0.01 * ref.abs().amax(-1, keepdim=True)).all()


def test_disabled_adapters_take_the_module_path(ckpt):
    model = qlora(ckpt, "int8")
    state = model.new_state(1, max_length=16)
    with torch.no_grad():
        model.prefill(torch.tensor([[3, 4, 5]]), state)
        with adapters_disabled(model):
            assert model.fused_decode(torch.tensor([[6]]), state) is None
        assert model.fused_decode(torch.tensor([[6]]), state) is not None


def count_fused_steps(monkeypatch) -> list[bool]:
    """Record, for each call of the fused step with adapters, whether it ran (False: it fell back)."""
    calls = []
    original = LoRAFusedDecode.__call__

    def counting(self, *a, **k):
        out = original(self, *a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(LoRAFusedDecode, "__call__", counting)
    return calls


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_generate_with_adapters_gives_the_module_paths_greedy_tokens(ckpt, mode, monkeypatch):
    """n completions of ragged prompts: every step after the prefill goes to the fused step, and
    the greedy tokens equal the module path's."""
    model = qlora(ckpt, mode)
    calls = count_fused_steps(monkeypatch)
    params = [SamplingParams(max_tokens=8, temperature=0.0, n=3, ignore_eos=True)] * 2
    prompts = [list(range(3, 10)), list(range(20, 33))]
    fused = [r.token_ids for r in generate(model, prompts, params)]
    assert calls and all(calls) and len(calls) == 7  # 8 tokens: 7 decode steps after the prefill
    saved = model.__dict__.pop("fused_decode")
    ref = [r.token_ids for r in generate(model, prompts, params)]
    for i, prompt in enumerate(prompts):  # equal, or parting only at a near tie (quant_helpers)
        for got, want in zip(fused[i * 3 : i * 3 + 3], ref[i * 3 : i * 3 + 3]):
            assert_same_greedy(model, prompt, got, want)  # fused step detached: the module path
    model.__dict__["fused_decode"] = saved


# ---- GRPO over a quantized base --------------------------------------------------------------
def digits(messages, completion):
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def test_grpo_loss_over_a_quantized_base_equals_the_formula(ckpt):
    """The GRPO loss and its adapter gradients on a QLoRA model are the formula's (the loss
    reads the training forward: LoRALinear over the frozen quantized layers)."""
    model = qlora(ckpt, "int8")
    model.train()
    rollouts = fixed_rollouts(model, seed=2, old_noise=0.3)
    batch = collate_rollouts(rollouts, 0)
    batch.items = loss_items(batch, "dapo", MAX_COMPLETION)
    batch.step_items, batch.step_tokens, batch.first_pass = batch.items, float(batch.trained_tokens), False
    ours = GRPOLoss("dapo", 0.2, 0.28, 0.0, 1.0)(model, batch).total / batch.items
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    old = layout(rollouts, lambda r: r.old_logps)[0]
    _, mask = layout(rollouts, None)
    adv = torch.tensor([r.advantage for r in rollouts])
    expected = formula(direct_logps(model, batch, 1.0), old, None, adv, mask, "dapo", 0.2, 0.28, 0.0)
    expected.backward()
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), (float(ours), float(expected))
    assert grads and all(n.endswith(("lora_A.weight", "lora_B.weight")) for n in grads)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-7), n


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_grpo_over_a_quantized_base_trains_adapters_with_fused_rollouts(ckpt, tmp_path, mode, monkeypatch):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Count with me: {w}"} for w in "one two three four".split()])
    calls = count_fused_steps(monkeypatch)
    result = grpo(
        dict(
            model=str(ckpt),
            prompts=[str(tmp_path / "p.jsonl")],
            output=str(tmp_path / "run"),
            max_steps=2,
            batch_size=8,
            num_generations=4,
            max_completion_length=6,
            learning_rate=1e-2,
            lora_r=4,
            lora_alpha=8,
            base_quant=mode,
            beta=0.1,
            save_every=0,
            progress=False,
        ),
        rewards=[digits],
        verbose=False,
    )
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert calls and all(calls)  # every rollout step after a prefill ran the fused step
    assert records[0]["kl"] == 0.0 and records[1]["kl"] > 0  # the adapters moved (reference: adapters off)
    # the sampler (fused step: activations int8 per block) against the training forward (W8A8
    # GEMMs: activations int8 per token): close, not equal; measured and logged every batch
    assert all(0 < r["logprob_diff"] < 0.05 for r in records), [r["logprob_diff"] for r in records]
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_cli_base_quant_runs_qlora_grpo_and_says_what_the_rollouts_compute_in(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Count: {w}"} for w in "one two".split()])
    (tmp_path / "toy.py").write_text(
        "def digits(messages, completion):\n    return float(any(c.isdigit() for c in completion))\n"
    )
    args = ["train", "grpo", "--no-progress", "--model", str(ckpt), "--prompts", "p.jsonl", "--reward", "toy:digits"]
    args += ["--output", "run", "--max-steps", "1", "--num-generations", "4", "--max-completion-length", "4"]
    assert main(args + ["--lora-r", "4", "--base-quant", "int4"]) == 0
    out = capsys.readouterr().out
    assert "rollouts in int4 base weights (activations int8 per 32) + float32 adapters, the fused decode step" in out
    assert "logprob_diff" in read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
