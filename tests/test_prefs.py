"""`lfmkit prefs build`: K samples per prompt from lfmkit's batched generation (shared prefill),
every candidate (the SFT answer too) judged, highest vs lowest written in TRL's format with
scores and raw judge outputs, filtered by threshold and gap; a SIGKILL in the middle (and a torn
last line) then --resume loses and duplicates nothing; an LLM judge over an OpenAI-compatible
endpoint (a fake one on 127.0.0.1), several judges averaged; one-line errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefs_judges import KILL_AFTER, checksum, word_count
from train_helpers import tiny_model_dir, write_jsonl

import lfmkit
from lfmkit.cli import main
from lfmkit.errors import ConfigError, DataError
from lfmkit.inference.sampling import derived_seed
from lfmkit.text.tokenizer import Tokenizer
from lfmkit.train.judges import MT_BENCH_RUBRIC, parse_rating
from lfmkit.train.prefs import PrefsConfig, build_pairs, progress_path

SFT = [
    {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me a joke."},
            {"role": "assistant", "content": "Why did the chicken cross the road?"},
        ]
    },
    {"prompt": [{"role": "user", "content": "Say hi."}]},
    {
        "messages": [
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3 + 3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
    {
        "prompt": [{"role": "user", "content": "Name a color."}],
        "completion": [{"role": "assistant", "content": "Blue."}],
    },
    {
        "messages": [
            {"role": "user", "content": "Count to three."},
            {"role": "assistant", "content": "One, two, three."},
        ]
    },
]
K = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs")
    return root, tiny_model_dir(root / "model"), write_jsonl(root / "sft.jsonl", SFT)


def config(setup, name, **overrides):
    root, model, prompts = setup
    values = dict(
        model=str(model),
        prompts=str(prompts),
        output=str(root / name / "pairs.jsonl"),
        num_samples=K,
        judges=["prefs_judges:checksum"],
        max_tokens=10,
        batch_size=4,
        progress=False,
    )
    values.update(overrides)
    return PrefsConfig(**values)


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(setup):
    cfg = config(setup, "full", min_chosen_score=8, min_gap=6)
    result = build_pairs(cfg, verbose=False)
    return cfg, result


def test_pairs_are_the_best_vs_the_worst_candidate_and_pass_the_filters(setup, uninterrupted):
    cfg, result = uninterrupted
    pairs = rows(cfg.output)
    outcomes = [r["outcome"] for r in rows(progress_path(Path(cfg.output)))[1:]]
    assert len(outcomes) == len(SFT) and outcomes.count("pair") == len(pairs) == result.pairs > 0
    assert set(outcomes) - {"pair"}, "the filters should drop some rows of this data"
    for pair in pairs:
        assert pair["chosen_score"] >= 8 and pair["chosen_score"] - pair["rejected_score"] >= 6
        scores = [c["score"] for c in pair["scores"]]
        assert pair["chosen_score"] == max(scores) and pair["rejected_score"] == min(scores)
        for side in ("chosen", "rejected"):
            text = pair[side][0]["content"]
            assert checksum(pair["prompt"], text) == pair[f"{side}_score"]  # the judge said so
            assert pair[f"{side}_judgements"] == [
                {
                    "judge": "prefs_judges:checksum",
                    "score": pair[f"{side}_score"],
                    "output": str(int(pair[f"{side}_score"])),
                }
            ]
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"


def test_every_candidate_is_the_sft_answer_or_one_of_k_batched_samples(setup, uninterrupted):
    """The candidates of a row are its reference answer and the K completions lfmkit.generate
    gives that prompt alone with n=K (one prefill) and the row's seed."""
    cfg, _ = uninterrupted
    _, model_dir, prompts = setup
    model = lfmkit.load(model_dir)
    tok = Tokenizer.from_pretrained(model_dir)
    for pair in rows(cfg.output):
        index = int(pair["source"].rsplit(":", 1)[1]) - 1
        alone = lfmkit.generate(
            model, pair["prompt"], tokenizer=tok, n=K, max_tokens=10, seed=derived_seed(cfg.seed, index + 1)
        )
        texts = [r.text for r in alone]
        row = SFT[index]
        reference = (row.get("messages") or row.get("completion") or [{}])[-1]
        for side in ("chosen", "rejected"):
            source = pair[f"{side}_source"]
            content = pair[side][0]["content"]
            if source == "reference":
                assert pair[side][0] == reference
            else:
                assert content == texts[int(source.split()[1])]
        sources = [c["source"] for c in pair["scores"]]
        assert len(sources) == len(set([reference.get("content")] * (reference.get("role") == "assistant") + texts)), (
            "every distinct candidate is judged once"
        )


def test_the_pairs_file_reads_in_trl_and_in_lfmkit_train_dpo(setup, uninterrupted):
    from dpo_helpers import trl_tokenized

    from lfmkit.train.preference_data import PairEncoder

    cfg, _ = uninterrupted
    pairs = rows(cfg.output)
    ours = [
        dict(
            zip(
                ("prompt_ids", "chosen_ids", "rejected_ids"), PairEncoder(Tokenizer.from_pretrained(setup[1])).encode(p)
            )
        )
        for p in pairs
    ]
    assert trl_tokenized(setup[1], pairs) == ours


def test_the_pairs_train_with_lfmkit_train_dpo(setup, uninterrupted, capsys):
    cfg, result = uninterrupted
    out = setup[0] / "dpo-on-pairs"
    rc = main(
        [
            "train",
            "dpo",
            "--no-progress",
            "--model",
            cfg.model,
            "--data",
            cfg.output,
            "--output",
            str(out),
            "--loss",
            "sigmoid_norm",
            "--beta",
            "2",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--packing",
            "--learning-rate",
            "1e-3",
            "--save-every",
            "0",
        ]
    )
    assert rc == 0 and f"{result.pairs} pairs" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()


def test_a_run_killed_in_the_middle_resumes_without_loss_or_duplicates(setup, uninterrupted):
    full, _ = uninterrupted
    cfg = config(setup, "killed", min_chosen_score=8, min_gap=6)
    argv = [
        sys.executable,
        "-m",
        "lfmkit",
        "prefs",
        "build",
        "--no-progress",
        "--model",
        cfg.model,
        "--prompts",
        cfg.prompts,
        "--output",
        cfg.output,
        "--num-samples",
        str(K),
        "--judge",
        "prefs_judges:checksum",
        "--max-tokens",
        "10",
        "--batch-size",
        "4",
        "--min-chosen-score",
        "8",
        "--min-gap",
        "6",
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", **{KILL_AFTER: str(2 * (K + 1) + 1)}
    )  # in the third row's judging
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    done = rows(progress_path(Path(cfg.output)))[1:]
    assert 0 < len(done) < len(SFT)
    build_pairs(config(setup, "killed", min_chosen_score=8, min_gap=6, resume=True), verbose=False)
    assert Path(cfg.output).read_text() == Path(full.output).read_text()
    sources = [r["source"] for r in rows(progress_path(Path(cfg.output)))[1:]]
    assert sorted(sources) == sorted(set(sources)) and len(sources) == len(SFT)


def test_a_torn_last_line_is_cut_and_its_row_redone(setup, uninterrupted):
    full, _ = uninterrupted
    cfg = config(setup, "torn", min_chosen_score=8, min_gap=6)
    build_pairs(cfg, verbose=False)
    out, progress = Path(cfg.output), progress_path(Path(cfg.output))
    last = rows(out)[-1]["source"]
    kept = [line for line in progress.read_text().splitlines(keepends=True) if f'"{last}"' not in line]
    progress.write_text("".join(kept) + '{"source": "sft.jso')  # killed while writing
    text = out.read_text()
    out.write_text(text[: -len(text.splitlines()[-1]) // 2 - 1])  # half of the last pair
    build_pairs(config(setup, "torn", min_chosen_score=8, min_gap=6, resume=True), verbose=False)
    assert out.read_text() == Path(full.output).read_text()


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_an_old_output(setup, uninterrupted):
    full, _ = uninterrupted
    with pytest.raises(ConfigError, match="holds an earlier run"):
        build_pairs(config(setup, "full", min_chosen_score=8, min_gap=6), verbose=False)
    with pytest.raises(ConfigError, match="min_gap was 6 there, now 1 "):
        build_pairs(config(setup, "full", min_chosen_score=8, min_gap=1, resume=True), verbose=False)
    before = Path(full.output).read_text()
    result = build_pairs(config(setup, "full", min_chosen_score=8, min_gap=6, resume=True, batch_size=1), verbose=False)
    assert result.skipped == len(SFT) and not result.outcomes and Path(full.output).read_text() == before


# ---- LLM judges over an endpoint -------------------------------------------------------------------


class FakeJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that grades the answer in the rubric by its word count."""

    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append(body)
        prompt = body["messages"][0]["content"]
        answer = prompt.split("[The Start of Assistant's Answer]\n", 1)[1].rsplit("\n[The End", 1)[0]
        reply = f"The answer has {len(answer.split())} words. Rating: [[{min(10, len(answer.split()))}]]"
        data = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_llm_judge_over_an_endpoint_and_a_jury_average(setup, endpoint):
    FakeJudge.requests.clear()
    cfg = config(setup, "jury", judges=["prefs_judges:word_count"], judge_endpoints=[endpoint], judge_model="grader")
    build_pairs(cfg, verbose=False)
    pairs = rows(cfg.output)
    assert pairs and all(r["model"] == "grader" and r["temperature"] == 0 for r in FakeJudge.requests)
    assert "[Conversation]\nUser: What is the capital of France?" in FakeJudge.requests[0]["messages"][0]["content"]
    for pair in pairs:
        for side in ("chosen", "rejected"):
            text = pair[side][0]["content"]
            function_vote, llm_vote = pair[f"{side}_judgements"]
            assert function_vote["score"] == word_count(pair["prompt"], text)
            assert llm_vote["judge"] == endpoint and "Rating: [[" in llm_vote["output"]
            assert llm_vote["score"] == parse_rating(llm_vote["output"]) == min(10, len(text.split()))
            assert pair[f"{side}_score"] == pytest.approx((function_vote["score"] + llm_vote["score"]) / 2)


def test_rating_parsing_and_the_rubric():
    assert parse_rating("Good. Rating: [[7]]") == 7.0 and parse_rating("[[3]] then [[8.5]]") == 8.5
    assert parse_rating("no rating here") is None
    assert "{conversation}" in MT_BENCH_RUBRIC and "{response}" in MT_BENCH_RUBRIC


# ---- errors ----------------------------------------------------------------------------------------


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "judge, message",
    [
        (["--judge", "no_such_module:score"], "cannot import no_such_module"),
        (["--judge", "prefs_judges:missing"], "has no function 'missing'"),
        (["--judge", "prefs_judges:broken"], r"sft.jsonl:1: judge prefs_judges:broken raised ValueError: no idea"),
        (["--judge", "prefs_judges:not_a_number"], "returned 'high'; a judge returns a finite number"),
        ([], "no judge"),
        (["--judge-endpoint", "http://127.0.0.1:{port}/v1"], "--judge-endpoint http://127.0.0.1:"),
    ],
)
def test_errors_are_one_line(setup, capsys, tmp_path, judge, message):
    _, model, prompts = setup
    judge = [j.replace("{port}", str(closed_port())) for j in judge]
    rc = main(
        [
            "prefs",
            "build",
            "--no-progress",
            "--model",
            str(model),
            "--prompts",
            str(prompts),
            "--output",
            str(tmp_path / "pairs.jsonl"),
            "--num-samples",
            "2",
            "--max-tokens",
            "4",
            *judge,
        ]
    )
    assert rc == 2
    assert message in error_line(capsys)


def test_rows_that_are_not_conversations_are_named(setup, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [SFT[0], {"prompt": "plain text"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: prefs build reads conversations"):
        build_pairs(config(setup, "bad", prompts=str(bad), output=str(tmp_path / "p.jsonl")), verbose=False)
