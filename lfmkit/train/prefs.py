"""Semi-online preference pairs: sample, judge, keep the highest vs the lowest.

    build_pairs(PrefsConfig(model="sft-run", prompts="sft.jsonl", output="pairs.jsonl", num_samples=4,
                            judges=["my_judges:helpfulness"], min_chosen_score=6, min_gap=2))

For every conversation of `prompts` (`messages` rows, whose last assistant message is the
reference answer, or `prompt` message lists with an optional `completion`), the model samples
`num_samples` completions with lfmkit's batched generation (`lfmkit.generate` with n = K: the K
completions of a prompt share one prefill; several prompts run as one batch), every distinct
candidate (the reference answer included) is scored by the judge or the jury (`judges.py`),
and the highest-scored candidate becomes `chosen`, the lowest `rejected` (ties go to the
earlier candidate: the reference first, then the samples in order). A pair is kept only when
`chosen_score - rejected_score` is positive and at least `min_gap`, and `chosen_score` is at
least `min_chosen_score` (when set).

Each output line is in TRL's conversational preference format (`prompt`, `chosen`,
`rejected`, `tools` when the row has tools) plus `chosen_score`, `rejected_score`, where each
came from (`chosen_source`, `rejected_source`: "reference" or "sample N"), every judge's raw
output for both (`chosen_judgements`, `rejected_judgements`), every candidate's score
(`scores`) and the input row (`source`, "file:line"). `lfmkit train dpo` and TRL read the file
as it is (they ignore the extra fields).

Resumable: `<output>.progress` records the settings (first line) and then each finished input
row with what happened to it ("pair", "below min_chosen_score", ...). A pair is written (and
synced) before its progress line, and a run with `resume` skips every row named in either
file, so a run killed at any point (SIGKILL included) continues without losing or duplicating
a row; a torn last line is cut off first. Sampling seeds are a function of (seed, row), so a
resumed run writes what an uninterrupted one would (given deterministic judges).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError, LFMKitError
from ..inference.generate import generate
from ..inference.sampling import SamplingParams, derived_seed
from ..loader import load
from ..text.tokenizer import Tokenizer
from .data import _messages, read_rows
from .judges import EndpointJudge, FunctionJudge, Jury
from .sft import model_tokenizer

PROGRESS_SUFFIX = ".progress"
# Settings a resumed run may change without changing its pairs.
RESUME_FREE = frozenset({"resume", "progress", "batch_size", "device", "judge_api_key", "judge_workers"})


@dataclass
class PrefsConfig:
    """What `build_pairs` does; the CLI's flags have the same names."""

    model: str = ""
    prompts: str = ""
    output: str = ""
    num_samples: int = 4
    judges: list[str] = field(default_factory=list)  # "module:function" / "file.py:function"
    judge_endpoints: list[str] = field(default_factory=list)  # OpenAI-compatible base URLs
    judge_model: str | None = None
    judge_rubric: str | None = None  # a file with {conversation} and {response}
    judge_api_key: str | None = None
    judge_workers: int = 8
    min_chosen_score: float | None = None
    min_gap: float = 0.0
    max_tokens: int = 512
    temperature: float | None = None  # default: the model's generation config
    top_p: float | None = None
    seed: int = 42
    batch_size: int = 8  # prompts per generation batch
    quant: str | None = None
    device: str | None = None
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        for name in ("model", "prompts", "output"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if not self.judges and not self.judge_endpoints:
            raise ConfigError("no judge: give --judge module:function and/or --judge-endpoint URL")
        for name in ("num_samples", "batch_size", "max_tokens", "judge_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.min_gap < 0:
            raise ConfigError(f"min_gap must not be negative, got {self.min_gap}")

    def settings(self) -> dict:
        """What the pairs depend on (written to the progress file, compared on resume)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUME_FREE}


@dataclass
class PrefsResult:
    """What a run did: each finished row's outcome counted, and where the pairs are."""

    output: Path
    outcomes: Counter = field(default_factory=Counter)  # this invocation
    skipped: int = 0  # rows an earlier run had finished

    @property
    def pairs(self) -> int:
        return self.outcomes["pair"]


@dataclass
class Item:
    """One input conversation: the prompt, its tools, the reference answer (if any)."""

    where: str
    index: int
    prompt: list[dict]
    tools: list | None
    reference: dict | None


# ---- input -------------------------------------------------------------------------------------


def read_item(where: str, index: int, row) -> Item:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}
    try:
        if "messages" in row:
            messages = _messages(row, "messages")
            answer = messages[-1] if messages[-1]["role"] == "assistant" else None
            prompt = messages[:-1] if answer else messages
        elif isinstance(row.get("prompt"), list):
            prompt = _messages(row, "prompt")
            completion = _messages(row, "completion") if row.get("completion") else []
            answer = completion[-1] if completion and completion[-1]["role"] == "assistant" else None
        else:
            raise DataError(
                "prefs build reads conversations: 'messages' (the last assistant message is the "
                "reference answer) or 'prompt' as a list of messages"
            )
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    if not prompt:
        raise DataError(f"{where}: no prompt before the answer")
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise DataError(f"{where}: 'tools' must be a list of tool schemas, got {type(tools).__name__}")
    return Item(where, index, prompt, tools, answer)


def message_text(message: dict) -> str:
    """What a judge reads of an assistant message: its content as text."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


# ---- resume ------------------------------------------------------------------------------------


def progress_path(output: Path) -> Path:
    return output.with_name(output.name + PROGRESS_SUFFIX)


def read_complete_lines(path: Path) -> list[dict]:
    """The JSON lines of `path`, after cutting off a torn last line left by a killed run."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    records = []
    for n, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise DataError(f"{path}:{n}: not valid JSON (was the file edited?)") from None
    return records


def finished_rows(config: PrefsConfig, output: Path) -> set[str]:
    """The input rows (by "file:line") an earlier run finished; refuses a fresh run over one."""
    progress = progress_path(output)
    if not (output.exists() or progress.exists()):
        return set()
    if not config.resume:
        raise ConfigError(f"{output}: holds an earlier run; pass --resume to continue it, or choose another --output")
    records = read_complete_lines(progress)
    saved = records[0].get("settings") if records else None
    now = config.settings()
    if saved is not None:
        for key in sorted(set(saved) | set(now)):
            if saved.get(key) != now.get(key):
                raise ConfigError(
                    f"cannot resume {output}: {key} was {saved.get(key)!r} there, now "
                    f"{now.get(key)!r} (resuming must not change the run)"
                )
    return {r["source"] for r in records + read_complete_lines(output) if "source" in r}


class Appender:
    """A JSON-lines file appended one synced line at a time."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# ---- sampling and judging ----------------------------------------------------------------------


def make_jury(config: PrefsConfig) -> Jury:
    rubric = None
    if config.judge_rubric:
        try:
            rubric = Path(config.judge_rubric).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--judge-rubric: cannot read {config.judge_rubric}: {exc}") from None
    judges = [FunctionJudge(spec) for spec in config.judges]
    api_key = config.judge_api_key or os.environ.get("LFMKIT_JUDGE_API_KEY")
    judges += [
        EndpointJudge(url, model=config.judge_model, rubric=rubric, api_key=api_key, workers=config.judge_workers)
        for url in config.judge_endpoints
    ]
    return Jury(judges)


def prompt_ids(tokenizer: Tokenizer, item: Item) -> list[int]:
    """The prompt as the model is asked: rendered with the generation prompt (and the tools)."""
    return tokenizer.apply_chat_template(item.prompt, tools=item.tools, add_generation_prompt=True, tokenize=True)


def sample(
    model, tokenizer: Tokenizer, items: list[Item], ids: list[list[int]], params: SamplingParams, seed: int
) -> list[list[str]]:
    """`params.n` completions of every item, one generation batch (each prompt prefilled once),
    each prompt sampled from its own seed (a function of the run's seed and its row)."""
    per_prompt = [params.replace(seed=derived_seed(seed, it.index + 1)) for it in items]
    results = generate(model, ids, per_prompt, tokenizer=tokenizer)
    results = results if isinstance(results, list) else [results]
    n = params.n
    return [[r.text or "" for r in results[k * n : (k + 1) * n]] for k in range(len(items))]


def judge_item(item: Item, samples: list[str], jury: Jury, config: PrefsConfig) -> tuple[str, dict | None]:
    """(outcome, the pair's output row or None) for one conversation and its samples."""
    candidates: list[tuple[str, dict, str]] = []  # (source, message, text), distinct texts
    seen = set()
    if item.reference is not None:
        candidates.append(("reference", item.reference, message_text(item.reference)))
        seen.add(candidates[0][2])
    for k, text in enumerate(samples):
        if text not in seen:
            seen.add(text)
            candidates.append((f"sample {k}", {"role": "assistant", "content": text}, text))
    verdicts = jury.score_many(item.prompt, [text for _, _, text in candidates])
    scored = [(i, v.score) for i, v in enumerate(verdicts) if v.score is not None]
    if len(scored) < 2:
        return "fewer than two scored candidates", None
    best = max(scored, key=lambda s: s[1])  # the first of equals: max/min keep the earliest
    worst = min(scored, key=lambda s: s[1])
    gap = best[1] - worst[1]
    if gap <= 0:
        return "all candidates scored the same", None
    if config.min_chosen_score is not None and best[1] < config.min_chosen_score:
        return "below min_chosen_score", None
    if gap < config.min_gap:
        return "below min_gap", None
    (c_source, c_msg, _), (r_source, r_msg, _) = candidates[best[0]], candidates[worst[0]]
    row = {"prompt": item.prompt, "chosen": [c_msg], "rejected": [r_msg]}
    if item.tools:
        row["tools"] = item.tools
    row.update(
        {
            "chosen_score": best[1],
            "rejected_score": worst[1],
            "chosen_source": c_source,
            "rejected_source": r_source,
            "chosen_judgements": verdicts[best[0]].output,
            "rejected_judgements": verdicts[worst[0]].output,
            "scores": [{"source": s, "score": v.score} for (s, _, _), v in zip(candidates, verdicts)],
            "source": item.where,
        }
    )
    return "pair", row


# ---- the run -----------------------------------------------------------------------------------


def build_pairs(config: PrefsConfig, verbose: bool = True) -> PrefsResult:
    """Write the pairs of `config.prompts` to `config.output` (see the module docstring)."""
    config.validate()
    output = Path(config.output)
    done = finished_rows(config, output)
    items = [read_item(where, i, row) for i, (where, row) in enumerate(read_rows(config.prompts))]
    todo = [it for it in items if it.where not in done]
    result = PrefsResult(output, skipped=len(items) - len(todo))
    jury = make_jury(config)
    model = load(config.model, quant=config.quant, device=config.device)
    tokenizer = model_tokenizer(model, config.model, "sampling conversations needs")
    overrides = {k: v for k, v in (("temperature", config.temperature), ("top_p", config.top_p)) if v is not None}
    params = SamplingParams.for_model(model, max_tokens=config.max_tokens, n=config.num_samples, **overrides)
    context = model.config.max_position_embeddings
    progress_file = progress_path(output)
    header = not progress_file.exists() or progress_file.stat().st_size == 0  # (a kill can leave it empty)
    pairs, progress = Appender(output), Appender(progress_file)
    if header:
        progress.write({"settings": config.settings()})
    bar = _progress_bar(config, len(items), result.skipped)
    try:
        for a in range(0, len(todo), config.batch_size):
            batch = todo[a : a + config.batch_size]
            ids = {it.index: prompt_ids(tokenizer, it) for it in batch}
            fits = [it for it in batch if len(ids[it.index]) + config.max_tokens <= context]
            texts = sample(model, tokenizer, fits, [ids[it.index] for it in fits], params, config.seed) if fits else []
            samples = dict(zip((it.index for it in fits), texts))
            for it in batch:
                if it.index in samples:
                    try:
                        outcome, row = judge_item(it, samples[it.index], jury, config)
                    except LFMKitError as exc:
                        raise type(exc)(f"{it.where}: {exc}") from None
                else:
                    outcome, row = f"prompt + max_tokens exceed the context ({context})", None
                if row is not None:
                    pairs.write(row)
                progress.write({"source": it.where, "outcome": outcome})
                result.outcomes[outcome] += 1
                if bar is not None:
                    bar.set_postfix(pairs=result.pairs, refresh=False)
                    bar.update(1)
    finally:
        pairs.close()
        progress.close()
        if bar is not None:
            bar.close()
    if verbose:
        counts = ", ".join(f"{k}: {n}" for k, n in result.outcomes.most_common())
        earlier = f" ({result.skipped} finished by an earlier run)" if result.skipped else ""
        print(f"{len(todo)} prompts{earlier}: {counts or 'nothing to do'}; pairs in {output}", flush=True)
    return result


def _progress_bar(config: PrefsConfig, total: int, initial: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="prefs", unit="prompt", file=sys.stderr, dynamic_ncols=True)


__all__ = [
    "PrefsConfig",
    "PrefsResult",
    "build_pairs",
    "judge_item",
    "read_item",
    "finished_rows",
    "read_complete_lines",
    "progress_path",
    "make_jury",
    "sample",
    "prompt_ids",
]
