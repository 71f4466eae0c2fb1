"""`lfmkit serve` as users run it: a subprocess on 127.0.0.1, then the `openai` client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("cli"), layout="small", seed=4, with_tokenizer=True)
    return path


def _start(checkpoint, *extra: str) -> tuple[subprocess.Popen, str]:
    """`lfmkit serve` on a free 127.0.0.1 port, once /health answers."""
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lfmkit",
            "serve",
            str(checkpoint),
            "--port",
            str(port),
            "--served-model-name",
            "tiny",
            "--threads",
            "1",
            "--log-level",
            "warning",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("server did not start")
        time.sleep(0.2)


def test_serve_command_end_to_end(checkpoint, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")
    proc, url = _start(
        checkpoint,
        "--api-key-file",
        str(key_file),
        "--max-concurrent",
        "2",
        "--max-model-len",
        "256",
        "--cache-mb",
        "16",
    )
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"k3y" not in f.read()  # the key is not in the process list
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
        assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1
        again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
        assert again.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens  # the prefix cache
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out


def _read_stream(url: str, max_tokens: int, started: threading.Event, lines: list[str]) -> None:
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line:
                lines.append(line)
                started.set()


def test_sigterm_lets_running_streams_finish_then_ends_the_rest(checkpoint):
    """SIGTERM: no new connections; a short stream finishes within the grace period; a long one
    then ends with an SSE error event; both end with [DONE]; the process exits with status 0."""
    proc, url = _start(checkpoint, "--shutdown-grace", "5", "--max-concurrent", "2", "--max-model-len", "4096")
    streams = {name: (threading.Event(), []) for name in ("short", "long")}
    readers = [
        threading.Thread(target=_read_stream, args=(url, n, *streams[name]))
        for name, n in (("short", 24), ("long", 4000))
    ]
    try:
        for t in readers:
            t.start()
        assert all(started.wait(60) for started, _ in streams.values())
        proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 30
        while True:  # the listening socket closes
            try:
                httpx.get(url + "/health", timeout=1)
            except httpx.ConnectError:
                break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the server kept accepting connections after SIGTERM"
            time.sleep(0.05)
        for t in readers:
            t.join(60)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    for name, (_, lines) in streams.items():
        assert lines[-1] == "data: [DONE]", (name, lines[-3:])
        events = [json.loads(line[6:]) for line in lines[:-1]]
        assert all("error" in e or e["object"] == "text_completion" for e in events)
        if name == "short":
            assert events[-1]["choices"][0]["finish_reason"] == "length"
        else:
            assert events[-1]["error"]["type"] == "service_unavailable"
            assert "shutting down" in events[-1]["error"]["message"]


def test_serve_bad_model_path_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "lfmkit", "serve", "/nonexistent/model/dir"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("lfmkit serve: error:") and "/nonexistent/model/dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_negative_cache_budget_is_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "lfmkit", "serve", "/nonexistent/model/dir", "--cache-mb", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "lfmkit serve: error: --cache-mb must be >= 0 MiB, got -1.0"


def test_serve_unreadable_api_key_file_is_one_line(tmp_path):
    missing = tmp_path / "no-such-key"
    proc = subprocess.run(
        [sys.executable, "-m", "lfmkit", "serve", "/nonexistent/model/dir", "--api-key-file", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("lfmkit serve: error: --api-key-file") and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
