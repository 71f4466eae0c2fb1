"""Pairwise LLM-as-a-judge with a jury: which of two models answered each prompt better.

Every (prompt, answer A, answer B) is shown to every judge twice, A first and then B first. A
verdict that names the same answer in both orders counts for it; anything else (the judge
follows the position, or says tie in either order) is a tie. Per judge and for the jury (every
judge's verdicts pooled) the result gives win / tie / loss rates for A and A's score
(win + tie / 2), each with a percentile bootstrap confidence interval over prompts.

A judge is any callable `judge(text) -> str` (the judge's reply), e.g. `EndpointJudge(url,
model)` for an OpenAI-compatible server; the reply's verdict is the last `[[1]]`, `[[2]]` or
`[[tie]]` in it (MT-Bench's format).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import EvalError

JUDGE_TEMPLATE = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI \
assistants to the user question displayed below. Choose the assistant that follows the user's instructions and \
answers the user's question better, considering helpfulness, relevance, accuracy, depth and level of detail. Do \
not let the order in which the responses were presented, their length, or the assistants' names influence your \
decision. After a short explanation, give your final verdict strictly in this format: "[[1]]" if assistant 1 is \
better, "[[2]]" if assistant 2 is better, and "[[tie]]" for a tie.

[User Question]
{question}

[The Start of Assistant 1's Answer]
{first}
[The End of Assistant 1's Answer]

[The Start of Assistant 2's Answer]
{second}
[The End of Assistant 2's Answer]"""

_VERDICT = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)
WIN, TIE, LOSS = "win", "tie", "loss"  # from A's side


def parse_verdict(reply: str) -> str | None:
    """'1', '2' or 'tie' (the last verdict in the reply), None when there is none."""
    found = _VERDICT.findall(reply or "")
    return found[-1].lower() if found else None


def combine(first_order: str | None, swapped: str | None) -> str:
    """A's outcome from the verdicts with A shown first and with B shown first."""
    if first_order == "1" and swapped == "2":
        return WIN
    if first_order == "2" and swapped == "1":
        return LOSS
    return TIE


def question_text(prompt) -> str:
    """A prompt given as text or as a conversation, as the judge reads it."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role']}: {m.get('content') or ''}" for m in prompt)


@dataclass
class Rates:
    win: float
    tie: float
    loss: float
    score: float  # win + tie / 2
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class JudgeResult:
    """Outcomes per judge (a list over prompts, from A's side) and the rates with their CIs."""

    outcomes: dict[str, list[str]]
    judges: dict[str, Rates]
    jury: Rates

    def to_dict(self) -> dict:
        def rates(r: Rates) -> dict:
            return {
                "win": r.win,
                "tie": r.tie,
                "loss": r.loss,
                "score": r.score,
                "ci95": {k: list(v) for k, v in r.ci.items()},
            }

        return {
            "n": len(next(iter(self.outcomes.values()), [])),
            "jury": rates(self.jury),
            "judges": {k: rates(v) for k, v in self.judges.items()},
            "outcomes": self.outcomes,
        }


def _rates(per_prompt: list[list[str]]) -> tuple[float, float, float]:
    """Pooled rates over every (prompt, judge) outcome."""
    flat = [o for outs in per_prompt for o in outs]
    n = len(flat)
    return flat.count(WIN) / n, flat.count(TIE) / n, flat.count(LOSS) / n


def rates_with_ci(per_prompt: list[list[str]], bootstrap: int, seed: int, level: float = 0.95) -> Rates:
    """Rates and a percentile bootstrap interval, resampling prompts (all a prompt's verdicts go together)."""
    win, tie, loss = _rates(per_prompt)
    out = Rates(win, tie, loss, win + tie / 2)
    if bootstrap:
        rng = random.Random(seed)
        draws = {"win": [], "tie": [], "loss": [], "score": []}
        n = len(per_prompt)
        for _ in range(bootstrap):
            w, t, lo = _rates([per_prompt[rng.randrange(n)] for _ in range(n)])
            for k, v in zip(draws, (w, t, lo, w + t / 2)):
                draws[k].append(v)
        lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
        for k, values in draws.items():
            values.sort()
            out.ci[k] = (values[int(lo_q * (len(values) - 1))], values[int(round(hi_q * (len(values) - 1)))])
    return out


def judge_pairwise(
    prompts: list,
    answers_a: list[str],
    answers_b: list[str],
    judges: dict[str, Callable[[str], str]],
    bootstrap: int = 1000,
    seed: int = 0,
    template: str = JUDGE_TEMPLATE,
) -> JudgeResult:
    """Judge A against B on every prompt with every judge, both orders; pool the judges as a jury."""
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise EvalError(
            f"judge: {len(prompts)} prompts, {len(answers_a)} answers A and {len(answers_b)} answers B; "
            f"they must pair up one to one"
        )
    if not prompts:
        raise EvalError("judge: no prompts")
    if not judges:
        raise EvalError("judge: give at least one judge")
    outcomes: dict[str, list[str]] = {}
    for name, judge in judges.items():
        outs = []
        for prompt, a, b in zip(prompts, answers_a, answers_b):
            q = question_text(prompt)
            first = parse_verdict(judge(template.format(question=q, first=a, second=b)))
            swapped = parse_verdict(judge(template.format(question=q, first=b, second=a)))
            outs.append(combine(first, swapped))
        outcomes[name] = outs
    names = list(outcomes)
    per_judge = {k: rates_with_ci([[o] for o in outcomes[k]], bootstrap, seed) for k in names}
    jury = rates_with_ci([[outcomes[k][i] for k in names] for i in range(len(prompts))], bootstrap, seed)
    return JudgeResult(outcomes, per_judge, jury)


class EndpointJudge:
    """A judge model behind an OpenAI-compatible chat endpoint (greedy)."""

    def __init__(self, url: str, model: str | None = None, api_key: str | None = None, max_tokens: int = 1024):
        from .backends import EndpointBackend

        self.backend = EndpointBackend(url, model=model, api_key=api_key)
        self.max_tokens = max_tokens

    def __call__(self, text: str) -> str:
        return self.backend.generate([[{"role": "user", "content": text}]], self.max_tokens, [])[0]


__all__ = [
    "judge_pairwise",
    "JudgeResult",
    "EndpointJudge",
    "parse_verdict",
    "combine",
    "rates_with_ci",
    "JUDGE_TEMPLATE",
]
