"""generate(share_prefix=True): a batch's long common prefix prefilled once, rows left unpadded;
the tokens equal transformers' greedy generate and each prompt alone."""

from __future__ import annotations

import pytest
import torch
from checkpoints import make_checkpoint

from lfmkit import LFM2, SamplingParams
from lfmkit.inference import generate as generate_module
from lfmkit.inference.generate import generate
from lfmkit.inference.shared_prefix import MIN_PREFIX, common_prefix, worth_sharing

GREEDY = SamplingParams.greedy(max_tokens=12, ignore_eos=True)
PREFIX = [1] + [(7 * i) % 400 + 3 for i in range(MIN_PREFIX + 20)]  # a "few-shot block"
TAILS = [[5, 9, 33], [44], [300, 301, 302, 303, 9], [77, 78]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path, ref = make_checkpoint(tmp_path_factory.mktemp("share"), layout="small", seed=5)
    return ref, LFM2.from_pretrained(path, dtype="float32")


def hf_alone(ref, prompt, n):
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt) :].tolist()


def test_prefix_rules():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 1  # every prompt keeps a token of its own
    prompts = [PREFIX + t for t in TAILS]
    assert worth_sharing(prompts) == len(PREFIX)
    assert worth_sharing(prompts[:1]) == 0  # one prompt: nothing to share
    assert worth_sharing([[1, 2] + t for t in TAILS]) == 0  # a short prefix: a plain batch


def test_shared_prefix_rows_equal_transformers_and_each_prompt_alone(models, monkeypatch):
    ref, model = models
    prompts = [PREFIX + t for t in TAILS]
    calls = []
    real = generate_module.prefill_shared
    monkeypatch.setattr(generate_module, "prefill_shared", lambda *a: calls.append(a[-1]) or real(*a))
    shared = [r.token_ids for r in generate(model, prompts, GREEDY, share_prefix=True)]
    assert calls == [len(PREFIX)]  # the prefix went through the shared prefill
    assert shared == [r.token_ids for r in generate(model, prompts, GREEDY)]
    assert shared == [hf_alone(ref, p, GREEDY.max_tokens) for p in prompts]


def test_unshared_batches_drop_their_left_padding(models, monkeypatch):
    ref, model = models
    prompts = [[1] + t for t in TAILS]
    states = []
    real = generate_module.decode_rows
    monkeypatch.setattr(
        generate_module,
        "decode_rows",
        lambda m, s, *a: states.append((s.padding_free(), s.lengths.tolist())) or real(m, s, *a),
    )
    out = [r.token_ids for r in generate(model, prompts, GREEDY, share_prefix=True)]
    assert states == [(True, [len(p) for p in prompts])]  # each row holds only its own tokens
    assert out == [hf_alone(ref, p, GREEDY.max_tokens) for p in prompts]
