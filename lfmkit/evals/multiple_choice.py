"""Multiple-choice tasks: MMLU (`cais/mmlu`), MMMLU (`openai/MMMLU`) and GPQA (`Idavidrein/gpqa`).

Prompts are lm-eval's (tasks/mmlu/default, tasks/openai-mmmlu, tasks/gpqa/zeroshot): the
subject description, the few-shot examples of the same subject (the first n of the few-shot
split, never the question itself), then "question / A. choice ... / Answer:".

Two scoring rules, both from one forward pass over the prompt:

- `choices` (lm-eval's): the log-likelihood of each choice's continuation (" A" ... " D",
  GPQA's " (A)" ...), the highest wins;
- `vocab` (the model card's): the most likely next token over the whole vocabulary, decoded
  and stripped, must equal the answer's letter ("A" and " A" both count). GPQA lists its
  choices as "A. ..." under this rule so that one token can name a choice.
"""

from __future__ import annotations

import random

from ..errors import EvalError
from .data import DataFiles, HubDataset
from .tasks import LoadOptions, MCItem, Prompt, first_n

LETTERS = ["A", "B", "C", "D"]

# openai/MMMLU's configs and lm-eval's display names (tasks/openai-mmmlu/languages.json).
MMMLU_LANGUAGES = {
    "AR_XY": "Arabic",
    "BN_BD": "Bengali",
    "DE_DE": "German",
    "ES_LA": "Spanish",
    "FR_FR": "French",
    "HI_IN": "Hindi",
    "ID_ID": "Indonesian",
    "IT_IT": "Italian",
    "JA_JP": "Japanese",
    "KO_KR": "Korean",
    "PT_BR": "Brazilian Portuguese",
    "SW_KE": "Swahili",
    "YO_NG": "Yoruba",
    "ZH_CN": "Simplified Chinese",
}
# The model card's seven languages, for the docs and the missing-data message.
CARD_MMMLU = ("AR_XY", "DE_DE", "ES_LA", "FR_FR", "JA_JP", "KO_KR", "ZH_CN")


def mmlu_question(question: str, choices: list[str]) -> str:
    """lm-eval's doc_to_text for MMLU and MMMLU."""
    lines = [question.strip()] + [f"{letter}. {c}" for letter, c in zip(LETTERS, choices)]
    return "\n".join(lines) + "\nAnswer:"


def description(subject: str, language: str | None = None) -> str:
    """lm-eval's task description: "The following are ... about high school biology.\\n\\n"."""
    about = subject.replace("_", " ") + (f" ({language})" if language else "")
    return f"The following are multiple choice questions (with answers) about {about}.\n\n"


def answer_index(value, where: str) -> int:
    """An answer given as 0-3, "0"-"3" or "A"-"D"."""
    if isinstance(value, str):
        v = value.strip()
        if v in LETTERS:
            return LETTERS.index(v)
        if v.isdigit():
            value = int(v)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4:
        return value
    raise EvalError(f"{where}: answer {value!r} is not one of 0-3 or A-D")


def _choices(row: dict, where: str) -> list[str]:
    choices = row["choices"]
    if not (isinstance(choices, list) and len(choices) == 4):
        raise EvalError(f"{where}: 'choices' must be a list of 4 strings, got {choices!r}")
    return [str(c) for c in choices]


class MultipleChoiceTask:
    kind = "mc"
    metric = "acc"

    def method(self, opts: LoadOptions) -> str:
        rule = (
            "vocab: argmax over the whole vocabulary after the prompt, decoded and stripped, equals the letter"
            if opts.mc_rule == "vocab"
            else "choices: highest log-likelihood of the choice continuations (lm-eval)"
        )
        shots = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        return f"multiple choice, {rule}; {shots}-shot{', chat template' if opts.chat else ''}"


class MMLU(MultipleChoiceTask):
    name, dataset, default_fewshot = "mmlu", "cais/mmlu (config 'all')", 5
    hub = HubDataset("cais/mmlu", "all")
    columns = ("question", "subject", "choices", "answer")

    def load(self, source, opts: LoadOptions) -> tuple[list[MCItem], DataFiles]:
        files = DataFiles()
        test = source.read(self.name, "test", self.dataset, self.columns)
        files.add(test)
        shots = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        pool: dict[str, list[dict]] = {}
        if shots:
            dev = source.read(self.name, "dev", self.dataset, self.columns)
            files.add(dev)
            for row in dev.rows:
                pool.setdefault(row["subject"], []).append(row)
        by_subject: dict[str, list[tuple[int, dict]]] = {}
        for i, row in enumerate(test.rows):
            by_subject.setdefault(row["subject"], []).append((i, row))
        items = []
        for subject in sorted(by_subject):
            examples = pool.get(subject, [])[:shots]
            system = description(subject)
            shot_pairs = [
                (
                    mmlu_question(r["question"], _choices(r, f"{dev.path}")),
                    LETTERS[answer_index(r["answer"], f"{dev.path}")],
                )
                for r in examples
            ]
            for i, row in first_n(by_subject[subject], opts.limit):
                where = f"{test.path}: row {i + 1}"
                prompt = Prompt(mmlu_question(row["question"], _choices(row, where)), system, shot_pairs)
                items.append(
                    MCItem(
                        len(items), subject, prompt, list(LETTERS), list(LETTERS), answer_index(row["answer"], where)
                    )
                )
        return items, files


class MMMLU(MultipleChoiceTask):
    name, dataset, default_fewshot = "mmmlu", "openai/MMMLU", 5
    hub = HubDataset("openai/MMMLU", configs=CARD_MMMLU)
    columns = ("Question", "A", "B", "C", "D", "Answer", "Subject")

    def load(self, source, opts: LoadOptions) -> tuple[list[MCItem], DataFiles]:
        configs = source.configs(self.name, "test")
        if not configs:
            raise EvalError(
                f"missing data: put {self.dataset}'s 'test' split of each language at "
                f"{source.describe(self.name)}/<CONFIG>/test.jsonl (e.g. {', '.join(CARD_MMMLU)}; "
                f"the model card's seven) "
                f"with its columns {', '.join(self.columns)}"
            )
        shots = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        files, items = DataFiles(), []
        for cfg in configs:
            split = source.read(self.name, "test", self.dataset, self.columns, cfg)
            files.add(split)
            language = cfg or "default"
            display = MMMLU_LANGUAGES.get(language.upper(), language)
            by_subject: dict[str, list[int]] = {}
            for i, row in enumerate(split.rows):
                by_subject.setdefault(row["Subject"], []).append(i)
            for subject in sorted(by_subject):
                rows = by_subject[subject]
                system = description(subject, display)
                for i in first_n(rows, opts.limit):
                    pairs = [
                        (self._question(split.rows[j]), LETTERS[self._answer(split, j)])
                        for j in [j for j in rows[: shots + 1] if j != i][:shots]
                    ]
                    prompt = Prompt(self._question(split.rows[i]), system, pairs)
                    items.append(
                        MCItem(len(items), language, prompt, list(LETTERS), list(LETTERS), self._answer(split, i))
                    )
        return items, files

    @staticmethod
    def _question(row: dict) -> str:
        return mmlu_question(row["Question"], [str(row[k]) for k in LETTERS])

    @staticmethod
    def _answer(split, i: int) -> int:
        return answer_index(split.rows[i]["Answer"], f"{split.path}: row {i + 1}")


def gpqa_clean(text) -> str:
    """lm-eval's GPQA preprocess: strip, " [title]" -> ". ", double spaces -> one."""
    if text is None:
        return " "
    return str(text).strip().replace(" [title]", ". ").replace("  ", " ")


class GPQA(MultipleChoiceTask):
    name, dataset, default_fewshot = "gpqa", "Idavidrein/gpqa", 0
    hub = HubDataset("Idavidrein/gpqa", configs=("gpqa_diamond",))
    columns = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")

    def load(self, source, opts: LoadOptions) -> tuple[list[MCItem], DataFiles]:
        if opts.num_fewshot:
            raise EvalError("--num-fewshot: gpqa is 0-shot (the dataset has one split); use --num-fewshot 0")
        configs = source.configs(self.name, "train")
        folder = source.describe(self.name)
        if not configs:
            raise EvalError(
                f"missing data: put {self.dataset}'s 'train' split at {folder}/train.jsonl (or one "
                f"folder per config: {folder}/gpqa_diamond/train.jsonl) with its columns "
                f"{', '.join(self.columns)}"
            )
        files, items = DataFiles(), []
        for cfg in configs:
            split = source.read(self.name, "train", self.dataset, self.columns, cfg)
            files.add(split)
            rng = random.Random(opts.seed)  # the choice order: lm-eval shuffles, we seed it
            for row in first_n(split.rows, opts.limit):
                correct = gpqa_clean(row["Correct Answer"])
                choices = [gpqa_clean(row[f"Incorrect Answer {k}"]) for k in (1, 2, 3)] + [correct]
                rng.shuffle(choices)
                items.append(
                    self._item(
                        len(items),
                        cfg or "default",
                        row["Question"],
                        choices,
                        choices.index(correct),
                        opts.mc_rule,
                    )
                )
        return items, files

    @staticmethod
    def _item(index: int, subtask: str, question: str, choices: list[str], target: int, rule: str) -> MCItem:
        if rule == "choices":  # lm-eval's gpqa_*_zeroshot
            listed = "\n".join(f"({letter}) {c}" for letter, c in zip(LETTERS, choices))
            labels = [f"({letter})" for letter in LETTERS]
        else:
            listed = "\n".join(f"{letter}. {c}" for letter, c in zip(LETTERS, choices))
            labels = list(LETTERS)
        text = f"What is the correct answer to this question:{question}\nChoices:\n{listed}\nAnswer:"
        return MCItem(index, subtask, Prompt(text), labels, list(LETTERS), target)


MC_TASKS = {t.name: t for t in (MMLU(), MMMLU(), GPQA())}

__all__ = ["MC_TASKS", "MMLU", "MMMLU", "GPQA", "mmlu_question", "LETTERS", "MMMLU_LANGUAGES"]
