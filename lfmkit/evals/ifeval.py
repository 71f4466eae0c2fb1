"""Instruction following: IFEval (`google/IFEval`) and IFBench (`allenai/IFBench_test`), both
split `train`: generate, then verify each instruction offline.

Four metrics, as the references report them: prompt-level (every instruction of a prompt
followed) and instruction-level (each instruction on its own), strict and loose. The task's
score is prompt-level strict accuracy; results.json has all four. A reasoning trace is
stripped before verifying (an unclosed one leaves no answer, which follows nothing).
"""

from __future__ import annotations

import statistics
from typing import Callable

from ..errors import EvalError
from .answers import strip_reasoning
from .data import DataFiles, HubDataset
from .ifbench_checks import ALL_VERIFIERS as IFBENCH_VERIFIERS
from .ifbench_checks import VERIFIERS as IFBENCH_OOD
from .ifbench_checks import follows_ifbench
from .ifeval_checks import VERIFIERS, follows
from .tasks import GenItem, LoadOptions, Prompt, first_n


class InstructionTask:
    """A prompt per row with a list of verifiable instructions and their kwargs."""

    kind, metric, default_fewshot = "generate", "prompt_level_strict_acc", 0
    columns = ("key", "prompt", "instruction_id_list", "kwargs")
    verifiers: dict[str, Callable[..., bool]]
    n_types: int

    def check(self, response: str, instruction_id: str, kwargs: dict | None, loose: bool) -> bool:
        raise NotImplementedError

    def method(self, opts: LoadOptions) -> str:
        return (
            f"greedy generation, {self.n_types} offline instruction verifiers (strict and loose); score = "
            f"prompt-level strict accuracy{', chat template' if opts.chat else ''}"
        )

    def load(self, source, opts: LoadOptions) -> tuple[list[GenItem], DataFiles]:
        if opts.num_fewshot:
            raise EvalError(f"--num-fewshot: {self.name} is 0-shot")
        split = source.read(self.name, "train", self.dataset, self.columns)
        files = DataFiles()
        files.add(split)
        items = []
        for i, row in enumerate(first_n(split.rows, opts.limit)):
            ids, kwargs = row["instruction_id_list"], row["kwargs"]
            if not (isinstance(ids, list) and isinstance(kwargs, list) and len(ids) == len(kwargs)):
                raise EvalError(
                    f"{split.path}: row {i + 1}: 'instruction_id_list' and 'kwargs' must be lists of the same length"
                )
            unknown = [x for x in ids if x not in self.verifiers]
            if unknown:
                raise EvalError(f"{split.path}: row {i + 1}: unknown instruction id {unknown[0]!r}")
            items.append(GenItem(i, "default", Prompt(row["prompt"]), {"ids": ids, "kwargs": kwargs}))
        return items, files

    def score(self, item: GenItem, output: str) -> dict:
        ids, kwargs = item.target["ids"], item.target["kwargs"]
        answer = strip_reasoning(output) or ""
        strict = [self.check(answer, i, k, False) for i, k in zip(ids, kwargs)]
        loose = [self.check(answer, i, k, True) for i, k in zip(ids, kwargs)]
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


class IFEval(InstructionTask):
    name, dataset = "ifeval", "google/IFEval"
    hub = HubDataset("google/IFEval")
    verifiers, n_types = VERIFIERS, len(VERIFIERS)

    def check(self, response, instruction_id, kwargs, loose):
        return follows(response, instruction_id, kwargs, loose=loose)


class IFBench(InstructionTask):
    """IFBench's 58 new constraint types (IFEval's 25 accepted too, as the reference's registry)."""

    name, dataset = "ifbench", "allenai/IFBench_test"
    hub = HubDataset("allenai/IFBench_test")
    verifiers, n_types = IFBENCH_VERIFIERS, len(IFBENCH_OOD)

    def check(self, response, instruction_id, kwargs, loose):
        return follows_ifbench(response, instruction_id, kwargs, loose=loose)


IFEVAL_TASKS = {t.name: t for t in (IFEval(), IFBench())}

__all__ = ["IFEVAL_TASKS", "IFEval", "IFBench", "InstructionTask"]
