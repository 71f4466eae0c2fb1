"""IFEval's 25 verifiable instruction types (`google/IFEval`), our implementation, offline.

Each verifier takes the response and the instruction's kwargs (the dataset's `kwargs` entry,
None values dropped) and returns whether the response follows it. The rules are those of the
reference implementation (google-research instruction_following_eval, as vendored by lm-eval),
with three deliberate differences, all to run offline without data downloads:

- sentences are counted with the reference's own regex splitter (`split_into_sentences`),
  not nltk's punkt model (which needs a download);
- all-capital words are counted over `\\w+(-\\w+)*` tokens instead of nltk's word tokenizer
  (the same counts except on rare punctuation);
- keywords and markers are matched literally (the reference compiles them as regexes).

Language checks use `langdetect` (seeded, so verdicts are reproducible); it is in the `eval`
extra. `follows(response, instruction_id, kwargs, loose=...)` applies IFEval's strict rule (the
response as is) or loose rule (also with the first / last line dropped and `*` removed).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Callable

from ..errors import EvalError


def _relation(count: int, threshold: int, relation: str) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise EvalError(f"IFEval relation must be 'less than' or 'at least', got {relation!r}")


# ---- text units, as the reference counts them ------------------------------------------------
_ALPHA, _DIGIT = "([A-Za-z])", "([0-9])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|"
    r"That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"


def split_into_sentences(text: str) -> list[str]:
    """The reference's rule-based sentence splitter (abbreviations, initials, decimals, sites)."""
    text = (" " + text + "  ").replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGIT + "[.]" + _DIGIT, "\\1<prd>\\2", text)
    text = re.sub(r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHA + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHA + "[.]" + _ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHA + "[.]" + _ALPHA + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHA + "[.]", " \\1<prd>", text)
    text = text.replace(".”", "”.").replace('."', '".').replace('!"', '"!').replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    return sentences[:-1] if sentences and not sentences[-1] else sentences


def count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _detect_language(text: str) -> str | None:
    """langdetect's language code, None when it cannot tell (the reference then passes)."""
    try:
        from langdetect import DetectorFactory, LangDetectException, detect
    except ImportError:
        raise EvalError("IFEval's language checks need langdetect: pip install 'lfmkit[eval]'") from None
    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return None


# ---- the verifiers ---------------------------------------------------------------------------
def keywords_existence(r, keywords):
    return all(re.search(re.escape(k), r, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(r, keyword, frequency, relation):
    return _relation(len(re.findall(re.escape(keyword.strip()), r, flags=re.IGNORECASE)), frequency, relation)


def forbidden_words(r, forbidden_words):
    return not any(re.search(r"\b" + re.escape(w) + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def letter_frequency(r, letter, let_frequency, let_relation):
    return _relation(Counter(r.lower())[letter.strip().lower()], let_frequency, let_relation)


def response_language(r, language):
    found = _detect_language(r)
    return found is None or found == language


def number_sentences(r, num_sentences, relation):
    return _relation(len(split_into_sentences(r)), num_sentences, relation)


def number_paragraphs(r, num_paragraphs):
    """Paragraphs separated by the markdown divider `***`; an empty one inside fails."""
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def number_words(r, num_words, relation):
    return _relation(count_words(r), num_words, relation)


def nth_paragraph_first_word(r, num_paragraphs, nth_paragraph, first_word):
    """Paragraphs separated by blank lines; the nth starts with `first_word` (punctuation cut)."""
    paragraphs = re.split(r"\n\n", r)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()


def number_placeholders(r, num_placeholders):
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def postscript(r, postscript_marker):
    r = r.lower()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pattern, r, flags=re.MULTILINE))


def number_bullet_lists(r, num_bullets):
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(r):
    r = r.strip()
    return any(option in r for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def number_highlighted_sections(r, num_highlights):
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(r, section_spliter, num_sections):
    sections = re.split(r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def json_format(r):
    value = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def title(r):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def two_responses(r):
    parts = r.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(r, prompt_to_repeat):
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(r, end_phrase):
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def capital_word_frequency(r, capital_frequency, capital_relation):
    words = re.findall(r"\w+(?:-\w+)*", r)
    return _relation(sum(1 for w in words if w.isupper()), capital_frequency, capital_relation)


def english_capital(r):
    return r.isupper() and _detect_language(r) in ("en", None)


def english_lowercase(r):
    return r.islower() and _detect_language(r) in ("en", None)


def no_comma(r):
    return "," not in r


def quotation(r):
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


VERIFIERS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
}


def loose_variants(response: str) -> list[str]:
    """IFEval's loose rule: the response, without its first / last / both lines, each also without `*`."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def check_instruction(
    verifiers: dict[str, Callable[..., bool]],
    benchmark: str,
    response: str,
    instruction_id: str,
    args: dict,
    loose: bool,
) -> bool:
    """One instruction's verdict: strict (the response as is) or loose (any of `loose_variants`);
    an empty response never follows. Shared by IFEval and IFBench."""
    verifier = verifiers.get(instruction_id)
    if verifier is None:
        raise EvalError(f"{benchmark}: unknown instruction id {instruction_id!r}")
    candidates = loose_variants(response) if loose else [response]
    try:
        return any(c.strip() and verifier(c, **args) for c in candidates)
    except TypeError as exc:
        raise EvalError(f"{benchmark}: {instruction_id}: bad kwargs {sorted(args)} ({exc})") from None


def follows(response: str, instruction_id: str, kwargs: dict | None = None, loose: bool = False) -> bool:
    """Whether `response` follows one IFEval instruction (strict, or loose with `loose=True`)."""
    args = {k: v for k, v in (kwargs or {}).items() if v}  # the reference drops None / 0 / ""
    return check_instruction(VERIFIERS, "IFEval", response, instruction_id, args, loose)


__all__ = ["VERIFIERS", "follows", "check_instruction", "loose_variants", "split_into_sentences", "count_words"]
