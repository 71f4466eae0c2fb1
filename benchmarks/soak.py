"""Soak test for `lfmkit serve`: load, faults and fuzz against a real server on 127.0.0.1.

For `--duration` seconds (and at most `--max-requests` requests), `--clients` concurrent
clients each pick a scenario at random (seeded) and run it:

- `chat`, `chat-stream`, `completion-stream`: ordinary requests, a few tokens each;
- `disconnect-stream`: start a stream, read two events, hang up;
- `disconnect-wait`: a non-streamed request abandoned after 50 ms;
- `fuzz`: a valid body with one field replaced by junk (wrong types, huge or negative
  integers, deep nesting, lone surrogates, invalid UTF-8, a tool message without an id,
  deeply nested tool-call arguments, calls to tools that do not exist);
- `big-prompt`: a 30 MB prompt (allowed by the body limit, refused by the prompt bound);
- `chunked-over-limit`: 40 MB sent with `Transfer-Encoding: chunked`.

Meanwhile a thread of its own polls `GET /health` every 50 ms (big bodies are built before
the clock starts, so the clients' own JSON encoding does not delay the polls). At the end the server must be idle
(no running or queued sequence left behind) and it is stopped with SIGTERM. Printed: requests
per scenario, statuses, 5xx count, transport errors, `/health` latency (max, p99) and the exit
status. The script exits 1 if anything went wrong (a 5xx, a failed health poll, a health poll
slower than `--health-limit`, a leak, an unclean exit).

    python benchmarks/soak.py --duration 60 --clients 6

Serves a tiny random-weight model with the test tokenizer unless `--model DIR` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from load_test import free_port, machine, percentile, wait_healthy  # noqa: E402

MODEL = "soak"
MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


FUZZ = [  # (field, junk): each replaces one field of a valid chat body
    ("model", 5),
    ("messages", "hi"),
    ("messages", []),
    ("messages", [{"role": "wizard", "content": "x"}]),
    ("messages", [{"role": "tool", "content": "42"}]),
    (
        "messages",
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": ' + nested(5000) + "}"},
                    }
                ],
            },
            {"role": "user", "content": "x"},
        ],
    ),
    ("messages", [{"role": "user", "content": "\ud800 lone surrogate"}]),
    ("temperature", "hot"),
    ("temperature", -1),
    ("top_k", 10**20),
    ("seed", 2**70),
    ("seed", -(2**64)),
    ("max_tokens", 0),
    ("max_tokens", 2**40),
    ("n", 10**6),
    ("stop", [""]),
    ("stop_token_ids", [-1]),
    ("logprobs", 3),
    ("top_logprobs", 99),
    ("tools", [{"type": "function", "function": {"name": "bad name"}}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": json.loads(nested(150))}}]),
    ("tool_choice", {"type": "function", "function": {"name": "os.system"}}),
    ("stream", "yes"),
    ("extra", json.loads(nested(190))),
]
RAW_FUZZ = [
    b"",
    b"{",
    b"[1,2]",
    b"\xff\xfe not utf-8",
    b'{"model": "soak", "messages": ' + b"[" * 10000,
    b'{"model": "soak", "prompt": [' + b"1," * 300000 + b"1]}",
]


SCENARIOS = [
    "chat",
    "chat-stream",
    "completion-stream",
    "disconnect-stream",
    "disconnect-wait",
    "fuzz",
    "big-prompt",
    "chunked-over-limit",
]  # the last two: at most --big-requests of them


class Soak:
    def __init__(self, url: str, args):
        self.url, self.args = url, args
        self.rng = random.Random(args.seed)
        self.scenarios = Counter()
        self.statuses = Counter()
        self.server_errors: list[str] = []
        self.transport_errors = Counter()
        self.health: list[float] = []
        self.health_failures = 0
        self.requests = 0
        self.big_left = args.big_requests
        self.big_body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 30_000_000}]})

    def record(self, scenario: str, status: int, body: bytes = b"") -> None:
        self.statuses[status] += 1
        if status >= 500:
            self.server_errors.append(f"{scenario}: HTTP {status} {body[:200]!r}")

    async def post(self, client, scenario: str, path: str, **kw) -> None:
        r = await client.post(self.url + path, timeout=self.args.timeout, **kw)
        self.record(scenario, r.status_code, r.content)

    async def stream(self, client, scenario: str, path: str, body: dict, hang_up_after: int | None = None) -> None:
        async with client.stream("POST", self.url + path, json=body, timeout=self.args.timeout) as r:
            self.record(scenario, r.status_code)
            events = 0
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                if line == "data: [DONE]" or (hang_up_after is not None and events >= hang_up_after):
                    return
                if "error" in json.loads(line[6:]):
                    self.server_errors.append(f"{scenario}: error event {line[:200]}")
            if hang_up_after is None:
                self.server_errors.append(f"{scenario}: the stream ended without [DONE]")

    def body(self, **extra) -> dict:
        return {"model": MODEL, "messages": MESSAGES, "max_tokens": self.rng.randint(1, 8), **extra}

    async def scenario(self, client, name: str) -> None:
        if name == "chat":
            await self.post(client, name, "/v1/chat/completions", json=self.body(tools=TOOLS))
        elif name == "chat-stream":
            await self.stream(client, name, "/v1/chat/completions", self.body(stream=True))
        elif name == "completion-stream":
            await self.stream(
                client,
                name,
                "/v1/completions",
                {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "stream": True, "n": 2},
            )
        elif name == "disconnect-stream":
            await self.stream(
                client,
                name,
                "/v1/chat/completions",
                self.body(stream=True, max_tokens=200, ignore_eos=True),
                hang_up_after=2,
            )
        elif name == "disconnect-wait":
            try:
                await client.post(
                    self.url + "/v1/chat/completions", timeout=0.05, json=self.body(max_tokens=200, ignore_eos=True)
                )
            except httpx.TimeoutException:
                pass
        elif name == "fuzz":
            if self.rng.random() < 0.2:
                await self.post(client, name, "/v1/chat/completions", content=self.rng.choice(RAW_FUZZ))
            else:
                field, junk = self.rng.choice(FUZZ)
                body = json.dumps({**self.body(), field: junk}, ensure_ascii=True)
                await self.post(
                    client, name, "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
                )
        elif name == "big-prompt":
            await self.post(client, name, "/v1/chat/completions", content=self.big_body)
        elif name == "chunked-over-limit":

            async def chunks():
                for _ in range(40):
                    yield b" " * 2**20

            try:
                await self.post(client, name, "/v1/chat/completions", content=chunks())
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                self.statuses["413 unread (closed while sending)"] += 1  # the server stopped reading

    def pick(self) -> str:
        names = [n for n in SCENARIOS[:-2] + ["fuzz"] if n not in self.args.without]
        big = [n for n in SCENARIOS[-2:] if n not in self.args.without]
        if big and self.big_left > 0 and self.rng.random() < 0.05:
            self.big_left -= 1
            return self.rng.choice(big)
        return self.rng.choice(names)

    async def client_loop(self, deadline: float) -> None:
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline and self.requests < self.args.max_requests:
                self.requests += 1
                name = self.pick()
                self.scenarios[name] += 1
                try:
                    await self.scenario(client, name)
                except httpx.HTTPError as exc:
                    self.transport_errors[f"{name}: {type(exc).__name__}"] += 1

    def health_loop(self, stop: threading.Event) -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    if client.get(self.url + "/health", timeout=10).status_code != 200:
                        self.health_failures += 1
                except httpx.HTTPError:
                    self.health_failures += 1
                self.health.append(time.perf_counter() - start)
                stop.wait(0.05)

    def run(self) -> None:
        async def clients():
            deadline = time.monotonic() + self.args.duration
            await asyncio.gather(*(self.client_loop(deadline) for _ in range(self.args.clients)))

        stop = threading.Event()
        health = threading.Thread(target=self.health_loop, args=(stop,))
        health.start()
        try:
            asyncio.run(clients())
        finally:
            stop.set()
            health.join()


def make_tiny_checkpoint(directory: Path) -> Path:
    from lfmkit import LFM2, LFM2Config
    from lfmkit.testing import build_test_tokenizer

    config = LFM2Config(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        block_ff_dim=192,
        block_auto_adjust_ff_dim=False,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        max_position_embeddings=1024,
        torch_dtype="float32",
    )
    LFM2.from_config(config).save_pretrained(directory)
    build_test_tokenizer(directory)
    return directory


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
        MODEL,
        "--max-concurrent",
        "4",
        "--max-queued",
        "16",
        "--max-model-len",
        "512",
        "--threads",
        "1",
        "--shutdown-grace",
        "5",
        "--log-level",
        "error",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, timeout=120, interval=0.3)
    return proc, url


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default=None, help="checkpoint directory (with tokenizer); unset: a tiny random one")
    p.add_argument("--duration", type=float, default=60, help="seconds of load")
    p.add_argument("--max-requests", type=int, default=5000, help="requests at most (all clients together)")
    p.add_argument("--clients", type=int, default=6, help="concurrent clients")
    p.add_argument("--big-requests", type=int, default=6, help="30 MB / 40 MB chunked requests at most")
    p.add_argument("--timeout", type=float, default=120, help="seconds allowed per request")
    p.add_argument("--health-limit", type=float, default=1.0, help="slowest acceptable /health answer, seconds")
    p.add_argument("--seed", type=int, default=0, help="scenario choice seed")
    p.add_argument("--without", default="", help=f"comma-separated scenarios to leave out ({', '.join(SCENARIOS)})")
    args = p.parse_args(argv)
    args.without = [n for n in args.without.split(",") if n]
    if set(args.without) - set(SCENARIOS) or not set(SCENARIOS[:-2]) - set(args.without):
        p.error(f"--without takes scenario names ({', '.join(SCENARIOS)}) and must leave one of the first six")

    with tempfile.TemporaryDirectory(prefix="lfmkit-soak-") as tmp:
        model_dir = Path(args.model) if args.model else make_tiny_checkpoint(Path(tmp))
        proc, url = start_server(model_dir, args)
        soak = Soak(url, args)
        started = time.perf_counter()
        try:
            soak.run()
            wall = time.perf_counter() - started
            time.sleep(1.0)  # cancelled requests leave at the next step
            idle = httpx.get(url + "/health", timeout=10).json()
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)

    leak = idle["running"] != 0 or idle["queued"] != 0
    slow = max(soak.health, default=0.0) > args.health_limit
    print(f"machine: {machine()}")
    print(
        f"soak: {wall:.0f} s, {args.clients} clients, {soak.requests} requests, seed {args.seed}"
        + (f", without {', '.join(args.without)}" if args.without else "")
    )
    print("scenarios: " + ", ".join(f"{k} {v}" for k, v in sorted(soak.scenarios.items())))
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(soak.statuses.items(), key=str)))
    print(f"5xx and error events: {len(soak.server_errors)}")
    for e in soak.server_errors[:10]:
        print(f"  {e}")
    print("transport errors: " + (", ".join(f"{k} {v}" for k, v in sorted(soak.transport_errors.items())) or "none"))
    print(
        f"/health: {len(soak.health)} polls, {soak.health_failures} failed, max {max(soak.health):.3f} s, "
        f"p99 {percentile(soak.health, 99):.3f} s, p50 {percentile(soak.health, 50):.3f} s"
    )
    print(
        f"after the load: running {idle['running']}, queued {idle['queued']}; "
        f"SIGTERM exit status {proc.returncode}, traceback in the log: {'Traceback' in out}"
    )
    if "Traceback" in out:
        at = out.index("Traceback")
        kinds = Counter(
            line
            for line in out.splitlines()
            if line and not line[0].isspace() and not line.startswith(("Traceback", "ERROR", "INFO", "WARNING"))
        )
        print("exceptions in the server log: " + ", ".join(f"{k} ({v}x)" for k, v in kinds.most_common()))
        print("first traceback:\n" + out[out.rfind("\n", 0, max(0, at - 1)) + 1 :][:1500])
    bad = soak.server_errors or soak.health_failures or slow or leak or proc.returncode != 0 or "Traceback" in out
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
