"""Tasks read from the Hugging Face datasets cache through `datasets.load_dataset`, offline.

The test builds the cache itself, in the layout a real Hub download leaves
(`<cache>/<namespace>___<name>/<config>/<version>/<hash>/` with arrow files and dataset_info.json):
each fixture is prepared by datasets' own json builder and put where `load_dataset(repo, config)`
looks for it when the Hub cannot be reached. Offline mode is on, so nothing can be downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lfmkit.cli import main
from lfmkit.errors import EvalError
from lfmkit.evals import evaluate

datasets = pytest.importorskip("datasets")

LETTERS = "ABCD"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def cache_hub_dataset(
    cache: Path, repo: str, config: str | None, splits: dict[str, list[dict]], work: Path, features=None
) -> None:
    """Put `splits` into `cache` as `load_dataset(repo, config)` finds a cached Hub dataset
    (`features`: the dataset's column types, where inferring them from one split cannot)."""
    from datasets.naming import camelcase_to_snakecase

    name = config or "default"
    files = {}
    for split, rows in splits.items():
        files[split] = str(work / "src" / repo.replace("/", "__") / name / f"{split}.jsonl")
        write_jsonl(Path(files[split]), rows)
    builder = datasets.load_dataset_builder(
        "json", name, data_files=files, cache_dir=str(work / "build"), features=features
    )
    builder.download_and_prepare()
    built = Path(builder.cache_dir)  # build/json/<name>-<hash>/<version>/<hash>
    namespace, dataset = repo.split("/")
    target = cache / f"{namespace}___{camelcase_to_snakecase(dataset)}" / name / built.parent.name / built.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(target))
    for arrow in target.glob("json-*.arrow"):  # the builder names its files after the dataset
        arrow.rename(target / arrow.name.replace("json-", f"{camelcase_to_snakecase(dataset)}-", 1))


def mmlu_rows(n: int, subject: str, offset: int = 0) -> list[dict]:
    return [
        {
            "question": f"Question {offset + i} about {subject}?",
            "subject": subject,
            "choices": [f"choice {k}" for k in range(4)],
            "answer": (offset + i) % 4,
        }
        for i in range(n)
    ]


def mmmlu_rows(n: int, lang: str) -> list[dict]:
    return [
        {
            "Unnamed: 0": i,
            "Question": f"{lang} question {i}?",
            **{x: f"{lang} {x}" for x in LETTERS},
            "Answer": LETTERS[i % 4],
            "Subject": "world_religions",
        }
        for i in range(n)
    ]


def gsm8k_rows(n: int) -> list[dict]:
    return [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(n)]


def gpqa_rows(n: int) -> list[dict]:
    """Idavidrein/gpqa's gpqa_diamond.csv layout: the revision columns beside the ones we read
    (a subset of its ~40), empty cells as None."""
    return [
        {
            "Pre-Revision Question": f"Old question {i}?",
            "Pre-Revision Correct Answer": "old right",
            "Question": f"Which one is {i}?",
            "Correct Answer": f"right {i}",
            "Incorrect Answer 1": "wrong  one",
            "Incorrect Answer 2": "no [title] way",
            "Incorrect Answer 3": f" other {i} ",
            "Explanation": "Because.",
            "Revision Comments (from Question Writer)": None,
            "Subdomain": "Physics (general)",
            "Record ID": f"rec{i:03d}",
            "High-level domain": "Physics",
        }
        for i in range(n)
    ]


def mgsm_rows(lang: str) -> dict[str, list[dict]]:
    """juletxara/mgsm's layout (its TSVs as the dataset loads them, now parquet): test rows hold
    the question and answer_number only (answer and equation_solution are None); train rows
    carry the language's "Question:" / "Step-by-Step Answer:" words inside the text."""
    q, a = {"de": ("Frage:", "Schritt-für-Schritt-Antwort:"), "en": ("Question:", "Step-by-Step Answer:")}[lang]
    test = [
        {"question": f"{lang} {i} + 2?", "answer": None, "answer_number": i + 2, "equation_solution": None}
        for i in range(3)
    ]
    train = [
        {
            "question": f"{q} {lang} example {i}?",
            "answer": f"{a} {i} + {i} = {2 * i}. The answer is {2 * i}.",
            "answer_number": 2 * i,
            "equation_solution": f"{i} + {i} = {2 * i}",
        }
        for i in range(5)
    ]
    return {"test": test, "train": train}


def _mgsm_features():
    text, number = datasets.Value("string"), datasets.Value("int64")
    return datasets.Features(question=text, answer=text, answer_number=number, equation_solution=text)


MGSM_FEATURES = _mgsm_features()


def ifeval_rows() -> list[dict]:
    """google/IFEval's layout: an integer key; each kwargs entry a struct with every argument
    name of every instruction, None where it does not apply (arrow unifies them so)."""
    return [
        {
            "key": 1000,
            "prompt": "Write without commas.",
            "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}],
        },
        {
            "key": 1001,
            "prompt": "At least 2 words.",
            "instruction_id_list": ["length_constraints:number_words"],
            "kwargs": [{"relation": "at least", "num_words": 2}],
        },
    ]


def ifbench_rows() -> list[dict]:
    return [
        {"key": "0", "prompt": "No spaces please.", "instruction_id_list": ["format:no_whitespace"], "kwargs": [{}]},
        {
            "key": "1",
            "prompt": "Two numbers.",
            "instruction_id_list": ["count:numbers"],
            "kwargs": [{"N": 2}],
        },
    ]


class Scripted:
    """A backend whose answers depend only on the prompt text (so two data sources can be compared)."""

    name = "scripted"

    def generate(self, prompts, max_tokens, stop):
        return [f"{len(p)} {len(p) % 7} no_spaces" if "spaces" not in p else "no_spaces" for p in prompts]

    def score_mc(self, prompts, continuations):
        return [([], LETTERS[len(p) % 4]) for p in prompts]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A datasets cache holding cais/mmlu (all), openai/MMMLU (FR_FR, DE_DE), openai/gsm8k (main),
    Idavidrein/gpqa (gpqa_diamond), juletxara/mgsm (de, en), google/IFEval, allenai/IFBench_test,
    each in its Hub layout; and the same rows as --data files."""
    import datasets.config as dc

    root = tmp_path_factory.mktemp("hub")
    cache, files = root / "cache", root / "files"
    old = dc.HF_HUB_OFFLINE
    dc.HF_HUB_OFFLINE = True
    try:
        splits = {"test": mmlu_rows(3, "astronomy") + mmlu_rows(2, "virology", 3), "dev": mmlu_rows(5, "astronomy", 9)}
        cache_hub_dataset(cache, "cais/mmlu", "all", splits, root)
        for split, rows in splits.items():
            write_jsonl(files / "mmlu" / f"{split}.jsonl", rows)
        for lang in ("FR_FR", "DE_DE"):
            cache_hub_dataset(cache, "openai/MMMLU", lang, {"test": mmmlu_rows(6, lang)}, root)
            write_jsonl(files / "mmmlu" / lang / "test.jsonl", mmmlu_rows(6, lang))
        cache_hub_dataset(cache, "openai/gsm8k", "main", {"test": gsm8k_rows(3), "train": gsm8k_rows(2)}, root)
        write_jsonl(files / "gsm8k" / "test.jsonl", gsm8k_rows(3))
        cache_hub_dataset(cache, "Idavidrein/gpqa", "gpqa_diamond", {"train": gpqa_rows(4)}, root)
        write_jsonl(files / "gpqa" / "gpqa_diamond" / "train.jsonl", gpqa_rows(4))
        for lang in ("de", "en"):
            cache_hub_dataset(cache, "juletxara/mgsm", lang, mgsm_rows(lang), root, MGSM_FEATURES)
            for split, rows in mgsm_rows(lang).items():
                write_jsonl(files / "mgsm" / lang / f"{split}.jsonl", rows)
        cache_hub_dataset(cache, "google/IFEval", None, {"train": ifeval_rows()}, root)
        write_jsonl(files / "ifeval" / "train.jsonl", ifeval_rows())
        cache_hub_dataset(cache, "allenai/IFBench_test", None, {"train": ifbench_rows()}, root)
        write_jsonl(files / "ifbench" / "train.jsonl", ifbench_rows())
    finally:
        dc.HF_HUB_OFFLINE = old
    return cache, files


TASKS = "mmlu,mmmlu,gsm8k,gpqa,mgsm,ifeval,ifbench"


def without_data(samples_or_results):
    return {k: {kk: vv for kk, vv in v.items() if kk != "data"} for k, v in samples_or_results.items()}


def test_hub_cache_gives_the_same_results_as_the_files(hub, tmp_path):
    cache, files = hub
    from_hub = evaluate(Scripted(), TASKS, None, tmp_path / "hub", hf_cache_dir=str(cache))
    from_files = evaluate(Scripted(), TASKS, files, tmp_path / "files")
    assert without_data(from_hub["results"]) == without_data(from_files["results"])
    for task in TASKS.split(","):
        a = (tmp_path / "hub" / f"samples_{task}.jsonl").read_text()
        b = (tmp_path / "files" / f"samples_{task}.jsonl").read_text()
        assert a == b
    data = from_hub["results"]["mmlu"]["data"]
    assert sorted(data["files"]) == ["hf:cais/mmlu/all/dev", "hf:cais/mmlu/all/test"]
    assert all(len(h) == 64 for h in data["files"].values())
    r = from_hub["results"]
    assert r["mmlu"]["n"] == 5 and r["mmmlu"]["n"] == 12 and r["gsm8k"]["n"] == 3 and r["ifbench"]["n"] == 2
    assert r["gpqa"]["n"] == 4 and r["mgsm"]["n"] == 6 and r["ifeval"]["n"] == 2
    # MMMLU and MGSM: their configs are tried, the ones in the cache are the subtasks.
    assert sorted(r["mmmlu"]["subtasks"]) == ["DE_DE", "FR_FR"]
    assert sorted(r["mgsm"]["subtasks"]) == ["de", "en"]
    assert sorted(r["gpqa"]["data"]["files"]) == ["hf:Idavidrein/gpqa/gpqa_diamond/train"]


def test_the_hub_layouts_give_the_prompts_and_targets_we_expect(hub, tmp_path):
    """MGSM's train words are not doubled and its test targets are answer_number; GPQA's
    choices are cleaned; IFEval's None arguments are dropped before checking."""
    cache, _ = hub
    evaluate(Scripted(), "mgsm,gpqa,ifeval", None, tmp_path, hf_cache_dir=str(cache))
    mgsm = [json.loads(x) for x in (tmp_path / "samples_mgsm.jsonl").read_text().splitlines()]
    de = next(s for s in mgsm if s["subtask"] == "de")
    assert de["target"] == "2" and de["prompt"].count("Frage:") == 6
    assert "Frage: de example 0?\nSchritt-für-Schritt-Antwort: 0 + 0 = 0." in de["prompt"]
    assert de["prompt"].endswith("Frage: de 0 + 2?\nSchritt-für-Schritt-Antwort:")
    gpqa = json.loads((tmp_path / "samples_gpqa.jsonl").read_text().splitlines()[0])
    assert "no. way" in gpqa["prompt"] and "wrong one" in gpqa["prompt"] and "Old question" not in gpqa["prompt"]
    ifeval = json.loads((tmp_path / "results.json").read_text())["results"]["ifeval"]
    assert ifeval["n"] == 2


def test_a_task_folder_under_data_wins_and_the_others_come_from_the_cache(hub, tmp_path):
    cache, files = hub
    data = tmp_path / "data"
    write_jsonl(data / "gsm8k" / "test.jsonl", gsm8k_rows(1))  # only gsm8k here, one row
    summary = evaluate(Scripted(), "gsm8k,ifbench", data, hf_cache_dir=str(cache))
    assert summary["results"]["gsm8k"]["n"] == 1
    assert list(summary["results"]["gsm8k"]["data"]["files"]) == [str(data / "gsm8k" / "test.jsonl")]
    assert list(summary["results"]["ifbench"]["data"]["files"]) == ["hf:allenai/IFBench_test/train"]


def test_a_dataset_not_in_the_cache_is_one_line_naming_the_call_and_the_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError) as err:
        evaluate(Scripted(), "ifeval", None, hf_cache_dir=str(empty))
    message = str(err.value)
    assert "\n" not in message and "load_dataset('google/IFEval', split='train')" in message
    assert "--data DIR with ifeval/train.jsonl" in message
    with pytest.raises(EvalError, match=r"none of juletxara/mgsm's configs bn, de, en"):
        evaluate(Scripted(), "mgsm", None, hf_cache_dir=str(empty))
    only_test = tmp_path / "cache"
    cache_hub_dataset(only_test, "cais/mmlu", "all", {"test": mmlu_rows(2, "astronomy")}, tmp_path)
    with pytest.raises(EvalError, match=r"load_dataset\('cais/mmlu', 'all', split='dev'\) failed"):
        evaluate(Scripted(), "mmlu", None, hf_cache_dir=str(only_test))  # 5-shot needs dev
    assert evaluate(Scripted(), "mmlu", None, hf_cache_dir=str(only_test), num_fewshot=0)["results"]["mmlu"]["n"] == 2


def test_the_cli_reads_the_cache_without_data(hub, tmp_path, monkeypatch, capsys):
    from checkpoints import make_checkpoint

    cache, _ = hub
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    path, _ = make_checkpoint(tmp_path / "model", layout="small", seed=0, with_tokenizer=True)
    out = tmp_path / "out"
    code = main(["eval", str(path), "--tasks", "ifbench", "--max-tokens", "3", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())["results"]["ifbench"]
    assert results["n"] == 2 and list(results["data"]["files"]) == ["hf:allenai/IFBench_test/train"]
