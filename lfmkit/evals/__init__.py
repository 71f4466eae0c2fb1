"""Evaluation: the model card's benchmarks with its methods, on an lfmkit model or any
OpenAI-compatible server (docs/eval.md).

    from lfmkit.evals import evaluate, extract_answer
    evaluate("./LFM2-1.2B", tasks="mmlu,gsm8k", data="bench-data", output="out")
    extract_answer("... so the answer is $1,234.") == "1234"

`LMEvalModel` (lm-evaluation-harness's `LM`, registered as `lfmkit`) loads on first use, so
lm-eval is needed only by those who use it.
"""

from importlib import import_module

from .answers import answers_match, extract_answer
from .ifeval_checks import follows
from .runner import evaluate

_LAZY = {"LMEvalModel": "lm_eval_model", "judge_pairwise": "judge", "JudgeResult": "judge"}

__all__ = ["evaluate", "extract_answer", "answers_match", "follows", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lfmkit.evals' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
