"""Every task by name: the multiple-choice, math and instruction-following tasks."""

from __future__ import annotations

from ..errors import EvalError
from .ifeval import IFEVAL_TASKS
from .math_tasks import MATH_TASKS
from .multiple_choice import MC_TASKS

TASKS = {**MC_TASKS, **MATH_TASKS, **IFEVAL_TASKS}


def get_tasks(names: list[str]) -> list:
    """The task objects for `names`; EvalError naming an unknown one and listing the known."""
    out = []
    for name in names:
        if name not in TASKS:
            raise EvalError(f"--tasks: unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
        out.append(TASKS[name])
    return out


__all__ = ["TASKS", "get_tasks"]
