"""Speculative decoding: greedy output equals plain decoding token for token (draft models, the
target as its own draft, n-gram lookup; several k; reference, fast and quantized fused paths),
the rolled-back state equals one that never saw the rejected tokens, the rejection rule emits
exactly the target's distribution, and generate / ChatSession / the engine / the CLI all agree."""

from __future__ import annotations

import json

import pytest
import torch
from checkpoints import ATTN, CONV, make_checkpoint

import lfmkit
from lfmkit import LFM2, ChatSession, SamplingParams, Tokenizer
from lfmkit.cli import main
from lfmkit.errors import GenerationError
from lfmkit.inference.engine import Engine, EngineConfig, ErrorEvent, TokenEvent
from lfmkit.inference.generate import generate, stream_generate
from lfmkit.inference.speculative import (
    Draft,
    ModelDrafter,
    NgramDrafter,
    Speculator,
    _rejection_step,
    _verify_forward,
    acceptance_probability,
    residual,
)

PROMPTS = [[1, 5, 9, 33, 200, 17], [1, 44], [1, 300, 301, 302, 303, 9, 9, 9, 100, 101, 102]]
GREEDY = SamplingParams.greedy(max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("spec-target"), layout="small", seed=3, with_tokenizer=True)[0]


@pytest.fixture(scope="module")
def target(target_dir):
    return LFM2.from_pretrained(target_dir)


@pytest.fixture(scope="module")
def small_draft(tmp_path_factory):
    """A different, smaller random model with the target's vocabulary."""
    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("spec-draft"),
        layout="small",
        seed=5,
        hidden_size=32,
        intermediate_size=64,
        num_key_value_heads=2,
        layer_types=[CONV, ATTN],
    )
    return LFM2.from_pretrained(path)


@pytest.fixture(scope="module")
def quant_dir(tmp_path_factory):
    """Widths the int8 / int4 kernels and the fused decode step take."""
    return make_checkpoint(tmp_path_factory.mktemp("spec-quant"), layout="1.2b", seed=4)[0]


def drafts_for(kind, model, small_draft):
    return {"self": model, "small": small_draft, "ngram": "ngram"}[kind]


# ---- greedy: token for token ------------------------------------------------------------------
@pytest.mark.parametrize("fast", [False, True], ids=["reference", "fast-paths"])
@pytest.mark.parametrize("kind", ["self", "small", "ngram"])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_with_drafts_equals_plain_greedy(target, target_dir, small_draft, fast, kind, k):
    model = lfmkit.load(target_dir) if fast else target
    spec = Speculator(drafts_for(kind, model, small_draft), k=k)
    for p in PROMPTS:
        assert generate(model, p, GREEDY, draft=spec).token_ids == generate(model, p, GREEDY).token_ids
    if kind == "self":
        assert spec.stats.accepted == spec.stats.drafted > 0  # its own drafts: all accepted
    assert spec.stats.emitted == len(PROMPTS) * (GREEDY.max_tokens - 1)  # the first token comes from prefill


@pytest.mark.parametrize("quant", ["int8", "int4"])
@pytest.mark.parametrize("kind", ["self", "ngram"])
def test_quantized_fused_verify_equals_plain_greedy(quant_dir, quant, kind):
    model = lfmkit.load(quant_dir, quant=quant)
    assert model.fused_decode.available(), model.fused_decode.reason
    spec = Speculator(model if kind == "self" else "ngram", k=3)
    params = GREEDY.replace(max_tokens=40)
    for p in PROMPTS:
        assert generate(model, p, params, draft=spec).token_ids == generate(model, p, params).token_ids
    assert spec.stats.accepted > 0


@pytest.fixture(scope="module")
def unfused_int4(tmp_path_factory):
    """An int4 model the fused step cannot take (w2's width 160 does not fit int4 kernels)."""
    model = lfmkit.load(
        make_checkpoint(tmp_path_factory.mktemp("spec-unfused"), layout="2.6b", seed=13)[0], quant="int4"
    )
    assert not model.fused_decode.available()
    return model


def test_quantized_model_without_fused_step_verifies_step_by_step_exactly(unfused_int4):
    """Activations quantized on the fly turn float rounding into visible differences, so such a
    model verifies token by token: still plain decoding's tokens (a chunk forward was not)."""
    params = GREEDY.replace(max_tokens=48)
    for draft in (unfused_int4, "ngram"):
        for p in PROMPTS + [[1, 444, 12, 90, 91, 92, 93]]:
            want = generate(unfused_int4, p, params).token_ids
            assert generate(unfused_int4, p, params, draft=draft, draft_k=3).token_ids == want


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_fused_multi_token_step_is_bit_for_bit_single_steps(quant_dir, quant):
    """T tokens per row in one fused call == T one-token steps: logits, K/V, conv windows, and the
    reported conv inputs are each step's newest window column. Rows at different lengths."""
    model = lfmkit.load(quant_dir, quant=quant)
    a, b = model.new_state(2, 64), model.new_state(2, 64)
    for state in (a, b):
        for row, prompt in enumerate(PROMPTS[:2]):
            one = model.new_state(1, 64)
            model.prefill(torch.tensor([prompt]), one)
            state.copy_row(one, 0, row)
    tokens = torch.tensor([[3, 70, 70, 12, 400], [9, 8, 7, 6, 5]])
    with torch.no_grad():
        steps, windows = [], []
        for j in range(tokens.shape[1]):
            steps.append(model(tokens[:, j : j + 1], state=a)[:, 0])
            windows.append([c[..., -1].clone() if c is not None else None for c in a.conv])
        cols = [None if c is None else torch.empty(2, 5, c.shape[1]) for c in b.conv]
        fused = model.fused_decode(tokens, b, cols)
    assert torch.equal(fused, torch.stack(steps, 1))
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.positions, b.positions)
    assert torch.equal(a.valid, b.valid)
    for i, c in enumerate(cols):
        if c is None:
            assert torch.equal(a.keys[i], b.keys[i]) and torch.equal(a.values[i], b.values[i])
        else:
            assert torch.equal(a.conv[i], b.conv[i])
            assert torch.equal(c, torch.stack([w[i] for w in windows], 1))


# ---- rollback ---------------------------------------------------------------------------------
def rows_state(model, prompts):
    """A state holding one prompt per row, at different lengths (no padding), and their last logits."""
    state = model.new_state(len(prompts), 64)
    logits = []
    for row, prompt in enumerate(prompts):
        one = model.new_state(1, 64)
        logits.append(model.prefill(torch.tensor([prompt]), one)[0, -1])
        state.copy_row(one, 0, row)
    return state, logits


@pytest.mark.parametrize("path", ["module", "fused", "step-by-step"])
def test_rolled_back_state_equals_a_state_that_never_saw_the_rejected_tokens(target, quant_dir, unfused_int4, path):
    model = {"module": target, "fused": lfmkit.load(quant_dir, quant="int8"), "step-by-step": unfused_int4}[path]
    # Batch-1 references: the fused step equals them bit for bit in any batch; the module path
    # up to float rounding; the step-by-step path is plain steps, so one row equals them exactly
    # (a ragged 2-row batch of an int4 model without the fused step differs from batch 1 itself).
    exact = path != "module"
    rows = 1 if path == "step-by-step" else 2
    prompts = PROMPTS[:rows]
    fed = torch.tensor([[3, 70, 71, 12], [9, 8, 7, 6]])[:rows]  # the last token, then three drafts
    kept = [2, 4][:rows]  # row 0 rejects the second draft; row 1 accepts all three
    with torch.no_grad():
        state, _ = rows_state(model, prompts)
        _, view = _verify_forward(model, fed, state)
        state.keep_prefix(view, kept)
        for row, (prompt, n) in enumerate(zip(prompts, kept)):
            fresh = model.new_state(1, 64)
            model.prefill(torch.tensor([prompt]), fresh)
            for tok in fed[row, :n].tolist():  # fed one by one, as plain decoding feeds them
                model(torch.tensor([[tok]]), state=fresh)
            length = len(prompt) + n
            assert int(state.lengths[row]) == int(fresh.lengths[0]) == length
            assert int(state.positions[row]) == length
            assert bool(state.valid[row, :length].all()) and not bool(state.valid[row, length:].any())
            for mine, theirs in zip(state.conv, fresh.conv):
                if mine is not None:
                    close(mine[row], theirs[0], exact)
            for group_a, group_b in ((state.keys, fresh.keys), (state.values, fresh.values)):
                for mine, theirs in zip(group_a, group_b):
                    if mine is not None:
                        close(mine[row, :, :length], theirs[0, :, :length], exact)
            assert state.padding_free()
            nxt = torch.tensor([[41 + row]])
            after = model(nxt, state=state.rows(row, row + 1, [length], dense=True))[0, -1]
            close(after, model(nxt, state=fresh)[0, -1], exact, atol=1e-4)


def close(a, b, exact, atol=1e-5):
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def test_model_drafter_catches_up_from_the_common_prefix(target):
    drafter = ModelDrafter(target, max_length=64)
    drafter.reset(GREEDY)
    ctx = PROMPTS[2]
    first = drafter.propose(ctx, 4).tokens
    assert len(first) == 4 and drafter.tokens == ctx + first[:3]
    # the target took two drafts and then its own token: back to ctx + 2 drafts, feed the rest
    ctx2 = ctx + first[:2] + [11]
    again = drafter.propose(ctx2, 3).tokens
    assert drafter.tokens == ctx2 + again[:2]
    fresh = target.new_state(1, 64)
    with torch.no_grad():
        want = target.prefill(torch.tensor([drafter.tokens]), fresh)[0, -1]
    assert int(drafter.state.lengths[0]) == len(drafter.tokens)
    for mine, theirs in zip(drafter.state.conv, fresh.conv):
        if mine is not None:
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    assert drafter.propose(drafter.tokens + [int(want.argmax())], 1).tokens  # continues from there
    other = [1, 2, 3]  # an unrelated context: starts over
    assert drafter.propose(other, 2).tokens == ModelDrafter(target, 64).propose(other, 2).tokens


def test_ngram_drafter_continues_the_last_earlier_occurrence():
    d = NgramDrafter(max_ngram=3)
    assert d.propose([1, 2, 3, 4, 9, 2, 3], 2).tokens == [4, 9]  # "2 3" was followed by "4 9"
    assert d.propose([1, 2, 3, 4, 9, 2, 3, 4], 3).tokens == [9, 2, 3]  # "2 3 4": longest n first
    assert d.propose([5, 6, 5, 6, 5], 5).tokens == [6, 5, 6, 5, 6]  # a loop goes on
    assert d.propose([7, 7], 3).tokens == [7, 7, 7]
    assert d.propose([1, 2, 3], 3).tokens == []  # nothing seen before
    assert d.propose([8, 1, 8, 2, 8], 1).tokens == [2]  # the latest occurrence wins
    assert d.propose([8, 1, 8, 2, 8], 0).tokens == []


# ---- sampling: the rejection rule ---------------------------------------------------------------
def distributions():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.rand(6, generator=g, dtype=torch.float64) ** 3
        q = torch.rand(6, generator=g, dtype=torch.float64) ** 3
        p[int(torch.randint(6, (), generator=g))] = 0.0  # truncated by top_k / min_p
        q[int(torch.randint(6, (), generator=g))] = 0.0
        yield p / p.sum(), q / q.sum()
    f64 = dict(dtype=torch.float64)
    yield torch.tensor([0.5, 0.5, 0, 0, 0, 0], **f64), torch.tensor([0, 0, 0, 0, 0.5, 0.5], **f64)  # disjoint
    p = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0, 0.0], **f64)
    yield p, p.clone()  # the same: nothing is ever rejected


def test_rejection_rule_emits_exactly_the_target_distribution():
    """P(token = y) = q(y) a(y) + sum_x q(x) (1 - a(x)) r(y) = p(y), computed exactly (no sampling),
    for drafts drawn from q, and for deterministic drafts (q = one-hot(x)) for every x."""
    for p, q in distributions():
        a = torch.tensor([acceptance_probability(p, q, x) if q[x] > 0 else 0.0 for x in range(6)], dtype=torch.float64)
        q64 = q.to(torch.float64)
        out = q64 * a + float((q64 * (1 - a)).sum()) * residual(p, q, 0)
        torch.testing.assert_close(out, p, atol=1e-12, rtol=0)
        for x in range(6):
            onehot = torch.zeros(6, dtype=torch.float64)
            onehot[x] = 1.0
            ax = acceptance_probability(p, None, x)
            out = onehot * ax + (1 - ax) * residual(p, None, x)
            torch.testing.assert_close(out, p, atol=1e-12, rtol=0)


def test_rejection_step_draws_follow_the_target_distribution():
    """The code path itself, seeded (deterministic): 8000 steps with drafts drawn from q."""
    p = torch.tensor([0.05, 0.4, 0.25, 0.3, 0.0])
    q = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.2])
    g, gq = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    counts = torch.zeros(5)
    n = 8000
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=gq))
        tok, _ = _rejection_step(p, Draft([x], q[None]), 0, g)
        counts[tok] += 1
    assert counts[4] == 0  # never a token the target excludes
    torch.testing.assert_close(counts / n, p, atol=0.02, rtol=0)


def test_sampled_decoding_with_drafts_is_seeded_and_accepts_its_own_drafts(target):
    params = SamplingParams(max_tokens=30, temperature=0.8, top_k=50, seed=7, ignore_eos=True, repetition_penalty=1.1)
    spec = Speculator(target, k=3)
    a = generate(target, PROMPTS[0], params, draft=spec).token_ids
    assert a == generate(target, PROMPTS[0], params, draft=Speculator(target, k=3)).token_ids  # same seed
    assert len(a) == 30 and spec.stats.acceptance_rate > 0.9  # p == q up to rounding: min(1, p/q) ~ 1
    ngram = Speculator("ngram", k=3)
    assert len(generate(target, PROMPTS[2], params, draft=ngram).token_ids) == 30


# ---- the rest of generation: penalties, logprobs, stops, batches, streaming -----------------------
def test_penalties_logprobs_and_stops_equal_plain(target, target_dir):
    tok = Tokenizer.from_pretrained(target_dir)
    params = SamplingParams.greedy(
        max_tokens=30, repetition_penalty=1.3, presence_penalty=0.4, logprobs=True, top_logprobs=3
    )
    stop = generate(target, "Once upon", params, tokenizer=tok).text[6:9]
    params = params.replace(stop=[stop])
    for draft in (target, "ngram"):
        want = generate(target, "Once upon", params, tokenizer=tok)
        got = generate(target, "Once upon", params, tokenizer=tok, draft=draft, draft_k=4)
        assert (got.token_ids, got.text, got.finish_reason, got.stop_reason) == (
            want.token_ids,
            want.text,
            want.finish_reason,
            want.stop_reason,
        )
        assert want.finish_reason == "stop" and want.stop_reason == stop
        for a, b in zip(got.logprobs, want.logprobs):
            assert a.token_id == b.token_id and [t for t, _ in a.top] == [t for t, _ in b.top]
            assert abs(a.logprob - b.logprob) < 1e-4


def test_eos_inside_accepted_drafts_ends_the_row_there(target):
    plain = generate(target, PROMPTS[0], GREEDY.replace(max_tokens=12)).token_ids
    params = SamplingParams.greedy(max_tokens=12, stop_token_ids=[plain[4]])
    want = generate(target, PROMPTS[0], params)
    got = generate(target, PROMPTS[0], params, draft=Speculator(target, k=6))
    assert got.token_ids == want.token_ids == plain[: plain.index(plain[4]) + 1]
    assert got.finish_reason == "stop"


def test_a_batch_with_drafts_equals_each_prompt_alone(target, small_draft):
    prompts = PROMPTS + [[1, 9, 9, 9, 9, 9, 9, 9]]
    params = [GREEDY.replace(max_tokens=m) for m in (8, 24, 16, 20)]
    for draft in (small_draft, "ngram"):
        batch = generate(target, prompts, params, draft=draft, draft_k=3)
        assert [r.token_ids for r in batch] == [generate(target, p, sp).token_ids for p, sp in zip(prompts, params)]


def test_stream_generate_with_drafts_yields_one_chunk_per_token(target):
    chunks = list(stream_generate(target, PROMPTS[1], GREEDY, draft=target, draft_k=4))
    assert len(chunks) == GREEDY.max_tokens and all(len(c.token_ids) == 1 for c in chunks)
    assert [c.finish_reason for c in chunks].count("length") == 1 and chunks[-1].result is not None
    assert chunks[-1].result.token_ids == generate(target, PROMPTS[1], GREEDY).token_ids


def test_chat_session_with_a_draft_equals_one_without(target, target_dir, small_draft):
    tok = Tokenizer.from_pretrained(target_dir)
    params = SamplingParams.greedy(max_tokens=20)
    plain = ChatSession(target, tok, params=params)
    spec = ChatSession(target, tok, params=params, draft=small_draft, draft_k=3)
    for session in (plain, spec):
        session.send("hello there")
        session.send("and again, and again")
        session.undo()
        session.send("something else")
    assert spec.tokens == plain.tokens and spec.messages == plain.messages
    assert int(spec.state.lengths[0]) == len(spec.tokens)
    fresh = target.new_state(1, 512)
    with torch.no_grad():
        target.prefill(torch.tensor([spec.tokens]), fresh)
    for mine, theirs in zip(spec.state.conv, fresh.conv):
        if mine is not None:
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
    assert spec.spec.stats.drafted > 0


# ---- the engine: batch = single, with drafts ----------------------------------------------------
def engine_tokens(model, requests, **config):
    config = {"max_concurrent": 3, "max_length": 96, "prefill_chunk": 4, **config}
    engine = Engine(model, None, EngineConfig(**config)).start()
    try:
        handles = [engine.submit(p, sp) for p, sp in requests]
        out = []
        for h in handles:
            toks = []
            for ev in h:
                assert not isinstance(ev, ErrorEvent), ev
                if isinstance(ev, TokenEvent):
                    toks.append(ev.token_id)
            out.append(toks)
    finally:
        engine.stop()
    return out, engine.metrics


@pytest.mark.parametrize("kind", ["small", "ngram"])
def test_engine_rows_with_drafts_equal_each_request_alone(target, small_draft, kind):
    """Five requests of different lengths through 3 slots (chunked prefill, slots reused), one of
    them sampled: every greedy row's tokens are what it gets alone without drafts."""
    sampled = SamplingParams(max_tokens=12, temperature=0.9, seed=3, ignore_eos=True)
    requests = [(p, GREEDY.replace(max_tokens=10 + 3 * i)) for i, p in enumerate(PROMPTS)]
    requests += [([1, 6, 200, 201, 202], sampled), ([1, 6, 77, 77, 77, 77], GREEDY)]
    out, metrics = engine_tokens(target, requests, draft=drafts_for(kind, target, small_draft), draft_k=3)
    for (p, sp), toks in zip(requests, out):
        if sp.is_greedy:
            assert toks == generate(target, p, sp).token_ids
        else:
            assert len(toks) == sp.max_tokens
    text = metrics.render()
    assert metrics.draft_tokens.value() > 0 and 0 < metrics.acceptance.value() <= 1
    assert "lfmkit_spec_acceptance_rate" in text and "lfmkit_decode_tokens_per_second" in text


def test_engine_quantized_with_drafts_equals_engine_without(quant_dir):
    model = lfmkit.load(quant_dir, quant="int8")
    requests = [(p, GREEDY.replace(max_tokens=16)) for p in PROMPTS]
    config = dict(prefill_chunk=512)  # all prompts prefilled together, with and without drafts
    base, _ = engine_tokens(model, requests, **config)
    for draft in (model, "ngram"):
        assert engine_tokens(model, requests, **config, draft=draft, draft_k=3)[0] == base


# ---- errors and the CLI ------------------------------------------------------------------------
def test_draft_errors_name_the_problem(target, tmp_path):
    other, _ = make_checkpoint(tmp_path, layout="small", seed=1, vocab_size=640)
    with pytest.raises(GenerationError, match="vocabulary has 640 tokens and the target's 512"):
        generate(target, PROMPTS[0], GREEDY, draft=LFM2.from_pretrained(other))
    with pytest.raises(GenerationError, match="draft_k"):
        Speculator("ngram", k=0)
    with pytest.raises(GenerationError, match="'ngram'"):
        Speculator("trigram")


def test_cli_run_with_a_draft_prints_the_same_tokens(target_dir, capsys):
    argv = ["run", str(target_dir), "--ids", "1,5,9,33", "--json", "--greedy", "--max-tokens", "16", "--ignore-eos"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    for draft in ("ngram", str(target_dir)):
        assert main(argv + ["--draft", draft, "--draft-k", "3"]) == 0
        obj = json.loads(capsys.readouterr().out)
        assert obj["generated_ids"] == plain["generated_ids"]
        assert obj["speculative"]["k"] == 3 and obj["speculative"]["drafted"] >= obj["speculative"]["accepted"]
    assert obj["speculative"]["acceptance_rate"] == 1.0
    assert main(argv + ["--draft-k", "3"]) == 2
    assert "--draft-k and --draft-adaptive need --draft" in capsys.readouterr().err


def test_cli_bench_draft_reports_acceptance_and_speed(target_dir, capsys):
    argv = ["bench", str(target_dir), "--quant", "fp32", "--prompt-len", "16", "--decode-tokens", "8"]
    argv += ["--batch", "1", "--repeats", "1", "--json", "--draft", "self", "--draft-k", "3"]
    assert main(argv) == 0
    (row,) = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert row["draft"] == "self" and row["draft_k"] == 3 and row["spec_same_output"] is True
    assert row["acceptance_rate"] == 1.0 and row["spec_decode_tok_s"] > 0 and row["plain_decode_tok_s"] > 0


def test_adaptive_k_drafts_less_when_drafts_are_rejected(target, small_draft):
    fixed, adaptive = Speculator(small_draft, k=4), Speculator(small_draft, k=4, adaptive=True)
    for p in PROMPTS:
        want = generate(target, p, GREEDY).token_ids
        assert generate(target, p, GREEDY, draft=fixed).token_ids == want
        assert generate(target, p, GREEDY, draft=adaptive).token_ids == want
    assert adaptive.stats.drafted < fixed.stats.drafted  # a random draft is mostly rejected: k shrinks


def test_serve_builds_an_engine_with_the_draft(target_dir):
    from lfmkit.cli import build_parser
    from lfmkit.commands.serve import build_context

    for draft in ("ngram", str(target_dir)):
        args = build_parser().parse_args(["serve", str(target_dir), "--draft", draft, "--draft-k", "2"])
        engine = build_context(args).engine
        assert engine.spec is not None and engine.spec.k == 2
        assert engine.state.max_length == engine.max_length + 2  # room for verified drafts


def test_a_verify_step_that_fails_is_undone_and_retried_row_by_row(target, target_dir, caplog):
    """A fault inside the batched verify forward (after its first layers wrote the state): the
    rows are put back and verified alone; only a row that fails by itself ends its request."""
    from test_engine_isolation import (
        KEEP,
        InsideForward,
        _raise,
        assert_as_alone,
        assert_idle_and_clean,
        outcome,
        run_until_idle,
        stepped,
    )

    tok = Tokenizer.from_pretrained(target_dir)
    victim = (list(range(100, 120)), SamplingParams.greedy(max_tokens=12, ignore_eos=True))  # alone past slot 21
    engine = stepped(target, tok, max_concurrent=4, max_length=64, draft=target, draft_k=3)
    with InsideForward(target, lambda ids, state: ids.shape[1] > 1 and bool((state.positions >= 22).any()), _raise):
        keep = [engine.submit(p, s, skip_special_tokens=False) for p, s in KEEP]
        bad = engine.submit(*victim, skip_special_tokens=False)
        run_until_idle(engine)
    assert "a verify step of 4 rows failed" in caplog.text  # the victim shared the batch
    for (prompt, params), handle in zip(KEEP, keep):
        assert_as_alone(target, tok, prompt, params, outcome(handle))
    got = outcome(bad)
    assert got.error is not None and "decode" in got.error
    assert got.tokens[0] == generate(target, *victim, tokenizer=tok).token_ids[: len(got.tokens[0])]
    assert_idle_and_clean(engine)
