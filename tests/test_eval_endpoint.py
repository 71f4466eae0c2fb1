"""`--endpoint`: the same tasks scored over an OpenAI-compatible server (an in-process
`lfmkit serve` app on 127.0.0.1) give the same outputs and scores as the in-process backend."""

from __future__ import annotations

import json

import pytest
from test_server import serve

from lfmkit.cli import main
from lfmkit.errors import EvalError
from lfmkit.evals import evaluate
from lfmkit.evals.backends import EndpointBackend


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from checkpoints import make_checkpoint

    root = tmp_path_factory.mktemp("evalep")
    path, _ = make_checkpoint(root / "model", layout="small", seed=7, with_tokenizer=True)
    data = root / "data"
    write_jsonl(
        data / "gsm8k" / "test.jsonl",
        [
            {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "#### 7"},
            {"question": "What is 2 + 2?", "answer": "#### 4"},
            {"question": "The weather in Paris is 21 degrees; tomorrow 3 more. How warm?", "answer": "#### 24"},
        ],
    )
    write_jsonl(
        data / "gpqa" / "train.jsonl",
        [
            {
                "Question": f"Which one is {w}?",
                "Correct Answer": f"right {w}",
                "Incorrect Answer 1": "wrong",
                "Incorrect Answer 2": "no",
                "Incorrect Answer 3": f"other {w}",
            }
            for w in ("blue", "red", "the sea")
        ],
    )
    with serve(path, max_concurrent=4, max_queued=32) as server:
        yield path, data, server


def samples(folder, task):
    return [json.loads(x) for x in (folder / f"samples_{task}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("chat", [False, True])
def test_endpoint_scores_equal_in_process(setup, tmp_path, chat):
    path, data, server = setup
    kw = dict(max_tokens=10, apply_chat_template=chat, mc_rule="vocab")
    local = evaluate(str(path), "gsm8k,gpqa", data, tmp_path / "local", batch_size=2, **kw)
    remote = evaluate(EndpointBackend(server.url, concurrency=3), "gsm8k,gpqa", data, tmp_path / "remote", **kw)
    assert remote["backend"] == "endpoint" and remote["model"] == "tiny-lfm2"
    for task in ("gsm8k", "gpqa"):
        a, b = samples(tmp_path / "local", task), samples(tmp_path / "remote", task)
        assert [s["output"] for s in b] == [s["output"] for s in a]
        assert [s["prediction"] for s in b] == [s["prediction"] for s in a]
        assert [s["correct"] for s in b] == [s["correct"] for s in a]
        for key in ("score", "stderr", "n"):
            assert remote["results"][task][key] == local["results"][task][key]


def test_cli_endpoint_and_its_errors(setup, tmp_path, capsys):
    _, data, server = setup
    assert (
        main(["eval", "-", "--endpoint", server.url, "--tasks", "gpqa", "--data", str(data), "--output", str(tmp_path)])
        == 0
    )
    assert "gpqa" in capsys.readouterr().out and (tmp_path / "results.json").is_file()
    assert (
        main(["eval", "-", "--endpoint", server.url, "--tasks", "gpqa", "--data", str(data), "--mc-rule", "choices"])
        == 2
    )
    assert "--mc-rule choices needs prompt log-likelihoods" in capsys.readouterr().err
    assert main(["eval", "other-model", "--endpoint", server.url, "--tasks", "gpqa", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and err.count("\n") == 1
    with pytest.raises(EvalError, match="cannot list the served models"):
        EndpointBackend("http://127.0.0.1:9", timeout=2)
