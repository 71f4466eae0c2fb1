"""Math word problems by generation: GSM8K (`openai/gsm8k`) and MGSM (`juletxara/mgsm`).

The completion (greedy) is scored by the one consolidated extractor, `extract_answer`
(lfmkit/evals/answers.py), against the reference number with `answers_match`; a reasoning
trace is stripped first and counts in the token budget.

Prompts. Without a chat template they are lm-eval's: GSM8K "Question: ...\\nAnswer:" with the
first n training examples (full worked answers) before it; MGSM lm-eval's native chain of
thought, each language's own "Question:" / "Step-by-Step Answer:" words (`mgsm_native_cot_*`).
With `--apply-chat-template` the question alone is the user turn and the few-shot examples are
earlier user / assistant turns.
"""

from __future__ import annotations

from ..errors import EvalError
from .answers import answers_match, extract_answer
from .data import DataFiles, HubDataset
from .tasks import GenItem, LoadOptions, Prompt, first_n

# lm-eval tasks/mgsm/utils.py: each language's question and step-by-step answer words.
MGSM_WORDS = {
    "bn": ("প্রশ্ন:", "ধাপে ধাপে উত্তর:"),
    "de": ("Frage:", "Schritt-für-Schritt-Antwort:"),
    "en": ("Question:", "Step-by-Step Answer:"),
    "es": ("Pregunta:", "Respuesta paso a paso:"),
    "fr": ("Question :", "Réponse étape par étape :"),
    "ja": ("問題：", "ステップごとの答え:"),
    "ru": ("Задача:", "Пошаговоерешение:"),
    "sw": ("Swali:", "Jibu la Hatua kwa Hatua:"),
    "te": ("ప్రశ్న:", "దశలవారీగా సమాధానం:"),
    "th": ("โจทย์:", "คำตอบทีละขั้นตอน:"),
    "zh": ("问题：", "逐步解答:"),
}
PLAIN_STOPS = ("</s>", "<|im_end|>")


class MathTask:
    kind = "generate"
    metric = "exact_match"

    def method(self, opts: LoadOptions) -> str:
        shots = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        return (
            f"greedy generation, then lfmkit.evals.extract_answer (boxed, 'the answer is' in {len(MGSM_WORDS)}+ "
            f"languages, ####, last number; normalized, numeric comparison); {shots}-shot"
            f"{', chat template' if opts.chat else ''}"
        )

    def score(self, item: GenItem, output: str) -> dict:
        prediction = extract_answer(output)
        return {"prediction": prediction, "correct": answers_match(prediction, item.target)}


def _strip_prefix(text: str, prefix: str) -> str:
    text = str(text).strip()
    return text[len(prefix) :].strip() if text.startswith(prefix) else text


class GSM8K(MathTask):
    name, dataset, default_fewshot = "gsm8k", "openai/gsm8k (config 'main')", 0
    hub = HubDataset("openai/gsm8k", "main")
    columns = ("question", "answer")

    def load(self, source, opts: LoadOptions) -> tuple[list[GenItem], DataFiles]:
        files = DataFiles()
        test = source.read(self.name, "test", self.dataset, self.columns)
        files.add(test)
        shots = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        examples = []
        if shots:
            train = source.read(self.name, "train", self.dataset, self.columns)
            files.add(train)
            examples = train.rows[:shots]
        items = []
        for i, row in enumerate(first_n(test.rows, opts.limit)):
            target = extract_answer(str(row["answer"]))
            if target is None:
                raise EvalError(f"{test.path}: row {i + 1}: the answer has no '#### <number>'")
            if opts.chat:
                prompt = Prompt(row["question"], shots=[(r["question"], r["answer"]) for r in examples])
                stop = []
            else:
                prompt = Prompt(
                    f"Question: {row['question']}\nAnswer:",
                    shots=[(f"Question: {r['question']}\nAnswer:", r["answer"]) for r in examples],
                )
                stop = ["Question:", *PLAIN_STOPS]
            items.append(GenItem(i, "default", prompt, target, stop))
        return items, files


class MGSM(MathTask):
    name, dataset, default_fewshot = "mgsm", "juletxara/mgsm", 5
    hub = HubDataset("juletxara/mgsm", configs=tuple(MGSM_WORDS))
    columns = ("question", "answer_number")

    def load(self, source, opts: LoadOptions) -> tuple[list[GenItem], DataFiles]:
        configs = source.configs(self.name, "test")
        if not configs:
            raise EvalError(
                f"missing data: put {self.dataset}'s 'test' (and, for few-shot, 'train') split of each "
                f"language at {source.describe(self.name)}/<lang>/test.jsonl ({', '.join(MGSM_WORDS)}) "
                f"with its columns "
                f"question, answer, answer_number"
            )
        shots = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        files, items = DataFiles(), []
        for cfg in configs:
            lang = cfg or "en"
            q_word, a_word = MGSM_WORDS.get(lang, MGSM_WORDS["en"])
            test = source.read(self.name, "test", self.dataset, self.columns, cfg)
            files.add(test)
            examples = []
            if shots:
                train = source.read(self.name, "train", self.dataset, ("question", "answer"), cfg)
                files.add(train)
                examples = [
                    (_strip_prefix(r["question"], q_word), _strip_prefix(r["answer"], a_word))
                    for r in train.rows[:shots]
                ]
            for row in first_n(test.rows, opts.limit):
                question = _strip_prefix(row["question"], q_word)
                if opts.chat:
                    prompt, stop = Prompt(question, shots=examples), []
                else:
                    prompt = Prompt(
                        f"{q_word} {question}\n{a_word}", shots=[(f"{q_word} {q}\n{a_word}", a) for q, a in examples]
                    )
                    stop = [q_word, *PLAIN_STOPS]
                items.append(GenItem(len(items), cfg or "default", prompt, str(row["answer_number"]), stop))
        return items, files


MATH_TASKS = {t.name: t for t in (GSM8K(), MGSM())}

__all__ = ["MATH_TASKS", "GSM8K", "MGSM", "MGSM_WORDS"]
