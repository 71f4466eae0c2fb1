"""`lfmkit run`: streams the same text generate() returns; --json, --chat, errors; a real terminal."""

import json
import os
import sys

import pexpect
import pytest
from checkpoints import make_checkpoint

from lfmkit import LFM2, SamplingParams, Tokenizer
from lfmkit.cli import main
from lfmkit.inference.generate import generate


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path, _ = make_checkpoint(tmp_path_factory.mktemp("run"), layout="small", seed=6, with_tokenizer=True)
    return path, LFM2.from_pretrained(path, dtype="float32"), Tokenizer.from_pretrained(path)


class Recorder:
    """A stdout that remembers each write (to see the text arrive in pieces)."""

    def __init__(self):
        self.writes = []

    def write(self, s):
        self.writes.append(s)

    def flush(self):
        pass

    def isatty(self):
        return False


def test_run_streams_the_generated_text(ckpt, monkeypatch):
    path, model, tok = ckpt
    expected = generate(
        model, "Hello! How are you", SamplingParams.greedy(max_tokens=12, ignore_eos=True), tokenizer=tok
    ).text
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["run", str(path), "Hello! How are you", "--greedy", "--max-tokens", "12", "--ignore-eos"]) == 0
    assert "".join(out.writes) == expected + "\n"
    assert len([w for w in out.writes if w]) > 3  # piece by piece, not at the end


def test_run_json_with_chat_and_sampling_flags(ckpt, capsys):
    path, model, tok = ckpt
    assert (
        main(
            [
                "run",
                str(path),
                "--chat",
                "--system",
                "Be brief.",
                "--json",
                "--max-tokens",
                "9",
                "--seed",
                "3",
                "--temperature",
                "0.9",
                "--top-k",
                "40",
                "--ignore-eos",
                "Hi there",
                "--logprobs",
                "2",
            ]
        )
        == 0
    )
    obj = json.loads(capsys.readouterr().out)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert obj["prompt"] == msgs
    assert obj["prompt_ids"] == tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True))
    sp = SamplingParams(max_tokens=9, seed=3, temperature=0.9, top_k=40, ignore_eos=True)
    assert obj["generated_ids"] == generate(model, obj["prompt_ids"], sp).token_ids
    assert obj["text"] == tok.decode(obj["generated_ids"])
    assert obj["finish_reason"] == "length" and obj["usage"]["completion_tokens"] == 9
    assert obj["params"]["top_k"] == 40 and obj["params"]["min_p"] == 0.15  # model-card default kept
    assert len(obj["logprobs"]) == 9 and len(obj["logprobs"][0]["top"]) == 2


def test_run_token_ids_and_stdin(ckpt, capsys, monkeypatch):
    path, model, _ = ckpt
    assert main(["run", str(path), "--ids", "1,5,9", "--json", "--greedy", "--max-tokens", "4", "--ignore-eos"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["prompt_ids"] == [1, 5, 9]
    assert (
        obj["generated_ids"]
        == generate(model, [1, 5, 9], SamplingParams.greedy(max_tokens=4, ignore_eos=True)).token_ids
    )
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Hello from stdin"))
    assert main(["run", str(path), "-", "--json", "--max-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "Hello from stdin"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--temperature", "-1"], "sampling parameter 'temperature'"),
        (["--max-tokens", "5000"], "do not fit the model's context of 1024"),
        (["--ids", "1,x"], "--ids"),
    ],
)
def test_run_errors_are_one_line(ckpt, capsys, argv, message):
    path, _, _ = ckpt
    assert main(["run", str(path), "Hi"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("lfmkit run: error:")


def test_run_in_a_terminal(ckpt):
    path, model, tok = ckpt
    expected = generate(
        model, "Tell me a story", SamplingParams.greedy(max_tokens=10, ignore_eos=True), tokenizer=tok
    ).text
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "lfmkit",
            "run",
            str(path),
            "--greedy",
            "--max-tokens",
            "10",
            "--ignore-eos",
            "--threads",
            "1",
            "Tell me a story",
        ],
        env=dict(os.environ, TERM="dumb"),
        encoding="utf-8",
        timeout=90,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert child.before.replace("\r\n", "\n") == expected + "\n"
