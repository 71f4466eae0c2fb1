"""One answer extractor for every math benchmark and language (GSM8K, MGSM, RL math rewards).

`extract_answer(text)` returns the normalized final number of a model's answer, or None:

1. a reasoning trace is dropped first: the text after the last `</think>` (an unclosed
   `<think>` means the budget ran out inside the trace: no answer);
2. the last `\\boxed{...}` (or `\\fbox{...}`), balanced braces, LaTeX fractions understood;
3. else the last "the answer is" phrase, in English or one of MGSM's / the model card's
   languages ("La réponse est", "Die Antwort lautet", "答案是", "答えは", "정답은", "الإجابة هي", ...):
   the number after it on its line (the last one when the line holds an `=`);
4. else the GSM8K reference format `#### 42`;
5. else the last number in the text.

Numbers are normalized: thousands separators (`1,234`), currency (`$`, `€`, `£`, `¥`, `₹`), a
trailing `%` or `.`, a trailing `.0`, any script's digits (`４２`, `٤٢`, `৪২`) become ASCII,
and a decimal comma with one or two digits (`3,5`) becomes a point. `answers_match` compares
two answers numerically (relative tolerance 1e-6), falling back to text equality.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

THINK_START, THINK_END = "<think>", "</think>"

# "the answer is" in English, MGSM's languages (lm-eval's native-CoT answer phrases) and the
# model card's (ar, ko); lowercased, matched case-insensitively.
ANSWER_PHRASES = (
    "the final answer is",
    "the answer is",
    "final answer:",
    "answer:",
    "la respuesta es",
    "respuesta:",  # es
    "la réponse est",
    "réponse :",
    "réponse:",  # fr
    "die antwort lautet",
    "die antwort ist",
    "antwort:",  # de
    "ответ —",
    "ответ -",
    "ответ:",
    "ответ",  # ru
    "答案是",
    "答案：",
    "答案:",  # zh
    "答えは",
    "答え：",
    "答え:",  # ja
    "คำตอบคือ",  # th
    "jibu ni",  # sw
    "উত্তর হল",
    "উত্তর:",  # bn
    "సమాధానం",  # te
    "الإجابة هي",
    "الجواب هو",
    "الإجابة:",  # ar
    "정답은",
    "답은",
    "답:",  # ko
)
_PHRASE = re.compile("|".join(re.escape(p) for p in sorted(ANSWER_PHRASES, key=len, reverse=True)), re.IGNORECASE)
_CURRENCY = "$€£¥₹"
# A number: optional sign (not glued to a Latin word or number, so 2023-11-20 has no negative
# parts; CJK text may touch it: 答案是18), optional
# currency, digits of any script with separators, optional decimals.
_NUMBER = re.compile(rf"(?<![A-Za-z0-9_.])(-)?\s?[{_CURRENCY}]?\s?(\d(?:[\d,]*\d)?(?:\.\d+)?)")
_HASHES = re.compile(r"####\s*([^\n]*)")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def strip_reasoning(text: str) -> str | None:
    """The answer part of a completion: after the last `</think>`; None inside an unclosed trace."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1]
    if text.lstrip().startswith(THINK_START):
        return None
    return text


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() and not ch.isascii() else ch for ch in text)


def normalize_number(digits: str, negative: bool = False) -> str | None:
    """'1,234.50' -> '1234.5'; '3,5' -> '3.5'; '12.0' -> '12'; None when not a number."""
    s = _ascii_digits(digits).strip()
    if re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    elif re.fullmatch(r"\d+,\d{1,2}", s):
        s = s.replace(",", ".")
    else:
        s = s.replace(",", "")
    if not re.fullmatch(r"\d+(\.\d+)?", s):
        return None
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("0") or "0"
    if s.startswith("."):
        s = "0" + s
    return "-" + s if negative and s != "0" else s


def _numbers(text: str) -> list[str]:
    out = []
    for m in _NUMBER.finditer(_ascii_digits(text)):
        n = normalize_number(m.group(2), negative=bool(m.group(1)))
        if n is not None:
            out.append(n)
    return out


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} / \\fbox{...}, braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i : j - 1] if depth == 0 else text[i:]


def _boxed_answer(content: str) -> str | None:
    content = _FRAC.sub(r"\1/\2", content).replace("\\!", "").replace("{,}", ",").replace("\\%", "%")
    frac = re.fullmatch(r"\s*(-)?\s*(\d+)\s*/\s*(\d+)\s*", _ascii_digits(content))
    if frac and int(frac.group(3)):
        value = Fraction(int(frac.group(2)), int(frac.group(3))) * (-1 if frac.group(1) else 1)
        return _fraction_text(value)
    nums = _numbers(content)
    if nums:
        return nums[-1]
    stripped = content.strip()
    return stripped or None


def _fraction_text(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else f"{value.numerator}/{value.denominator}"


def _after_phrase(text: str) -> str | None:
    last = None
    for m in _PHRASE.finditer(text):
        line = text[m.end() :].split("\n", 1)[0]
        nums = _numbers(line)
        if nums:
            last = nums[-1] if "=" in line else nums[0]
    return last


def extract_answer(text: str) -> str | None:
    """The normalized final number of a math answer (boxed, "the answer is", ####, last number)."""
    if not isinstance(text, str):
        return None
    answer = strip_reasoning(text)
    if answer is None:
        return None
    boxed = _last_boxed(answer)
    if boxed is not None:
        return _boxed_answer(boxed)
    found = _after_phrase(answer)
    if found is not None:
        return found
    hashes = _HASHES.findall(answer)
    if hashes:
        nums = _numbers(hashes[-1])
        if nums:
            return nums[0]
    nums = _numbers(answer)
    return nums[-1] if nums else None


def _as_number(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(prediction: str | None, target) -> bool:
    """Numeric equality (relative tolerance 1e-6) of two answers, else equal stripped text."""
    if prediction is None or target is None:
        return False
    target = str(target)
    if _as_number(target) is None:
        target = extract_answer(target) or target.strip()
    a, b = _as_number(prediction), _as_number(target)
    if a is not None and b is not None:
        return abs(a - b) <= Fraction(1, 10**6) * max(abs(a), abs(b), 1)
    return prediction.strip() == target.strip()


__all__ = ["extract_answer", "answers_match", "normalize_number", "strip_reasoning", "ANSWER_PHRASES"]
