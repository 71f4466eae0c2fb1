"""SamplingParams validation and defaults, and the batched per-row sampler on known distributions."""

import json
import math

import pytest
import torch

from lfmkit import GenerationError, SamplingParams
from lfmkit.inference.sampling import MODEL_CARD_DEFAULTS, BatchSampler, derived_seed

PROBS = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04])  # a known distribution over 5 tokens
LOGITS = PROBS.log()


def plain(**kw) -> SamplingParams:
    """Temperature 1 with every filter and penalty off (the raw distribution)."""
    base = dict(temperature=1.0, min_p=0.0, repetition_penalty=1.0)
    base.update(kw)
    return SamplingParams(**base)


def dist(params: SamplingParams, history=(), logits=LOGITS) -> torch.Tensor:
    s = BatchSampler(logits.shape[-1], 1)
    s.add_row(0, params, history)
    return s.distribution(logits[None])[0]


def frequencies(params: SamplingParams, draws=4000, logits=LOGITS) -> torch.Tensor:
    """Empirical distribution of `draws` rows, all with these params (and distinct seeds)."""
    s = BatchSampler(logits.shape[-1], draws)
    for i in range(draws):
        s.add_row(i, params.replace(seed=i))
    tokens = s.sample(logits.expand(draws, -1)).tokens
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / draws


# ---- parameters ------------------------------------------------------------------------------
def test_defaults_are_the_model_card():
    p = SamplingParams()
    assert (p.temperature, p.min_p, p.repetition_penalty) == (0.3, 0.15, 1.05)
    assert MODEL_CARD_DEFAULTS == {"temperature": 0.3, "min_p": 0.15, "repetition_penalty": 1.05}


def test_generation_config_overrides_the_model_card(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.7, "top_k": 40, "max_new_tokens": 99, "eos_token_id": [7, 2]})
    )
    p = SamplingParams.for_model(tmp_path, top_p=0.9)
    assert (p.temperature, p.top_k, p.max_tokens, p.top_p, p.min_p) == (0.7, 40, 99, 0.9, 0.15)
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    assert SamplingParams.for_model(tmp_path).temperature == 0
    assert SamplingParams.for_model(tmp_path / "nowhere").temperature == 0.3
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(GenerationError, match="generation_config.json"):
        SamplingParams.for_model(tmp_path)


@pytest.mark.parametrize(
    "name,value",
    [
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_k", -2),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", 1.1),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("seed", "x"),
        ("stop", [""]),
        ("stop", [3]),
        ("stop_token_ids", [-1]),
        ("n", 0),
        ("logprobs", 1),
        ("top_logprobs", 21),
        ("temperature", True),
    ],
)
def test_bad_parameter_is_named(name, value):
    with pytest.raises(GenerationError, match=f"'{name}'"):
        SamplingParams(**{name: value})
    p = SamplingParams()
    setattr(p, name, value)
    with pytest.raises(GenerationError, match=f"'{name}'"):
        p.validate()


def test_normalisation():
    p = SamplingParams(stop="END", top_k=-1)
    assert p.stop == ["END"] and p.top_k == 0


# ---- each parameter's effect on a known distribution -----------------------------------------
def test_temperature_one_is_the_model_distribution_and_sampling_matches_it():
    torch.testing.assert_close(dist(plain()), PROBS)
    freq = frequencies(plain())
    assert (freq - PROBS).abs().max() < 0.03


def test_temperature_sharpens_and_flattens():
    for t in (0.5, 2.0):
        expected = torch.softmax(LOGITS / t, -1)
        torch.testing.assert_close(dist(plain(temperature=t)), expected)
    assert dist(plain(temperature=0.5))[0] > PROBS[0] > dist(plain(temperature=2.0))[0]


def test_temperature_zero_is_argmax():
    assert dist(plain(temperature=0)).tolist() == [1, 0, 0, 0, 0]
    assert frequencies(plain(temperature=0), draws=50)[0] == 1


def test_top_k_keeps_k_tokens_renormalised():
    torch.testing.assert_close(dist(plain(top_k=2)), torch.tensor([4 / 7, 3 / 7, 0, 0, 0]))
    freq = frequencies(plain(top_k=2))
    assert freq[2:].sum() == 0 and abs(freq[0] - 4 / 7) < 0.03


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.4 < 0.65 <= 0.4 + 0.3: two tokens; 0.7 < 0.75 <= 0.9: three tokens
    torch.testing.assert_close(dist(plain(top_p=0.65)), torch.tensor([4 / 7, 3 / 7, 0, 0, 0]))
    torch.testing.assert_close(dist(plain(top_p=0.75)), torch.tensor([0.4, 0.3, 0.2, 0, 0]) / 0.9)
    torch.testing.assert_close(dist(plain(top_p=0.1)), torch.tensor([1.0, 0, 0, 0, 0]))
    freq = frequencies(plain(top_p=0.65))
    assert freq[2:].sum() == 0 and abs(freq[0] - 4 / 7) < 0.03


def test_top_p_applies_after_top_k():
    # top_k=3 renormalises to [4/9, 3/9, 2/9]; top_p=0.7 then needs two tokens (4/9 < 0.7 <= 7/9).
    torch.testing.assert_close(dist(plain(top_k=3, top_p=0.7)), torch.tensor([4 / 7, 3 / 7, 0, 0, 0]))


def test_min_p_is_relative_to_the_top_token():
    # threshold 0.25 * 0.4 = 0.1: tokens with 0.06 and 0.04 go.
    torch.testing.assert_close(dist(plain(min_p=0.25)), torch.tensor([0.4, 0.3, 0.2, 0, 0]) / 0.9)
    assert frequencies(plain(min_p=0.25))[3:].sum() == 0
    # applied to the temperature-scaled distribution
    hot = torch.softmax(LOGITS / 2, -1)
    keep = hot >= 0.6 * hot[0]
    torch.testing.assert_close(dist(plain(temperature=2.0, min_p=0.6)), hot * keep / (hot * keep).sum())


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, 1.0, -1.0, -2.0])
    p = plain(repetition_penalty=2.0)
    s = BatchSampler(4, 1)
    s.add_row(0, p, prompt_ids=[0, 2])  # the prompt counts
    expected = torch.softmax(torch.tensor([1.0, 1.0, -2.0, -2.0]), -1)
    torch.testing.assert_close(s.distribution(logits[None])[0], expected)
    # greedy with a penalty: argmax moves away from the repeated token
    g = SamplingParams.greedy(repetition_penalty=3.0)
    s.add_row(0, g, prompt_ids=[0])
    assert s.sample(logits[None]).tokens.tolist() == [1]


def test_presence_and_frequency_penalties_count_generated_tokens():
    logits = torch.zeros(3)
    s = BatchSampler(3, 2)
    s.add_row(0, SamplingParams.greedy(presence_penalty=0.5), prompt_ids=[0, 0])  # prompt not counted
    s.add_row(1, SamplingParams.greedy(frequency_penalty=0.5))
    assert s.processed_logits(logits.expand(2, 3), s._plan(None, 2)).tolist() == [[0, 0, 0], [0, 0, 0]]
    s.record([0, 1], torch.tensor([1, 1]))
    s.record([0, 1], torch.tensor([1, 1]))
    s.record([0, 1], torch.tensor([2, 2]))
    x = s.processed_logits(logits.expand(2, 3), s._plan(None, 2))
    assert x.tolist() == [[0, -0.5, -0.5], [0, -1.0, -0.5]]
    # sampling updates the history: a greedy row with a frequency penalty cycles through tokens
    s = BatchSampler(3, 1)
    s.add_row(0, SamplingParams.greedy(frequency_penalty=1.0))
    out = [int(s.sample(torch.tensor([[0.5, 0.3, 0.0]])).tokens[0]) for _ in range(6)]
    assert out == [0, 1, 2, 0, 1, 2]


def test_negative_presence_penalty_encourages_repeats():
    s = BatchSampler(3, 1)
    s.add_row(0, SamplingParams.greedy(presence_penalty=-1.0))
    out = [int(s.sample(torch.tensor([[0.5, 0.0, 0.9]])).tokens[0]) for _ in range(4)]
    assert out == [2, 2, 2, 2]


# ---- rows, seeds, logprobs --------------------------------------------------------------------
def test_same_seed_same_tokens_regardless_of_batch_composition():
    torch.manual_seed(0)
    logits = torch.randn(64)
    p = plain(seed=1234, top_k=20)

    def run(sampler, slots, batch_logits, steps=20):
        return [sampler.sample(batch_logits, slots).tokens.tolist() for _ in range(steps)]

    alone = BatchSampler(64, 1)
    alone.add_row(0, p)
    solo = [t[0] for t in run(alone, None, logits[None])]
    crowd = BatchSampler(64, 6)
    crowd.add_row(0, plain(seed=7))
    crowd.add_row(2, SamplingParams.greedy())
    crowd.add_row(4, p)
    crowd.add_row(5, plain(seed=1234, temperature=0.5))
    mixed = run(crowd, [5, 4, 0, 2], logits.expand(4, -1))
    assert [m[1] for m in mixed] == solo
    assert len(set(solo)) > 3  # it really sampled
    other = BatchSampler(64, 1)
    other.add_row(0, p.replace(seed=99))
    assert [t[0] for t in run(other, None, logits[None])] != solo


def test_unseeded_rows_follow_torch_manual_seed():
    def draw():
        s = BatchSampler(5, 1)
        s.add_row(0, plain())
        return [int(s.sample(LOGITS[None]).tokens[0]) for _ in range(30)]

    torch.manual_seed(5)
    a = draw()
    torch.manual_seed(5)
    assert draw() == a


def test_derived_seeds_differ_per_completion():
    assert derived_seed(3, 0) == 3 and derived_seed(3, 1) != derived_seed(3, 2) != 3
    assert derived_seed(None, 4) is None


def test_logprobs_are_the_raw_model_distribution():
    s = BatchSampler(5, 2)
    s.add_row(0, plain(logprobs=True, top_logprobs=3, temperature=0.2))
    s.add_row(1, SamplingParams.greedy())
    out = s.sample(torch.stack([LOGITS, LOGITS.flip(0)]))
    assert out.tokens[1] == 4  # the greedy row on the flipped logits
    torch.testing.assert_close(out.logprobs[0], PROBS.log()[out.tokens[0]])
    assert out.top_ids[0].tolist() == [0, 1, 2]
    torch.testing.assert_close(out.top_logprobs[0].exp(), PROBS[:3])


def test_greedy_rows_without_extras_return_argmax_only():
    s = BatchSampler(5, 1)
    s.add_row(0, SamplingParams.greedy())
    out = s.sample(LOGITS[None])
    assert out.tokens.tolist() == [0] and out.logprobs is None and s._seen is None


def test_slots_must_exist():
    s = BatchSampler(5, 2)
    with pytest.raises(ValueError, match="slot 1 has no sequence"):
        s.sample(LOGITS[None], [1])
    s.add_row(1, plain())
    s.remove_row(1)
    with pytest.raises(ValueError, match="slot 1"):
        s.sample(LOGITS[None], [1])


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")])
    freq = frequencies(plain(), draws=500, logits=logits)
    assert freq[1] == 0 and freq[3] == 0 and math.isclose(float(freq.sum()), 1.0)


def reference_distribution(logits, p: SamplingParams):
    """Straightforward full-vocabulary version of the filters, for comparison."""
    x = logits.double() / p.temperature
    probs = torch.softmax(x, -1)
    order = probs.argsort(descending=True)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if p.top_k:
        keep[order[p.top_k :]] = False
    q = torch.where(keep, probs, 0.0)
    q = q / q.sum()
    if p.top_p < 1:
        sq = q[order]
        before = sq.cumsum(0) - sq
        drop = before >= p.top_p
        drop[0] = False
        keep[order[drop]] = False
        q = torch.where(keep, q, 0.0)
    if p.min_p:
        keep &= q >= p.min_p * q.max()
        q = torch.where(keep, q, 0.0)
    return (q / q.sum()).float()


@pytest.mark.parametrize("scale", [0.3, 6.0])  # flat (nucleus needs > 1024 tokens) and peaked logits
def test_large_vocabulary_filters_match_a_full_sort(scale):
    torch.manual_seed(11)
    V = 3000
    logits = torch.randn(5, V) * scale
    params = [
        plain(top_p=0.9),
        plain(top_k=100, top_p=0.8),
        plain(top_k=2000),
        plain(top_p=0.5, min_p=0.05),
        plain(temperature=0.7, top_p=0.95),
    ]
    s = BatchSampler(V, 5)
    for i, p in enumerate(params):
        s.add_row(i, p)
    got = s.distribution(logits)
    for i, p in enumerate(params):
        torch.testing.assert_close(got[i], reference_distribution(logits[i], p), atol=1e-5, rtol=1e-4)
    tokens = s.sample(logits).tokens
    assert all(got[i, t] > 0 for i, t in enumerate(tokens.tolist()))
