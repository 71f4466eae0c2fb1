"""Structured output: the per-token cost of grammar masks, llguidance against xgrammar.

Both engines get the same tokenizer (a byte-level BPE of LFM2's vocabulary size, 65,536 ids,
trained here on the Python standard library's sources with LFM2's special tokens at their
ids: no tokenizer can be downloaded here), the same JSON schemas, written the same way
(", " / ": " separators, no free whitespace), and replay the same token sequences: documents
sampled once from random logits under llguidance's mask, so every step is a real decoding
step of a valid document. Per step and row it times

- `fill`: computing the bit masks of the whole batch in one call (llguidance's LLExecutor,
  xgrammar's BatchGrammarMatcher; both fill [rows, V/32] int32 words), and for llguidance also
  row by row on the calling thread (`llguidance-sequential`: what lfmkit ships);
- `consume`: advancing every row's matcher by its token;
- `apply`: lfmkit's unpacking of the bits and the -inf fill of [rows, V] float32 logits
  (the same code for both, the one lfmkit.inference.constrain runs);

each as the median wall time and the mean CPU time of the process (all its threads; a busy
machine inflates wall time far more than CPU time), and, for lfmkit as shipped, `sampler`:
`BatchSampler.sample` on random [rows, V] logits with the constraint minus the same call
without it (greedy), the whole overhead a decode step pays.
Also the one-off costs: the tokenizer description and each schema's compilation.

    python benchmarks/structured.py                      # batch 1 and 8, all schemas
    python benchmarks/structured.py --batch 1 --repeats 1 --json out.jsonl

xgrammar wants a CUDA torch and triton as dependencies; on this CPU machine it was installed
with `pip install --no-deps xgrammar apache-tvm-ffi` (its CPU matcher needs neither).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

VOCAB = 65536
SCHEMAS = {
    "flat object": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "email": {"type": "string"},
            "active": {"type": "boolean"},
        },
        "required": ["name", "age", "email", "active"],
        "additionalProperties": False,
    },
    "nested + enums + arrays": {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
            "status": {"enum": ["pending", "shipped", "delivered"]},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}},
                    "required": ["sku", "qty", "price"],
                    "additionalProperties": False,
                },
                "minItems": 1,
            },
            "customer": {
                "type": "object",
                "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["id", "tags"],
                "additionalProperties": False,
            },
        },
        "required": ["order_id", "status", "items", "customer"],
        "additionalProperties": False,
    },
}
SEPARATORS = (", ", ": ")


def build_tokenizer(directory: Path):
    """A 65,536-id byte-level BPE with LFM2's special tokens (cached in `directory`)."""
    from lfmkit.testing import CORPUS, EOS, SPECIAL_TOKENS
    from lfmkit.text.tokenizer import Tokenizer

    file = directory / "tokenizer.json"
    if not file.is_file():
        from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as Backend

        directory.mkdir(parents=True, exist_ok=True)
        stdlib = Path(os.__file__).parent
        files = sorted(glob.glob(str(stdlib / "**" / "*.py"), recursive=True))[:3000]

        def texts():
            yield CORPUS
            for f in files:
                try:
                    yield Path(f).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    pass

        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            min_frequency=2,
            show_progress=False,
        )
        backend.train_from_iterator(texts(), trainer=trainer)
        backend.save(str(file))
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS, "bos_token": SPECIAL_TOKENS[1]}))
    return Tokenizer.from_pretrained(directory)


def documents(tok, schema, rows: int, seed: int, max_tokens: int) -> list[list[int]]:
    """`rows` token sequences valid under `schema`, sampled from random logits with lfmkit's sampler."""
    import torch

    from lfmkit.inference.constrain import Constraint
    from lfmkit.inference.sampling import BatchSampler, SamplingParams

    c = Constraint.json_schema(schema, tok)
    out = []
    for r in range(rows):
        sampler = BatchSampler(VOCAB, 1)
        sampler.add_row(
            0, SamplingParams(max_tokens=max_tokens, temperature=1.0, min_p=0.0, seed=seed + r, constraint=c)
        )
        g = torch.Generator().manual_seed(seed + r)
        ids: list[int] = []
        while len(ids) < max_tokens and (not ids or ids[-1] != tok.eos_token_id):
            ids.append(int(sampler.sample(torch.randn(1, VOCAB, generator=g) * 3).tokens[0]))
        out.append(ids)
    return out


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok):
        import llguidance

        self.llg = llguidance
        t = time.perf_counter()
        self.ll = llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=VOCAB, eos_token=tok.eos_token_id)
        self.setup_s = time.perf_counter() - t
        self.executor = llguidance.LLExecutor()

    def compile(self, schema):
        options = {"whitespace_flexible": False, "item_separator": SEPARATORS[0], "key_separator": SEPARATORS[1]}
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults=options)
        return self.llg.LLMatcher(self.ll, grammar, log_level=0)

    def matchers(self, compiled, n):
        return [compiled.deep_copy() for _ in range(n)]

    def fill(self, matchers, bits):
        self.executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(matchers)], bits.data_ptr(), bits.shape[1] * 4, bits.shape[0]
        )

    def consume(self, matchers, tokens):
        for m, t in zip(matchers, tokens):
            assert m.consume_token(t), m.get_error()


class LLGuidanceSequential(LLGuidance):
    """llguidance with each row's mask computed in turn on the calling thread (no thread pool)."""

    name = "llguidance-sequential"

    def fill(self, matchers, bits):
        for i, m in enumerate(matchers):
            row = bits[i]
            m.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * 4)


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok):
        import xgrammar
        from transformers import PreTrainedTokenizerFast

        self.xgr = xgrammar
        t = time.perf_counter()
        hf = PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|im_end|>")
        info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=VOCAB, stop_token_ids=[tok.eos_token_id])
        self.compiler = xgrammar.GrammarCompiler(info)
        self.setup_s = time.perf_counter() - t
        self.batch = xgrammar.BatchGrammarMatcher()

    def compile(self, schema):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=SEPARATORS)

    def matchers(self, compiled, n):
        return [self.xgr.GrammarMatcher(compiled) for _ in range(n)]

    def fill(self, matchers, bits):
        if len(matchers) == 1:
            matchers[0].fill_next_token_bitmask(bits, 0)
        else:
            self.batch.batch_fill_next_token_bitmask(matchers, bits)

    def consume(self, matchers, tokens):
        for m, t in zip(matchers, tokens):
            assert m.accept_token(t), "xgrammar refused a token llguidance accepted"


def time_engine(engine, schema, docs: list[list[int]]) -> dict:
    """Replay `docs` (one per row) step by step; median microseconds per step of fill / consume / apply."""
    import torch

    from lfmkit.inference.constrain import mask_logits, unpack_masks

    t = time.perf_counter()
    compiled = engine.compile(schema)
    compile_s = time.perf_counter() - t
    rows = len(docs)
    matchers = engine.matchers(compiled, rows)
    bits = torch.zeros(rows, (VOCAB + 31) // 32, dtype=torch.int32)
    logits = torch.randn(rows, VOCAB)
    wall = {"fill": [], "apply": [], "consume": []}
    cpu = {"fill": [], "apply": [], "consume": []}
    for step in range(min(len(d) for d in docs)):
        marks = [(time.perf_counter(), time.process_time())]
        engine.fill(matchers, bits)
        marks.append((time.perf_counter(), time.process_time()))
        allowed = unpack_masks(bits.numpy(), VOCAB)
        mask_logits(logits, list(range(rows)), allowed)
        marks.append((time.perf_counter(), time.process_time()))
        engine.consume(matchers, [d[step] for d in docs])
        marks.append((time.perf_counter(), time.process_time()))
        for (w0, c0), (w1, c1), part in zip(marks, marks[1:], ("fill", "apply", "consume")):
            wall[part].append(w1 - w0)
            cpu[part].append(c1 - c0)
    out = {"compile_ms": round(compile_s * 1e3, 2), "steps": len(wall["fill"])}
    for part in ("fill", "consume", "apply"):
        out[f"{part}_us"] = round(statistics.median(wall[part]) * 1e6, 1)
        out[f"{part}_cpu_us"] = round(statistics.mean(cpu[part]) * 1e6, 1)
    return out


def time_sampler(tok, schema, rows: int, steps: int) -> dict:
    """lfmkit's BatchSampler.sample with and without the constraint: per step, median wall and mean CPU µs."""
    import torch

    from lfmkit.inference.constrain import Constraint
    from lfmkit.inference.sampling import BatchSampler, SamplingParams

    c = Constraint.json_schema(schema, tok)
    result = {}
    for label, constraint in (("plain", None), ("constrained", c)):
        wall, cpu = [], []
        sampler = BatchSampler(VOCAB, rows)
        for r in range(rows):
            sampler.add_row(r, SamplingParams.greedy(max_tokens=10_000, constraint=constraint))
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            logits = torch.randn(rows, VOCAB, generator=g)
            w, t = time.perf_counter(), time.process_time()
            sampler.sample(logits)
            wall.append(time.perf_counter() - w)
            cpu.append(time.process_time() - t)
        result[label] = (statistics.median(wall) * 1e6, statistics.mean(cpu) * 1e6)
    (pw, pc), (cw, cc) = result["plain"], result["constrained"]
    return {
        "sampler_plain_us": round(pw, 1),
        "sampler_overhead_us": round(cw - pw, 1),
        "sampler_plain_cpu_us": round(pc, 1),
        "sampler_overhead_cpu_us": round(cc - pc, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--engines", default="llguidance,llguidance-sequential,xgrammar")
    p.add_argument("--repeats", type=int, default=2, help="runs per engine and batch; the best median is kept")
    p.add_argument("--max-tokens", type=int, default=160, help="longest sampled document")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "lfmkit-bench-tokenizer"))
    p.add_argument("--json", default=None, help="append one JSON line per measurement to this file")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    tok = build_tokenizer(Path(args.cache))
    engines = {"llguidance": LLGuidance, "llguidance-sequential": LLGuidanceSequential, "xgrammar": XGrammar}
    built = [engines[name](tok) for name in args.engines.split(",")]
    for e in built:
        print(f"{e.name}: tokenizer description {e.setup_s * 1e3:.0f} ms", flush=True)
    lines = []
    for name, schema in SCHEMAS.items():
        for batch in [int(b) for b in args.batch.split(",")]:
            docs = documents(tok, schema, batch, seed=11, max_tokens=args.max_tokens)
            for e in built:
                runs = [time_engine(e, schema, docs) for _ in range(args.repeats)]
                best = min(runs, key=lambda r: r["fill_cpu_us"] + r["consume_cpu_us"])
                # the first compile: later ones may hit the engine's cache (xgrammar keeps one)
                line = {"schema": name, "batch": batch, "engine": e.name, **best, "compile_ms": runs[0]["compile_ms"]}
                line["per_token_us"] = round((best["fill_us"] + best["consume_us"] + best["apply_us"]) / batch, 1)
                line["per_token_cpu_us"] = round(
                    sum(best[f"{k}_cpu_us"] for k in ("fill", "consume", "apply")) / batch, 1
                )
                lines.append(line)
                print(json.dumps(line), flush=True)
            line = {"schema": name, "batch": batch, "engine": "lfmkit BatchSampler (llguidance)"}
            line.update(time_sampler(tok, schema, batch, steps=min(len(d) for d in docs)))
            lines.append(line)
            print(json.dumps(line), flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "a") as f:
            for line in lines:
                f.write(json.dumps({**line, **meta}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
