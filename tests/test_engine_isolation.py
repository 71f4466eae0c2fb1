"""The engine isolates requests: what goes wrong in one request (its prefill, its decode, its
stop check, a cancel at any moment) ends that request only; every other request gets exactly
the tokens it gets alone. The engine is driven step by step in the test thread (deterministic)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import _AlwaysAlive

import lfmkit
from lfmkit import kernels
from lfmkit.errors import ContextLengthError
from lfmkit.inference.engine import Engine, EngineConfig, ErrorEvent, FinishEvent, TokenEvent
from lfmkit.inference.sampling import SamplingParams


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("isolation"), layout="small", seed=3, with_tokenizer=True)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return lfmkit.LFM2.from_pretrained(checkpoint).eval()


@pytest.fixture(scope="module")
def tok(checkpoint):
    return lfmkit.Tokenizer.from_pretrained(checkpoint)


def stepped(model, tok=None, **config) -> Engine:
    """An engine whose steps the test runs itself (`engine.step()`), no thread."""
    engine = Engine(model, tok, EngineConfig(**config))
    engine._thread = _AlwaysAlive()
    return engine


def run_until_idle(engine: Engine, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if engine.active_sequences() == 0 and engine.queue_depth() == 0:
            return
        engine.step()
    raise AssertionError("the engine did not go idle")


@dataclass
class Outcome:
    """Everything one request received, by choice index."""

    tokens: dict[int, list[int]] = field(default_factory=dict)
    text: dict[int, str] = field(default_factory=dict)
    reason: dict[int, str] = field(default_factory=dict)
    error: str | None = None


def outcome(handle) -> Outcome:
    """The events delivered to `handle` so far (the engine is idle: they all are)."""
    out = Outcome()
    while not handle._queue.empty():
        ev = handle._queue.get_nowait()
        assert out.error is None, f"an event after the ErrorEvent: {ev}"
        if isinstance(ev, ErrorEvent):
            out.error = ev.message
            continue
        assert ev.index not in out.reason, f"an event after choice {ev.index} finished: {ev}"
        out.text[ev.index] = out.text.get(ev.index, "") + ev.text
        if isinstance(ev, TokenEvent):
            out.tokens.setdefault(ev.index, []).append(ev.token_id)
        else:
            out.reason[ev.index] = ev.reason
            assert ev.completion_tokens == len(out.tokens.get(ev.index, []))
    return out


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams.greedy(max_tokens=max_tokens, **{"ignore_eos": True, **kw})


def alone(model, tok, prompt: list[int], params: SamplingParams):
    """The oracle: `lfmkit.generate` on this request alone (greedy)."""
    return lfmkit.generate(model, prompt, params.replace(n=1), tokenizer=tok)


def assert_as_alone(model, tok, prompt, params, got: Outcome, want=None) -> None:
    """Every choice got the tokens, finish reason and text of the request alone (`want`)."""
    want = want or alone(model, tok, prompt, params)
    assert got.error is None, got.error
    for index in range(params.n):
        assert got.tokens.get(index, []) == want.token_ids, f"choice {index}"
        assert got.reason[index] == want.finish_reason
        if tok is not None:
            assert got.text[index] == want.text


def assert_idle_and_clean(engine: Engine) -> None:
    """Every slot, sampler row and state row came back."""
    assert engine.active_sequences() == 0 and engine.queue_depth() == 0
    assert sorted(engine._free_sampler_slots) == list(range(engine.config.max_concurrent))
    assert int(engine.state.lengths.sum()) == 0 and int(engine._side.lengths.sum()) == 0


def test_a_padded_group_places_every_row_so_it_fits(model, tok):
    """A 50-token prompt wanting 1 token beside a 2-token prompt wanting 60, context 64: both are
    valid; grouped together, left padding must not push the short row past its slots."""
    engine = stepped(model, tok, max_concurrent=2, max_length=64)
    requests = [(list(range(10, 60)), greedy(1)), ([1, 6], greedy(60))]
    handles = [engine.submit(p, s, skip_special_tokens=False) for p, s in requests]
    run_until_idle(engine)
    for (prompt, params), handle in zip(requests, handles):
        assert_as_alone(model, tok, prompt, params, outcome(handle))
    assert_idle_and_clean(engine)


class InsideForward:
    """Runs `action(input_ids, state)` inside the model's forward (in its last layer, after the
    earlier layers have written the state) whenever `when(input_ids, state)` holds for the forward
    in progress: a cancel that lands mid-forward, or a fault (an action that raises)."""

    def __init__(self, model, when, action):
        self.when, self.action, self.fired = when, action, 0
        self._call = (None, None)
        self._hooks = [
            model.register_forward_pre_hook(self._enter, with_kwargs=True),
            model.model.layers[-1].register_forward_pre_hook(self._layer),
        ]

    def _enter(self, module, args, kwargs):
        self._call = (args[0], kwargs.get("state"))

    def _layer(self, module, args):
        if self.when(*self._call):
            self.fired += 1
            self.action(*self._call)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()


def _raise(*_):
    raise RuntimeError("injected fault")


LONG = list(range(100, 120))  # 20 tokens: chunked in the side state with prefill_chunk=4


@pytest.mark.parametrize(
    "moment", ["group prefill", "group prefill, n=2", "last side-state chunk", "side-state chunk", "decode"]
)
def test_a_cancel_inside_a_forward_ends_only_that_request(model, tok, moment):
    """The cancelled request ends "cancelled" (every choice, no token after the cancel); the
    other request gets exactly its tokens alone."""
    engine = stepped(model, tok, max_concurrent=3, max_length=64, prefill_chunk=4)
    keep = ([1, 6, 40, 41], greedy(12))
    victim = {
        "group prefill": ([1, 6, 99], greedy(8)),
        "group prefill, n=2": ([1, 6, 99], greedy(8, n=2)),
        "last side-state chunk": (LONG, greedy(8)),
        "side-state chunk": (LONG, greedy(8)),
        "decode": ([1, 6, 99], greedy(8)),
    }[moment]
    handles = {}
    when = {
        "group prefill": lambda ids, state: ids.shape == (2, 4),
        "group prefill, n=2": lambda ids, state: ids.shape == (2, 4),
        "last side-state chunk": lambda ids, state: state is engine._side and int(state.lengths[0]) == 16,
        "side-state chunk": lambda ids, state: state is engine._side and int(state.lengths[0]) == 8,
        "decode": lambda ids, state: ids.shape == (2, 1) and int(state.positions.max()) == 7,
    }[moment]
    with InsideForward(model, when, lambda ids, state: handles["victim"].cancel()) as hook:
        handles["keep"] = engine.submit(*keep, skip_special_tokens=False)
        if not moment.startswith("group"):
            engine.step()  # `keep` runs; the victim arrives mid-stream
        handles["victim"] = engine.submit(*victim, skip_special_tokens=False)
        run_until_idle(engine)
    assert hook.fired == 1
    assert_as_alone(model, tok, *keep, outcome(handles["keep"]))
    got = outcome(handles["victim"])
    assert got.error is None and got.reason == {i: "cancelled" for i in range(victim[1].n)}
    want = alone(model, tok, *victim).token_ids
    for tokens in got.tokens.values():
        assert tokens == want[: len(tokens)] and len(tokens) < len(want)
    assert (got.tokens == {}) == (moment != "decode")  # cancelled in its prefill: no token
    assert_idle_and_clean(engine)


KEEP = [([1, 6, 40, 41], greedy(12)), ([1, 6, 77, 78, 79], greedy(10, n=2))]


def _run_with_victim(model, tok, victim, when, config, late: bool = False):
    """Serve KEEP and `victim` with a fault injected while `when` holds; return the outcomes."""
    engine = stepped(model, tok, **config)
    with InsideForward(model, when, _raise) as hook:
        keep = [engine.submit(p, s, skip_special_tokens=False) for p, s in KEEP]
        if late:
            engine.step()
        bad = engine.submit(*victim, skip_special_tokens=False)
        run_until_idle(engine)
    assert hook.fired >= 1
    for (prompt, params), handle in zip(KEEP, keep):
        assert_as_alone(model, tok, prompt, params, outcome(handle))
    assert_idle_and_clean(engine)
    after = engine.submit(*KEEP[0], skip_special_tokens=False)  # and it goes on serving
    run_until_idle(engine)
    assert_as_alone(model, tok, *KEEP[0], outcome(after))
    return outcome(bad), hook


POISON = 500


@pytest.mark.parametrize("where", ["grouped prefill", "side-state chunk"])
def test_a_prompt_whose_prefill_fails_ends_only_its_request(model, tok, where):
    """The grouped forward fails; each prompt is retried alone and only the poisoned one fails."""
    prompt = [1, 6] + [100 + i for i in range(8)] + [POISON] + [200 + i for i in range(9)]  # 20 tokens
    got, _ = _run_with_victim(
        model,
        tok,
        (prompt, greedy(5)),
        lambda ids, state: ids.shape[1] > 1 and bool((ids == POISON).any()),
        dict(max_concurrent=4, max_length=64, prefill_chunk=128 if where[0] == "g" else 4),
        late=where[0] == "s",
    )
    assert got.tokens == {} and got.reason == {}
    assert got.error is not None and "RuntimeError" in got.error and "prefill" in got.error


def test_a_row_whose_decode_fails_ends_only_its_request(model, tok):
    """The fault hits the batched decode after its first layers wrote the state: the rows are
    put back, retried alone, and only the failing row's request ends (with its 2 tokens)."""
    victim = (LONG, greedy(8))
    got, hook = _run_with_victim(
        model,
        tok,
        victim,
        lambda ids, state: ids.shape[1] == 1 and bool((state.positions == 21).any()),
        dict(max_concurrent=4, max_length=64),
    )
    assert hook.fired == 2  # the batch, then the row alone
    assert got.tokens == {0: alone(model, tok, *victim).token_ids[:2]} and got.reason == {}
    assert "decode" in got.error


def test_a_batch_decode_that_fails_once_loses_nothing(model, tok):
    """A decode forward that fails for the whole batch (and works row by row) costs no request."""
    engine = stepped(model, tok, max_concurrent=4, max_length=64)
    with InsideForward(model, lambda ids, state: ids.shape == (3, 1) and hook.fired == 0, _raise) as hook:
        handles = [engine.submit(p, s, skip_special_tokens=False) for p, s in KEEP]
        run_until_idle(engine)
    assert hook.fired == 1
    for (prompt, params), handle in zip(KEEP, handles):
        assert_as_alone(model, tok, prompt, params, outcome(handle))
    assert_idle_and_clean(engine)


class _FailingDecoder:
    def __init__(self, decoder, at: int):
        self.decoder, self.at, self.seen = decoder, at, 0

    def push(self, token_id):
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("injected decoder fault")
        return self.decoder.push(token_id)

    def flush(self):
        return self.decoder.flush()


class _Tokenizer:
    """The test tokenizer, its k-th incremental decoder (from 1) replaced by `wrap(decoder, k)`."""

    def __init__(self, tok, wrap):
        self.tok, self.wrap, self.made = tok, wrap, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def incremental_decoder(self, **kw):
        self.made += 1
        return self.wrap(self.tok.incremental_decoder(**kw), self.made)


def test_a_failing_stop_check_ends_only_its_request(model, tok):
    """Choice 1 of the n=2 request fails on its 4th token: that request ends with an ErrorEvent
    (choice 0 stops too, after its 4 tokens), the others are as alone."""
    failing = _Tokenizer(tok, lambda decoder, k: _FailingDecoder(decoder, at=4) if k == 4 else decoder)
    engine = stepped(model, failing, max_concurrent=4, max_length=64)
    first, second = (KEEP[0], KEEP[1])
    handles = [
        engine.submit(*first, skip_special_tokens=False),
        engine.submit(*second, skip_special_tokens=False),
        engine.submit(LONG, greedy(6), skip_special_tokens=False),
    ]
    run_until_idle(engine)
    assert_as_alone(model, tok, *first, outcome(handles[0]))
    assert_as_alone(model, tok, LONG, greedy(6), outcome(handles[2]))
    got = outcome(handles[1])
    want = alone(model, tok, *second).token_ids
    assert "stop check" in got.error and got.reason == {}
    assert got.tokens == {0: want[:4], 1: want[:3]}
    assert_idle_and_clean(engine)


def test_a_failing_cancel_ends_only_its_request(model, tok):
    engine = stepped(model, tok, max_concurrent=4, max_length=64)
    handles = [engine.submit(p, s, skip_special_tokens=False) for p, s in KEEP]
    victim = engine.submit(LONG, greedy(20), skip_special_tokens=False)
    push = victim._push
    victim._push = lambda ev: _raise() if isinstance(ev, FinishEvent) else push(ev)
    engine.step()
    victim.cancel()
    run_until_idle(engine)
    for (prompt, params), handle in zip(KEEP, handles):
        assert_as_alone(model, tok, prompt, params, outcome(handle))
    got = outcome(victim)
    assert "cancel" in got.error and len(got.tokens[0]) == 2
    assert_idle_and_clean(engine)


# ---- the property: random traffic --------------------------------------------------------------
@dataclass
class _Planned:
    """One request of a random traffic mix, and what happened to it."""

    prompt: list[int]
    params: SamplingParams
    fits: bool  # prompt + max_tokens fit the engine's context
    arrival: int  # submitted just before this engine step
    cancel_step: int | None  # cancelled just before this engine step,
    cancel_in_prefill: int | None  # or inside the k-th forward that prefills it
    handle: object = None
    prefill_forwards: int = 0
    cancelled_at: int | None = None  # the step at which cancel() was called


def _plan(data, model, tok, max_length: int, max_concurrent: int) -> _Planned:
    vocab = model.config.vocab_size
    size = data.draw(st.one_of(st.integers(1, 6), st.integers(1, max_length + 2)))
    prompt = data.draw(st.lists(st.integers(0, vocab - 1), min_size=size, max_size=size))
    room = max_length - size
    if room >= 1 and data.draw(st.integers(0, 5)):  # mostly requests that fit, often filling the row
        max_tokens = data.draw(st.one_of(st.just(room), st.integers(1, room)))
    else:
        max_tokens = data.draw(st.integers(max(1, room + 1), max_length + 4))
    fits = size + max_tokens <= max_length
    params = greedy(max_tokens, n=data.draw(st.integers(1, max_concurrent)), ignore_eos=data.draw(st.booleans()))
    if fits and data.draw(st.booleans()):  # stop on something it really generates
        base = alone(model, tok, prompt, params)
        at = data.draw(st.integers(0, len(base.token_ids) - 1))
        if data.draw(st.booleans()):
            params = params.replace(stop_token_ids=[base.token_ids[at]])
        elif base.text:
            start = data.draw(st.integers(0, len(base.text) - 1))
            params = params.replace(stop=[base.text[start : start + data.draw(st.integers(1, 3))]])
    arrival = data.draw(st.sampled_from([0, 0, 0, 1, 2, 4, 7]))
    when = data.draw(st.sampled_from(["never", "step", "prefill"]))
    cancel_step = arrival + data.draw(st.integers(0, 30)) if when == "step" else None
    cancel_in_prefill = data.draw(st.sampled_from([1, 1, 2, 3])) if when == "prefill" else None
    return _Planned(prompt, params, fits, arrival, cancel_step, cancel_in_prefill)


def _being_prefilled(engine: Engine, p: _Planned, state) -> bool:
    """Inside a forward: is it prefilling `p`'s prompt (submitted, no sequence yet, and either
    taken off the queue for a grouped prefill, or the head of the queue in the side state)?"""
    if p.handle is None or p.cancelled_at is not None or any(s.request.handle is p.handle for s in engine._running):
        return False
    waiting = [r.handle for r in engine._waiting]
    if p.handle not in waiting:
        return p.handle._queue.empty()
    return state is engine._side and waiting[0] is p.handle


@settings(max_examples=30, deadline=None, derandomize=True)
@given(data=st.data())
def test_random_traffic_gets_what_each_request_gets_alone(model, tok, data):
    """Random mixes of prompt lengths, max_tokens, n, stop strings / stop tokens, eos, arrival
    times, cancels (at step boundaries or inside a forward that prefills the request: before,
    during or after prefill) and context limits: every request that fits gets exactly its
    tokens, text and finish reason alone (greedy), a cancelled one ends "cancelled" with a
    prefix of them, none gets an ErrorEvent, and one that can never fit is refused at submit
    with ContextLengthError."""
    max_length = data.draw(st.integers(48, 96))
    max_concurrent = data.draw(st.integers(2, 4))
    engine = stepped(
        model, tok, max_concurrent=max_concurrent, max_length=max_length, prefill_chunk=data.draw(st.integers(3, 16))
    )
    plan = [_plan(data, model, tok, max_length, max_concurrent) for _ in range(data.draw(st.integers(1, 5)))]
    step = 0

    def cancel(p: _Planned) -> None:
        if p.handle is not None and p.cancelled_at is None:
            p.cancelled_at = step
            p.handle.cancel()

    def in_prefill(ids, state) -> None:
        for p in plan:
            if p.cancel_in_prefill is not None and _being_prefilled(engine, p, state):
                p.prefill_forwards += 1
                if p.prefill_forwards == p.cancel_in_prefill:
                    cancel(p)

    with InsideForward(model, lambda ids, state: True, in_prefill):
        while step < 1000:
            for p in plan:
                if p.arrival == step:
                    if not p.fits:
                        with pytest.raises(ContextLengthError):
                            engine.submit(p.prompt, p.params)
                        continue
                    p.handle = engine.submit(p.prompt, p.params, skip_special_tokens=False)
                if p.cancel_step == step:
                    cancel(p)
            if step > max(p.arrival for p in plan) and engine.active_sequences() == engine.queue_depth() == 0:
                break
            engine.step()
            step += 1
    assert_idle_and_clean(engine)
    for p in [p for p in plan if p.fits]:
        got, want = outcome(p.handle), alone(model, tok, p.prompt, p.params)
        assert got.error is None, got.error
        assert sorted(got.reason) == list(range(p.params.n))
        if p.cancelled_at is None:
            assert_as_alone(model, tok, p.prompt, p.params, got, want)
            continue
        if p.cancelled_at == p.arrival and p.cancel_step is not None:  # before the engine saw it
            assert set(got.reason.values()) == {"cancelled"} and got.tokens == {}
        for index, reason in got.reason.items():
            tokens = got.tokens.get(index, [])
            if reason == "cancelled":
                assert tokens == want.token_ids[: len(tokens)] and len(tokens) < len(want.token_ids)
                assert want.text.startswith(got.text.get(index, ""))
            else:
                assert (tokens, reason, got.text[index]) == (want.token_ids, want.finish_reason, want.text)


class _HoldAll:
    """A decoder that shows nothing until `flush` (as one holding back a partial character)."""

    def __init__(self, decoder):
        self.decoder, self.held = decoder, ""

    def push(self, token_id):
        self.held += self.decoder.push(token_id)
        return ""

    def flush(self):
        out, self.held = self.held + self.decoder.flush(), ""
        return out


def test_a_stop_string_in_the_held_back_tail_finishes_with_stop(model, tok):
    """At max_tokens the held-back text is flushed; a stop string in it makes the finish "stop"
    (and cuts the text), as in `generate`."""
    holding = _Tokenizer(tok, lambda decoder, k: _HoldAll(decoder))
    prompt = [1, 6, 40, 41]
    full = alone(model, tok, prompt, greedy(8)).text
    params = greedy(8, stop=[full[2:4]])
    engine = stepped(model, holding, max_concurrent=2, max_length=64)
    handle = engine.submit(prompt, params, skip_special_tokens=False)
    run_until_idle(engine)
    got, want = outcome(handle), alone(model, holding, prompt, params)
    assert want.finish_reason == "stop" and want.text == full[:2]
    assert (got.tokens[0], got.reason[0], got.text[0]) == (want.token_ids, "stop", want.text)


def test_the_served_model_decodes_grouped_padded_prompts_on_the_fused_step(tmp_path):
    """`lfmkit serve`'s model (`lfmkit.load`, int8, fast paths): a padded group (the 50 + 1 beside
    2 + 60 case, and n=2) is prefilled together, its rows lose their padding and then decode
    through the fused decode step; every request gets its tokens alone."""
    from checkpoints import make_checkpoint

    if kernels.load() is None:
        pytest.skip(f"no C++ kernels: {kernels.build_error}")
    path, _ = make_checkpoint(
        tmp_path,
        layout="small",
        seed=3,
        hidden_size=64,
        intermediate_size=192,
        num_key_value_heads=2,
        with_tokenizer=True,
    )
    # The default W8A8 prefill: the 2- and 4-token prompts padded into the group take the decode
    # kernels on their own tokens, as alone (quant.linear.rows_of), not the group's GEMM, whose
    # per-token activations would round differently from the kernels' blocks.
    model = lfmkit.load(path, quant="int8")
    tok = lfmkit.Tokenizer.from_pretrained(path)
    fused = model.__dict__["fused_decode"]
    steps = []

    def counting(ids, state):
        logits = fused(ids, state)
        steps.append(logits is not None)
        return logits

    model.__dict__["fused_decode"] = counting
    engine = stepped(model, tok, max_concurrent=4, max_length=64)
    requests = [(list(range(10, 60)), greedy(1)), ([1, 6], greedy(60)), ([1, 6, 40, 41], greedy(20, n=2))]
    handles = [engine.submit(p, s, skip_special_tokens=False) for p, s in requests]
    run_until_idle(engine)
    assert engine.steps == 59 and steps == [True] * 59  # every decode forward on the fused step
    model.__dict__["fused_decode"] = fused
    for (prompt, params), handle in zip(requests, handles):
        assert_as_alone(model, tok, prompt, params, outcome(handle))
    assert_idle_and_clean(engine)


def test_dropping_left_padding_leaves_the_row_its_prompt_alone_would(model):
    """A row prefilled left-padded and then stripped of its padding decodes exactly like the
    prompt prefilled alone (K/V in the same slots, positions, logits, up to float rounding);
    real tokens are never dropped."""
    from lfmkit.inference.generate import prefill

    short, long = [1, 6, 99], [1, 6, 40, 41, 42, 43, 44]
    padded, plain = model.new_state(2, 32), model.new_state(1, 32)
    with torch.no_grad():
        prefill(model, padded, [short, long], pad_id=0)
        prefill(model, plain, [short])
        padded.drop_left_padding(0, len(long) - len(short))
        assert padded.lengths.tolist() == [3, 7] and padded.positions.tolist() == [3, 7]
        for a, b in zip(padded.keys, plain.keys):
            if a is not None:
                torch.testing.assert_close(a[0, :, :3], b[0, :, :3], rtol=0, atol=1e-5)
        step = torch.tensor([[5]])
        got = model(step, state=padded.rows(0, 1, [3], dense=True))
        want = model(step, state=plain)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not all padding"):
        padded.drop_left_padding(1, 1)
