"""Speed and memory measurement: lfmkit, and side by side in one run, the engines users compare.

`bench(target, ...)` measures one model (a preset with random weights, or a checkpoint) and
returns a list of `BenchResult`, one per engine/weights pair:

- prefill tok/s on a `prompt_len`-token prompt (also the time to first token),
- decode tok/s at batch 1 (`decode_tokens` steps) and at batch `batch` (`batch_tokens` steps),
- the process's peak RSS while that engine loaded and ran (VmHWM, reset between engines),
- state bytes per token (what one more token of context costs),
- the share of the machine's read bandwidth batch-1 decode uses: weight bytes x decode tok/s
  over a bandwidth measured in the same run (`read_bandwidth`: summing a buffer of
  `bandwidth_mib` MiB on the same threads), since batch-1 decode reads every weight once.

With `compare=True` the same run also measures (a) the dense Qwen3-shaped baseline of the same
class in lfmkit (config.DENSE_BASELINE), (b) llama.cpp through llama-cpp-python on a GGUF of the
same weights (Q4_0 for int4, Q8_0 for int8, F16 for float; written with lfmkit.export.gguf),
when installed, and (c) transformers float32 on the same weights (skipped when its float32
weights would not fit in the available memory). A preset's random weights
are written once as a bf16 checkpoint under `workdir` so every engine reads the same numbers.

Speed does not depend on the weights' values, so random weights at the real shapes give real
timings. Every engine is fed the same token ids; sampling is left out (argmax for lfmkit).
Timings on a shared machine drift: compare engines within one run (the printed ratios).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import platform
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import DENSE_BASELINE, PRESETS, LFM2Config
from .errors import ConfigError

GGUF_TYPE = {"int4": "q4_0", "int8": "q8_0", "bf16": "f16", "fp32": "f16"}


@dataclass
class BenchResult:
    engine: str  # lfmkit | llama.cpp | transformers
    model: str  # preset or path
    weights: str  # int4 | int8 | bf16 | fp32 | q4_0 | q8_0 | f16 ...
    prefill_tok_s: float | None = None
    ttft_s: float | None = None
    decode_tok_s: float | None = None
    decode_batch_tok_s: float | None = None
    batch: int | None = None
    peak_rss_bytes: int | None = None
    weight_bytes: int | None = None
    state_bytes_per_token: int | None = None
    load_s: float | None = None
    bandwidth_share: float | None = None  # weight bytes x decode tok/s / read bandwidth
    read_bandwidth: float | None = None  # bytes/s, measured in the same run
    notes: list[str] = field(default_factory=list)
    # speculative decoding (--draft): batch-1 greedy decode without and with drafts, same run
    draft: str | None = None
    draft_k: int | None = None
    plain_decode_tok_s: float | None = None
    spec_decode_tok_s: float | None = None
    acceptance_rate: float | None = None
    tokens_per_step: float | None = None
    spec_same_output: bool | None = None

    def as_dict(self) -> dict:
        return asdict(self)


# ---- process memory -------------------------------------------------------------------------
def _status_kb_file(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _status_kb(key: str) -> int | None:
    return _status_kb_file("/proc/self/status", key)


def reset_peak_rss() -> None:
    """Restart the peak-RSS counter (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    kb = _status_kb("VmHWM:")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kb * 1024


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} vCPUs, {torch.get_num_threads()} threads, torch {torch.__version__}"


def read_bandwidth(mib: int = 1024, repeats: int = 3) -> float:
    """Bytes per second of reading memory on torch's threads: the best of `repeats` sums of a
    `mib`-MiB float32 buffer (far larger than the caches at the default 1 GiB)."""
    buf = torch.ones(max(1, mib) * (1 << 18), dtype=torch.float32)
    buf.sum()
    best = min(_timed(buf.sum) for _ in range(repeats))
    return buf.numel() * 4 / best


def available_memory_bytes() -> int | None:
    kb = _status_kb_file("/proc/meminfo", "MemAvailable:")
    return kb * 1024 if kb is not None else None


# ---- random-weight checkpoints --------------------------------------------------------------
def write_random_checkpoint(config: LFM2Config, directory: Path, seed: int = 0, std: float = 0.02) -> Path:
    """A bf16 safetensors checkpoint of random weights, written tensor by tensor (low memory),
    with the small test tokenizer (GGUF export needs one; vocab padded to the model's)."""
    from .model.lfm2 import LFM2

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.safetensors"
    if path.exists() and (directory / "config.json").exists():
        return directory
    with torch.device("meta"):
        meta = LFM2(config)
    names = [(n, tuple(p.shape)) for n, p in meta.named_parameters()]  # tied head listed once
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in names:
        n = 2
        for s in shape:
            n *= s
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    config.copy(torch_dtype="bfloat16").save_pretrained(directory)
    g = torch.Generator().manual_seed(seed)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in names:
            rows = shape[0]
            step = max(1, (1 << 22) // math.prod(shape[1:]))
            for r0 in range(0, rows, step):
                sub = (min(rows, r0 + step) - r0, *shape[1:])
                if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                    t = torch.ones(sub)
                else:
                    t = torch.randn(sub, generator=g) * std
                f.write(t.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)
    try:
        from .testing import build_test_tokenizer

        build_test_tokenizer(directory)
    except Exception:  # noqa: BLE001 - only the GGUF comparison needs it
        pass
    return directory


# ---- engines ---------------------------------------------------------------------------------
def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@torch.no_grad()
def measure_lfmkit(
    model, prompt: torch.Tensor, decode_tokens: int, batch: int, batch_tokens: int, repeats: int = 2
) -> dict:
    """Prefill, time to first token, decode at batch 1 and at `batch`, for an lfmkit model."""
    n = prompt.shape[-1]
    state = model.new_state(1, max_length=n + decode_tokens + 8)
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(repeats):
        state.reset()
        t = time.perf_counter()
        logits = model.prefill(prompt[None], state)
        tok = logits[:, -1].argmax(-1, keepdim=True)
        best_prefill = min(best_prefill, time.perf_counter() - t)
        for _ in range(2):  # warm-up steps
            tok = model(tok, state=state, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        steps = decode_tokens - 2
        t = time.perf_counter()
        for _ in range(steps):
            tok = model(tok, state=state, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        best_decode = min(best_decode, (time.perf_counter() - t) / steps)
    out = {
        "prefill_tok_s": n / best_prefill,
        "ttft_s": best_prefill,
        "decode_tok_s": 1 / best_decode,
        "state_bytes_per_token": state.bytes_per_token(),
    }
    del state
    if batch > 1 and batch_tokens > 0:
        short = prompt[:64].expand(batch, -1).contiguous()
        bstate = model.new_state(batch, max_length=short.shape[1] + batch_tokens + 4)
        tok = model.prefill(short, bstate)[:, -1].argmax(-1, keepdim=True)
        tok = model(tok, state=bstate, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(batch_tokens):
            tok = model(tok, state=bstate, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
        out["decode_batch_tok_s"] = batch * batch_tokens / (time.perf_counter() - t)
        out["batch"] = batch
    return out


@torch.no_grad()
def stream_decode_rate(model, ids: list[int], params, draft=None, repeats: int = 2) -> tuple[float, list[int]]:
    """The best of `repeats` streamed decodes of `ids` (with `draft`'s drafts when given, its
    statistics reset each time): tok/s from the first token on, as `lfmkit run` counts, and the
    generated tokens."""
    from .inference.generate import stream_generate
    from .inference.speculative import SpeculationStats

    best, tokens = 0.0, []
    for _ in range(repeats):
        if draft is not None:
            draft.stats = SpeculationStats()
        first = None
        for chunk in stream_generate(model, ids, params, draft=draft):
            first = first or time.perf_counter()
            if chunk.result is not None:
                tokens = chunk.result.token_ids
        best = max(best, (len(tokens) - 1) / (time.perf_counter() - first))
    return best, tokens


@torch.no_grad()
def measure_speculative(model, spec, prompt: torch.Tensor, decode_tokens: int, repeats: int = 2) -> dict:
    """Batch-1 greedy decode of `decode_tokens` tokens after `prompt` through `stream_generate`,
    plain and with `spec`'s drafts: tok/s of each (from the first token on, as `lfmkit run`
    counts), the acceptance rate and tokens per verify step, and whether the outputs agree."""
    from .inference.sampling import SamplingParams

    params = SamplingParams.greedy(max_tokens=decode_tokens, ignore_eos=True)
    ids = prompt.tolist()
    plain, want = stream_decode_rate(model, ids, params, None, repeats)
    fast, got = stream_decode_rate(model, ids, params, spec, repeats)
    st = spec.stats
    return {
        "draft": spec.name,
        "draft_k": spec.k,
        "plain_decode_tok_s": plain,
        "spec_decode_tok_s": fast,
        "acceptance_rate": st.acceptance_rate,
        "tokens_per_step": st.tokens_per_step,
        "spec_same_output": got == want,
    }


def load_speculator(draft: str, k: int, model, mode: str, prefill: str = "w8a8"):
    """`bench --draft`: "self" (the model drafts for itself: every draft accepted, the verify
    mechanics alone), "ngram", or a preset / checkpoint loaded in the same weights mode."""
    from .inference.speculative import Speculator

    if draft == "self":
        return Speculator(model, k=k)
    if draft == "ngram":
        return Speculator("ngram", k=k)
    config, path, _ = resolve_target(draft)
    return Speculator(load_lfmkit(config, path, mode, prefill), k=k)


# llama-cpp-python 0.3.36's AMX matrix products (its "extra buffer type" on CPUs with AMX)
# crash the process on LFM2 GGUFs, tiny or full size (a segfault in ggml_backend_amx_mul_mat,
# ggml-org/llama.cpp#20824, open): on such CPUs llama.cpp runs without its extra buffer types,
# i.e. on its AVX-512 VNNI kernels without weight repacking.
LLAMA_CPP_EXTRA_BUFFERS_OFF = (
    "llama.cpp: extra buffer types off on this AMX CPU (its AMX path segfaults: llama.cpp#20824)"
)


@functools.cache
def llama_cpp_amx() -> bool:
    """Whether llama.cpp would put weights in its AMX buffers here (and so must not)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return b"AMX_INT8 = 1" in (info if isinstance(info, bytes) else str(info).encode())


@contextlib.contextmanager
def _without_extra_buffers():
    """Llama() takes no use_extra_bufts argument: its default model parameters are swapped for
    the duration of the load."""
    import llama_cpp.llama_cpp as raw

    default = raw.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    raw.llama_model_default_params = params
    try:
        yield
    finally:
        raw.llama_model_default_params = default


def open_llama_cpp(model_path: str | Path, **kwargs):
    """`llama_cpp.Llama(model_path, **kwargs)`, with the extra buffer types off where the CPU has
    AMX (LLAMA_CPP_EXTRA_BUFFERS_OFF)."""
    import llama_cpp

    with _without_extra_buffers() if llama_cpp_amx() else contextlib.nullcontext():
        return llama_cpp.Llama(model_path=str(model_path), **kwargs)


def measure_llama_cpp(gguf_path: Path, prompt: list[int], decode_tokens: int, threads: int, repeats: int = 2) -> dict:
    llm = open_llama_cpp(
        gguf_path,
        n_ctx=len(prompt) + decode_tokens + 8,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(repeats):
        llm.reset()
        best_prefill = min(best_prefill, _timed(lambda: llm.eval(prompt)))
        tok = prompt[-1]
        for _ in range(2):
            llm.eval([tok])
        steps = decode_tokens - 2
        t = time.perf_counter()
        for _ in range(steps):
            llm.eval([tok])
        best_decode = min(best_decode, (time.perf_counter() - t) / steps)
    if hasattr(llm, "close"):
        llm.close()
    return {"prefill_tok_s": len(prompt) / best_prefill, "ttft_s": best_prefill, "decode_tok_s": 1 / best_decode}


@torch.no_grad()
def measure_transformers(path: Path, prompt: torch.Tensor, decode_tokens: int, dtype=torch.float32) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    ids = prompt[None]
    t = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    prefill = time.perf_counter() - t
    past = out.past_key_values
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    out = model(tok, past_key_values=past, use_cache=True)
    past = out.past_key_values
    t = time.perf_counter()
    for _ in range(decode_tokens):
        out = model(tok, past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
    decode = (time.perf_counter() - t) / decode_tokens
    del model, past, out
    return {"prefill_tok_s": ids.shape[1] / prefill, "ttft_s": prefill, "decode_tok_s": 1 / decode}


# ---- orchestration ---------------------------------------------------------------------------
def resolve_target(target: str) -> tuple[LFM2Config, Path | None, str]:
    """(config, checkpoint dir or None for a preset, display name)."""
    if target.lower() in PRESETS:
        return LFM2Config.from_preset(target), None, target.lower()
    from .io.hub import resolve_model_path

    path = resolve_model_path(target)
    if not path.is_dir():
        raise ConfigError(f"{target}: lfmkit bench takes a preset name or a checkpoint directory")
    return LFM2Config.from_pretrained(path), path, str(target)


def load_lfmkit(config: LFM2Config, path: Path | None, mode: str, prefill: str = "w8a8"):
    from .fast.install import set_prefill
    from .loader import load_quantized, random_quantized

    model = random_quantized(config, mode) if path is None else load_quantized(path, mode)
    return set_prefill(model, prefill)


def bench(
    target: str,
    quant: list[str] | str = "int4",
    prompt_len: int = 512,
    decode_tokens: int = 128,
    batch: int = 8,
    batch_tokens: int = 32,
    compare: bool = False,
    threads: int | None = None,
    workdir: str | os.PathLike | None = None,
    transformers_tokens: int = 32,
    repeats: int = 2,
    log=print,
    draft: str | None = None,
    draft_k: int = 4,
    prefill: str = "w8a8",
    bandwidth_mib: int = 1024,
) -> list[BenchResult]:
    """Measure `target` in each quant mode (and, with compare, the other engines). See module doc.

    draft: also decode with speculative drafts ("self", "ngram", a preset or checkpoint) on a
    repetitive prompt (its first 32 tokens over and over), against plain decoding of it."""
    from .fast.install import weight_bytes
    from .quant.formats import check_mode
    from .quant.prefill import check_prefill, prefill_path

    prefill = check_prefill(prefill)

    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    modes = [check_mode(m) for m in ([quant] if isinstance(quant, str) else quant)]
    for name, value in (("prompt_len", prompt_len), ("decode_tokens", decode_tokens)):
        if value < 4:
            raise ConfigError(f"{name} must be at least 4, got {value}")
    config, path, display = resolve_target(target)
    bandwidth = read_bandwidth(bandwidth_mib)
    log(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s ({bandwidth_mib} MiB summed on {threads} threads)")
    g = torch.Generator().manual_seed(1234)
    prompt = torch.randint(16, min(config.vocab_size, 512), (prompt_len,), generator=g)
    results: list[BenchResult] = []

    def run_lfmkit(cfg: LFM2Config, ckpt: Path | None, name: str, mode: str) -> None:
        gc.collect()
        reset_peak_rss()
        t = time.perf_counter()
        model = load_lfmkit(cfg, ckpt, mode, prefill)
        load_s = time.perf_counter() - t
        log(f"  lfmkit {name} {mode}: loaded in {load_s:.1f} s; measuring")
        m = measure_lfmkit(model, prompt, decode_tokens, batch, batch_tokens, repeats)
        if draft is not None and name == display:
            log(f"  lfmkit {name} {mode}: speculative decoding with draft {draft}, k={draft_k}")
            spec = load_speculator(draft, draft_k, model, mode, prefill)
            repetitive = prompt[:32].repeat((len(prompt) + 31) // 32)[: len(prompt)]
            m.update(measure_speculative(model, spec, repetitive, decode_tokens, repeats))
            m["draft"] = draft if draft in ("self", "ngram") else m["draft"]
        results.append(
            BenchResult(
                "lfmkit",
                name,
                mode,
                load_s=load_s,
                weight_bytes=weight_bytes(model),
                peak_rss_bytes=peak_rss_bytes(),
                **m,
            )
        )
        if mode in ("int4", "int8"):  # the GEMM its prefill ran (float32 where this CPU's int8/bf16 ones are slow)
            results[-1].notes.append(f"prefill GEMM: {prefill_path(prefill)}")
        del model
        gc.collect()

    def share(r: BenchResult) -> BenchResult:
        r.read_bandwidth = bandwidth
        if r.weight_bytes and r.decode_tok_s:
            r.bandwidth_share = r.weight_bytes * r.decode_tok_s / bandwidth
        return r

    if compare and path is None:
        workdir = Path(workdir or os.path.join(os.path.expanduser("~"), ".cache", "lfmkit", "bench"))
        log(f"writing random bf16 weights for {display} under {workdir} (once)")
        path = write_random_checkpoint(config, workdir / display)
    for mode in modes:
        run_lfmkit(config, path, display, mode)
    if not compare:
        return [share(r) for r in results]

    dense = DENSE_BASELINE.get(display)
    if dense is not None:
        for mode in modes:
            run_lfmkit(LFM2Config.from_preset(dense), None, dense, mode)
    else:
        log(f"  no dense baseline preset for {display} (known: {', '.join(DENSE_BASELINE)})")

    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
        log("  llama-cpp-python is not installed: skipping llama.cpp")
    if have_llama:
        from .export.gguf import write_gguf

        for gtype in dict.fromkeys(GGUF_TYPE[m] for m in modes):
            gpath = path / f"bench-{gtype}.gguf"
            if not gpath.exists():
                log(f"  writing {gpath.name}")
                from .model.lfm2 import LFM2

                float_model = LFM2.from_pretrained(path, dtype="bfloat16")
                write_gguf(float_model, gpath, type=gtype, tokenizer_dir=path)
                del float_model
                gc.collect()
            reset_peak_rss()
            log(f"  llama.cpp {gtype}: measuring")
            m = measure_llama_cpp(gpath, prompt.tolist(), decode_tokens, threads, repeats)
            results.append(
                BenchResult(
                    "llama.cpp",
                    display,
                    gtype,
                    peak_rss_bytes=peak_rss_bytes(),
                    weight_bytes=gpath.stat().st_size,
                    state_bytes_per_token=config.state_bytes_per_token(2),
                    **m,
                )
            )
            if llama_cpp_amx():
                results[-1].notes.append(LLAMA_CPP_EXTRA_BUFFERS_OFF)
            gc.collect()

    need, free = 4 * config.num_parameters(), available_memory_bytes()
    if free is not None and need > 0.9 * free:
        log(f"  transformers fp32: skipped (needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available)")
        return [share(r) for r in results]
    try:
        import transformers  # noqa: F401

        gc.collect()
        reset_peak_rss()
        log(f"  transformers fp32: measuring ({transformers_tokens} decode tokens)")
        m = measure_transformers(path, prompt, max(4, transformers_tokens))
        results.append(
            BenchResult(
                "transformers",
                display,
                "fp32",
                peak_rss_bytes=peak_rss_bytes(),
                state_bytes_per_token=config.state_bytes_per_token(4),
                **m,
            )
        )
    except ImportError:
        log("  transformers is not installed: skipping it")
    gc.collect()
    return [share(r) for r in results]


def ratios(results: list[BenchResult]) -> list[str]:
    """Human-readable speed ratios between engines measured in the same run."""
    lines = []
    ours = [r for r in results if r.engine == "lfmkit" and r.model not in DENSE_BASELINE.values()]
    dense = {r.weights: r for r in results if r.engine == "lfmkit" and r.model in DENSE_BASELINE.values()}
    llama = {r.weights: r for r in results if r.engine == "llama.cpp"}
    hf = next((r for r in results if r.engine == "transformers"), None)

    def fmt(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    for r in ours:
        if r.spec_decode_tok_s is not None:
            rate = f"{100 * r.acceptance_rate:.0f}%" if r.acceptance_rate is not None else "n/a"
            lines.append(
                f"lfmkit {r.weights} speculative (draft {r.draft}, k={r.draft_k}): decode "
                f"{r.plain_decode_tok_s:.1f} -> {r.spec_decode_tok_s:.1f} tok/s "
                f"({fmt(r.spec_decode_tok_s, r.plain_decode_tok_s)}), {rate} of drafts accepted, "
                f"{r.tokens_per_step:.2f} tokens per step, same output: {'yes' if r.spec_same_output else 'NO'}"
            )
        if r.weights in dense:
            d = dense[r.weights]
            lines.append(
                f"hybrid vs dense ({r.weights}): prefill {fmt(r.prefill_tok_s, d.prefill_tok_s)}, "
                f"decode {fmt(r.decode_tok_s, d.decode_tok_s)}, "
                f"batch decode {fmt(r.decode_batch_tok_s, d.decode_batch_tok_s)}"
            )
        best_llama = max(llama.values(), key=lambda x: x.prefill_tok_s or 0, default=None)
        same = llama.get(GGUF_TYPE[r.weights])
        if same:
            lines.append(
                f"lfmkit {r.weights} vs llama.cpp {same.weights}: prefill "
                f"{fmt(r.prefill_tok_s, same.prefill_tok_s)}, decode {fmt(r.decode_tok_s, same.decode_tok_s)}"
            )
        if best_llama and best_llama is not same:
            lines.append(
                f"lfmkit {r.weights} prefill vs llama.cpp's best ({best_llama.weights}): "
                f"{fmt(r.prefill_tok_s, best_llama.prefill_tok_s)}"
            )
        if hf:
            lines.append(
                f"lfmkit {r.weights} vs transformers fp32: prefill {fmt(r.prefill_tok_s, hf.prefill_tok_s)}, "
                f"decode {fmt(r.decode_tok_s, hf.decode_tok_s)}"
            )
    return lines


def format_table(results: list[BenchResult]) -> str:
    head = (
        f"{'engine':<13}{'model':<18}{'weights':<8}{'prefill/s':>10}{'TTFT s':>8}{'decode/s':>10}"
        f"{'batch/s':>10}{'bw share':>9}{'peak RSS':>10}{'weights':>10}{'state/tok':>10}"
    )
    rows = [head]

    def num(v, fmt="{:.1f}"):
        return fmt.format(v) if v is not None else "-"

    for r in results:
        rows.append(
            f"{r.engine:<13}{r.model[-17:]:<18}{r.weights:<8}{num(r.prefill_tok_s):>10}"
            f"{num(r.ttft_s, '{:.2f}'):>8}{num(r.decode_tok_s):>10}{num(r.decode_batch_tok_s):>10}"
            f"{num(r.bandwidth_share and 100 * r.bandwidth_share, '{:.0f}%'):>9}"
            f"{num(r.peak_rss_bytes and r.peak_rss_bytes / 2**20, '{:.0f}M'):>10}"
            f"{num(r.weight_bytes and r.weight_bytes / 2**20, '{:.0f}M'):>10}"
            f"{num(r.state_bytes_per_token, '{:.0f}'):>10}"
        )
    return "\n".join(rows)


__all__ = [
    "bench",
    "BenchResult",
    "measure_lfmkit",
    "measure_llama_cpp",
    "open_llama_cpp",
    "measure_transformers",
    "measure_speculative",
    "write_random_checkpoint",
    "ratios",
    "format_table",
    "machine_description",
    "read_bandwidth",
    "reset_peak_rss",
    "peak_rss_bytes",
]
