"""Pairwise judging: both orders per pair (inconsistent = tie), per-judge and jury rates, bootstrap
intervals; judges as callables and as fake OpenAI-compatible servers behind `lfmkit eval judge`."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lfmkit.cli import main
from lfmkit.errors import EvalError
from lfmkit.evals.judge import combine, judge_pairwise, parse_verdict

PROMPTS = ["q1", "q2", "q3", [{"role": "user", "content": "q4"}]]
A = ["GOOD a1", "GOOD a2", "bad a3", "bad a4"]
B = ["bad b1", "bad b2", "GOOD b3", "bad b4"]


def fair(text: str) -> str:
    """Prefers the answer saying GOOD, wherever it is shown."""
    first = re.search(r"Assistant 1's Answer\]\n(.*?)\n\[The End", text, re.S).group(1)
    second = re.search(r"Assistant 2's Answer\]\n(.*?)\n\[The End", text, re.S).group(1)
    if ("GOOD" in first) == ("GOOD" in second):
        return "Both alike. [[tie]]"
    return "Explanation... [[1]]" if "GOOD" in first else "[[2]] is better. Final: [[2]]"


def first_position(text: str) -> str:
    return "I like the first one. [[1]]"


def test_verdict_parsing_and_order_rule():
    assert parse_verdict("x [[1]] then [[2]]") == "2" and parse_verdict("[[ TIE ]]") == "tie"
    assert parse_verdict("no verdict") is None
    assert combine("1", "2") == "win" and combine("2", "1") == "loss"
    assert combine("1", "1") == "tie" and combine("tie", "2") == "tie" and combine(None, "2") == "tie"


def test_win_rates_with_order_swap_and_jury():
    result = judge_pairwise(PROMPTS, A, B, {"fair": fair, "biased": first_position}, bootstrap=200, seed=1)
    assert result.outcomes == {"fair": ["win", "win", "loss", "tie"], "biased": ["tie"] * 4}
    fair_rates = result.judges["fair"]
    assert (fair_rates.win, fair_rates.tie, fair_rates.loss, fair_rates.score) == (0.5, 0.25, 0.25, 0.625)
    assert result.judges["biased"].tie == 1.0 and result.judges["biased"].score == 0.5
    jury = result.jury
    assert (jury.win, jury.tie, jury.loss) == (2 / 8, 5 / 8, 1 / 8) and jury.score == pytest.approx(0.5625)
    lo, hi = jury.ci["score"]
    assert 0 <= lo <= jury.score <= hi <= 1 and lo < hi
    assert result.judges["biased"].ci["tie"] == (1.0, 1.0)
    again = judge_pairwise(PROMPTS, A, B, {"fair": fair, "biased": first_position}, bootstrap=200, seed=1)
    assert again.jury.ci == jury.ci  # seeded


def test_mismatched_inputs_are_errors():
    with pytest.raises(EvalError, match="pair up"):
        judge_pairwise(PROMPTS, A, B[:2], {"fair": fair})
    with pytest.raises(EvalError, match="at least one judge"):
        judge_pairwise(PROMPTS, A, B, {})


class FakeJudge:
    """An OpenAI-compatible chat server answering with `reply(prompt text)`."""

    def __init__(self, reply):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "judge-model", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                text = body["messages"][-1]["content"]
                self._send(
                    {
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply(text)},
                                "finish_reason": "stop",
                            }
                        ]
                    }
                )

        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_cli_judge_with_fake_judge_servers(tmp_path, capsys):
    for name, answers in (("a", A), ("b", B)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "answer": x}) + "\n" for p, x in zip(PROMPTS, answers))
        )
    with FakeJudge(fair) as j1, FakeJudge(first_position) as j2:
        assert (
            main(
                [
                    "eval",
                    "judge",
                    "--answers-a",
                    str(tmp_path / "a.jsonl"),
                    "--answers-b",
                    str(tmp_path / "b.jsonl"),
                    "--judge",
                    j1.url,
                    "--judge",
                    f"{j2.url}#judge-model",
                    "--bootstrap",
                    "100",
                    "--output",
                    str(tmp_path / "out"),
                ]
            )
            == 0
        )
        assert len(j1.requests) == len(j2.requests) == 8  # both orders per pair
        assert all(r["temperature"] == 0.0 and r["model"] == "judge-model" for r in j1.requests)
        assert "user: q4" in j1.requests[-1]["messages"][0]["content"]
    printed = capsys.readouterr().out
    assert "jury: A wins 25.0%  ties 62.5%  loses 12.5%  score 56.2%" in printed
    saved = json.loads((tmp_path / "out" / "judge.json").read_text())
    assert saved["judges"][j1.url]["win"] == 0.5 and saved["n"] == 4
    assert saved["outcomes"][f"{j2.url}#judge-model"] == ["tie"] * 4
