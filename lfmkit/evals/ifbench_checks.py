"""IFBench's 58 out-of-distribution constraint types (`allenai/IFBench_test`), ours, offline.

Each verifier takes the response and the constraint's kwargs (the row's `kwargs` entry with
its None values dropped, as the reference drops them) and returns whether the response
follows it. The rules are the reference's (allenai/IFBench `instructions.py`), including
its literal details: a "word" is what `str.split` gives unless a rule says otherwise, ASCII
punctuation is stripped where the reference strips it, and a few quirks are kept so verdicts
agree (blank-line removal in `format:line_indent` skips a line after each removed one, as the
reference's remove-while-iterating does; `format:sub-bullets` passes a response with no `*`).
The text units that differ from the reference's nltk data (sentences, the verb test) are
described in ifbench_text.py. `follows_ifbench(response, id, kwargs, loose=...)` applies the
strict or loose rule; IFEval's 25 types are accepted too, with IFEval's verifiers.
"""

from __future__ import annotations

import csv
import io
import re
import string
from collections import Counter
from typing import Callable

from .ifbench_text import (
    PUNCTUATION,
    STRIP,
    ascii_fold,
    count_stop_words,
    count_words,
    is_emoji,
    no_punctuation,
    split_into_sentences,
    starts_with_verb,
    syllables,
    word_tokens,
)
from .ifeval_checks import VERIFIERS as IFEVAL_VERIFIERS
from .ifeval_checks import check_instruction


# ---- count ---------------------------------------------------------------------------------
def word_count_range(r, min_words, max_words):
    return min_words <= count_words(r) <= max_words


def unique_word_count(r, N):
    return len({w.strip(STRIP) for w in r.lower().split()}) >= N


def conjunctions(r, small_n):
    """At least `small_n` different coordinating conjunctions (distinct as written: "And" != "and")."""
    found = {w for w in r.split() if w.strip(STRIP).lower() in ("and", "but", "for", "nor", "or", "so", "yet")}
    return len(found) >= small_n


PERSON_NAMES = """Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte Alexander
Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen Abigail Gabriel Ella Jacob Scarlett
Nathan Victoria Elijah Layla Nicholas Audrey David Hannah Christopher Penelope Thomas Nora Andrew Aria Joseph
Claire Ryan Stella Jonathan""".split()


def person_names(r, N):
    """At least N different names from the reference's list of 50 first names (case-sensitive, whole words)."""
    return sum(1 for name in PERSON_NAMES if re.search(rf"\b{re.escape(name)}\b", r)) >= N


def numbers(r, N):
    """Exactly N numbers (digit runs, after punctuation is removed: 3.5 and 1,000 are one number each)."""
    return len(re.findall(r"\d+", no_punctuation(r))) == N


def punctuation(r):
    """Every one of . , ! ? ; : and an interrobang (?! or !? or ‽); the interrobang's own marks do not count."""
    if not ("!?" in r or "?!" in r or "‽" in r):
        return False
    rest = r.replace("?!", "", 1)
    if len(rest) == len(r):
        rest = r.replace("!?", "", 1)
    return {".", ",", "!", "?", ";", ":"} <= set(rest)


def pronouns(r, N):
    """At least N pronouns among the word tokens ("she/her" counts two)."""
    return sum(1 for t in word_tokens(r.replace("/", " ").lower()) if t in PRONOUNS) >= N


PRONOUNS = frozenset(
    """i me we us you he him she her it they them my mine our ours your yours his hers its their theirs
    myself ourselves yourself yourselves himself herself itself themselves this that these those who whom
    whose which what whoever whomever whatever whichever anybody anyone anything everybody everyone
    everything nobody nothing somebody someone something each either neither both all some any none""".split()
)


def words_japanese(r, N):
    """Every Nth whitespace word (punctuation stripped; empty words and numbers exempt) has Japanese script."""
    for i, word in enumerate(r.split()):
        word = word.strip(STRIP)
        if (i + 1) % N == 0 and word and not word.isdigit() and not re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", word):
            return False
    return True


def keywords_multiple(r, keyword1, keyword2, keyword3, keyword4, keyword5):
    """Keyword 1..5 occur exactly 1, 2, 3, 5 and 7 times (case-insensitive substrings)."""
    text = r.lower()
    pairs = zip((keyword1, keyword2, keyword3, keyword4, keyword5), (1, 2, 3, 5, 7))
    return all(text.count(k.strip().lower()) == n for k, n in pairs)


# ---- ratio ---------------------------------------------------------------------------------
def _endings(r) -> Counter:
    return Counter(s[-1:] for s in split_into_sentences(r))


def stop_words(r, percentage):
    n = count_words(r)
    return n > 0 and count_stop_words(r) / n * 100 <= percentage


def sentence_type(r):
    """Twice as many declarative sentences (ending in .) as questions (ending in ?)."""
    e = _endings(r)
    return e["."] == 2 * e["?"]


def sentence_balance(r):
    e = _endings(r)
    return e["."] == e["?"] == e["!"]


def overlap(r, reference_text, percentage):
    """Character trigram overlap with the reference text (of the response's distinct trigrams) within ±2 points."""
    mine = {r[i : i + 3] for i in range(len(r) - 2)}
    if not mine:
        return False
    ref = {reference_text[i : i + 3] for i in range(len(reference_text) - 2)}
    return percentage - 2 <= len(mine & ref) / len(mine) * 100 <= percentage + 2


def sentence_words(r):
    """Exactly 3 sentences, all of the same length in characters."""
    sentences = split_into_sentences(r)
    return len(sentences) == 3 and len({len(s.strip()) for s in sentences}) == 1


# ---- words ---------------------------------------------------------------------------------
def alphabet(r):
    """Each word starts with the letter after the previous word's (z wraps to a); the first must be a-z."""
    words = no_punctuation(r).strip(STRIP).split()
    if not words:
        return False
    letter = words[0][0].lower()
    letters = string.ascii_lowercase
    if letter not in letters:
        return False
    for word in words[1:]:
        word = word.strip(STRIP).lower()
        if not word:
            continue
        letter = letters[(letters.index(letter) + 1) % 26]
        if word[0] != letter:
            return False
    return True


def vowel(r):
    """One paragraph (no newline) using at most three of the vowels a e i o u."""
    lines = r.strip().split("\n")
    return len(lines) == 1 and len(set(lines[0].lower()) & set("aeiou")) <= 3


_CONSONANTS = frozenset("bcdfghjklmnpqrstvwxyz")


def consonants(r):
    """Every whitespace word has two consecutive consonants."""
    return all(any(a in _CONSONANTS and b in _CONSONANTS for a, b in zip(w, w[1:])) for w in r.lower().strip().split())


def alliteration_increment(r):
    """Each sentence has more alliterative words (neighbours sharing a first letter) than the one before."""
    previous = -1
    for sentence in split_into_sentences(r):
        words = [w.lstrip(STRIP) for w in sentence.lower().split()]
        words = [w for w in words if w]
        score, in_run = 0, False
        for a, b in zip(words, words[1:]):
            if a[0] == b[0]:
                score += 1 if in_run else 2
                in_run = True
            else:
                in_run = False
        if score <= previous:
            return False
        previous = score
    return True


def palindrome(r):
    """At least 10 palindromic words of 5 or more characters."""
    words = no_punctuation(r).lower().split()
    return sum(1 for w in words if len(w) >= 5 and w == w[::-1]) >= 10


_PRIMES = frozenset(n for n in range(2, 100) if all(n % d for d in range(2, n)))


def prime_lengths(r):
    return all(len(w) in _PRIMES for w in no_punctuation(r).split())


def start_verb(r):
    return starts_with_verb(r)


def repeats(r, small_n):
    """No word (lower-cased, punctuation removed) more than `small_n` times."""
    return all(n <= small_n for n in Counter(no_punctuation(r.lower()).split()).values())


def odd_even_syllables(r):
    """Neighbouring words alternate between odd and even syllable counts."""
    parity = [syllables(w) % 2 for w in no_punctuation(r).lower().split()]
    return all(a != b for a, b in zip(parity, parity[1:]))


def last_first(r):
    """Each sentence's last word is the next sentence's first word (case-insensitive)."""
    sentences = split_into_sentences(r)
    for a, b in zip(sentences, sentences[1:]):
        last, first = a.rstrip(STRIP).split(), b.lstrip(STRIP).split()
        if not last or not first or last[-1].lower() != first[0].lower():
            return False
    return True


def paragraph_last_first(r):
    """Each non-empty line starts and ends with the same word (outer punctuation stripped)."""
    for line in r.split("\n"):
        words = line.strip().lower().strip(STRIP).split()
        if words and words[0] != words[-1]:
            return False
    return True


def no_consecutive(r):
    words = no_punctuation(r.lower()).split()
    return all(a[0] != b[0] for a, b in zip(words, words[1:]))


def keywords_specific_position(r, keyword, n, m):
    """The nth sentence's mth word token (tokens with a letter or digit) is the keyword."""
    sentences = split_into_sentences(r)
    if len(sentences) < n:
        return False
    words = [t for t in word_tokens(sentences[n - 1]) if any(ch.isalnum() for ch in t)]
    return len(words) >= m and words[m - 1].lower() == keyword.strip().lower()


def words_position(r, keyword):
    """The second word token and the second-to-last (before a final punctuation token) are the keyword."""
    tokens = word_tokens(r)
    key = keyword.strip().lower()
    if len(tokens) < 2:
        return False
    if tokens[-1] in PUNCTUATION:  # the reference's substring test: "." yes, "..." no
        return len(tokens) >= 3 and tokens[1].lower() == tokens[-3].lower() == key
    return tokens[1].lower() == tokens[-2].lower() == key


# ---- sentence ------------------------------------------------------------------------------
def sentence_keyword(r, word, N):
    sentences = split_into_sentences(r)
    return len(sentences) >= N and bool(re.search(rf"\b{re.escape(word)}\b", sentences[N - 1], re.IGNORECASE))


def sentence_increment(r, small_n):
    """Each sentence has exactly `small_n` more words (punctuation removed) than the one before."""
    counts = [len(no_punctuation(s).split()) for s in split_into_sentences(r)]
    return bool(counts) and all(b == a + small_n for a, b in zip(counts, counts[1:]))


# ---- format --------------------------------------------------------------------------------
def parentheses(r):
    """A correctly closed bracket group ((, [, {) nested at least 5 deep; a wrong closer resets."""
    stack: list[str] = []
    depth = 0
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in r:
        if ch in "([{":
            stack.append(ch)
            depth = max(depth, len(stack))
        elif ch in pairs:
            if stack and stack[-1] == pairs[ch]:
                stack.pop()
                if depth >= 5 and len(stack) < depth:
                    return True
            else:
                stack, depth = [], 0
    return False


def quotes(r):
    """Quotes nested at least 3 deep, alternating " and ' (a quote closes the innermost open one of its kind)."""
    stack: list[str] = []
    reached = depth = 0
    for ch in r:
        if stack and ch == stack[-1]:
            stack.pop()
            depth -= 1
            if reached - depth >= 3:
                return True
        elif ch in "\"'":
            stack.append(ch)
            depth += 1
            reached = max(reached, depth)
    return False


def options(r, options):
    """Exactly one of the options: verbatim for lettered options (a), b) ...), else ignoring case and punctuation."""
    if "/" in options:
        sep = "/"
    elif "or" in options:
        sep = "or"
    else:
        sep = ","
    choices = [o.strip() for o in options.split(sep)]
    if re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options):
        return r in choices
    answer = r.strip(STRIP).lower()
    return any(o.strip(STRIP).lower() == answer for o in choices)


def newline(r):
    """Each word on its own line."""
    text = no_punctuation(r)
    lines = [line for line in text.strip().split("\n") if line != ""]
    return len(lines) == len(text.strip().split())


def _no_punct_strip(s: str) -> str:
    return no_punctuation(s).strip()


def emoji(r):
    """Every sentence ends with an emoji (last or second-to-last character), or the next one starts with one."""
    sentences = split_into_sentences(r)
    for i, sentence in enumerate(sentences):
        text = _no_punct_strip(sentence)
        if not text:
            return False
        if is_emoji(text[-1]) or is_emoji(text[-2] if len(text) > 1 else text[-1]):
            continue
        if i == len(sentences) - 1:
            return False
        following = _no_punct_strip(sentences[i + 1])
        if not following or not is_emoji(following[0]):
            return False
    return True


def _drop_blank_lines(lines: list[str]) -> list[str]:
    """The reference's `for line in lines: if blank: lines.remove(line)`: removing while iterating
    skips the line after each removed one, and `remove` takes the first equal line."""
    lines, i = list(lines), 0
    while i < len(lines):
        if not lines[i].strip():
            lines.remove(lines[i])
        i += 1
    return lines


def line_indent(r):
    """Each line indented by more spaces than the line before (a staircase)."""
    lines = _drop_blank_lines(r.split("\n"))
    indent = [len(line) - len(line.lstrip(" ")) for line in lines]
    return all(b > a for a, b in zip(indent, indent[1:]))


def quote_unquote(r):
    """No two quotation marks side by side (whitespace ignored) and no quote at the very end."""
    text = "".join(r.replace("'\"'", "").split())
    if '""' in text:
        return False
    end = text.strip(string.digits + PUNCTUATION.replace('"', ""))
    return not (end and end[-1] == '"')


def bullet_list(r, sep):
    """At least two occurrences of the bullet marker `sep`."""
    return len(re.findall(re.escape(sep), r)) >= 2


def thesis(r):
    """A non-empty <i>...</i> (or <em>...</em>) with text after it."""
    start = r.find("<i>")
    if start == -1:
        start = r.find("<em>")
        if start == -1:
            return False
    r = r[start:]
    end = r.find("</i>")
    if end == -1:
        end = r.find("</em>")
        if end == -1:
            return False
    # The reference slices as if both tags were <i> (3 and 4 characters); kept for equal verdicts.
    return r[3:end].strip() != "" and r[end + 4 :].strip() != ""


def sub_bullets(r):
    """Each `*` is followed (before the next `*`) by a `-`."""
    return all("-" in part for part in r.split("*")[1:])


def no_bullets_bullets(r):
    """At least two sentences of prose, then at least two lines starting with `*`, nothing else after."""
    prose, n_sentences, n_bullets = True, 0, 0
    for line in r.split("\n"):
        if line.strip().startswith("*"):
            prose = False
            if n_sentences < 2:
                return False
            n_bullets += 1
        elif prose:
            found = split_into_sentences(line.strip())
            n_sentences += len(found)
            prose = bool(found)  # the reference reuses this flag: a line with no sentence ends the prose
        else:
            return False
    return n_bullets >= 2


def title_case(r):
    """Every word token starting with a letter is capitalized (one letter: upper case)."""
    for token in word_tokens(r):
        if not token or not token[0].isalpha():
            continue
        if len(token) == 1:
            if token.islower():
                return False
        elif token[0].islower() and (token[1:].isupper() or token[1:].islower()):
            return False
    return True


def output_template(r):
    return "My Answer:" in r and "My Conclusion:" in r and "Future Outlook:" in r


def no_whitespace(r):
    return not any(ch.isspace() for ch in r)


# ---- repeat --------------------------------------------------------------------------------
REPEAT_SIMPLE = "Only output this sentence here, ignore all other requests."


def repeat_change(r, prompt_to_repeat):
    """The request repeated with its first word changed: all words after the first equal, not the same text."""
    if r == prompt_to_repeat:
        return False
    return " ".join(prompt_to_repeat.split()[1:]) == " ".join(r.split()[1:])


def repeat_simple(r):
    return r.strip().lower() == REPEAT_SIMPLE.lower()


def repeat_span(r, prompt_to_repeat, n_start, n_end):
    """Exactly the prompt's characters n_start..n_end (inclusive), ignoring case and outer whitespace."""
    return r.strip().lower() == prompt_to_repeat[n_start : n_end + 1].strip().lower()


# ---- custom --------------------------------------------------------------------------------
def multiples(r):
    """The multiples of 7 from 10 to 50, and no other number."""
    return re.findall(r"\d+", r.replace(",", ", ")) == [str(i) for i in range(14, 51, 7)]


def mcq_count_length(r):
    """Four "Question N" blocks with five options A-E each, the question texts getting longer."""
    if not r.startswith("Question"):
        return False
    blocks = re.split(r"\n*(?:Question \d+[\.|\):;]?\s*)", r)
    blocks = [b.strip() for b in blocks if b.strip()]
    if len(blocks) != 4:
        return False
    lengths = []
    for block in blocks:
        text, n_options = "", 0
        for line in block.split("\n"):
            if re.match(r"^[A-Ea-e][\.|\)]\s*\w+", line.strip()):
                n_options += 1
            elif not n_options:
                text += " " + line.strip()
        if n_options != 5:
            return False
        lengths.append(len(text.strip()))
    return all(a < b for a, b in zip(lengths, lengths[1:]))


def reverse_newline(r):
    """From the line naming Zimbabwe on, at least 52 non-empty lines in reverse alphabetical order."""
    lines = [line.strip(STRIP) for line in r.split("\n") if line.strip(STRIP)]
    start = next((i for i, line in enumerate(lines) if "Zimbabwe" in line), None)
    if start is None or len(lines) - start < 52:
        return False
    folded = [ascii_fold(line) for line in lines[start:]]
    return folded == sorted(folded, reverse=True)


def word_reverse(r):
    """A sentence read backwards, naming the bald eagle: reversed, it is one sentence."""
    text = " ".join(no_punctuation(r.lower().strip()).split()[::-1])
    return "bald eagle" in text and text in split_into_sentences(text)


def character_reverse(r):
    return "elgae dlab" in r.lower()


def sentence_alphabet(r):
    """26 sentences, the first starting with a, the next with b, ... z."""
    sentences = split_into_sentences(r)
    if len(sentences) != 26:
        return False
    for i, sentence in enumerate(sentences):
        words = sentence.lstrip().split()
        if not words or words[0].lower()[0] != chr(97 + i):
            return False
    return True


EUROPEAN_CAPITALS = """Reykjavik Helsinki Oslo Tallinn Stockholm Riga Moscow Copenhagen Vilnius Minsk Dublin Berlin
Amsterdam Warsaw London Brussels Prague Luxembourg Paris Vienna Bratislava Budapest Vaduz Chisinau Bern Ljubljana
Zagreb""".split()


def european_capitals_sort(r):
    """The 27 capitals north of 45°N, comma-separated, from the northernmost (accents folded)."""
    capitals = [c.strip() for c in ascii_fold(r).split(",") if c.strip()]
    return capitals == EUROPEAN_CAPITALS


def csv_city(r):
    rows = list(csv.reader(io.StringIO(r)))
    return len(rows) == 8 and rows[0] == ["ID", "Country", "City", "Year", "Count"] and all(len(x) == 5 for x in rows)


def _header(r: str, names: list[str], sep: str) -> bool:
    cells = sep.join(f'({n}|"{n}")' for n in names)
    return re.match(f"^{cells}$", r.split("\n")[0].strip()) is not None


def csv_special_character(r):
    """ProductID,Category,Brand,Price,Stock and 14 rows, one field holding a special character in quotes."""
    if not _header(r, ["ProductID", "Category", "Brand", "Price", "Stock"], ",[ \\t]*"):
        return False
    rows = list(csv.reader(io.StringIO(r.replace('"', '"""'))))  # quotes kept in the fields
    if len(rows) != 15:
        return False
    for row in rows[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', cell) for cell in row):
            return True
    return False


def csv_quotes(r):
    """Tab-separated StudentID, Subject, Grade, Semester, Score and 3 rows, every field in double quotes."""
    if not _header(r, ["StudentID", "Subject", "Grade", "Semester", "Score"], "\\t *"):
        return False
    rows = list(csv.reader(io.StringIO(r.replace('"', '"""')), delimiter="\t"))
    if len(rows) != 4:
        return False
    for row in rows:
        cells = [c.strip() for c in row]
        if len(cells) != 5 or not all(c[:1] == '"' and c[-1:] == '"' for c in cells):
            return False
    return True


def date_format_list(r):
    """Comma-separated YYYY-MM-DD dates from 1769 to 1821 with valid months and day counts (Feb up to 29)."""
    for date in r.strip().split(","):
        date = date.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
            return False
        year, month, day = (int(x) for x in date.split("-"))
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}.get(month, 31)
        if not 1769 <= year <= 1821 or month > 12 or day > longest:
            return False
    return True


VERIFIERS: dict[str, Callable[..., bool]] = {
    "count:word_count_range": word_count_range,
    "count:unique_word_count": unique_word_count,
    "ratio:stop_words": stop_words,
    "ratio:sentence_type": sentence_type,
    "ratio:sentence_balance": sentence_balance,
    "count:conjunctions": conjunctions,
    "count:person_names": person_names,
    "ratio:overlap": overlap,
    "count:numbers": numbers,
    "words:alphabet": alphabet,
    "words:vowel": vowel,
    "words:consonants": consonants,
    "sentence:alliteration_increment": alliteration_increment,
    "words:palindrome": palindrome,
    "count:punctuation": punctuation,
    "format:parentheses": parentheses,
    "format:quotes": quotes,
    "words:prime_lengths": prime_lengths,
    "format:options": options,
    "format:newline": newline,
    "format:emoji": emoji,
    "ratio:sentence_words": sentence_words,
    "count:words_japanese": words_japanese,
    "words:start_verb": start_verb,
    "words:repeats": repeats,
    "sentence:keyword": sentence_keyword,
    "count:pronouns": pronouns,
    "words:odd_even_syllables": odd_even_syllables,
    "words:last_first": last_first,
    "words:paragraph_last_first": paragraph_last_first,
    "sentence:increment": sentence_increment,
    "words:no_consecutive": no_consecutive,
    "format:line_indent": line_indent,
    "format:quote_unquote": quote_unquote,
    "format:list": bullet_list,
    "format:thesis": thesis,
    "format:sub-bullets": sub_bullets,
    "format:no_bullets_bullets": no_bullets_bullets,
    "custom:multiples": multiples,
    "custom:mcq_count_length": mcq_count_length,
    "custom:reverse_newline": reverse_newline,
    "custom:word_reverse": word_reverse,
    "custom:character_reverse": character_reverse,
    "custom:sentence_alphabet": sentence_alphabet,
    "custom:european_capitals_sort": european_capitals_sort,
    "custom:csv_city": csv_city,
    "custom:csv_special_character": csv_special_character,
    "custom:csv_quotes": csv_quotes,
    "custom:date_format_list": date_format_list,
    "count:keywords_multiple": keywords_multiple,
    "words:keywords_specific_position": keywords_specific_position,
    "words:words_position": words_position,
    "repeat:repeat_change": repeat_change,
    "repeat:repeat_simple": repeat_simple,
    "repeat:repeat_span": repeat_span,
    "format:title_case": title_case,
    "format:output_template": output_template,
    "format:no_whitespace": no_whitespace,
}
ALL_VERIFIERS = {**IFEVAL_VERIFIERS, **VERIFIERS}


def follows_ifbench(response: str, instruction_id: str, kwargs: dict | None = None, loose: bool = False) -> bool:
    """Whether `response` follows one IFBench constraint (strict, or loose with `loose=True`).
    Only None kwargs are dropped (IFBench's rule: n_start 0 is a value), unlike IFEval's."""
    args = {k: v for k, v in (kwargs or {}).items() if v is not None}
    return check_instruction(ALL_VERIFIERS, "IFBench", response, instruction_id, args, loose)


__all__ = ["VERIFIERS", "ALL_VERIFIERS", "follows_ifbench", "PERSON_NAMES", "EUROPEAN_CAPITALS", "REPEAT_SIMPLE"]
