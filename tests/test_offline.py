"""Offline continuous batching (`generate_texts`): each prompt's text is what `generate` gives
it alone, finished rows take the next prompt at once (fewer decode steps than static batches),
and prompts sharing a long prefix reuse it through the prefix cache."""

from __future__ import annotations

import pytest
import torch

from lfmkit import LFM2
from lfmkit.errors import ContextLengthError, GenerationError
from lfmkit.inference import offline
from lfmkit.inference.generate import generate
from lfmkit.inference.offline import generate_texts
from lfmkit.inference.sampling import SamplingParams
from lfmkit.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("offline"), layout="small", seed=5, with_tokenizer=True)
    return LFM2.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)


def prompts_of(tok, texts):
    return [tok.encode(t) for t in texts]


TEXTS = ["hello there", "the quick brown fox jumps over", "a", "one two three four five six seven", "x y"]


def alone(model, tok, ids, params):
    return [generate(model, [p], sp, tokenizer=tok)[0].text for p, sp in zip(ids, params)]


def count_decode_steps(monkeypatch, model):
    """Count the model's one-token forwards over several rows or one (decode steps)."""
    calls = []
    real = type(model).forward

    def forward(self, input_ids, *args, **kwargs):
        if input_ids.shape[1] == 1:
            calls.append(input_ids.shape[0])
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward)
    return calls


def test_each_text_is_what_generate_gives_the_prompt_alone(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = prompts_of(tok, TEXTS)
    params = [SamplingParams.greedy(max_tokens=m) for m in (3, 12, 1, 7, 9)]
    got = generate_texts(model, ids, params, tokenizer=tok, batch_size=2)
    assert got == alone(model, tok, ids, params)
    # one SamplingParams for all, stop strings included
    one = SamplingParams.greedy(max_tokens=10, stop=[" ", "e"])
    assert generate_texts(model, ids, one, tokenizer=tok, batch_size=3) == alone(model, tok, ids, [one] * len(ids))


def test_a_finished_row_takes_the_next_prompt(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    ids = prompts_of(tok, TEXTS + ["b c", "d"])
    lengths = [2, 16, 2, 2, 16, 2, 2]
    params = [SamplingParams.greedy(max_tokens=m) for m in lengths]
    steps = count_decode_steps(monkeypatch, model)
    generate_texts(model, ids, params, tokenizer=tok, batch_size=2)
    # static batches of 2 in the same (longest prompt first) order decode until their longest
    # answer ends: at least 16 + 16 + ... steps; continuous batching overlaps the short ones
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    static = sum(max(lengths[i] for i in order[k : k + 2]) - 1 for k in range(0, len(order), 2))
    assert len(steps) < static
    assert max(steps) == 2  # the batch stays full


def test_a_shared_prefix_is_prefilled_about_once(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    shots = " ".join(f"example {i} answer {i * 7}." for i in range(12))
    ids = prompts_of(tok, [f"{shots} question {q}" for q in ("one", "two", "three", "four", "five", "six")])
    params = SamplingParams.greedy(max_tokens=4)
    prefilled = []
    real = type(model).forward

    def forward(self, input_ids, *args, **kwargs):
        if input_ids.shape[1] > 1:
            prefilled.append(input_ids.numel())
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward)
    got = generate_texts(model, ids, params, tokenizer=tok, batch_size=2)
    monkeypatch.undo()
    assert got == alone(model, tok, ids, [params] * len(ids))
    # the first group of two, the point where the third leaves their path, then each question only
    assert sum(prefilled) < 3.5 * len(ids[0]) < sum(len(p) for p in ids)
    prefilled.clear()
    monkeypatch.setattr(type(model), "forward", forward)
    assert generate_texts(model, ids, params, tokenizer=tok, batch_size=2, cache_mb=0) == got
    assert sum(prefilled) >= sum(len(p) for p in ids)


def test_bad_requests_name_the_prompt(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = prompts_of(tok, ["hi", "there"])
    with pytest.raises(GenerationError, match="2 SamplingParams for 1 prompts"):
        generate_texts(model, ids[:1], [SamplingParams.greedy()] * 2, tokenizer=tok)
    with pytest.raises(GenerationError, match="n=1"):
        generate_texts(model, ids, SamplingParams.greedy().replace(n=2), tokenizer=tok)
    with pytest.raises(GenerationError, match="prompt 1: prompt token id 100000"):
        generate_texts(model, [ids[0], [1, 100000]], SamplingParams.greedy(), tokenizer=tok)
    long = [[5 + i % 100 for i in range(model.config.max_position_embeddings)]]
    with pytest.raises(ContextLengthError, match="prompt 0"):
        generate_texts(model, long, SamplingParams.greedy(max_tokens=4), tokenizer=tok)
    got = generate_texts(model, long, SamplingParams.greedy(max_tokens=4), tokenizer=tok, truncate=True)
    assert isinstance(got[0], str)
    assert generate_texts(model, [], SamplingParams.greedy(), tokenizer=tok) == []


def test_the_engine_is_driven_without_its_thread(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    started = []
    monkeypatch.setattr(offline.Engine, "start", lambda self: started.append(self) or self)
    generate_texts(model, prompts_of(tok, ["hi"]), SamplingParams.greedy(max_tokens=3), tokenizer=tok)
    assert started == [] and torch.is_grad_enabled()
