"""What every task shares: the prompt (rendered plain or as a chat) and the items.

A task turns dataset rows into items. A multiple-choice item (`MCItem`) is scored from one
forward pass over its prompt; a generation item (`GenItem`) from the model's completion.
The prompt is kept structured (`Prompt`: a description, few-shot pairs, the question) so the
same item renders as lm-eval's plain text (`--apply-chat-template` off) or as a conversation
(few-shot examples as earlier user / assistant turns, lm-eval's `--fewshot_as_multiturn`).
The task registry is in registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Prompt:
    """A description, few-shot (question, answer) pairs and the question itself."""

    user: str
    system: str = ""
    shots: list[tuple[str, str]] = field(default_factory=list)
    delimiter: str = " "  # between a question and its answer (lm-eval's target_delimiter)

    def text(self) -> str:
        """lm-eval's plain layout: description, then "question answer" blocks joined by blank lines."""
        shots = "".join(f"{q}{self.delimiter}{a}\n\n" for q, a in self.shots)
        return f"{self.system}{shots}{self.user}"

    def messages(self) -> list[dict]:
        """The same prompt as a conversation: description as the system turn, shots as turns."""
        out = [{"role": "system", "content": self.system.strip()}] if self.system.strip() else []
        for q, a in self.shots:
            out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return out + [{"role": "user", "content": self.user}]


@dataclass
class MCItem:
    """A multiple-choice question: `labels` are the continuations lm-eval scores (after the
    delimiter), `letters` what the vocabulary rule compares the decoded top token with."""

    index: int
    subtask: str
    prompt: Prompt
    labels: list[str]
    letters: list[str]
    target: int


@dataclass
class GenItem:
    """A question answered by generation; `target` is what the task's scorer compares with."""

    index: int
    subtask: str
    prompt: Prompt
    target: object
    stop: list[str] = field(default_factory=list)


@dataclass
class LoadOptions:
    """How a task builds its items: few-shot count (None = the task's default), per-subtask
    limit, seed (GPQA's choice order), the multiple-choice rule, and the chat flag."""

    num_fewshot: int | None = None
    limit: int | None = None
    seed: int = 0
    mc_rule: str = "vocab"
    chat: bool = False


MC_RULES = ("vocab", "choices")


def first_n(rows: list[dict], limit: int | None) -> list[dict]:
    return rows if limit is None else rows[:limit]


__all__ = ["Prompt", "MCItem", "GenItem", "LoadOptions", "MC_RULES", "first_n"]
