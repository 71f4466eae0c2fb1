"""Preference optimization: pairs tokenize as in TRL; the first steps' loss, rewards and
log-probs equal TRL's DPOTrainer on transformers' Lfm2ForCausalLM (sigmoid, sigmoid_norm, ipo;
SimPO against TRL's CPO loss); packing pairs changes nothing; LoRA's reference is the model with
its adapters off; the reference is computed once and read back on resume; training moves the
policy on held-out pairs; length normalization removes plain DPO's length bias."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from dpo_helpers import CONVERSATIONAL, IMPLICIT, IMPLICIT_TEXT, TEXT, trl_first_steps, trl_tokenized
from train_helpers import tiny_model_dir, write_jsonl

from lfmkit.errors import ConfigError, DataError
from lfmkit.text.tokenizer import Tokenizer
from lfmkit.train import dpo
from lfmkit.train.dpo import REFERENCE_FILE, reference_log_probs
from lfmkit.train.metrics import read_metrics
from lfmkit.train.preference import SimPO, make_objective
from lfmkit.train.preference_data import PairEncoder, to_pair

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "grad_norm")


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
    values = dict(model=str(policy), data=[str(data)], output=str(root / name), batch_size=len(rows), max_steps=2,
                  learning_rate=1e-3, progress=False, save_every=0)
    values.update(settings)
    dpo(values, verbose=False)
    return read_metrics(root / name / "metrics.jsonl")


@pytest.mark.parametrize("rows", [CONVERSATIONAL, TEXT, IMPLICIT, IMPLICIT_TEXT],
                         ids=["conversational", "text", "implicit", "implicit-text"])
def test_pairs_tokenize_as_in_trl(models, rows):
    _, policy, _ = models
    encoder = PairEncoder(Tokenizer.from_pretrained(policy))
    got = [dict(zip(("prompt_ids", "chosen_ids", "rejected_ids"), encoder.encode(r))) for r in rows]
    assert got == trl_tokenized(policy, rows)


@pytest.mark.parametrize("loss, rows, packing, own_ref", [
    ("sigmoid", CONVERSATIONAL, False, False),
    ("sigmoid_norm", TEXT, True, False),
    ("sigmoid_norm", CONVERSATIONAL, True, True),
    ("ipo", IMPLICIT, False, False),
], ids=["sigmoid-chat-padded", "sigmoid_norm-text-packed", "sigmoid_norm-chat-own-ref", "ipo-implicit"])
def test_first_steps_equal_trl_dpo_trainer(models, loss, rows, packing, own_ref):
    """Steps 1 and 2 (so the gradient and the AdamW update too) of lfmkit and TRL on the same
    pairs: a distinct reference model (non-zero rewards at step 1) or the policy's own."""
    root, policy, ref = models
    name = f"ours-{loss}-{packing}-{own_ref}"
    settings = dict(loss=loss, beta=0.5, packing=packing)
    if not own_ref:
        settings["ref_model"] = str(ref)
    ours = run(models, name, rows, **settings)
    want = trl_first_steps(policy, None if own_ref else ref, rows, root / f"trl-{name}", loss=loss, beta=0.5,
                           learning_rate=1e-3)
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
    owner = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=0.8, beta=2.0, label_smoothing=0.0,
                            accelerator=SimpleNamespace(device="cpu"))
    avg = logps / lengths
    want = CPOTrainer.cpo_loss(owner, avg[:, 0], avg[:, 1])
    for a, b in zip((loss, chosen, rejected), want):
        torch.testing.assert_close(a, b)


def test_packing_pairs_changes_nothing(models):
    padded = run(models, "padded", CONVERSATIONAL + TEXT, ref_model=str(models[2]), loss="sigmoid_norm")
    packed = run(models, "packed", CONVERSATIONAL + TEXT, ref_model=str(models[2]), loss="sigmoid_norm",
                 packing=True)
    for a, b in zip(padded, packed):
        for key in METRICS:
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
