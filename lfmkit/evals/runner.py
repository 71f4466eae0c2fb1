"""`evaluate(...)`: run tasks on a backend, score every item, aggregate, write the results.

    results = lfmkit.evals.evaluate("./LFM2-1.2B", tasks=["mmlu", "gsm8k"], data="bench-data",
                                    output="eval-out", mc_rule="vocab", limit=100)

`model` is a checkpoint path (loaded with `lfmkit.load`, fast paths on), a loaded lfmkit model,
or a backend (`LocalBackend`, `EndpointBackend`). Each task gives a score with its standard
error (sample standard deviation / sqrt(n), as lm-eval), per-subtask scores, the method used,
the data files' hash; `output` receives results.json and samples_<task>.jsonl.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from ..errors import EvalError
from .backends import LocalBackend
from .hub_data import task_source
from .registry import get_tasks
from .report import write_outputs
from .tasks import MC_RULES, GenItem, LoadOptions, MCItem


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    if not values:
        return 0.0, 0.0
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(statistics.variance(values) / len(values))


def make_backend(
    model,
    tokenizer=None,
    batch_size: int = 16,
    chat_template_kwargs: dict | None = None,
    quant: str | None = None,
    dtype: str | None = None,
):
    """A backend for a path (loaded with `lfmkit.load(path, quant=..., dtype=...)`: the int8 /
    int4 / bfloat16 fast paths when asked for), an lfmkit model, or a backend given as is
    (anything with `generate(prompts, max_tokens, stop)` and `score_mc(prompts, continuations)`)."""
    if (
        not isinstance(model, (str, Path, torch.nn.Module))
        and hasattr(model, "generate")
        and hasattr(model, "score_mc")
    ):
        return model
    if isinstance(model, (str, Path)):
        from ..loader import load

        model = load(model, quant=quant, dtype=dtype)
    if tokenizer is None:
        from ..inference.generate import load_tokenizer_for

        tokenizer = load_tokenizer_for(model)
    return LocalBackend(model, tokenizer, batch_size=batch_size, chat_template_kwargs=chat_template_kwargs)


def _model_name(model, backend) -> str | None:
    """A path as given, an endpoint's served name, or a loaded model's checkpoint path."""
    if isinstance(model, (str, Path)):
        return str(model)
    served = getattr(backend, "model", None)
    if isinstance(served, str):
        return served
    path = getattr(served, "source_path", None)
    return str(path) if path is not None else None


def _prompts(items, chat: bool) -> list:
    return [it.prompt.messages() if chat else it.prompt.text() for it in items]


def _shown(backend, prompt):
    return backend.prompt_text(prompt) if hasattr(backend, "prompt_text") else prompt


def run_mc(backend, items: list[MCItem], rule: str, chat: bool) -> list[dict]:
    prompts = _prompts(items, chat)
    conts = [[it.prompt.delimiter + label for label in it.labels] if rule == "choices" else [] for it in items]
    samples = []
    for it, prompt, (logliks, top_text) in zip(items, prompts, backend.score_mc(prompts, conts)):
        if rule == "choices":
            best = max(range(len(logliks)), key=lambda k: (logliks[k], -k))  # first of equals, like argmax
            prediction, correct = it.letters[best], best == it.target
            output = {"logliks": logliks}
        else:
            prediction = top_text.strip()
            correct = prediction == it.letters[it.target]
            output = top_text
        samples.append(
            {
                "index": it.index,
                "subtask": it.subtask,
                "prompt": _shown(backend, prompt),
                "output": output,
                "prediction": prediction,
                "target": it.letters[it.target],
                "correct": bool(correct),
            }
        )
    return samples


def run_generate(backend, task, items: list[GenItem], chat: bool, max_tokens: int) -> list[dict]:
    prompts = _prompts(items, chat)
    outputs: list[str] = [""] * len(items)
    by_stop: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        by_stop.setdefault(tuple(it.stop), []).append(i)
    for stop, idx in by_stop.items():
        for i, text in zip(idx, backend.generate([prompts[i] for i in idx], max_tokens, list(stop))):
            outputs[i] = text
    samples = []
    for it, prompt, out in zip(items, prompts, outputs):
        scored = task.score(it, out)
        samples.append(
            {
                "index": it.index,
                "subtask": it.subtask,
                "prompt": _shown(backend, prompt),
                "output": out,
                "target": it.target,
                **scored,
            }
        )
    return samples


def aggregate(task, samples: list[dict]) -> dict:
    score, stderr = mean_stderr([float(s["correct"]) for s in samples])
    subtasks = {}
    for name in sorted({s["subtask"] for s in samples}):
        sub = [float(s["correct"]) for s in samples if s["subtask"] == name]
        m, e = mean_stderr(sub)
        subtasks[name] = {"score": m, "stderr": e, "n": len(sub)}
    out = {"metric": task.metric, "score": score, "stderr": stderr, "n": len(samples)}
    if hasattr(task, "metrics"):
        out["metrics"] = task.metrics(samples)
    if len(subtasks) > 1:
        out["subtasks"] = subtasks
    return out


def evaluate(
    model,
    tasks: list[str] | str,
    data: str | Path | None = None,
    output: str | Path | None = None,
    *,
    tokenizer=None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    apply_chat_template: bool = False,
    think: bool | None = None,
    mc_rule: str = "vocab",
    max_tokens: int = 1024,
    model_name: str | None = None,
    hf_cache_dir: str | None = None,
    quant: str | None = None,
    dtype: str | None = None,
) -> dict:
    """Run `tasks` on `model` over the data in `data` (a folder of `<task>/<split>.jsonl`; a task
    without a folder there, or every task when `data` is None, reads the Hugging Face datasets
    cache, `hf_cache_dir` or datasets' default); return (and write to `output`) the results."""
    if mc_rule not in MC_RULES:
        raise EvalError(f"--mc-rule must be one of {', '.join(MC_RULES)}, got {mc_rule!r}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    if think is not None and not apply_chat_template:
        raise EvalError("--think / --no-think switch the chat template's reasoning: add --apply-chat-template")
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    task_objs = get_tasks([n for n in names if n])
    data_dir = Path(data) if data is not None else None
    if data_dir is not None and not data_dir.is_dir():
        raise EvalError(f"--data {data_dir}: no such directory (it holds <task>/<split>.jsonl files)")
    kwargs = {"enable_thinking": think} if think is not None else None
    backend = make_backend(model, tokenizer, batch_size, kwargs, quant=quant, dtype=dtype)
    opts = LoadOptions(num_fewshot=num_fewshot, limit=limit, seed=seed, mc_rule=mc_rule, chat=apply_chat_template)
    torch.manual_seed(seed)
    results, all_samples = {}, {}
    for task in task_objs:
        source = task_source(task, data_dir, hf_cache_dir)
        items, files = task.load(source, opts)
        if not items:
            raise EvalError(f"{task.name}: the data in {source.describe(task.name)} holds no rows")
        if task.kind == "mc":
            samples = run_mc(backend, items, mc_rule, apply_chat_template)
        else:
            samples = run_generate(backend, task, items, apply_chat_template, max_tokens)
        shots = task.default_fewshot if num_fewshot is None else num_fewshot
        results[task.name] = {
            **aggregate(task, samples),
            "method": task.method(opts),
            "num_fewshot": shots,
            "data": {"dataset": task.dataset, **files.summary()},
        }
        if task.kind == "mc":
            results[task.name]["mc_rule"] = mc_rule
        all_samples[task.name] = samples
    config = {
        "tasks": names,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "seed": seed,
        "apply_chat_template": apply_chat_template,
        "think": think,
        "mc_rule": mc_rule,
        "max_tokens": max_tokens,
    }
    summary = {
        "model": model_name or _model_name(model, backend),
        "backend": backend.name,
        "config": config,
        "results": results,
    }
    if output is not None:
        write_outputs(Path(output), summary, all_samples)
    return summary


__all__ = ["evaluate", "mean_stderr", "aggregate", "make_backend"]
