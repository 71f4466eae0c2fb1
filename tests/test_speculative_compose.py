"""Speculative decoding composed with the other features: structured output (a constrained row
with a draft gives the no-draft constrained output, which validates), the prefix cache (an answer
that ends inside accepted drafts is snapshotted at exactly its kept tokens, so turn 2 resumes
after it and equals turn 2 without cache or draft) and generate's shared few-shot prefix."""

from __future__ import annotations

import json

import jsonschema
import pytest
from checkpoints import make_checkpoint

from lfmkit import LFM2, ChatSession, SamplingParams, Tokenizer
from lfmkit.inference.constrain import Constraint
from lfmkit.inference.engine import Engine, EngineConfig, ErrorEvent, FinishEvent, TokenEvent
from lfmkit.inference.generate import generate
from lfmkit.inference.prefix_cache import PrefixCache

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"}, "ok": {"type": "boolean"}},
    "required": ["name", "n", "ok"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Answer in JSON, please."}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("spec-compose"), layout="small", seed=7, with_tokenizer=True)
    return LFM2.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)


def ask_ids(tokenizer) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template(ASK, add_generation_prompt=True))


def engine_run(engine: Engine, requests) -> list[tuple[list[int], str, int]]:
    """(tokens, finish reason, cached_tokens) per request, submitted together."""
    handles = [engine.submit(p, sp) for p, sp in requests]
    out = []
    for h in handles:
        tokens, reason = [], None
        for ev in h:
            assert not isinstance(ev, ErrorEvent), ev
            if isinstance(ev, TokenEvent):
                tokens.append(ev.token_id)
            elif isinstance(ev, FinishEvent):
                reason = ev.reason
        out.append((tokens, reason, h.cached_tokens))
    return out


# ---- structured output ---------------------------------------------------------------------------
@pytest.mark.parametrize("draft", ["self", "ngram"])
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_constrained_rows_with_a_draft_equal_the_no_draft_output(ckpt, draft, sampled):
    """The target drafting for itself proposes its unconstrained argmax, which the grammar often
    disallows: those drafts are rejected and the output is the constrained output without drafts
    (greedy: verified under the mask; sampled constrained rows decode plainly, the same draws)."""
    model, tokenizer = ckpt
    base = SamplingParams(temperature=1.0, min_p=0.0, seed=5) if sampled else SamplingParams.greedy()
    params = base.replace(max_tokens=64, constraint=Constraint.json_schema(SCHEMA, tokenizer))
    prompt = ask_ids(tokenizer)
    plain = generate(model, prompt, params, tokenizer=tokenizer)
    spec = generate(model, prompt, params, tokenizer=tokenizer, draft=model if draft == "self" else draft, draft_k=4)
    assert spec.token_ids == plain.token_ids
    assert spec.finish_reason == "stop"
    jsonschema.validate(json.loads(spec.text), SCHEMA)


def test_engine_constrained_and_free_rows_with_drafts_equal_each_alone(ckpt):
    model, tokenizer = ckpt
    prompt = ask_ids(tokenizer)
    constrained = SamplingParams.greedy(max_tokens=64, constraint=Constraint.json_schema(SCHEMA, tokenizer))
    free = SamplingParams.greedy(max_tokens=20, ignore_eos=True)
    requests = [(prompt, constrained), (prompt[:-3], free), (prompt, constrained)]
    engine = Engine(model, tokenizer, EngineConfig(max_concurrent=3, max_length=256, draft=model, draft_k=3)).start()
    try:
        got = engine_run(engine, requests)
    finally:
        engine.stop()
    for (p, sp), (tokens, _, _) in zip(requests, got):
        assert tokens == generate(model, p, sp, tokenizer=tokenizer).token_ids
    jsonschema.validate(json.loads(tokenizer.decode(got[0][0][:-1])), SCHEMA)
    assert engine.metrics.draft_tokens.value() > engine.metrics.accepted_tokens.value() > 0


# ---- prefix cache --------------------------------------------------------------------------------
P1 = [1, 6] + list(range(40, 70))


def stop_inside_the_first_verify(model, tokenizer) -> tuple[SamplingParams, int]:
    """Params whose answer to P1 ends at a stop string on its 3rd or 4th token: inside the first
    verify step of k = 4 self-drafts (all accepted), so the state ran past the answer's end."""
    free = SamplingParams.greedy(max_tokens=12, ignore_eos=True)
    toks = generate(model, P1, free, tokenizer=tokenizer).token_ids
    for j in (3, 4):
        stop = tokenizer.decode(toks[:j])[len(tokenizer.decode(toks[: j - 1])) :]
        params = free.replace(stop=[stop])
        r = generate(model, P1, params, tokenizer=tokenizer)
        if stop and r.finish_reason == "stop" and len(r.token_ids) in (3, 4):
            return params, len(r.token_ids)
    raise AssertionError("no stop string ends this model's answer on its 3rd or 4th token")


def test_turn_two_with_cache_and_draft_equals_turn_two_without_either(ckpt):
    model, tokenizer = ckpt
    params, n1 = stop_inside_the_first_verify(model, tokenizer)
    turn2 = params.replace(stop=None, max_tokens=10)

    def conversation(**config):
        cfg = EngineConfig(max_concurrent=2, max_length=256, **config)
        engine = Engine(model, tokenizer, cfg).start()
        try:
            ((t1, r1, _),) = engine_run(engine, [(P1, params)])
            ((t2, _, c2),) = engine_run(engine, [(P1 + t1 + [9, 10, 11], turn2)])
        finally:
            engine.stop()
        return t1, r1, t2, c2, engine

    t1, r1, t2, c2, engine = conversation(cache_mb=64, draft=model, draft_k=4)
    assert engine.metrics.accepted_tokens.value() > 0
    base = conversation(cache_mb=0)
    assert (t1, r1, t2) == base[:3] and len(t1) == n1 and r1 == "stop"
    assert c2 == len(P1) + len(t1) - 1  # resumed from the answer's end: the state kept only its tokens


def test_chat_session_with_cache_and_draft_equals_a_plain_session(ckpt):
    """Replies end at a stop string (inside accepted drafts when they can); the answer-end
    snapshots then let a second session replaying turn 1 resume from the cache."""
    model, tokenizer = ckpt
    params = SamplingParams.greedy(max_tokens=10, stop=["e"])

    def replies(**kw):
        chat = ChatSession(model, tokenizer, params=params, max_length=512, **kw)
        return [chat.send(m).token_ids for m in ("Hi there", "And then?")], chat.tokens

    cache = PrefixCache(model, max_bytes=64 << 20)
    assert replies(cache=cache, draft=model, draft_k=4) == replies()
    again = ChatSession(model, tokenizer, params=params, max_length=512, cache=cache, draft=model, draft_k=4)
    again.send("Hi there")
    assert again.last_cached_tokens > 0


# ---- shared few-shot prefix ----------------------------------------------------------------------
def test_share_prefix_generate_with_a_draft_equals_plain(ckpt):
    model, tokenizer = ckpt
    shots = [1] + [40 + (i * 7) % 90 for i in range(80)]
    prompts = [shots + [5, 6], shots + [200, 201, 202], shots + [9]]
    params = SamplingParams.greedy(max_tokens=12, ignore_eos=True)
    plain = [r.token_ids for r in generate(model, prompts, params, tokenizer=tokenizer)]
    for draft in (model, "ngram"):
        spec = generate(model, prompts, params, tokenizer=tokenizer, share_prefix=True, draft=draft, draft_k=3)
        assert [r.token_ids for r in spec] == plain
