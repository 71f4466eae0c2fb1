"""GRPO: the loss on a fixed batch of rollouts equals the formula computed directly and TRL's
`GRPOTrainer._compute_loss` on the same tensors (every variant, clipping, KL, temperature,
masked truncations); advantages equal TRL's; a step's loss and update do not depend on the
micro-batching; rollouts come from lfmkit's generation on the training weights (their log-probs
match the training forward's); on a toy task the held-out reward rises, reproducibly; resume is
exact; LoRA and the command line work end to end."""

import json
import math
import shutil
import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from train_helpers import tiny_model_dir, write_jsonl

from lfmkit import LFM2
from lfmkit.cli import main
from lfmkit.train.grpo import grpo
from lfmkit.train.grpo_config import GRPOConfig
from lfmkit.train.grpo_loss import GRPOLoss
from lfmkit.train.metrics import read_metrics
from lfmkit.train.rollouts import PromptRow, Rollout, collate_rollouts, group_advantages, loss_items

MAX_COMPLETION = 7


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    tiny_model_dir(root / "model")
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    write_jsonl(root / "train.jsonl", [{"prompt": f"Count with me: {w}"} for w in words])
    colors = "red green blue cyan pink gold".split()
    write_jsonl(root / "held.jsonl", [{"prompt": f"Numbers please: {w}"} for w in colors])
    (root / "toy_rewards.py").write_text(
        "def digits(messages, completion):\n    return sum(c.isdigit() for c in completion) / max(1, len(completion))\n"
    )
    return root


@pytest.fixture(scope="module")
def model(root):
    return LFM2.from_pretrained(str(root / "model"), dtype="float32")


def digits(messages, completion):
    """The toy task's verifiable reward: the fraction of the completion's characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def settings(root, name, **overrides):
    values = dict(
        model=str(root / "model"),
        prompts=[str(root / "train.jsonl")],
        output=str(root / name),
        max_steps=4,
        batch_size=8,
        num_generations=4,
        max_completion_length=6,
        learning_rate=3e-3,
        lr_scheduler="constant",
        save_every=0,
        progress=False,
        seed=0,
    )
    values.update(overrides)
    return values


# ---- the loss on a fixed batch ---------------------------------------------------------------
def fixed_rollouts(model, seed=0, old_noise=0.0, ref_noise=0.0, truncated=()):
    """Six rollouts of random prompts and completions (lengths 2..MAX_COMPLETION), advantages of
    both signs, old / reference log-probs from the model's own, perturbed."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    rollouts = []
    for i in range(6):
        prompt = torch.randint(20, vocab, (int(torch.randint(3, 6, (1,), generator=g)),), generator=g).tolist()
        n = int(torch.randint(2, MAX_COMPLETION + 1, (1,), generator=g))
        completion = torch.randint(20, vocab, (n,), generator=g).tolist()
        r = Rollout(PromptRow(f"row{i}", [], prompt), completion, "", i in truncated, [])
        r.advantage = float(torch.randn((), generator=g) * 1.5)
        rollouts.append(r)
    with torch.no_grad():
        own = direct_logps(model, collate_rollouts(rollouts, 0), 1.0)
    for i, r in enumerate(rollouts):
        base = own[i, : len(r.completion_ids)]
        if old_noise:
            r.old_logps = base + old_noise * torch.randn(base.shape, generator=g)
        if ref_noise:
            r.ref_logps = base + ref_noise * torch.randn(base.shape, generator=g)
    return rollouts


def direct_logps(model, batch, temperature):
    """[rows, MAX_COMPLETION] completion-aligned log-probs from a plain full-vocabulary forward."""
    logits = model(batch.input_ids, attention_mask=batch.attention_mask).float() / temperature
    logp = F.log_softmax(logits, dim=-1)
    out = torch.zeros(batch.input_ids.shape[0], MAX_COMPLETION)
    for i in range(batch.input_ids.shape[0]):
        cols = (batch.targets[i] != -100).nonzero()[:, 0] if (batch.targets[i] != -100).any() else None
        if cols is None:  # a masked row: take the completion positions from the input instead
            continue
        out[i, : len(cols)] = logp[i, cols, batch.targets[i, cols]]
    return out


def layout(rollouts, values):
    """Per-rollout token values -> [rows, MAX_COMPLETION], with the completion mask."""
    out = torch.zeros(len(rollouts), MAX_COMPLETION)
    mask = torch.zeros(len(rollouts), MAX_COMPLETION)
    for i, r in enumerate(rollouts):
        v = values(r) if values is not None else None
        if v is not None:
            out[i, : len(v)] = v
        mask[i, : len(r.completion_ids)] = 0.0 if r.truncated else 1.0
    return out, mask


def formula(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta):
    """The GRPO objective written out on padded [rows, tokens] tensors (see grpo_loss.py)."""
    ratio = torch.exp(logp - old)
    per_token = -torch.minimum(ratio * adv[:, None], ratio.clamp(1 - eps_low, 1 + eps_high) * adv[:, None])
    if beta:
        per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (mask.shape[0] * MAX_COMPLETION)
    return (per_token * mask).sum() / mask.sum()


def trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta):
    """TRL's `GRPOTrainer._compute_loss` on the same tensors: a stand-in trainer object whose
    log-prob method returns `logp` (TRL runs the model there), single process, no accumulation."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    rows = logp.shape[0]
    accelerator = types.SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x)
    fake = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=MAX_COMPLETION,
        accelerator=accelerator,
        _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )
    inputs = {
        "prompt_ids": torch.ones(rows, 1, dtype=torch.long),
        "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
        "completion_ids": torch.ones(rows, MAX_COMPLETION, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    return GRPOTrainer._compute_loss(fake, None, inputs), fake._metrics["train"]


CASES = [  # (loss_type, old-log-prob noise, beta, temperature, truncated rows masked)
    ("dapo", 0.0, 0.0, 1.0, ()),
    ("dapo", 0.4, 0.0, 1.0, ()),
    ("dapo", 0.4, 0.05, 0.7, (2,)),
    ("grpo", 0.0, 0.0, 1.0, ()),
    ("grpo", 0.4, 0.04, 1.0, ()),
    ("grpo", 0.4, 0.0, 1.3, (1, 4)),
    ("dr_grpo", 0.0, 0.0, 1.0, ()),
    ("dr_grpo", 0.4, 0.1, 1.0, (0,)),
]


@pytest.mark.parametrize("loss_type,old_noise,beta,temperature,truncated", CASES)
def test_loss_equals_the_formula_and_trls_compute_loss(model, loss_type, old_noise, beta, temperature, truncated):
    eps_low, eps_high = 0.2, 0.28
    rollouts = fixed_rollouts(model, old_noise=old_noise, ref_noise=0.3 if beta else 0.0, truncated=truncated)
    batch = collate_rollouts(rollouts, 0, mask_truncated=True)
    batch.items = loss_items(batch, loss_type, MAX_COMPLETION)
    batch.step_items, batch.step_tokens = batch.items, float(batch.trained_tokens)
    batch.first_pass = old_noise == 0.0
    loss = GRPOLoss(loss_type, eps_low, eps_high, beta, temperature)
    out = loss(model, batch)
    ours = out.total / batch.items

    with torch.no_grad():
        unmasked = collate_rollouts(rollouts, 0)
        logp = direct_logps(model, unmasked, temperature)
    old = layout(rollouts, lambda r: r.old_logps)[0] if old_noise else logp
    ref, mask = layout(rollouts, lambda r: r.ref_logps)
    adv = torch.tensor([r.advantage for r in rollouts])
    expected = formula(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta)
    theirs, metrics = trl_loss(logp, old, ref, adv, mask, loss_type, eps_low, eps_high, beta)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), (float(ours), float(expected))
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (float(ours), float(theirs))
    # the clip fractions and KL we log are TRL's (per-token means over the step)
    for ours_name, trl_name in [
        ("clip_low", "clip_ratio/low_mean"),
        ("clip_high", "clip_ratio/high_mean"),
        ("clip_region", "clip_ratio/region_mean"),
    ] + ([("kl", "kl")] if beta else []):
        assert float(out.parts[ours_name]) / batch.items == pytest.approx(metrics[trl_name][0], abs=1e-6)
    if old_noise:
        assert metrics["clip_ratio/region_mean"][0] > 0  # the case exercises clipping


def test_loss_gradient_equals_the_formulas(model):
    rollouts = fixed_rollouts(model, seed=3, old_noise=0.3, ref_noise=0.2)
    batch = collate_rollouts(rollouts, 0)
    batch.items = loss_items(batch, "grpo", MAX_COMPLETION)
    model.zero_grad()
    (GRPOLoss("grpo", 0.2, 0.2, 0.05, 0.9)(model, batch).total / batch.items).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    old = layout(rollouts, lambda r: r.old_logps)[0]
    ref, mask = layout(rollouts, lambda r: r.ref_logps)
    adv = torch.tensor([r.advantage for r in rollouts])
    formula(direct_logps(model, batch, 0.9), old, ref, adv, mask, "grpo", 0.2, 0.2, 0.05).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(ours[n], p.grad, rtol=1e-4, atol=1e-7), n
    model.zero_grad()


# ---- advantages ----------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_are_trls(scale):
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, math.nan, 1.0, 0.0, 0.3, 0.3, 0.3, 0.3])
    adv, zero_std = group_advantages(rewards, 4, scale)
    groups = rewards.view(3, 4)
    expected = []
    for g in groups:
        real = g[~g.isnan()]
        std = real.std() if scale == "group" else rewards[~rewards.isnan()].std()
        a = g - real.mean()
        expected.append(a / (std + 1e-4) if scale != "none" else a)
    expected = torch.nan_to_num(torch.cat(expected), nan=0.0)
    assert torch.allclose(adv, expected, atol=1e-6)
    assert adv[5] == 0.0  # nothing applied: no signal
    if scale != "batch":
        assert zero_std[8:].all() and not zero_std[:8].any()  # the last group all tied


# ---- the trainer ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_a_step_does_not_depend_on_the_micro_batching(root, loss_type):
    runs = []
    for accum in (1, 4):
        out = f"accum-{loss_type}-{accum}"
        grpo(settings(root, out, max_steps=1, grad_accum=accum, loss_type=loss_type), rewards=[digits], verbose=False)
        runs.append(read_metrics(root / out / "metrics.jsonl")[0])
    a, b = runs
    for key in ("loss", "grad_norm", "reward", "clip_region", "logprob_diff", "completion_length"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_rollouts_run_on_the_training_weights(root):
    """Every batch's sampler log-probs equal the training forward's (float32 to float32), also
    after the weights have moved: no stale copy, and the mismatch is measured and tiny."""
    result = grpo(settings(root, "weights", max_steps=6, num_iterations=2, beta=0.05), rewards=[digits], verbose=False)
    records = read_metrics(root / "weights" / "metrics.jsonl")
    first = [r for r in records if "logprob_diff" in r]
    assert [r["step"] for r in first] == [1, 3, 5]
    assert all(r["logprob_diff"] < 1e-5 for r in first), [r["logprob_diff"] for r in first]
    assert records[0]["kl"] == 0.0 and records[-1]["kl"] > 0  # the policy moved away from the reference
    assert all(r["rollout_tokens_per_s"] > 0 for r in first)
    assert len(result.losses) == 6


def test_held_out_reward_rises_on_a_toy_task_and_is_reproducible(root):
    values = settings(root, "toy", max_steps=20, batch_size=16, eval_prompts=str(root / "held.jsonl"))
    result = grpo(values, rewards=[digits], verbose=False)
    before, after = result.evals[0]["reward"], result.evals[-1]["reward"]
    assert [e["step"] for e in result.evals] == [0, 20]
    assert after > before + 0.5, (before, after)
    assert sum(result.rewards[-5:]) > 2 * sum(result.rewards[:5])
    again = grpo({**values, "output": str(root / "toy-again"), "max_steps": 4}, rewards=[digits], verbose=False)
    assert again.rewards == result.rewards[:4] and again.losses == result.losses[:4]
    assert (root / "toy" / "reward.png").stat().st_size > 0


def test_resume_equals_the_uninterrupted_run(root):
    values = settings(
        root,
        "full",
        max_steps=6,
        num_iterations=2,
        save_every=2,
        beta=0.05,
        eval_prompts=str(root / "held.jsonl"),
        eval_every=4,
    )
    full = grpo(values, rewards=[digits], verbose=False)
    interrupted = {**values, "output": str(root / "resumed")}
    grpo(interrupted, rewards=[digits], verbose=False)
    shutil.rmtree(root / "resumed" / "checkpoints" / "step-6")  # as if killed after the step-4 checkpoint
    resumed = grpo({**interrupted, "resume": True}, rewards=[digits], verbose=False)
    assert resumed.resumed_from == 4 and resumed.losses == full.losses[4:]
    timing = {"elapsed_s", "tokens_per_s", "rollout_s", "rollout_tokens_per_s", "rollout_cpu_s"}

    def records(name):
        return [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(root / name / "metrics.jsonl")]

    assert records("resumed") == records("full")
    wa, wb = load_file(str(root / "full" / "model.safetensors")), load_file(str(root / "resumed" / "model.safetensors"))
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert [e["step"] for e in resumed.evals] == [0, 4, 6] and resumed.evals == full.evals


def test_lora_trains_only_adapters_with_the_adapters_off_as_reference(root):
    result = grpo(
        settings(root, "lora", max_steps=2, lora_r=4, lora_alpha=8, beta=0.1, learning_rate=1e-2),
        rewards=[digits],
        verbose=False,
    )
    records = read_metrics(root / "lora" / "metrics.jsonl")
    assert records[0]["kl"] == 0.0 and records[1]["kl"] > 0
    assert (root / "lora" / "adapter_model.safetensors").is_file()
    assert not (root / "lora" / "model.safetensors").exists()
    assert len(result.losses) == 2


def test_truncated_completions_can_be_masked(root):
    """The tiny model never ends a turn within 3 tokens: masked, nothing is trained (no update),
    and the step's rollout metrics are still those of the unmasked run on the same rollouts."""
    for name, mask in (("unmasked", False), ("masked", True)):
        grpo(
            settings(root, name, max_steps=1, max_completion_length=3, mask_truncated_completions=mask),
            rewards=[digits],
            verbose=False,
        )
    plain, masked = (read_metrics(root / n / "metrics.jsonl")[0] for n in ("unmasked", "masked"))
    assert masked["truncated"] == plain["truncated"] == 1.0
    assert plain["trained_tokens"] == 24 and masked["trained_tokens"] == 0
    assert masked["grad_norm"] == 0.0 and masked["loss"] == 0.0
    for key in ("reward", "reward/digits", "reward_std", "completion_length"):
        assert masked[key] == pytest.approx(plain[key]) and masked[key] is not None, key
    start = load_file(str(root / "model" / "model.safetensors"))
    after = load_file(str(root / "masked" / "model.safetensors"))
    assert all(torch.equal(start[n], after[n]) for n in after if n in start)


# ---- configuration and the command line ----------------------------------------------------
@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(batch_size=6), "multiple of num_generations"),
        (dict(num_generations=1, batch_size=8), "at least 2"),
        (dict(loss_type="bnpo"), "loss_type must be one of"),
        (dict(scale_rewards="max"), "scale_rewards must be one of"),
        (dict(num_iterations=2, save_every=3), "multiple of num_iterations"),
        (dict(packing=True), "packing does not apply"),
        (dict(temperature=0.0), "temperature must be in"),
        (dict(rewards=[]), "rewards is required"),
        (dict(base_quant="int4"), "base_quant needs lora_r"),
        (dict(base_quant="int3", lora_r=4), "base_quant must be one of int8, int4"),
        (dict(base_quant="int8", lora_r=4, bf16_weights=True), "base_quant and bf16_weights exclude"),
    ],
)
def test_bad_settings_are_named(root, overrides, message):
    values = {**settings(root, "bad"), "rewards": ["math"], **overrides}
    with pytest.raises(Exception, match=message):
        GRPOConfig.from_dict(values)


def test_cli_trains_with_a_reward_from_a_file_and_writes_the_curves(root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    code = main(
        [
            "train",
            "grpo",
            "--no-progress",
            "--model",
            str(root / "model"),
            "--prompts",
            "train.jsonl",
            "--reward",
            "toy_rewards:digits",
            "--reward",
            "math:0.5",
            "--output",
            "cli",
            "--max-steps",
            "2",
            "--num-generations",
            "4",
            "--max-completion-length",
            "5",
            "--eval-prompts",
            "held.jsonl",
            "--loss-type",
            "grpo",
            "--epsilon-high",
            "0.28",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "held-out reward" in out
    saved = GRPOConfig.from_dict(json.loads((root / "cli" / "train_config.json").read_text()))
    assert saved.rewards == ["toy_rewards:digits", "math:0.5"] and saved.loss_type == "grpo"
    records = read_metrics(root / "cli" / "metrics.jsonl")
    assert "reward/digits" in records[0] and "reward/math" not in records[0]  # no "answer": never applied
    for name in ("reward.png", "loss.png", "eval_rewards.jsonl", "model.safetensors"):
        assert (root / "cli" / name).is_file(), name


@pytest.mark.parametrize(
    "args,message",
    [
        (["--reward", "no_such_module:fn"], "cannot import no_such_module"),
        (["--reward", "math", "--batch-size", "6"], "multiple of num_generations"),
        (["--reward", "math", "--prompts", "bad.jsonl"], "bad.jsonl:2: needs 'prompt'"),
        (["--reward", "math", "--base-quant", "int4"], "base_quant needs lora_r"),
    ],
)
def test_cli_errors_are_one_line(root, capsys, monkeypatch, args, message):
    monkeypatch.chdir(root)
    write_jsonl(root / "bad.jsonl", [{"prompt": "fine"}, {"question": "no prompt"}])
    prompts = [] if "--prompts" in args else ["--prompts", "train.jsonl"]
    code = main(
        [
            "train",
            "grpo",
            "--no-progress",
            "--model",
            str(root / "model"),
            *prompts,
            *args,
            "--output",
            f"err-{abs(hash(message))}",
            "--max-steps",
            "1",
            "--num-generations",
            "4",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert message in err, err
