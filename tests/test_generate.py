"""generate / stream_generate against transformers' generate, and their stop, batch and context rules."""

import json

import pytest
import torch
from checkpoints import make_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit import LFM2, ContextLengthError, GenerationError, SamplingParams, Tokenizer
from lfmkit.inference.generate import StopStringMatcher, generate, stream_generate

GREEDY = SamplingParams.greedy(max_tokens=24, ignore_eos=True)
PROMPTS = [[1, 5, 9, 33, 200, 17], [1, 44], [1, 300, 301, 302, 303, 9, 9, 9, 100, 101, 102], [1, 77, 78, 79]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, ref = make_checkpoint(tmp_path_factory.mktemp("gen"), layout="small", seed=3, with_tokenizer=True)
    return path, ref, LFM2.from_pretrained(path, dtype="float32"), Tokenizer.from_pretrained(path)


def hf_greedy(ref, prompts, max_new_tokens, **kw):
    """transformers' greedy generate on a left-padded batch (no eos: exactly max_new_tokens each)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = ref.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            **kw,
        )
    return out[:, width:].tolist()


# ---- equality with the reference ---------------------------------------------------------------
def test_greedy_single_prompt_matches_transformers(ckpt):
    _, ref, model, _ = ckpt
    for p in PROMPTS[:2]:
        assert generate(model, p, GREEDY).token_ids == hf_greedy(ref, [p], 24)[0]


def test_greedy_left_padded_batch_matches_transformers_and_each_prompt_alone(ckpt):
    _, ref, model, _ = ckpt
    batch = [r.token_ids for r in generate(model, PROMPTS, GREEDY)]
    assert batch == hf_greedy(ref, PROMPTS, 24)
    assert batch == [generate(model, p, GREEDY).token_ids for p in PROMPTS]


def test_chunked_padded_prefill_matches_transformers(ckpt, monkeypatch):
    """The default prefill splits PREFILL_CHUNK token rows across the batch; with a small chunk
    a left-padded batch takes many passes, some of them all padding for the short rows."""
    import sys

    _, ref, model, _ = ckpt
    monkeypatch.setattr(sys.modules["lfmkit.model.lfm2"], "PREFILL_CHUNK", 8)  # 4 prompts: 2 tokens per row per pass
    batch = [r.token_ids for r in generate(model, PROMPTS, GREEDY)]
    assert batch == hf_greedy(ref, PROMPTS, 24)


def test_greedy_1_2b_layout_batch_matches_transformers(tmp_path):
    path, ref = make_checkpoint(tmp_path, layout="1.2b", seed=4)
    model = LFM2.from_pretrained(path, dtype="float32")
    prompts = PROMPTS[:3]
    got = [r.token_ids for r in generate(model, prompts, SamplingParams.greedy(max_tokens=16, ignore_eos=True))]
    assert got == hf_greedy(ref, prompts, 16)


def test_repetition_penalty_greedy_matches_transformers(ckpt):
    _, ref, model, _ = ckpt
    p = PROMPTS[0]
    got = generate(model, p, SamplingParams.greedy(max_tokens=24, ignore_eos=True, repetition_penalty=1.8)).token_ids
    assert got == hf_greedy(ref, [p], 24, repetition_penalty=1.8)[0]
    assert got != generate(model, p, GREEDY).token_ids  # the penalty changed something


def test_logprobs_are_the_models_log_softmax(ckpt):
    _, ref, model, _ = ckpt
    p = PROMPTS[0]
    r = generate(model, p, SamplingParams(max_tokens=8, seed=1, logprobs=True, top_logprobs=3, ignore_eos=True))
    with torch.no_grad():
        logits = ref(torch.tensor([p + r.token_ids])).logits[0, len(p) - 1 : -1]
    expected = torch.log_softmax(logits.float(), -1)
    assert [e.token_id for e in r.logprobs] == r.token_ids
    got = torch.tensor([e.logprob for e in r.logprobs])
    torch.testing.assert_close(got, expected.gather(-1, torch.tensor(r.token_ids)[:, None])[:, 0], atol=1e-4, rtol=0)
    assert [t for t, _ in r.logprobs[0].top] == expected[0].topk(3).indices.tolist()


# ---- rows, seeds, n ----------------------------------------------------------------------------
def test_rows_finishing_at_different_times_equal_each_prompt_alone(ckpt):
    _, _, model, _ = ckpt
    free = [r.token_ids for r in generate(model, PROMPTS, GREEDY)]
    # row 0 stops at a token it produces early, row 1 after 3 tokens, the others run on
    params = [
        GREEDY.replace(stop_token_ids=[free[0][2]]),
        GREEDY.replace(max_tokens=3),
        GREEDY,
        GREEDY.replace(max_tokens=11),
    ]
    batch = generate(model, PROMPTS, params)
    alone = [generate(model, p, sp) for p, sp in zip(PROMPTS, params)]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    assert batch[0].token_ids == free[0][: free[0].index(free[0][2]) + 1]
    assert batch[0].finish_reason == "stop" and batch[0].stop_reason == free[0][2]
    assert [len(r.token_ids) for r in batch[1:]] == [3, 24, 11]
    assert [r.finish_reason for r in batch[1:]] == ["length"] * 3


def test_same_seed_same_tokens_alone_or_in_a_batch(ckpt):
    _, _, model, _ = ckpt
    sp = SamplingParams(temperature=1.5, top_k=50, max_tokens=20, seed=42, ignore_eos=True, min_p=0.0)
    a = generate(model, PROMPTS[2], sp).token_ids
    assert generate(model, PROMPTS[2], sp).token_ids == a
    batch = generate(model, PROMPTS, [sp.replace(seed=7), GREEDY, sp, sp.replace(seed=9)])
    assert batch[2].token_ids == a
    assert generate(model, PROMPTS[2], sp.replace(seed=43)).token_ids != a
    assert a != generate(model, PROMPTS[2], GREEDY.replace(max_tokens=20)).token_ids  # it sampled


def test_n_completions_share_one_prefill(ckpt):
    _, _, model, _ = ckpt
    sp = SamplingParams(temperature=1.5, max_tokens=12, seed=5, n=3, ignore_eos=True, min_p=0.0)
    outs = generate(model, PROMPTS[:2], sp)
    assert [(r.prompt_index, r.index) for r in outs] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [r.usage.prefill_tokens for r in outs] == [6, 0, 0, 2, 0, 0]
    assert len({tuple(r.token_ids) for r in outs[:3]}) == 3
    # completion 0 uses the request's seed itself: it equals the n=1 result
    assert outs[0].token_ids == generate(model, PROMPTS[0], sp.replace(n=1)).token_ids
    assert outs[3].token_ids == generate(model, PROMPTS[1], sp.replace(n=1)).token_ids


# ---- stopping ----------------------------------------------------------------------------------
def test_eos_from_generation_config_stops(tmp_path, ckpt):
    path, _, model, tok = ckpt
    free = generate(model, PROMPTS[0], GREEDY).token_ids
    stop_at = free[4]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, stop_at]}))
    try:
        again = LFM2.from_pretrained(path, dtype="float32")
        r = generate(again, PROMPTS[0], SamplingParams.greedy(max_tokens=24))
        assert r.token_ids == free[: free.index(stop_at) + 1] and r.finish_reason == "stop"
        assert generate(again, PROMPTS[0], GREEDY).token_ids == free  # ignore_eos
    finally:
        (path / "generation_config.json").unlink()


def test_stop_strings_cut_the_text_and_are_never_streamed(ckpt):
    _, _, model, tok = ckpt
    prompt = "Hello! How are you today?"
    free = generate(model, prompt, GREEDY, tokenizer=tok)
    text = free.text
    assert len(text) > 8
    stop = text[5:8]
    cut = text.index(stop)
    r = generate(model, prompt, GREEDY.replace(stop=["zzzz-not-there", stop]), tokenizer=tok)
    assert r.text == text[:cut] and r.finish_reason == "stop" and r.stop_reason == stop
    chunks = list(stream_generate(model, prompt, GREEDY.replace(stop=[stop]), tokenizer=tok, parse=False))
    assert "".join(c.text for c in chunks) == text[:cut]
    assert chunks[-1].result.text == text[:cut] and chunks[-1].finish_reason == "stop"
    assert sum(len(c.token_ids) for c in chunks) == len(r.token_ids)


def test_stop_string_matcher_holds_back_prefixes():
    m = StopStringMatcher(["</end>", "STOP"])
    assert m.push("abc<") == ("abc", False)
    assert m.push("/e") == ("", False)
    assert m.push("x") == ("</ex", False)
    assert m.push("ST") == ("", False)
    assert m.push("OP and more") == ("", True) and m.matched == "STOP"
    m = StopStringMatcher(["ab"])
    assert m.push("xa") == ("x", False) and m.flush() == "a"


def test_text_prompt_gets_bos_and_messages_use_the_template(ckpt):
    _, _, model, tok = ckpt
    r = generate(model, "Hello", SamplingParams.greedy(max_tokens=2), tokenizer=tok)
    assert r.prompt_ids == [tok.bos_token_id] + tok.encode("Hello")
    msgs = [{"role": "user", "content": "Hi"}]
    r = generate(model, msgs, SamplingParams.greedy(max_tokens=2), tokenizer=tok)
    assert r.prompt_ids == tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))
    # the tokenizer is found next to the checkpoint when not given
    assert generate(model, msgs, SamplingParams.greedy(max_tokens=2)).prompt_ids == r.prompt_ids


def test_streamed_text_equals_the_whole_text(ckpt):
    _, _, model, tok = ckpt
    sp = SamplingParams(max_tokens=30, seed=3, temperature=1.0, ignore_eos=True)
    whole = generate(model, "Tell me a story", sp, tokenizer=tok)
    chunks = list(stream_generate(model, "Tell me a story", sp, tokenizer=tok))
    assert "".join(c.text for c in chunks) == whole.text == tok.decode(whole.token_ids)
    assert [t for c in chunks for t in c.token_ids] == whole.token_ids
    assert all(c.finish_reason is None for c in chunks[:-1]) and chunks[-1].finish_reason == "length"


def test_should_stop_aborts_between_tokens(ckpt):
    _, _, model, _ = ckpt
    calls = []
    r = generate(model, PROMPTS[0], GREEDY, should_stop=lambda: len(calls.append(1) or calls) > 5)
    assert r.finish_reason == "abort" and len(r.token_ids) == 5


# ---- context and bad input ---------------------------------------------------------------------
def test_context_overflow_names_the_numbers_or_truncates(ckpt):
    _, _, model, _ = ckpt
    ctx = model.config.max_position_embeddings
    long = [1] + [5] * (ctx - 10)
    with pytest.raises(
        ContextLengthError,
        match=rf"{len(long)} tokens and max_tokens is 24: {len(long) + 24} tokens "
        rf"do not fit the model's context of {ctx}",
    ):
        generate(model, long, GREEDY)
    r = generate(model, long, GREEDY.replace(max_tokens=12), truncate=True)
    assert len(r.prompt_ids) == ctx - 12
    with pytest.raises(ContextLengthError, match="max_length is 20"):
        generate(model, PROMPTS[0], GREEDY, max_length=20)


def test_bad_prompts_and_params_are_named(ckpt):
    _, _, model, _ = ckpt
    with pytest.raises(GenerationError, match="outside the model's vocabulary"):
        generate(model, [1, 99999], GREEDY)
    with pytest.raises(GenerationError, match="no tokens"):
        generate(model, [[1, 2], []], GREEDY)
    with pytest.raises(GenerationError, match="'temperature'"):
        generate(model, [1, 2], temperature=-1)
    with pytest.raises(GenerationError, match="one prompt"):
        next(stream_generate(model, [[1, 2], [3]], GREEDY))


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc<>/", max_size=40),
    stops=st.lists(st.text(alphabet="abc<>/", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_stop_string_matcher_equals_cutting_the_whole_text(text, stops, cuts):
    """Streamed in any pieces, the visible text is the text seen so far cut at its first stop
    string, at the first piece that completes one (generation ends there: a stop string that
    would have begun earlier but was not complete yet never gets the chance)."""
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    first = None
    for b in bounds[1:]:
        hits = [text[:b].find(s) for s in stops if s in text[:b]]
        if hits:
            first = min(hits)
            break
    m = StopStringMatcher(stops)
    shown, stopped = "", False
    for a, b in zip(bounds, bounds[1:]):
        piece, stopped = m.push(text[a:b])
        shown += piece
        if stopped:
            break
    if not stopped:
        shown += m.flush()
    assert stopped == (first is not None)
    assert shown == (text[:first] if first is not None else text)


def test_package_generate_is_the_function_even_after_importing_the_submodule():
    import importlib

    import lfmkit

    importlib.import_module("lfmkit.inference.generate")
    from lfmkit import generate as fn

    assert callable(fn) and fn is lfmkit.generate and fn.__module__ == "lfmkit.inference.generate"
