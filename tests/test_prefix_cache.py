"""The prefix cache: a request resumes from the longest cached prefix and its output does not change.

Every comparison is against the same request without the cache (`cache_mb=0`), token for token,
greedy and seeded sampling; `cached_tokens` is checked against the snapshot points the design
promises (end of a prompt, end of a generated answer, fixed intervals, where a prompt leaves a
cached path); eviction against a byte budget; and a mixed batch against each row run alone.
"""

from __future__ import annotations

import json

import pytest
import torch
from checkpoints import make_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit import LFM2, ChatSession, SamplingParams, Tokenizer
from lfmkit.errors import GenerationError
from lfmkit.inference.engine import Engine, EngineConfig, ErrorEvent, FinishEvent, TokenEvent
from lfmkit.inference.prefix_cache import MIN_SPLIT, PrefixCache

GREEDY = SamplingParams.greedy(max_tokens=8, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=8, seed=7, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("prefix"), layout="small", seed=11, with_tokenizer=True)
    return path, LFM2.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)


class _AlwaysAlive:  # lets a test drive `Engine.step()` itself, without the engine thread
    def is_alive(self):
        return True


def engine_for(model, cache_mb=64, threaded=True, **kw) -> Engine:
    kw.setdefault("max_length", 256)
    engine = Engine(model, None, EngineConfig(cache_mb=cache_mb, **kw))
    if threaded:
        return engine.start()
    engine._thread = _AlwaysAlive()
    return engine


def run(engine: Engine, prompt: list[int], params: SamplingParams) -> tuple[list[int], int]:
    """(tokens, cached_tokens) of one request, waited for."""
    handle = engine.submit(prompt, params)
    tokens = []
    for ev in handle:
        assert not isinstance(ev, ErrorEvent), ev
        if isinstance(ev, TokenEvent):
            tokens.append(ev.token_id)
    return tokens, handle.cached_tokens


def alone(model, prompt: list[int], params: SamplingParams) -> list[int]:
    """The request run by itself on an engine without a cache: what every cached run must equal."""
    engine = engine_for(model, cache_mb=0)
    try:
        return run(engine, prompt, params)[0]
    finally:
        engine.stop()


P1 = [1, 6] + list(range(40, 70))


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_turn_two_resumes_after_the_answer_and_equals_no_cache(ckpt, params):
    model = ckpt[1]
    engine = engine_for(model)
    try:
        t1, c1 = run(engine, P1, params)
        p2 = P1 + t1 + [9, 10, 11]
        t2, c2 = run(engine, p2, params)
        t3, c3 = run(engine, p2, params)  # the same prompt again: no forward at all
        prefilled = engine.metrics.prompt_tokens.value()
    finally:
        engine.stop()
    assert c1 == 0
    assert c2 == len(P1) + len(t1) - 1  # the answer's last token was sampled, never fed
    assert c3 == len(p2)
    assert prefilled == len(P1) + (len(p2) - c2)
    assert t1 == alone(model, P1, params)
    assert t2 == t3 == alone(model, p2, params)


def test_n_choices_share_a_resumed_prefill(ckpt):
    engine = engine_for(ckpt[1])
    params = SEEDED.replace(n=3)

    def choices(prompt):
        handle = engine.submit(prompt, params)
        out: dict[int, list[int]] = {}
        for ev in handle:
            assert not isinstance(ev, ErrorEvent), ev
            if isinstance(ev, TokenEvent):
                out.setdefault(ev.index, []).append(ev.token_id)
        return out, handle.cached_tokens

    try:
        first, c1 = choices(P1)
        again, c2 = choices(P1)
    finally:
        engine.stop()
    assert (c1, c2) == (0, len(P1)) and first == again and len(first) == 3


def test_long_prompts_snapshot_at_intervals_and_where_they_leave_a_cached_path(ckpt):
    model = ckpt[1]
    engine = engine_for(model, cache_interval=64, prefill_chunk=8)
    base = [1] + list(range(100, 164 + MIN_SPLIT + 4))  # shared by all three prompts
    a, b, c = base + [300, 301, 302], base + [400, 401], base + [500] * 5
    try:
        _, ca = run(engine, a, GREEDY)
        tb, cb = run(engine, b, GREEDY)  # resumes at the last interval snapshot inside `base`
        tc, cc = run(engine, c, GREEDY)  # `b` left `a`'s path at len(base): a snapshot there
    finally:
        engine.stop()
    assert (ca, cb, cc) == (0, 64, len(base))
    assert tb == alone(model, b, GREEDY) and tc == alone(model, c, GREEDY)


def test_mixed_batch_rows_equal_each_row_alone(ckpt):
    """Cached (after an answer, and whole) and uncached rows (short, and long with interval
    snapshots), of different lengths, greedy and seeded, prefilled and decoded together: every
    row's tokens are the ones it gets alone on an engine without a cache."""
    model = ckpt[1]
    q1, q2 = [1, 6] + list(range(200, 230)), [1, 6, 7] + list(range(240, 250))
    engine = engine_for(model, threaded=False, max_concurrent=4, cache_interval=16)
    warm = [engine.submit(q, GREEDY) for q in (q1, q2)]
    while engine.queue_depth() or engine.active_sequences():
        engine.step()
    g1 = [e.token_id for e in warm[0]._queue.queue if isinstance(e, TokenEvent)]
    rows = [
        (q1 + g1 + [20, 21, 22], GREEDY.replace(max_tokens=6)),
        (q2, SEEDED.replace(max_tokens=9)),
        ([1, 6, 77, 78], GREEDY.replace(max_tokens=11)),
        ([1] + list(range(300, 340)), SEEDED.replace(max_tokens=7, seed=3)),
    ]
    handles = [engine.submit(p, params) for p, params in rows]
    batch = 0
    while engine.queue_depth() or engine.active_sequences():
        engine.step()
        batch = max(batch, engine.active_sequences())
    assert batch == 4  # all four rows decoded in one forward
    got = []
    for h in handles:
        events = list(h._queue.queue)
        assert not any(isinstance(e, ErrorEvent) for e in events)
        assert sum(isinstance(e, FinishEvent) for e in events) == 1
        got.append([e.token_id for e in events if isinstance(e, TokenEvent)])
    assert [h.cached_tokens for h in handles] == [len(q1) + len(g1) - 1, len(q2), 0, 0]
    for (prompt, params), tokens in zip(rows, got):
        assert tokens == alone(model, prompt, params)


def test_restore_copies_the_state_exactly_and_eviction_is_lru_within_the_budget(ckpt):
    model = ckpt[1]
    state = model.new_state(1, 128)
    per_token = state.bytes_per_token()
    entry = 20 * per_token + state.fixed_bytes_per_row()  # one 20-token prompt, no logits
    cache = PrefixCache(model, max_bytes=2 * entry + entry // 2)  # room for two
    prompts = [[2 + i] + list(range(50 + 20 * i, 69 + 20 * i)) for i in range(3)]  # nothing shared
    saved = []
    for p in prompts[:2]:
        state.reset()
        with torch.no_grad():
            model(torch.tensor([p]), state=state)
        saved.append(state.clone())
        assert cache.store(p, state, 0)
    assert cache.bytes == 2 * entry and cache.snapshots == 2
    # restoring gives back the very tensors that were stored
    other = model.new_state(2, 128)
    plan = cache.resume(prompts[0] + [5], other, 1)
    assert plan.tokens == 20 and plan.logits is None
    for mine, theirs in zip(other.conv + other.keys + other.values, saved[0].conv + saved[0].keys + saved[0].values):
        if mine is not None:
            assert torch.equal(
                mine[1, ..., :20, :] if mine.dim() == 4 else mine[1],
                theirs[0, ..., :20, :] if theirs.dim() == 4 else theirs[0],
            )
    assert other.lengths.tolist() == [0, 20] and other.positions.tolist() == [0, 20]
    # prompts[0] was used last: storing a third entry evicts prompts[1]
    state.reset()
    with torch.no_grad():
        model(torch.tensor([prompts[2]]), state=state)
    assert cache.store(prompts[2], state, 0)
    assert cache.bytes == 2 * entry <= cache.max_bytes and cache.evictions == 1
    assert cache.lookup(prompts[1] + [5]).tokens == 0
    assert cache.lookup(prompts[0] + [5]).tokens == 20 and cache.lookup(prompts[2] + [5]).tokens == 20
    # an entry larger than the whole budget is refused and evicts nothing
    tiny = PrefixCache(model, max_bytes=entry - 1)
    assert not tiny.store(prompts[2], state, 0) and tiny.bytes == 0


def test_shared_prefixes_share_their_kv(ckpt):
    """Two conversations with a common start hold its K/V once (the tree splits, bytes add up)."""
    model = ckpt[1]
    state = model.new_state(1, 128)
    cache = PrefixCache(model, max_bytes=2**30)
    common = [1] + list(range(60, 90))
    for tail in ([5, 6, 7], [8, 9]):
        state.reset()
        with torch.no_grad():
            model(torch.tensor([common + tail]), state=state)
        cache.store(common + tail, state, 0)
    tokens = len(common) + 3 + 2
    assert cache.bytes == tokens * state.bytes_per_token() + 2 * state.fixed_bytes_per_row()
    assert cache.lookup(common + [5, 6, 7, 1]).tokens == len(common) + 3
    assert cache.lookup(common + [4]).tokens == 0  # no snapshot where they part (yet)


def _mark(prefix: list[int]) -> float:
    return float(hash(tuple(prefix)) % 9973)  # exact in float32


def _fill(state, tokens: list[int]) -> None:
    """Write row 0 as if it held `tokens`: each K/V slot a function of its prefix, the windows of all."""
    for i in range(len(tokens)):
        for t in state.keys + state.values:
            if t is not None:
                t[0, :, i] = _mark(tokens[: i + 1])
    for c in state.conv:
        if c is not None:
            c[0] = _mark(tokens)
    state.set_dense_row(0, len(tokens))


def _holds(state, row: int, tokens: list[int]) -> bool:
    """Row `row` holds what `_fill` writes for `tokens`."""
    kv = all(
        bool((t[row, :, i] == _mark(tokens[: i + 1])).all())
        for i in range(len(tokens))
        for t in state.keys + state.values
        if t is not None
    )
    return kv and all(bool((c[row] == _mark(tokens)).all()) for c in state.conv if c is not None)


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.lists(st.integers(1, 3), min_size=1, max_size=12), st.booleans()), min_size=1, max_size=8
    ),
    probe=st.lists(st.integers(1, 3), min_size=1, max_size=14),
    budget_tokens=st.integers(4, 60),
)
def test_the_tree_resumes_the_longest_stored_prefix_and_counts_its_bytes(ckpt, entries, probe, budget_tokens):
    """Stored rows (some with logits) under a budget: bytes are exact and within the budget, and a
    lookup finds the longest stored prefix still cached, restored slot for slot."""
    model = ckpt[1]
    state, out = model.new_state(1, 16), model.new_state(1, 16)
    per_token, fixed = state.bytes_per_token(), state.fixed_bytes_per_row()
    logits = torch.zeros(4)
    cache = PrefixCache(model, max_bytes=budget_tokens * per_token + 3 * fixed)
    for tokens, with_logits in entries:
        _fill(state, tokens)
        cache.store(tokens, state, 0, logits if with_logits else None)
        nodes = cache._nodes
        assert cache.bytes == sum(n.nbytes for n in nodes) <= cache.max_bytes
        kv_tokens = sum(len(n.tokens) for n in nodes)
        snaps = [n for n in nodes if n.conv is not None]
        assert cache.bytes == kv_tokens * per_token + len(snaps) * fixed + 16 * sum(n.logits is not None for n in snaps)
    cached = {}  # what the cache still holds: each snapshot's token path, and whether it has logits
    for n in cache._nodes:
        if n.conv is not None:
            path = [t for seg in n.path() for t in seg.tokens]
            cached[tuple(path)] = n.logits is not None
    usable = [len(k) for k, has in cached.items() if list(k) == probe[: len(k)] and (len(k) < len(probe) or has)]
    plan = cache.resume(probe, out, 0)
    assert plan.tokens == max(usable, default=0)
    assert (plan.logits is not None) == (plan.tokens == len(probe) > 0)
    if plan.tokens:
        assert _holds(out, 0, probe[: plan.tokens]) and int(out.lengths[0]) == plan.tokens


def test_session_resumes_from_a_shared_cache_and_replies_the_same(ckpt):
    _, model, tok = ckpt
    cache = PrefixCache(model, 2**26)
    params = SamplingParams.greedy(max_tokens=6)
    first = ChatSession(model, tok, system="Be brief.", params=params, cache=cache)
    a1 = first.send("Hello there, how are you?")
    a2 = first.send("And what is two plus two?")
    # a new session replaying the same history resumes where the first one's answers ended
    second = ChatSession(model, tok, system="Be brief.", params=params, cache=cache)
    b1 = second.send("Hello there, how are you?")
    assert b1.token_ids == a1.token_ids
    assert second.last_cached_tokens == len(a1.prompt_ids) and second.last_prefill_tokens == 0
    b2 = second.send("And what is two plus two?")
    assert b2.token_ids == a2.token_ids and second.last_prefill_tokens == 0  # turn 2's prompt was cached too
    # a session without the cache gives the same replies
    plain = ChatSession(model, tok, system="Be brief.", params=params)
    assert plain.send("Hello there, how are you?").token_ids == a1.token_ids
    assert plain.send("And what is two plus two?").token_ids == a2.token_ids
    # a restore to a point whose K/V was overwritten rebuilds from the cache instead of failing
    mark = second.snapshot()
    second.undo()
    second.send("Something else entirely, please.")
    second.restore(mark)
    assert second.tokens == mark.tokens and second.last_cached_tokens == len(mark.tokens)
    assert second.send("Thanks!").token_ids == plain.send("Thanks!").token_ids
    with pytest.raises(GenerationError, match="another model"):
        ChatSession(LFM2.from_pretrained(ckpt[0]).eval(), tok, cache=cache)


def test_server_turn_two_reports_cached_tokens_and_the_text_of_a_server_without_cache(ckpt):
    from starlette.testclient import TestClient

    from lfmkit.serve.app import ServerContext, create_app

    path, model, tok = ckpt
    turn1 = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]

    def conversation(cache_mb):
        engine = Engine(model, tok, EngineConfig(max_length=512, cache_mb=cache_mb)).start()
        client = TestClient(create_app(ServerContext(engine, tok, "m")))
        try:
            body = {"model": "m", "max_tokens": 8, "temperature": 0}
            r1 = client.post("/v1/chat/completions", json={**body, "messages": turn1}).json()
            answer = r1["choices"][0]["message"]["content"]
            turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Another?"}]
            r2 = client.post("/v1/chat/completions", json={**body, "messages": turn2}).json()
            metrics = client.get("/metrics").text
            streamed = {**body, "messages": turn2, "stream": True, "stream_options": {"include_usage": True}}
            with client.stream("POST", "/v1/chat/completions", json=streamed) as r:
                chunks = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        finally:
            engine.stop()
        return turn2, r1, r2, metrics, chunks[-1]["usage"]

    turn2, r1, r2, metrics, again = conversation(64)
    _, n1, n2, _, n_again = conversation(0)
    assert [r["choices"][0]["message"] for r in (r1, r2)] == [r["choices"][0]["message"] for r in (n1, n2)]
    assert n2["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    # the reused prefix: the turn-1 prompt, and the answer as generated if the template renders
    # it back to the same tokens
    p1 = tok.encode(tok.apply_chat_template(turn1, add_generation_prompt=True))
    p2 = tok.encode(tok.apply_chat_template(turn2, add_generation_prompt=True))
    generated = alone(model, p1, SamplingParams.greedy(max_tokens=8))
    fed = p1 + generated[:-1]
    assert p2[: len(p1)] == p1
    want = len(fed) if p2[: len(fed)] == fed else len(p1)
    assert r1["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert r2["usage"]["prompt_tokens_details"] == {"cached_tokens": want}
    assert r2["usage"]["prompt_tokens"] == len(p2)
    assert "lfmkit_prefix_cache_hits_total 1" in metrics and "lfmkit_prefix_cache_misses_total 1" in metrics
    assert f"lfmkit_prefix_cache_hit_tokens_total {want}" in metrics
    assert "lfmkit_prefix_cache_bytes 0" not in metrics
    # the same turn again, streamed: all of its prompt comes from the cache (with its logits)
    assert again["prompt_tokens_details"] == {"cached_tokens": len(p2)} and again["prompt_tokens"] == len(p2)
    assert n_again["prompt_tokens_details"] == {"cached_tokens": 0}
