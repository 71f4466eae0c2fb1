"""The engine isolates requests: what goes wrong in one request (its prefill, its decode, its
stop check, a cancel at any moment) ends that request only; every other request gets exactly
the tokens it gets alone. The engine is driven step by step in the test thread (deterministic)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from test_engine import _AlwaysAlive

import lfmkit
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


def alone(model, tok, prompt: list[int], params: SamplingParams):
    """The oracle: `lfmkit.generate` on this request alone (greedy)."""
    return lfmkit.generate(model, prompt, params.replace(n=1), tokenizer=tok)


def assert_as_alone(model, tok, prompt, params, got: Outcome) -> None:
    want = alone(model, tok, prompt, params)
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
    requests = [(list(range(10, 60)), SamplingParams.greedy(max_tokens=1, ignore_eos=True)),
                ([1, 6], SamplingParams.greedy(max_tokens=60, ignore_eos=True))]
    handles = [engine.submit(p, s, skip_special_tokens=False) for p, s in requests]
    run_until_idle(engine)
    for (prompt, params), handle in zip(requests, handles):
        assert_as_alone(model, tok, prompt, params, outcome(handle))
    assert_idle_and_clean(engine)


class InsideForward:
    """Runs `action()` inside the model's forward (in its last layer, after the earlier layers
    have written the state) whenever `when(input_ids, state)` holds for the forward in progress:
    a cancel that lands mid-forward, or a fault (an action that raises)."""

    def __init__(self, model, when, action):
        self.when, self.action, self.fired = when, action, 0
        self._call = (None, None)
        self._hooks = [model.register_forward_pre_hook(self._enter, with_kwargs=True),
                       model.model.layers[-1].register_forward_pre_hook(self._layer)]

    def _enter(self, module, args, kwargs):
        self._call = (args[0], kwargs.get("state"))

    def _layer(self, module, args):
        if self.when(*self._call):
            self.fired += 1
            self.action()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()


def _raise():
    raise RuntimeError("injected fault")


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams.greedy(max_tokens=max_tokens, ignore_eos=True, **kw)


LONG = list(range(100, 120))      # 20 tokens: chunked in the side state with prefill_chunk=4


@pytest.mark.parametrize("moment", ["group prefill", "group prefill, n=2", "last side-state chunk",
                                    "side-state chunk", "decode"])
def test_a_cancel_inside_a_forward_ends_only_that_request(model, tok, moment):
    """The cancelled request ends "cancelled" (every choice, no token after the cancel); the
    other request gets exactly its tokens alone."""
    engine = stepped(model, tok, max_concurrent=3, max_length=64, prefill_chunk=4)
    keep = ([1, 6, 40, 41], greedy(12))
    victim = {"group prefill": ([1, 6, 99], greedy(8)),
              "group prefill, n=2": ([1, 6, 99], greedy(8, n=2)),
              "last side-state chunk": (LONG, greedy(8)),
              "side-state chunk": (LONG, greedy(8)),
              "decode": ([1, 6, 99], greedy(8))}[moment]
    handles = {}
    when = {"group prefill": lambda ids, state: ids.shape == (2, 4),
            "group prefill, n=2": lambda ids, state: ids.shape == (2, 4),
            "last side-state chunk": lambda ids, state: state is engine._side and int(state.lengths[0]) == 16,
            "side-state chunk": lambda ids, state: state is engine._side and int(state.lengths[0]) == 8,
            "decode": lambda ids, state: ids.shape == (2, 1) and int(state.positions.max()) == 7}[moment]
    with InsideForward(model, when, lambda: handles["victim"].cancel()) as hook:
        handles["keep"] = engine.submit(*keep, skip_special_tokens=False)
        if moment.startswith("group"):
            handles["victim"] = engine.submit(*victim, skip_special_tokens=False)
        else:
            engine.step()
            handles["victim"] = engine.submit(*victim, skip_special_tokens=False)
        run_until_idle(engine)
    assert hook.fired == 1
    assert_as_alone(model, tok, *keep, outcome(handles["keep"]))
    got = outcome(handles["victim"])
    assert got.error is None and got.reason == {i: "cancelled" for i in range(victim[1].n)}
    want = alone(model, tok, *victim).token_ids
    for tokens in got.tokens.values():
        assert tokens == want[: len(tokens)] and len(tokens) < len(want)
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
    after = engine.submit(*KEEP[0], skip_special_tokens=False)       # and it goes on serving
    run_until_idle(engine)
    assert_as_alone(model, tok, *KEEP[0], outcome(after))
    return outcome(bad), hook


POISON = 500


@pytest.mark.parametrize("where", ["grouped prefill", "side-state chunk"])
def test_a_prompt_whose_prefill_fails_ends_only_its_request(model, tok, where):
    """The grouped forward fails; each prompt is retried alone and only the poisoned one fails."""
    prompt = [1, 6] + [100 + i for i in range(8)] + [POISON] + [200 + i for i in range(9)]   # 20 tokens
    got, _ = _run_with_victim(model, tok, (prompt, greedy(5)),
                              lambda ids, state: ids.shape[1] > 1 and bool((ids == POISON).any()),
                              dict(max_concurrent=4, max_length=64, prefill_chunk=128 if where[0] == "g" else 4),
                              late=where[0] == "s")
    assert got.tokens == {} and got.reason == {}
    assert got.error is not None and "RuntimeError" in got.error and "prefill" in got.error


def test_a_row_whose_decode_fails_ends_only_its_request(model, tok):
    """The fault hits the batched decode after its first layers wrote the state: the rows are
    put back, retried alone, and only the failing row's request ends (with its 2 tokens)."""
    victim = (LONG, greedy(8))
    got, hook = _run_with_victim(model, tok, victim,
                                 lambda ids, state: ids.shape[1] == 1 and bool((state.positions == 21).any()),
                                 dict(max_concurrent=4, max_length=64))
    assert hook.fired == 2                     # the batch, then the row alone
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
    """The test tokenizer, except that its `which`-th incremental decoder fails on its `at`-th token."""

    def __init__(self, tok, which: int, at: int):
        self.tok, self.which, self.at, self.made = tok, which, at, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def incremental_decoder(self, **kw):
        self.made += 1
        decoder = self.tok.incremental_decoder(**kw)
        return _FailingDecoder(decoder, self.at) if self.made == self.which else decoder


def test_a_failing_stop_check_ends_only_its_request(model, tok):
    """Choice 1 of the n=2 request fails on its 4th token: that request ends with an ErrorEvent
    (choice 0 stops too, after its 4 tokens), the others are as alone."""
    engine = stepped(model, _Tokenizer(tok, which=4, at=4), max_concurrent=4, max_length=64)
    first, second = (KEEP[0], KEEP[1])
    handles = [engine.submit(*first, skip_special_tokens=False), engine.submit(*second, skip_special_tokens=False),
               engine.submit(LONG, greedy(6), skip_special_tokens=False)]
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
