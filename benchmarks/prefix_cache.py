"""Time to first token of turn N of a long conversation: lfmkit with its prefix cache, lfmkit
re-prefilling (`cache_mb=0`), and llama.cpp reusing its context memory, in the same run.

All three run the same random-weight checkpoint (LFM2-350M shapes by default, float32; the
GGUF is written by lfmkit's own exporter from that checkpoint, type f32) on the same token ids,
in this process, one after the other. lfmkit runs its continuous-batching `Engine` (what
`lfmkit serve` runs; no HTTP). llama.cpp runs through llama-cpp-python's `Llama`, whose
`generate` reuses the longest prefix of what its context already holds and re-evaluates
the rest: the behaviour of llama-server's `cache_prompt` for one slot (there is no llama-server
binary here). For a hybrid model, llama.cpp can only keep its memory when the new prompt
extends exactly what it holds: its recurrent (conv) state cannot be cut back, so any other
prompt is evaluated from scratch ("partial kv removal not supported").

A conversation is `--turns` turns of `--user-tokens` new user tokens each (in LFM2's chat
framing) and `--answer-tokens` generated tokens (greedy, eos masked). Scenarios:

- `linear`: each engine's history holds exactly the tokens it generated (an agent keeping the
  ids, or a tokenizer that re-encodes the answers the same way): llama.cpp's best case.
- `rewritten`: past answers come back as different tokens (LFM2's template drops a past
  answer's `<think>` trace; a client edits or truncates), here fixed scripted answers.
- `interleaved`: two conversations take turns on one server (two agents).

Reported: the time to first token of the last turn (median of `--repeats` conversations),
its prompt length and the tokens lfmkit restored from the cache, and the ratios. The machine
may be shared: the ratios come from one run, each engine measured right after the others.

    python benchmarks/prefix_cache.py                          # LFM2-350M shapes, 8 turns
    python benchmarks/prefix_cache.py --shape small --turns 4  # a quick run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

SHAPES = {
    "lfm2-350m": {},
    "small": dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, block_ff_dim=1664),
}
SCENARIOS = ("linear", "rewritten", "interleaved")
IM_START, IM_END, NL = "<|im_start|>", "<|im_end|>", "\n"


def prepare(shape: str, workdir: Path, seed: int):
    """The float32 checkpoint (with the test tokenizer) and its f32 GGUF, written once."""
    import torch

    from lfmkit import LFM2Config
    from lfmkit.export.gguf import write_gguf
    from lfmkit.model.lfm2 import LFM2
    from lfmkit.testing import build_test_tokenizer

    directory = workdir / f"prefix-cache-{shape}"
    gguf = directory / "model-f32.gguf"
    if not gguf.exists():
        config = LFM2Config.from_preset("lfm2-350m", **SHAPES[shape])
        model = LFM2.from_config(config, dtype=torch.float32, seed=seed)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(directory))
        build_test_tokenizer(directory)
        write_gguf(model, gguf, type="f32", tokenizer_dir=directory)
    return directory, gguf


class Framing:
    """LFM2's chat framing as token ids: user turns of fixed length, the assistant's opening."""

    def __init__(self, tokenizer, user_tokens: int, answer_tokens: int, seed: int):
        import random

        self.rng = random.Random(seed)
        self.enc = lambda text: tokenizer.encode(text)
        self.user_tokens, self.answer_tokens = user_tokens, answer_tokens
        self.bos = [tokenizer.bos_token_id]
        self.eos = tokenizer.token_to_id(IM_END)

    def words(self, n: int) -> list[int]:
        return [self.rng.randrange(100, 400) for _ in range(n)]  # the test tokenizer's plain tokens

    def user(self) -> list[int]:
        return self.enc(f"{IM_START}user{NL}") + self.words(self.user_tokens) + self.enc(f"{IM_END}{NL}")

    def assistant_open(self) -> list[int]:
        return self.enc(f"{IM_START}assistant{NL}")

    def closing(self) -> list[int]:
        return self.enc(f"{IM_END}{NL}")


# ---- the engines: each returns (ttft seconds, generated ids, cached prompt tokens) -------------
class LfmkitEngine:
    def __init__(self, model, cache_mb: float, name: str):
        from lfmkit.inference.engine import Engine, EngineConfig

        self.name = name
        self.engine = Engine(model, None, EngineConfig(max_concurrent=2, max_length=8192, cache_mb=cache_mb)).start()

    def turn(self, prompt: list[int], answer_tokens: int):
        from lfmkit.inference.engine import TokenEvent
        from lfmkit.inference.sampling import SamplingParams

        params = SamplingParams.greedy(max_tokens=answer_tokens, ignore_eos=True)
        t = time.perf_counter()
        handle = self.engine.submit(prompt, params)
        ttft, out = None, []
        for ev in handle:
            if isinstance(ev, TokenEvent):
                ttft = ttft if ttft is not None else time.perf_counter() - t
                out.append(ev.token_id)
        return ttft, out, handle.cached_tokens

    def close(self):
        self.engine.stop()


class LlamaCppEngine:
    name = "llama.cpp (prefix reuse)"

    def __init__(self, gguf: Path, threads: int, eos: int):
        import numpy as np
        from llama_cpp import LogitsProcessorList

        from lfmkit.bench import open_llama_cpp

        def mask_eos(_ids, scores):
            scores[eos] = -np.inf
            return scores

        self.no_eos = LogitsProcessorList([mask_eos])
        self.llm = open_llama_cpp(
            gguf,
            n_ctx=8192,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def turn(self, prompt: list[int], answer_tokens: int):
        before = self.llm.n_tokens
        kept = 0
        for a, b in zip(self.llm._input_ids[:before], prompt):
            if a != b:
                break
            kept += 1
        t = time.perf_counter()
        ttft, out = None, []
        # `generate` is what create_completion runs (prefix reuse included); it never stops by itself
        for token in self.llm.generate(prompt, temp=0.0, logits_processor=self.no_eos):
            ttft = ttft if ttft is not None else time.perf_counter() - t
            out.append(int(token))
            if len(out) == answer_tokens:
                break
        # llama.cpp keeps its memory only when the prompt extends exactly what it held
        reused = kept if kept == before else 0
        return ttft, out, reused

    def close(self):
        if hasattr(self.llm, "close"):
            self.llm.close()


# ---- conversations ----------------------------------------------------------------------------
def conversation(engine, framing: Framing, scenario: str, turns: int, seed: int) -> dict:
    """Run one conversation (two, interleaved); the last turn's TTFT, prompt and cached tokens."""
    import random

    framing.rng = random.Random(seed)
    talks = 2 if scenario == "interleaved" else 1
    history = [list(framing.bos) for _ in range(talks)]
    last = None
    for _ in range(turns):
        for c in range(talks):
            prompt = history[c] + framing.user() + framing.assistant_open()
            ttft, answer, cached = engine.turn(prompt, framing.answer_tokens)
            if scenario == "rewritten":
                answer = framing.words(framing.answer_tokens)
            history[c] = prompt + answer[:-1] + framing.closing() if answer else prompt
            last = {"ttft_s": ttft, "prompt_tokens": len(prompt), "reused_tokens": cached}
    return last


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="lfm2-350m", choices=sorted(SHAPES))
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--user-tokens", type=int, default=200)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="conversations per engine and scenario (median)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both (unset: torch's choice)")
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "lfmkit" / "bench")
    p.add_argument("--json", type=Path, default=None, help="append the results as JSON lines")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from lfmkit.bench import machine_description
    from lfmkit.model.lfm2 import LFM2
    from lfmkit.text.tokenizer import Tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    directory, gguf = prepare(args.shape, args.workdir, args.seed)
    model = LFM2.from_pretrained(str(directory), dtype="float32").eval()
    tok = Tokenizer.from_pretrained(str(directory))
    framing = Framing(tok, args.user_tokens, args.answer_tokens, args.seed)
    factories = [
        lambda: LfmkitEngine(model, 1024, "lfmkit, prefix cache"),
        lambda: LfmkitEngine(model, 0, "lfmkit, re-prefill"),
        lambda: LlamaCppEngine(gguf, threads, framing.eos),
    ]
    print(f"# {machine_description()}; {args.shape}, float32, {args.turns} turns", file=sys.stderr)
    rows = []
    for scenario in args.scenarios.split(","):
        for make in factories:
            runs = []
            for r in range(args.repeats):
                engine = make()  # a fresh server per conversation: nothing cached from before
                try:
                    runs.append(conversation(engine, framing, scenario, args.turns, args.seed + r))
                finally:
                    engine.close()
            row = {
                "scenario": scenario,
                "engine": engine.name,
                "ttft_s": statistics.median(x["ttft_s"] for x in runs),
                "prompt_tokens": runs[0]["prompt_tokens"],
                "reused_tokens": runs[0]["reused_tokens"],
                "turns": args.turns,
                "shape": args.shape,
                "threads": threads,
                "machine": machine_description(),
                "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
            rows.append(row)
            print(
                f"{scenario:12s} {row['engine']:26s} turn {args.turns}: ttft {row['ttft_s'] * 1000:8.1f} ms, "
                f"prompt {row['prompt_tokens']}, reused {row['reused_tokens']}",
                flush=True,
            )
    print()
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        by = {r["engine"]: r["ttft_s"] for r in rows if r["scenario"] == scenario}
        cached = by["lfmkit, prefix cache"]
        print(
            f"{scenario:12s} re-prefill / cache: {by['lfmkit, re-prefill'] / cached:5.1f}x   "
            f"llama.cpp / lfmkit cache: {by[LlamaCppEngine.name] / cached:5.1f}x"
        )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
