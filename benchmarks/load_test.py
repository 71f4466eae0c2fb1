"""Load test for `lfmkit serve`: N concurrent streaming clients on 127.0.0.1.

For each concurrency level it starts N clients at once; each streams `--requests` completions
of exactly `--max-tokens` tokens (eos ignored) and the script reports total throughput, the
decode throughput while all N are decoding (tokens that arrive between the last first token and
the first last token, over that window), time to first token and per-token / per-request latency percentiles. The run is
bounded: fixed token counts, per-request timeouts and a wall-clock limit.

The server is either one you started (`--url`), or one this script starts in a subprocess:
`--model DIR` (a checkpoint with a tokenizer), or `--preset lfm2-350m`, which writes a
random-weight checkpoint of the real shape plus the small test tokenizer to a temporary
directory (speed does not depend on the weights' values).

    python benchmarks/load_test.py --preset lfm2-350m --clients 1,8 --max-tokens 64

Each token is streamed as its own chunk (the request asks for `logprobs: 0`), so per-token
latencies are measured at the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class RequestStats:
    sent: float
    first_token: float | None = None
    done: float | None = None
    token_times: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, timeout: float
) -> RequestStats:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
        "logprobs": 0,
        "stream_options": {"include_usage": True},
    }
    stats = RequestStats(sent=time.perf_counter())
    try:
        async with client.stream("POST", url + "/v1/completions", json=body, timeout=timeout) as r:
            if r.status_code != 200:
                stats.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return stats
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    stats.error = chunk["error"]["message"]
                    break
                now = time.perf_counter()
                for choice in chunk["choices"]:
                    if choice.get("logprobs"):
                        n = len(choice["logprobs"]["tokens"])
                        stats.tokens += n
                        stats.token_times.extend([now] * n)
                        if stats.first_token is None:
                            stats.first_token = now
                if chunk.get("usage"):
                    stats.tokens = chunk["usage"]["completion_tokens"]
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:
        stats.error = f"{type(exc).__name__}: {exc}"
    stats.done = time.perf_counter()
    return stats


async def run_level(
    url: str, model: str, clients: int, requests: int, prompt: str, max_tokens: int, timeout: float
) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits) as client:

        async def worker(i: int) -> list[RequestStats]:
            return [
                await one_request(client, url, model, f"{prompt} (client {i}, request {k})", max_tokens, timeout)
                for k in range(requests)
            ]

        start = time.perf_counter()
        results = [s for batch in await asyncio.gather(*(worker(i) for i in range(clients))) for s in batch]
        wall = time.perf_counter() - start
    ok = [s for s in results if s.error is None and s.first_token is not None]
    errors = [s.error for s in results if s.error is not None]
    total_tokens = sum(s.tokens for s in ok)
    ttft = [s.first_token - s.sent for s in ok]
    itl = [b - a for s in ok for a, b in zip(s.token_times, s.token_times[1:])]
    latency = [s.done - s.sent for s in ok]
    # Decode throughput while every client is decoding: tokens that arrived between the last
    # first token and the first last token (so prefill and stragglers are left out).
    decode_tok_s = float("nan")
    if ok:
        t0, t1 = max(s.first_token for s in ok), min(s.token_times[-1] for s in ok)
        arrived = sum(1 for s in ok for t in s.token_times if t0 < t <= t1)
        if t1 > t0 and arrived:
            decode_tok_s = arrived / (t1 - t0)
    return {
        "clients": clients,
        "requests": len(results),
        "ok": len(ok),
        "errors": errors[:3],
        "completion_tokens": total_tokens,
        "wall_s": wall,
        "throughput_tok_s": total_tokens / wall if wall > 0 else float("nan"),
        "decode_tok_s": decode_tok_s,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "token_latency_p50_s": percentile(itl, 50),
        "token_latency_p99_s": percentile(itl, 99),
        "request_latency_p50_s": percentile(latency, 50),
        "request_latency_p99_s": percentile(latency, 99),
    }


# ---- server management -----------------------------------------------------------------------
def make_preset_checkpoint(preset: str, directory: Path) -> Path:
    from lfmkit import LFM2, LFM2Config
    from lfmkit.testing import build_test_tokenizer

    config = LFM2Config.from_preset(preset)
    LFM2.from_config(config).save_pretrained(directory)
    build_test_tokenizer(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "lfmkit",
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "bench",
        "--max-concurrent",
        str(max(args.levels)),
        "--max-model-len",
        str(args.max_model_len),
        "--dtype",
        args.dtype,
        "--log-level",
        "warning",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.quantize:
        cmd += ["--quantize", args.quantize]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, args.startup_timeout)
    return proc, url


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, interval: float = 0.5) -> None:
    """Poll `url`/health until it answers 200; SystemExit if the server exits or takes too long
    (its captured output, if any, goes into the message)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            output = f": {proc.stdout.read()}" if proc.stdout is not None else ""
            raise SystemExit(f"the server exited with code {proc.returncode}{output}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    proc.kill()
    raise SystemExit("the server did not become healthy in time")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running lfmkit (or other OpenAI-compatible) server")
    src.add_argument("--model", help="checkpoint directory (with tokenizer) to serve")
    src.add_argument("--preset", help="serve a random-weight model of this preset shape, e.g. lfm2-350m")
    p.add_argument("--served-model-name", default="bench", help="model name to send with --url")
    p.add_argument("--clients", default="1,8", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=1, help="requests per client per level")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    p.add_argument(
        "--prompt",
        default="Tell me a story about a robot who wanted to learn how to paint the sea.",
        help="prompt text (each request appends its client and request number)",
    )
    p.add_argument("--max-model-len", type=int, default=1024, help="server context per sequence")
    p.add_argument("--dtype", default="float32", help="server weights dtype")
    p.add_argument("--threads", type=int, default=None, help="server torch threads")
    p.add_argument("--quantize", default=None, choices=("int8", "int4"), help="server weight quantization")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per request")
    p.add_argument("--startup-timeout", type=float, default=300, help="seconds allowed for the server to start")
    p.add_argument("--warmup", type=int, default=1, help="warm-up requests before measuring")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.clients.split(",")]
    if any(n < 1 for n in args.levels) or args.max_tokens < 2:
        p.error("--clients must be positive and --max-tokens at least 2")

    proc, tmp = None, None
    try:
        if args.url:
            url, model = args.url.rstrip("/"), args.served_model_name
        else:
            model_dir = Path(args.model) if args.model else None
            if model_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="lfmkit-load-")
                model_dir = make_preset_checkpoint(args.preset, Path(tmp.name))
            proc, url = start_server(model_dir, args)
            model = "bench"
        for _ in range(args.warmup):
            asyncio.run(run_level(url, model, 1, 1, args.prompt, 4, args.timeout))
        results = [
            asyncio.run(run_level(url, model, n, args.requests, args.prompt, args.max_tokens, args.timeout))
            for n in args.levels
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if tmp is not None:
            tmp.cleanup()

    base = results[0]["decode_tok_s"]
    for r in results:
        r["decode_speedup"] = r["decode_tok_s"] / base if base else float("nan")
    if args.json:
        print(
            json.dumps(
                {"machine": machine(), "args": {k: v for k, v in vars(args).items()}, "results": results},
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"machine: {machine()}")
    print(
        f"source: {args.url or args.model or args.preset}, {args.max_tokens} tokens per request, "
        f"{args.requests} request(s) per client"
    )
    head = (
        "clients",
        "ok",
        "tokens",
        "wall s",
        "tok/s",
        "decode tok/s",
        "x vs first",
        "TTFT p50",
        "TTFT p99",
        "tok lat p50",
        "tok lat p99",
        "req p50",
        "req p99",
    )
    print(" | ".join(head))
    for r in results:
        print(
            " | ".join(
                [
                    str(r["clients"]),
                    f"{r['ok']}/{r['requests']}",
                    str(r["completion_tokens"]),
                    f"{r['wall_s']:.1f}",
                    f"{r['throughput_tok_s']:.1f}",
                    f"{r['decode_tok_s']:.1f}",
                    f"{r['decode_speedup']:.2f}",
                    f"{r['ttft_p50_s']:.3f}",
                    f"{r['ttft_p99_s']:.3f}",
                    f"{r['token_latency_p50_s'] * 1000:.0f} ms",
                    f"{r['token_latency_p99_s'] * 1000:.0f} ms",
                    f"{r['request_latency_p50_s']:.2f}",
                    f"{r['request_latency_p99_s']:.2f}",
                ]
            )
        )
        for e in r["errors"]:
            print(f"  error: {e}")
    return 0 if all(r["ok"] == r["requests"] for r in results) else 1


def machine() -> str:
    """The CPU and threads, described as `lfmkit bench` describes them (threads: this client's)."""
    from lfmkit.bench import machine_description

    return f"{machine_description()}, Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
