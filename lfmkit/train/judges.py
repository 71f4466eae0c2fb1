"""Judges that score completions for `lfmkit prefs build`: Python functions, LLM judges over an
OpenAI-compatible endpoint, and a jury averaging several.

A judge scores a completion of a conversation: `judge.score_many(messages, completions)` gives
one `Judgement(score, output)` per completion text, `score` a float (higher is better) or None
when the judge gave no usable score (an LLM's answer without a rating), `output` what the judge
returned as text (a function's number, an LLM's whole answer), kept in the pairs file for
auditing (always a string, so `datasets` reads a jury's outputs as one column type).

- `FunctionJudge("module:function")` (or "path/to/file.py:function") calls
  `function(messages, completion) -> float`; `messages` is the conversation without the answer,
  `completion` the answer's text. A function that raises or returns something other than a
  finite number is an error naming the judge (a bug in the judge should stop the run, not
  quietly drop candidates).
- `EndpointJudge(url)` asks any OpenAI-compatible chat endpoint (`lfmkit serve`, llama.cpp's
  server, vLLM, a hosted API) with a rubric prompt, at temperature 0, several requests at a
  time. The default rubric is MT-Bench's single-answer grading prompt (Zheng et al. 2023,
  "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", arXiv:2306.05685), its question
  widened to the whole conversation: a short explanation, then a 1-10 rating written as
  `[[N]]`, which is what is parsed (the last one).
  A custom rubric is a text with `{conversation}` and `{response}` placeholders.
- `Jury(judges)`: a candidate's score is the mean of the scores its judges gave (those that gave
  one); its output lists every judge's judgement.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError

MT_BENCH_RUBRIC = (
    "[Instruction]\n"
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question displayed below. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by "
    "providing a short explanation. Be as objective as possible. After providing your explanation, you must rate "
    'the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".\n\n'
    "[Conversation]\n{conversation}\n\n"
    "[The Start of Assistant's Answer]\n{response}\n[The End of Assistant's Answer]"
)
_RATING = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")


@dataclass
class Judgement:
    score: float | None
    output: object  # what the judge returned: text (a jury: its judges' judgements)
    judge: str = ""


def parse_rating(text: str) -> float | None:
    """The last `[[N]]` rating in an LLM judge's answer, or None."""
    found = _RATING.findall(text or "")
    return float(found[-1]) if found else None


def render_conversation(messages: list[dict]) -> str:
    """The conversation as the judge reads it: one "Role: content" block per message."""
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"{str(m.get('role', '')).capitalize()}: {content or ''}")
    return "\n".join(lines)


class FunctionJudge:
    """A Python function `function(messages, completion) -> float` named "module:function"."""

    def __init__(self, spec: str):
        self.name = spec
        self.function = load_function(spec)

    def score_many(self, messages: list[dict], completions: list[str]) -> list[Judgement]:
        return [self.score(messages, c) for c in completions]

    def score(self, messages: list[dict], completion: str) -> Judgement:
        try:
            value = self.function(messages, completion)
        except Exception as exc:  # noqa: BLE001 - the user's judge: report what it raised, by name
            raise DataError(f"judge {self.name} raised {type(exc).__name__}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"judge {self.name} returned {value!r}; a judge returns a finite number (higher is better)")
        return Judgement(float(value), str(value), self.name)


def load_function(spec: str):
    """The callable a "module:function" or "file.py:function" spec names (the current directory
    importable, as with `python -m`)."""
    module_name, sep, attr = str(spec).rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--judge {spec}: expected module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"--judge {spec}: no such file {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an import error of the user's module, by name
        raise ConfigError(f"--judge {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"--judge {spec}: {module_name} has no function {attr!r}")
    return function


def chat_completions_url(url: str) -> str:
    """The chat completions URL of an endpoint given as its host, its /v1 or the full path."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


class EndpointJudge:
    """An LLM judge over an OpenAI-compatible `/v1/chat/completions` endpoint."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        rubric: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 512,
        workers: int = 8,
        timeout: float = 300.0,
        retries: int = 3,
    ):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-endpoint {url}: expected an http:// or https:// URL")
        self.url = chat_completions_url(url)
        self.name = url
        self.model = model or "judge"
        self.rubric = rubric or MT_BENCH_RUBRIC
        if "{response}" not in self.rubric:
            raise ConfigError("--judge-rubric: the rubric has no {response} placeholder for the answer to judge")
        self.api_key = api_key
        self.max_tokens, self.workers, self.timeout, self.retries = max_tokens, workers, timeout, retries

    def prompt(self, messages: list[dict], completion: str) -> str:
        return self.rubric.replace("{conversation}", render_conversation(messages)).replace("{response}", completion)

    def score_many(self, messages: list[dict], completions: list[str]) -> list[Judgement]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(completions)))) as pool:
            return list(pool.map(lambda c: self.score(messages, c), completions))

    def score(self, messages: list[dict], completion: str) -> Judgement:
        text = self.ask(self.prompt(messages, completion))
        return Judgement(parse_rating(text), text, self.name)

    def ask(self, prompt: str) -> str:
        """The endpoint's answer to one user message (retried on connection errors, 429 and 5xx)."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        problem = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _answer_text(json.loads(response.read().decode("utf-8")), self.url)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                problem = f"HTTP {exc.code}: {' '.join(detail.split())}"
                if exc.code != 429 and exc.code < 500:
                    break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                problem = str(getattr(exc, "reason", exc))
        raise ConfigError(f"--judge-endpoint {self.name}: {problem}")


def _answer_text(reply, url: str) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ConfigError(f"--judge-endpoint {url}: the reply is not an OpenAI chat completion") from None
    return content if isinstance(content, str) else ""


class Jury:
    """Several judges; a candidate's score is the mean of the scores they gave."""

    def __init__(self, judges: list):
        if not judges:
            raise ConfigError("no judge: give --judge module:function and/or --judge-endpoint URL")
        self.judges = judges
        self.name = " + ".join(j.name for j in judges)

    def score_many(self, messages: list[dict], completions: list[str]) -> list[Judgement]:
        per_judge = [judge.score_many(messages, completions) for judge in self.judges]
        verdicts = []
        for votes in zip(*per_judge):
            scores = [v.score for v in votes if v.score is not None]
            verdicts.append(
                Judgement(
                    sum(scores) / len(scores) if scores else None,
                    [{"judge": v.judge, "score": v.score, "output": v.output} for v in votes],
                    self.name,
                )
            )
        return verdicts


__all__ = [
    "Judgement",
    "FunctionJudge",
    "EndpointJudge",
    "Jury",
    "parse_rating",
    "render_conversation",
    "load_function",
    "chat_completions_url",
    "MT_BENCH_RUBRIC",
]
