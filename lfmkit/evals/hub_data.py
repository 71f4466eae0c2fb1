"""Benchmark data from the Hugging Face datasets cache, through `datasets.load_dataset`.

When a task has no folder under `--data DIR` (or no `--data` is given) and the `datasets`
library is installed, the task's rows come from `load_dataset(name, config, split=...)`, the
Hub's own code path: with `HF_DATASETS_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) it reads only the
local cache (`HF_DATASETS_CACHE`, default ~/.cache/huggingface/datasets) and never the
network; without it, `datasets` may download what is not cached, as it always does.

Each task names its dataset (`task.hub`, a `HubDataset`): `cais/mmlu` config `all`,
`openai/gsm8k` config `main`, `google/IFEval`, `allenai/IFBench_test`, and per-config subtasks
for `openai/MMMLU` (the model card's seven languages), `juletxara/mgsm` (its eleven) and
`Idavidrein/gpqa` (`gpqa_diamond`). The rows are the dataset's own columns, as in the files.
A multi-config task uses the configs that load (offline: those in the cache). Rows are hashed
(sha256 of their JSON) for results.json.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import EvalError
from .data import HubDataset, LocalFiles, Split, check_columns


def datasets_installed() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def rows_sha256(rows: list[dict]) -> str:
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class HubCache:
    """One task's Hugging Face dataset, loaded with `datasets.load_dataset` (memoized per split)."""

    def __init__(self, hub: HubDataset, cache_dir: str | None = None):
        self.hub, self.cache_dir = hub, cache_dir
        self._loaded: dict[tuple, object] = {}

    def describe(self, task: str) -> str:
        return f"the Hugging Face dataset {self.hub.path}"

    def _load(self, config: str | None, split: str):
        key = (config, split)
        if key not in self._loaded:
            import datasets

            self._loaded[key] = datasets.load_dataset(self.hub.path, config, split=split, cache_dir=self.cache_dir)
        return self._loaded[key]

    def _where(self, config: str | None, split: str) -> str:
        return f"hf:{self.hub.path}" + (f"/{config}" if config else "") + f"/{split}"

    def read(self, task: str, split: str, dataset: str, required: tuple[str, ...], config: str | None = None) -> Split:
        config = config or self.hub.config
        where = self._where(config, split)
        try:
            rows = self._load(config, split).to_list()
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not there"
            cfg = f", {config!r}" if config else ""
            raise EvalError(
                f"missing data: load_dataset({self.hub.path!r}{cfg}, split={split!r}) failed ({_first_line(exc)}); "
                f"cache it once with that call (online), or pass --data DIR with {task}/{split}.jsonl (docs/eval.md)"
            ) from None
        check_columns(rows, required, where, f"{dataset}'s columns")
        return Split(where, rows, rows_sha256(rows))

    def configs(self, task: str, split: str) -> list[str | None]:
        """The task's configs that load (offline: that are cached); EvalError when none does."""
        if not self.hub.configs:
            return [None]
        found, last = [], None
        for config in self.hub.configs:
            try:
                self._load(config, split)
            except Exception as exc:  # noqa: BLE001
                last = exc
                continue
            found.append(config)
        if not found:
            raise EvalError(
                f"missing data: none of {self.hub.path}'s configs {', '.join(self.hub.configs)} (split {split!r}) "
                f"loads ({_first_line(last)}); cache them with load_dataset, or pass --data DIR with "
                f"{task}/<CONFIG>/{split}.jsonl (docs/eval.md)"
            )
        return found


def task_source(task, data, cache_dir: str | None = None):
    """Where a task's rows come from: `data/<task>/` when that folder exists, else the
    Hugging Face datasets cache when `datasets` is installed, else `data` (whose errors name
    the files to supply)."""
    local = LocalFiles(data) if data is not None else None
    if local is not None and (local.root / task.name).exists():
        return local
    hub = getattr(task, "hub", None)
    if hub is not None and datasets_installed():
        return HubCache(hub, cache_dir)
    if local is not None:
        return local
    raise EvalError(
        f"{task.name}: no data: pass --data DIR holding {task.name}/<split>.jsonl, or install datasets "
        f"(pip install datasets) with {hub.path if hub else 'its dataset'} in its cache (docs/eval.md)"
    )


__all__ = ["HubCache", "task_source", "datasets_installed", "rows_sha256"]
