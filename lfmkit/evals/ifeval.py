"""IFEval (`google/IFEval`, split `train`): generate, then verify each instruction offline.

Four metrics, as the reference reports them: prompt-level (every instruction of a prompt
followed) and instruction-level (each instruction on its own), strict and loose. The task's
score is prompt-level strict accuracy; results.json has all four.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import EvalError
from .data import DataFiles, read_split
from .ifeval_checks import VERIFIERS, follows
from .tasks import GenItem, LoadOptions, Prompt, first_n


class IFEval:
    name, dataset, default_fewshot = "ifeval", "google/IFEval", 0
    kind, metric = "generate", "prompt_level_strict_acc"
    columns = ("key", "prompt", "instruction_id_list", "kwargs")

    def method(self, opts: LoadOptions) -> str:
        return (
            f"greedy generation, {len(VERIFIERS)} offline instruction verifiers (strict and loose); score = "
            f"prompt-level strict accuracy{', chat template' if opts.chat else ''}"
        )

    def load(self, data_dir: Path, opts: LoadOptions) -> tuple[list[GenItem], DataFiles]:
        if opts.num_fewshot:
            raise EvalError("--num-fewshot: ifeval is 0-shot")
        split = read_split(data_dir / self.name, "train", self.dataset, self.columns)
        files = DataFiles()
        files.add(split)
        items = []
        for i, row in enumerate(first_n(split.rows, opts.limit)):
            ids, kwargs = row["instruction_id_list"], row["kwargs"]
            if not (isinstance(ids, list) and isinstance(kwargs, list) and len(ids) == len(kwargs)):
                raise EvalError(
                    f"{split.path}: row {i + 1}: 'instruction_id_list' and 'kwargs' must be lists of the same length"
                )
            unknown = [x for x in ids if x not in VERIFIERS]
            if unknown:
                raise EvalError(f"{split.path}: row {i + 1}: unknown instruction id {unknown[0]!r}")
            items.append(GenItem(i, "default", Prompt(row["prompt"]), {"ids": ids, "kwargs": kwargs}))
        return items, files

    def score(self, item: GenItem, output: str) -> dict:
        ids, kwargs = item.target["ids"], item.target["kwargs"]
        strict = [follows(output, i, k) for i, k in zip(ids, kwargs)]
        loose = [follows(output, i, k, loose=True) for i, k in zip(ids, kwargs)]
        return {
            "prediction": None,
            "correct": all(strict),
            "inst_strict": strict,
            "inst_loose": loose,
            "prompt_loose": all(loose),
        }

    @staticmethod
    def metrics(samples: list[dict]) -> dict[str, float]:
        inst_strict = [x for s in samples for x in s["inst_strict"]]
        inst_loose = [x for s in samples for x in s["inst_loose"]]
        return {
            "prompt_level_strict_acc": statistics.fmean(s["correct"] for s in samples),
            "inst_level_strict_acc": statistics.fmean(inst_strict) if inst_strict else 0.0,
            "prompt_level_loose_acc": statistics.fmean(s["prompt_loose"] for s in samples),
            "inst_level_loose_acc": statistics.fmean(inst_loose) if inst_loose else 0.0,
        }


IFEVAL_TASKS = {"ifeval": IFEval()}

__all__ = ["IFEVAL_TASKS", "IFEval"]
