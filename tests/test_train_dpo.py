"""Preference optimization: pairs tokenize as in TRL; the first steps' loss, rewards and
log-probs equal TRL's DPOTrainer on transformers' Lfm2ForCausalLM (sigmoid, sigmoid_norm, ipo;
SimPO against TRL's CPO loss); packing pairs changes nothing; LoRA's reference is the model with
its adapters off; the reference is computed once and read back on resume; training moves the
policy on held-out pairs; length normalization removes plain DPO's length bias."""

import importlib
import math
import random
from types import SimpleNamespace

import pytest
import torch
from dpo_helpers import CONVERSATIONAL, IMPLICIT, IMPLICIT_TEXT, TEXT, trl_first_steps, trl_tokenized
from train_helpers import tiny_model_dir, write_jsonl

from lfmkit import LFM2
from lfmkit.cli import main
from lfmkit.errors import ConfigError, DataError
from lfmkit.text.tokenizer import Tokenizer
from lfmkit.train import dpo
from lfmkit.train.dpo import REFERENCE_FILE, reference_log_probs
from lfmkit.train.lora import adapters_disabled, apply_lora
from lfmkit.train.metrics import read_metrics
from lfmkit.train.preference import SimPO
from lfmkit.train.preference_data import PairEncoder, to_pair
from lfmkit.train.trainer import Trainer

METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "grad_norm",
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    policy = tiny_model_dir(root / "policy")
    ref = root / "ref"
    from checkpoints import make_checkpoint

    make_checkpoint(ref, seed=5, with_tokenizer=True)
    return root, policy, ref


def run(models, name, rows, **settings):
    root, policy, _ = models
    data = write_jsonl(root / f"{name}.jsonl", rows)
    values = dict(
        model=str(policy),
        data=[str(data)],
        output=str(root / name),
        batch_size=len(rows),
        max_steps=2,
        learning_rate=1e-3,
        progress=False,
        save_every=0,
    )
    values.update(settings)
    dpo(values, verbose=False)
    return read_metrics(root / name / "metrics.jsonl")


@pytest.mark.parametrize(
    "rows", [CONVERSATIONAL, TEXT, IMPLICIT, IMPLICIT_TEXT], ids=["conversational", "text", "implicit", "implicit-text"]
)
def test_pairs_tokenize_as_in_trl(models, rows):
    _, policy, _ = models
    encoder = PairEncoder(Tokenizer.from_pretrained(policy))
    got = [dict(zip(("prompt_ids", "chosen_ids", "rejected_ids"), encoder.encode(r))) for r in rows]
    assert got == trl_tokenized(policy, rows)


@pytest.mark.parametrize(
    "loss, rows, packing, own_ref",
    [
        ("sigmoid", CONVERSATIONAL, False, False),
        ("sigmoid_norm", TEXT, True, False),
        ("sigmoid_norm", CONVERSATIONAL, True, True),
        ("ipo", IMPLICIT, False, False),
    ],
    ids=["sigmoid-chat-padded", "sigmoid_norm-text-packed", "sigmoid_norm-chat-own-ref", "ipo-implicit"],
)
def test_first_steps_equal_trl_dpo_trainer(models, loss, rows, packing, own_ref):
    """Steps 1 and 2 (so the gradient and the AdamW update too) of lfmkit and TRL on the same
    pairs: a distinct reference model (non-zero rewards at step 1) or the policy's own."""
    root, policy, ref = models
    name = f"ours-{loss}-{packing}-{own_ref}"
    settings = dict(loss=loss, beta=0.5, packing=packing)
    if not own_ref:
        settings["ref_model"] = str(ref)
    ours = run(models, name, rows, **settings)
    want = trl_first_steps(
        policy, None if own_ref else ref, rows, root / f"trl-{name}", loss=loss, beta=0.5, learning_rate=1e-3
    )
    assert len(ours) == len(want) == 2
    for step, (got, expected) in enumerate(zip(ours, want), start=1):
        for key in METRICS:
            assert got[key] == pytest.approx(expected[key], abs=1e-4), (step, key)
    if own_ref:
        assert ours[0]["rewards/margins"] == 0 and ours[0]["loss"] == pytest.approx(math.log(2))
    else:
        assert abs(ours[0]["rewards/margins"]) > 1e-2


def test_simpo_equals_trl_cpo_loss(models):
    """SimPO (TRL keeps it in CPOTrainer) on the length-normalized log-probs, loss and rewards."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    g = torch.Generator().manual_seed(0)
    logps = -30 * torch.rand(6, 2, generator=g)
    lengths = torch.randint(1, 40, (6, 2), generator=g).float()
    loss, chosen, rejected = SimPO(beta=2.0, gamma=0.8)(logps, None, lengths)
    owner = SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=0.8,
        beta=2.0,
        label_smoothing=0.0,
        accelerator=SimpleNamespace(device="cpu"),
    )
    avg = logps / lengths
    want = CPOTrainer.cpo_loss(owner, avg[:, 0], avg[:, 1])
    for a, b in zip((loss, chosen, rejected), want):
        torch.testing.assert_close(a, b)


def test_packing_pairs_changes_nothing(models):
    padded = run(models, "padded", CONVERSATIONAL + TEXT, ref_model=str(models[2]), loss="sigmoid_norm")
    packed = run(models, "packed", CONVERSATIONAL + TEXT, ref_model=str(models[2]), loss="sigmoid_norm", packing=True)
    for a, b in zip(padded, packed):
        for key in METRICS:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


# ---- the reference ------------------------------------------------------------------------------


def held_out(model_dir, rows):
    encoder = PairEncoder(Tokenizer.from_pretrained(model_dir))
    return [to_pair(*encoder.encode(r), 1024) for r in rows]


def test_lora_reference_is_the_model_with_its_adapters_off(models):
    _, policy, _ = models
    pairs = held_out(policy, CONVERSATIONAL)
    base = reference_log_probs(LFM2.from_pretrained(policy), pairs, 2048, 2)
    adapted = apply_lora(LFM2.from_pretrained(policy), r=4)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    assert not torch.allclose(reference_log_probs(adapted, pairs, 2048, 2), base, atol=1e-3)
    with adapters_disabled(adapted):
        torch.testing.assert_close(reference_log_probs(adapted, pairs, 2048, 2), base, rtol=0, atol=1e-5)


def test_lora_dpo_trains_the_adapter_against_the_base(models):
    root = models[0]
    full = run(models, "full-ref", TEXT, loss="sigmoid")
    lora = run(models, "lora", TEXT, loss="sigmoid", lora_r=4, lora_alpha=8)
    assert lora[0]["logps/chosen"] == pytest.approx(full[0]["logps/chosen"], abs=1e-5)
    assert lora[0]["loss"] == pytest.approx(math.log(2)) and lora[1]["rewards/margins"] > 0
    assert (root / "lora" / "adapter_config.json").is_file() and (root / "lora" / REFERENCE_FILE).is_file()


def test_resume_reads_the_cached_reference_and_equals_the_uninterrupted_run(models, monkeypatch):
    settings = dict(ref_model=str(models[2]), loss="sigmoid_norm", batch_size=2, max_steps=4, save_every=1)
    full = run(models, "resume-full", CONVERSATIONAL, **settings)
    step = Trainer.step

    def crash_at_3(self, k):
        if k == 2:
            raise KeyboardInterrupt("killed")
        return step(self, k)

    monkeypatch.setattr(Trainer, "step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(models, "resume-cut", CONVERSATIONAL, **settings)
    monkeypatch.setattr(Trainer, "step", step)

    def no_second_reference_pass(*args, **kwargs):
        raise AssertionError("the reference ran again on resume")

    recipe = importlib.import_module("lfmkit.train.dpo")  # the module (lfmkit.train.dpo is the function)
    monkeypatch.setattr(recipe, "_compute_reference", no_second_reference_pass)
    resumed = run(models, "resume-cut", CONVERSATIONAL, **settings, resume=True)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


# ---- behaviour ------------------------------------------------------------------------------------

GOOD, BAD = "red blue green cat dog".split(), "sun moon tree fish bird".split()


def synthetic_pairs(seed: int, n: int, chosen_longer: bool) -> list[dict]:
    """Answers mostly of GOOD words (chosen) or BAD words (rejected), one long (10-14 words) and
    one short (2-4 words): the chosen one is the long one when `chosen_longer`."""
    rng = random.Random(seed)

    def answer(good, words):
        return " ".join(rng.choice(GOOD if (rng.random() < 0.8) == good else BAD) for _ in range(words)) + "."

    rows = []
    for i in range(n):
        long, short = rng.randint(10, 14), rng.randint(2, 4)
        c, r = (long, short) if chosen_longer else (short, long)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Say something {i}."}],
                "chosen": [{"role": "assistant", "content": answer(True, c)}],
                "rejected": [{"role": "assistant", "content": answer(False, r)}],
            }
        )
    return rows


@pytest.fixture(scope="module")
def trained(models):
    """Plain and length-normalized DPO on pairs whose chosen answer is always the longer one."""
    root, policy, _ = models
    data = write_jsonl(root / "synthetic.jsonl", synthetic_pairs(0, 16, chosen_longer=True))
    for loss in ("sigmoid", "sigmoid_norm"):
        dpo(
            dict(
                model=str(policy),
                data=[str(data)],
                output=str(root / f"synthetic-{loss}"),
                loss=loss,
                beta=0.1,
                max_steps=10,
                batch_size=16,
                learning_rate=3e-4,
                packing=True,
                progress=False,
                save_every=0,
            ),
            verbose=False,
        )
    return {loss: root / f"synthetic-{loss}" for loss in ("sigmoid", "sigmoid_norm")}


def log_ratios(models, trained_dir, rows):
    """(rho [pairs, 2] of the trained policy against the starting model, completion lengths)."""
    policy = models[1]
    pairs = held_out(policy, rows)
    rho = reference_log_probs(LFM2.from_pretrained(trained_dir), pairs, 2048, 8) - reference_log_probs(
        LFM2.from_pretrained(policy), pairs, 2048, 8
    )
    return rho, torch.tensor([[p.chosen_length, p.rejected_length] for p in pairs], dtype=torch.float64)


@pytest.mark.parametrize("loss", ["sigmoid", "sigmoid_norm"])
def test_dpo_moves_the_policy_on_held_out_pairs(models, trained, loss):
    """Before training the policy is the reference (every margin 0, accuracy 0); after, held-out
    pairs of the same kind get a positive margin and are mostly ranked right."""
    rho, lengths = log_ratios(models, trained[loss], synthetic_pairs(1, 16, chosen_longer=True))
    reward = rho / lengths if loss == "sigmoid_norm" else rho
    margins = 0.1 * (reward[:, 0] - reward[:, 1])
    assert margins.mean() > 0 and (margins > 0).double().mean() >= 0.75
    metrics = read_metrics(trained[loss] / "metrics.jsonl")
    assert metrics[0]["rewards/margins"] == 0 and metrics[-1]["rewards/margins"] > 0
    assert metrics[-1]["rewards/accuracies"] >= 0.75 and metrics[-1]["loss"] < metrics[0]["loss"]


def test_length_normalization_removes_the_length_bias(models, trained):
    """Trained where the chosen answer is always longer, plain DPO learns length: on held-out
    pairs where the better answer is the SHORT one it raises the long, worse answer's likelihood
    more and ranks most pairs wrong. Length-normalized DPO lowers the long worse answers and
    ranks most pairs right."""
    reversed_rows = synthetic_pairs(2, 16, chosen_longer=False)
    rho, _ = log_ratios(models, trained["sigmoid"], reversed_rows)
    assert rho[:, 1].mean() > rho[:, 0].mean()  # the long, worse answers gained more
    assert (rho[:, 0] > rho[:, 1]).double().mean() <= 0.5  # plain DPO's own reward: mostly wrong
    rho, lengths = log_ratios(models, trained["sigmoid_norm"], reversed_rows)
    assert rho[:, 1].mean() < 0 < rho[:, 0].mean()
    per_token = rho / lengths
    assert (per_token[:, 0] > per_token[:, 1]).double().mean() >= 0.75


# ---- errors and the command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "Hi", "chosen": "a"}, "needs 'chosen' and 'rejected'"),
        ({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "must all be strings"),
        (
            {
                "prompt": [{"role": "bot", "content": "x"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "role must be one of",
        ),
        ({"chosen": "same", "rejected": 3}, "both be strings or both be message lists"),
    ],
)
def test_bad_rows_are_one_error_naming_the_line(models, row, message):
    root, policy, _ = models
    data = write_jsonl(root / "bad.jsonl", [TEXT[0], row])
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{message}"):
        dpo(dict(model=str(policy), data=[str(data)], output=str(root / "bad-run"), progress=False), verbose=False)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(loss="kto"), "loss must be one of sigmoid, sigmoid_norm, ipo, simpo"),
        (dict(beta=0), "beta must be a positive number"),
        (dict(loss="simpo", ref_model="x"), "reference-free"),
        (dict(assistant_only_loss=False), "does not apply to preference pairs"),
    ],
)
def test_bad_settings_are_config_errors(models, settings, message):
    with pytest.raises(ConfigError, match=message):
        dpo(dict(model="m", data=["d.jsonl"], output="o", **settings), verbose=False)


def test_train_dpo_command(models, capsys):
    root, policy, ref = models
    data = write_jsonl(root / "cli.jsonl", TEXT)
    out = root / "cli-run"
    rc = main(
        [
            "train",
            "dpo",
            "--no-progress",
            "--model",
            str(policy),
            "--ref-model",
            str(ref),
            "--data",
            str(data),
            "--output",
            str(out),
            "--loss",
            "simpo",
            "--beta",
            "2",
            "--simpo-gamma",
            "0.4",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--packing",
            "--learning-rate",
            "1e-3",
            "--save-every",
            "1",
        ]
    )
    assert rc == 2 and "reference-free" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "dpo",
            "--no-progress",
            "--model",
            str(policy),
            "--data",
            str(data),
            "--output",
            str(out),
            "--loss",
            "simpo",
            "--beta",
            "2",
            "--simpo-gamma",
            "0.4",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--packing",
            "--learning-rate",
            "1e-3",
            "--save-every",
            "1",
        ]
    )
    assert rc == 0 and "trained 2 steps" in capsys.readouterr().out
    metrics = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2] and set(METRICS) <= set(metrics[0])
    assert not (out / REFERENCE_FILE).exists()  # SimPO needs no reference
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / "step-2").is_dir()
