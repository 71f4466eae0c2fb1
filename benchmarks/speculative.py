"""Speculative decoding at batch 1 on random weights: what verifying costs and what it can buy.

    PYTHONPATH=$PWD python benchmarks/speculative.py [PRESET] [QUANT] [K]   # lfm2-350m int4 4

Random weights make two different models disagree on nearly every token, and a random model
does not copy its context (its greedy output never repeats an n-gram here), so the acceptance
of a draft model or of n-gram drafting says nothing before trained weights arrive. What random
weights do measure is the mechanics, on the real shapes:

1. the fused verify step: one call taking T tokens of one row vs one single-token step (ms);
2. end to end (`stream_generate`, greedy, DECODE tokens after a 128-token prompt, tok/s from the
   first token on): plain; `self` (the model drafts for itself: every draft accepted, but each
   draft costs a full step, so no gain is expected); `replay@a` (drafts replayed from the plain
   run's output, each wrong with probability 1 - a: free drafts with a known acceptance, the
   regime of n-gram drafting on text that copies its context). Every run must give the plain
   output token for token.

THREADS (default 1) sets torch's threads: on a loaded machine one thread compares more fairly.
Prints one JSON line per measurement.
"""

import json
import os
import sys
import time

import torch

from lfmkit import LFM2Config
from lfmkit.bench import stream_decode_rate
from lfmkit.inference.drafters import Draft
from lfmkit.inference.sampling import SamplingParams
from lfmkit.inference.speculative import Speculator
from lfmkit.loader import random_quantized

DECODE = 96


class Replay:
    """A benchmark instrument, not a drafter to use: proposes the known plain continuation, each
    token replaced by a wrong one with probability 1 - accept (a fixed pseudo-random pattern)."""

    def __init__(self, prompt_len: int, known: list[int], accept: float, vocab: int):
        self.prompt_len, self.known, self.accept, self.vocab = prompt_len, known, accept, vocab
        self.k = 4

    def reset(self, params, seed=None):
        pass

    def propose(self, context, k):
        at = len(context) - self.prompt_len  # tokens generated so far
        out = []
        for i, tok in enumerate(self.known[at : at + k]):
            wrong = ((at + i) * 2654435761 % 1000) / 1000 >= self.accept
            out.append((tok + 1) % self.vocab if wrong else tok)
        return Draft(out)


class ReplaySpeculator(Speculator):
    """A Speculator whose sequences draft with a `Replay`."""

    def __init__(self, k: int, replay: Replay):
        super().__init__("ngram", k=k)
        self.replay = replay

    def new_drafter(self, max_length):
        return self.replay


def main():
    preset = sys.argv[1] if len(sys.argv) > 1 else "lfm2-350m"
    quant = sys.argv[2] if len(sys.argv) > 2 else "int4"
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    model = random_quantized(LFM2Config.from_preset(preset), quant)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(16, 500, (128,), generator=g).tolist()
    base = {"preset": preset, "quant": quant, "threads": torch.get_num_threads()}

    # 1. one fused call for T tokens vs one step
    with torch.inference_mode():
        for t in range(1, k + 2):
            state = model.new_state(1, max_length=len(prompt) + 64 * (k + 2))
            model.prefill(torch.tensor([prompt]), state)
            ids = torch.tensor([[5] * t])
            best = 1e9
            for _ in range(12):
                began = time.perf_counter()
                model.fused_decode(ids, state)
                best = min(best, time.perf_counter() - began)
            print(json.dumps({**base, "verify_tokens": t, "ms_per_call": round(1000 * best, 2)}), flush=True)

    # 2. end to end
    params = SamplingParams.greedy(max_tokens=DECODE, ignore_eos=True)
    plain_rate, plain = stream_decode_rate(model, prompt, params)
    print(json.dumps({**base, "run": "plain", "tok_s": round(plain_rate, 2)}), flush=True)
    runs = [("self", Speculator(model, k=k))]
    for a in (1.0, 0.7, 0.4):
        runs.append((f"replay@{a}", ReplaySpeculator(k, Replay(len(prompt), plain, a, model.config.vocab_size))))
    for name, spec in runs:
        rate, out = stream_decode_rate(model, prompt, params, spec)
        st = spec.stats
        print(
            json.dumps(
                {
                    **base,
                    "run": name,
                    "k": k,
                    "tok_s": round(rate, 2),
                    "speedup": round(rate / plain_rate, 2),
                    "acceptance": round(st.acceptance_rate, 3) if st.acceptance_rate is not None else None,
                    "tokens_per_step": round(st.tokens_per_step, 2),
                    "same_output": out == plain,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
