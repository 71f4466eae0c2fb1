"""`score_continuations` (prefix groups prefilled once, continuation rows shared) equals
transformers' model scoring every context + continuation on its own."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit.evals.scoring import prefix_groups, score_continuations


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from checkpoints import make_checkpoint

    import lfmkit

    path, ref = make_checkpoint(tmp_path_factory.mktemp("scoring") / "model", layout="small", seed=4)
    return lfmkit.load(path), ref.eval()


@torch.no_grad()
def oracle(ref, ctx, cont):
    logp = ref(torch.tensor([ctx + cont[:-1]])).logits[0].float().log_softmax(-1)[len(ctx) - 1 :]
    target = torch.tensor(cont)
    return float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all()), int(logp[0].argmax())


def test_groups_and_shared_rows_equal_scoring_each_pair_alone(models):
    model, ref = models
    head = [1] + list(range(40, 90))  # a shared "few-shot" prefix
    other = [1] + list(range(200, 230))
    contexts = [head + [7, 8, 9], head + [7, 3], head + [5], other + [11, 12], other + [13], [1, 99, 98], head + [7]]
    # Equal continuation prefixes, nested ones, one-token ones and none at all (the argmax only).
    conts = [[9], [9, 10], [9, 10, 11], [12, 4], [12, 6], [3]]
    requests = [(ctx, conts) for ctx in contexts[:-1]] + [(contexts[-1], [])]
    for batch_size in (1, 3, 16):  # groups spanning batches, rows of one context in different batches
        scores = score_continuations(model, requests, batch_size=batch_size)
        for (ctx, cs), score in zip(requests, scores):
            want = [oracle(ref, ctx, c) for c in cs]
            assert score.logliks == pytest.approx([w[0] for w in want], abs=2e-4)
            assert score.greedy == [w[1] for w in want]
            assert score.top_token == oracle(ref, ctx, [0])[2]


contexts = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=8), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(contexts)
def test_prefix_groups_partition_and_never_cost_more_than_no_sharing(ctxs):
    groups = prefix_groups(ctxs)
    assert sorted(i for members, _ in groups for i in members) == list(range(len(ctxs)))
    cost = 0
    for members, p in groups:
        first = ctxs[members[0]]
        for i in members:
            assert len(ctxs[i]) > p and ctxs[i][:p] == first[:p]  # shared, and a token of its own left
        cost += p + sum(len(ctxs[i]) - p for i in members)
    assert cost <= sum(len(c) for c in ctxs)


def test_an_mmlu_subject_is_one_group_whatever_the_batch():
    subject_a = [[1, 5, 6] + [20] * 50 + [k, k + 1] for k in range(30, 40)]
    subject_b = [[1, 5, 7] + [21] * 50 + [k] for k in range(30, 36)]
    groups = prefix_groups(subject_b + subject_a)
    assert sorted((len(members), p) for members, p in groups) == [(6, 53), (10, 53)]
