"""lm-evaluation-harness with `LMEvalModel` (`--model lfmkit`) gives the same log-likelihoods,
rolling log-likelihoods, generations and scores as lm-eval's own Hugging Face backend, on the
same tiny checkpoint and tiny custom tasks defined here (local JSON files, no downloads)."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")

TASKS = {
    "tiny_mc": """
task: tiny_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
""",
    "tiny_ppl": """
task: tiny_ppl
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{question}}}}"
metric_list: [{{metric: word_perplexity}}, {{metric: bits_per_byte}}]
""",
    "tiny_gen": """
task: tiny_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, do_sample: false}}
metric_list: [{{metric: exact_match}}]
""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from checkpoints import make_checkpoint
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("lmeval")
    path, _ = make_checkpoint(root / "model", layout="small", seed=9, with_tokenizer=True)
    data = root / "tiny.jsonl"
    rows = [
        {"question": "What is the capital of France?", "choices": ["Paris", "the sea", "a robot"], "answer": 0},
        {"question": "Tell me a story about a robot", "choices": [" once", "upon a time", "paint"], "answer": 1},
        {"question": "The quick brown fox", "choices": ["jumps over the lazy dog", "sleeps"], "answer": 0},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / f"{name}.yaml").write_text(text.format(data=data))
    return path, TaskManager(include_path=str(tasks), include_defaults=False)


def flat(value) -> list:
    """The numbers, flags and strings of lm-eval's logged responses, in order."""
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in flat(item)]
    return [value]


def run(model, manager, **kw):
    return lm_eval.simple_evaluate(
        model=model,
        tasks=list(TASKS),
        task_manager=manager,
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        **kw,
    )


def test_lfmkit_model_equals_lm_eval_hf_backend(setup):
    from lm_eval.api.registry import get_model

    from lfmkit.evals import LMEvalModel

    path, manager = setup
    assert get_model("lfmkit") is LMEvalModel  # registered on import
    ours = run(LMEvalModel(pretrained=str(path), batch_size=2), manager)
    hf = run("hf", manager, model_args=f"pretrained={path},dtype=float32", batch_size=2, device="cpu")
    for task in TASKS:
        a, b = ours["samples"][task], hf["samples"][task]
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            got, want = flat(x["resps"]), flat(y["resps"])
            assert [type(v) for v in got] == [type(v) for v in want] and got
            for u, v in zip(got, want):
                assert u == (pytest.approx(v, abs=2e-4) if isinstance(v, float) else v), task  # ll, is_greedy, text
        for metric, value in hf["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-4), (task, metric)


def test_cli_runs_lm_eval_tasks_on_lfmkit(setup, tmp_path, capsys):
    from lfmkit.cli import main

    path, manager = setup
    include = manager.include_path if isinstance(manager.include_path, str) else manager.include_path[0]
    assert (
        main(
            [
                "eval",
                str(path),
                "--lm-eval-tasks",
                "tiny_mc",
                "--lm-eval-include",
                include,
                "--output",
                str(tmp_path),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    written = json.loads((tmp_path / "lm_eval_results.json").read_text())
    direct = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={path},dtype=float32", tasks=["tiny_mc"], task_manager=manager, device="cpu"
    )["results"]["tiny_mc"]
    assert written["tiny_mc"]["acc,none"] == pytest.approx(direct["acc,none"])
    assert '"tiny_mc"' in capsys.readouterr().out
