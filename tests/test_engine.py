"""The continuous-batching engine without HTTP: tokens equal the reference, slots come back."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit import LFM2
from lfmkit.errors import ContextLengthError, GenerationError
from lfmkit.inference.completion import Completion
from lfmkit.inference.engine import Engine, EngineConfig, EngineOverloadedError, ErrorEvent, FinishEvent, TokenEvent
from lfmkit.inference.sampling import SamplingParams
from lfmkit.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, ref = make_checkpoint(tmp_path_factory.mktemp("engine"), layout="small", seed=3, with_tokenizer=True)
    return path, ref


@pytest.fixture(scope="module")
def model(checkpoint):
    return LFM2.from_pretrained(checkpoint[0]).eval()


def reference_greedy(ref, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy generate (the oracle), eos ignored."""
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def tokens_of(handle) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for ev in handle:
        assert not isinstance(ev, ErrorEvent), ev
        if isinstance(ev, TokenEvent):
            out.setdefault(ev.index, []).append(ev.token_id)
    return out


def wait_idle(engine, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if engine.active_sequences() == 0 and engine.queue_depth() == 0:
            return True
        time.sleep(0.01)
    return False


PROMPTS = [
    [1, 6, 40, 41, 42, 43],
    [1, 6, 99],
    [1, 6, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310],
    [1, 6, 77, 78],
    [1, 6, 200, 201, 202, 203, 204, 205, 206],
]


def test_batched_greedy_equals_reference_with_queueing_and_chunked_prefill(model, checkpoint):
    """5 requests of different lengths through 3 slots, prompts prefilled 4 tokens at a time."""
    ref = checkpoint[1]
    engine = Engine(model, None, EngineConfig(max_concurrent=3, max_length=64, prefill_chunk=4)).start()
    try:
        handles = [
            engine.submit(p, SamplingParams.greedy(max_tokens=8 + i, ignore_eos=True)) for i, p in enumerate(PROMPTS)
        ]
        got = [tokens_of(h)[0] for h in handles]
        assert wait_idle(engine)
    finally:
        engine.stop()
    for i, p in enumerate(PROMPTS):
        assert got[i] == reference_greedy(ref, p, 8 + i), f"request {i}"


def test_one_forward_per_decode_step_for_all_rows(model):
    """With 4 requests decoding together, the step count is about one per token, not four."""
    engine = Engine(model, None, EngineConfig(max_concurrent=4, max_length=64)).start()
    try:
        handles = [engine.submit(p, SamplingParams.greedy(max_tokens=20, ignore_eos=True)) for p in PROMPTS[:4]]
        for h in handles:
            assert len(tokens_of(h)[0]) == 20
    finally:
        engine.stop()
    assert engine.steps < 2 * 20 + 4


def test_n_choices_share_the_prefill_and_seeds_repeat(model):
    engine = Engine(model, None, EngineConfig(max_concurrent=4, max_length=64)).start()
    try:
        params = SamplingParams(max_tokens=6, n=3, seed=11, temperature=1.0, min_p=0.0, ignore_eos=True)
        first = tokens_of(engine.submit(PROMPTS[0], params))
        again = tokens_of(engine.submit(PROMPTS[0], params))
        greedy = tokens_of(engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=6, n=2, ignore_eos=True)))
    finally:
        engine.stop()
    assert sorted(first) == [0, 1, 2] and all(len(v) == 6 for v in first.values())
    assert first == again
    assert len({tuple(v) for v in first.values()}) > 1  # different seeds per choice
    assert greedy[0] == greedy[1]


def test_padded_group_prefill_with_n_choices(model, checkpoint):
    """Prompts of different lengths prefilled together (left-padded) with n=2 copies each."""
    ref = checkpoint[1]
    engine = Engine(model, None, EngineConfig(max_concurrent=6, max_length=64))
    engine._stopping = False
    handles = []
    with engine._cv:  # queue all three before the loop's first step
        engine._thread = threading.Thread(target=engine._loop, daemon=True)
        engine._thread.start()
        for p in (PROMPTS[1], PROMPTS[2], PROMPTS[0]):
            handles.append(engine.submit(p, SamplingParams.greedy(max_tokens=6, n=2, ignore_eos=True)))
    try:
        got = [tokens_of(h) for h in handles]
    finally:
        engine.stop()
    for p, out in zip((PROMPTS[1], PROMPTS[2], PROMPTS[0]), got):
        want = reference_greedy(ref, p, 6)
        assert out == {0: want, 1: want}
    assert engine.steps <= 7  # one prefill step for all three, then decode


def test_logprobs_are_the_model_distribution(model):
    engine = Engine(model, None, EngineConfig(max_concurrent=2, max_length=64)).start()
    try:
        h = engine.submit(PROMPTS[1], SamplingParams.greedy(max_tokens=1, logprobs=True, top_logprobs=3))
        ev = next(e for e in h if isinstance(e, TokenEvent))
    finally:
        engine.stop()
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([PROMPTS[1]]))[0, -1].float(), -1)
    assert ev.token_id == int(logp.argmax())
    assert ev.logprob == pytest.approx(float(logp.max()), abs=1e-4)
    top_ids = [t for t, _ in ev.top_logprobs]
    assert top_ids == logp.topk(3).indices.tolist()


def test_cancel_frees_the_slot_and_waiting_request_runs(model):
    engine = Engine(model, None, EngineConfig(max_concurrent=1, max_queued=4, max_length=256)).start()
    try:
        long = engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=200, ignore_eos=True))
        waiting = engine.submit(PROMPTS[1], SamplingParams.greedy(max_tokens=3, ignore_eos=True))
        first = next(iter(long))
        assert isinstance(first, TokenEvent)
        assert engine.queue_depth() == 1
        long.cancel()
        rest = list(long)
        assert isinstance(rest[-1], FinishEvent) and rest[-1].reason == "cancelled"
        assert len(tokens_of(waiting)[0]) == 3
        assert wait_idle(engine)
    finally:
        engine.stop()


def test_cancel_while_waiting(model):
    engine = Engine(model, None, EngineConfig(max_concurrent=1, max_queued=4, max_length=256)).start()
    try:
        running = engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=100, ignore_eos=True))
        queued = engine.submit(PROMPTS[1], SamplingParams.greedy(max_tokens=3, ignore_eos=True))
        queued.cancel()
        assert [e.reason for e in queued if isinstance(e, FinishEvent)] == ["cancelled"]
        running.cancel()
        assert wait_idle(engine)
    finally:
        engine.stop()


def test_limits(model):
    engine = Engine(model, None, EngineConfig(max_concurrent=1, max_queued=0, max_length=32)).start()
    try:
        with pytest.raises(ContextLengthError, match="32"):
            engine.submit(list(range(1, 40)), SamplingParams.greedy(max_tokens=1))
        with pytest.raises(ContextLengthError, match="max_tokens"):
            engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=30))
        with pytest.raises(GenerationError, match="outside the vocabulary"):
            engine.submit([1, 100000], SamplingParams.greedy(max_tokens=1))
        with pytest.raises(GenerationError, match="n=2"):
            engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=1, n=2))
        busy = engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=20, ignore_eos=True))
        next(iter(busy))  # it holds the only slot now
        with pytest.raises(EngineOverloadedError) as info:
            engine.submit(PROMPTS[1], SamplingParams.greedy(max_tokens=1))
        assert info.value.retry_after >= 1 and not info.value.stopped
        busy.cancel()
        assert wait_idle(engine)
    finally:
        engine.stop()
    with pytest.raises(EngineOverloadedError) as info:
        engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=1))
    assert info.value.stopped


def test_text_and_stop_strings(model, checkpoint):
    tok = Tokenizer.from_pretrained(checkpoint[0])
    engine = Engine(model, tok, EngineConfig(max_concurrent=2, max_length=64)).start()
    try:

        def run(params):
            text, reason = "", None
            for ev in engine.submit(PROMPTS[2], params, skip_special_tokens=False):
                text += ev.text
                if isinstance(ev, FinishEvent):
                    reason = ev.reason
            return text, reason

        full, reason = run(SamplingParams.greedy(max_tokens=12, ignore_eos=True))
        assert reason == "length"
        ids = tokens_of(engine.submit(PROMPTS[2], SamplingParams.greedy(max_tokens=12, ignore_eos=True)))[0]
        assert full == tok.decode(ids)
        stop = full[3:6]
        cut, reason = run(SamplingParams.greedy(max_tokens=12, ignore_eos=True, stop=[stop]))
        assert reason == "stop"
        assert cut == full[: full.index(stop)]
    finally:
        engine.stop()


class _ListDecoder:
    def __init__(self, pieces):
        self.pieces = list(pieces)

    def push(self, token_id):
        return self.pieces[token_id]

    def flush(self):
        return ""


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="ab\n", max_size=3), min_size=1, max_size=12),
    stops=st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_stop_matcher_never_leaks_a_stop_string(pieces, stops):
    completion = Completion(frozenset(), max_tokens=10**6, decoder=_ListDecoder(pieces), stop=stops)
    out, hit = "", False
    for i in range(len(pieces)):
        out += completion.accept(i)
        hit = completion.finish_reason is not None
        if hit:
            break
    out += completion.flush()
    # Generation ends after the first token whose text completes a stop string; the output is
    # the text before the earliest stop string seen by then (or everything), never more.
    expected, seen = "".join(pieces), ""
    for piece in pieces:
        seen += piece
        cuts = [seen.find(s) for s in stops if s in seen]
        if cuts:
            expected = seen[: min(cuts)]
            break
    assert out == expected
    assert hit == bool(cuts)
    assert not any(s in out for s in stops)


class _AlwaysAlive:
    def is_alive(self):
        return True


def _drain(handle) -> list:
    out = []
    while not handle._queue.empty():
        out.append(handle._queue.get())
    return out


def test_long_prefill_is_interleaved_with_running_streams(model):
    """A 20-token prompt arriving mid-stream is prefilled 4 tokens per step, and the running
    stream gets one token at every one of those steps (driven step by step, no thread)."""
    engine = Engine(model, None, EngineConfig(max_concurrent=2, max_length=64, prefill_chunk=4))
    engine._thread = _AlwaysAlive()  # we call step() ourselves
    running = engine.submit(PROMPTS[0], SamplingParams.greedy(max_tokens=30, ignore_eos=True))
    engine.step()
    assert len(_drain(running)) == 2  # first token from the prefill, one decode step
    late = engine.submit(list(range(1, 21)), SamplingParams.greedy(max_tokens=3, ignore_eos=True))
    for step in range(5):
        engine.step()
        assert [type(e) for e in _drain(running)] == [TokenEvent]  # never stalled
        got = _drain(late)
        assert (len(got) > 0) == (step == 4)  # the late prompt's first token after 20/4 steps
    assert engine.queue_depth() == 0 and engine.active_sequences() == 2
