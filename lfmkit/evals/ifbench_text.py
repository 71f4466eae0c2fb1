"""Text units IFBench's verifiers count, offline: words, sentences, stop words, emoji, syllables.

The reference (allenai/IFBench) uses nltk with downloaded data (punkt sentences, the English
stop-word corpus, the perceptron POS tagger), `emoji` and `syllapy`. Here:

- sentences: the rule-based splitter IFEval's verifiers use (`split_into_sentences`), instead
  of punkt (which needs a download);
- word tokens: nltk's Treebank-style `NLTKWordTokenizer` (pure code, no data) over those
  sentences, which is what `nltk.word_tokenize` does over punkt's sentences;
- stop words: nltk's English list, as `\\w+` tokens see it (written out below);
- "starts with a verb": a lexicon of English verbs and their regular inflections instead of
  the POS tagger (which tags a sentence-initial imperative unreliably anyway);
- emoji and syllables: the `emoji` and `syllapy` packages, as the reference (both in the `eval`
  extra; a one-line error names the package when one is missing).
"""

from __future__ import annotations

import re
import string
import unicodedata

from ..errors import EvalError
from .ifeval_checks import count_words, split_into_sentences

PUNCTUATION = string.punctuation
STRIP = PUNCTUATION + " "
_NO_PUNCTUATION = str.maketrans("", "", PUNCTUATION)

# nltk's English stop words that a `\w+` token can equal (its entries with an apostrophe never can).
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom this that
    these those am is are was were be been being have has had having do does did doing a an the and
    but if or because as until while of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then once here
    there when where why how all any both each few more most other some such no nor not only own
    same so than too very s t can will just don should now d ll m o re ve y ain aren couldn didn
    doesn hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn""".split()
)


def no_punctuation(text: str) -> str:
    """`text` without ASCII punctuation (the reference's `translate(..., string.punctuation)`)."""
    return text.translate(_NO_PUNCTUATION)


def word_tokens(text: str) -> list[str]:
    """nltk.word_tokenize's tokens: sentences first, then the Treebank rules in each."""
    try:
        from nltk.tokenize import NLTKWordTokenizer
    except ImportError:
        raise EvalError(
            "IFBench's word checks need nltk (its tokenizer, no data): pip install 'lfmkit[eval]'"
        ) from None
    tokenizer = NLTKWordTokenizer()
    return [token for sentence in split_into_sentences(text) for token in tokenizer.tokenize(sentence)]


def count_stop_words(text: str) -> int:
    return sum(1 for t in re.findall(r"\w+", text) if t.lower() in STOP_WORDS)


def ascii_fold(text: str) -> str:
    """'São Tomé' -> 'Sao Tome': NFKD, then the non-ASCII parts dropped."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def is_emoji(char: str) -> bool:
    try:
        import emoji
    except ImportError:
        raise EvalError("IFBench's emoji check needs emoji: pip install 'lfmkit[eval]'") from None
    return bool(emoji.is_emoji(char))


def syllables(word: str) -> int:
    try:
        import syllapy
    except ImportError:
        raise EvalError("IFBench's syllable check needs syllapy: pip install 'lfmkit[eval]'") from None
    return int(syllapy.count(word))


# Common English verbs (base forms); inflected forms are derived by `_verb_forms`.
_VERBS = """accept achieve act add adjust admire admit adopt advise affect agree aim allow analyze
answer apologize appear apply appreciate approach arrange arrive ask assess assume attach attempt
attend avoid bake balance be bear beat become begin believe belong bend bet bind bite blend blow
boil book borrow bounce break breathe bring brush build burn buy calculate call calm capture care
carry catch celebrate change charge chase check cheer choose chop clarify clean clear climb close
collect combine come compare compete complete compose concentrate conclude confirm connect consider
contact contain continue contribute control convert cook copy count cover crack craft create cross
cry cut dance deal decide declare define delete deliver demonstrate describe design destroy
determine develop die dig discover discuss dive divide do draft drag draw dream dress drink drive
drop earn eat edit embrace emphasize employ enable encourage end engage enhance enjoy ensure enter
envision establish estimate evaluate examine exchange exercise exist expand expect experience
explain explore express extend face fail fall feed feel fetch fight fill find finish fit fix
flip float flow fly focus fold follow forget forgive form frame gain gather generate get give
glance go grab grant greet grind grow guess guide handle hang happen hate have head hear help hide
highlight hire hit hold hope hunt identify ignore illustrate imagine implement improve include
increase indicate inform inspect install integrate intend introduce invent investigate invite
join judge jump keep kick kill kiss knock know label land laugh launch lay lead learn leave lend
let lie lift light like limit list listen live locate look lose love maintain make manage mark
match matter measure meet melt mention mind miss mix monitor move name navigate need note notice
observe obtain offer open order organize outline own paint pass pause pay perform pick picture
place plan plant play point pour practice prepare present preserve press prevent print proceed
produce promise protect prove provide publish pull punch push put question quit raise reach read
realize receive recognize recommend record reduce reflect refuse relax release remain remember
remind remove repeat replace reply report represent request require rescue research reserve
resolve respond rest restore review revise ride ring rise risk roll rotate run save say scan
schedule search see seek select sell send separate serve set settle shake shape share shift shine
shoot shop show shut sing sink sit sketch skip sleep slide slow smell smile solve sort sound speak
spend spin split spread stand start state stay steal step stick stir stop store stretch strike
study submit succeed suggest summarize supply support suppose surprise survive swim switch take
talk taste teach tell tend test thank think throw tie touch track trade train transform translate
travel treat trust try turn type understand unlock update upgrade use utilize value verify view
visit wait wake walk want warm wash watch wear welcome win wish wonder work worry wrap write yell""".split()
# Irregular past forms and participles of the verbs above (their regular forms are derived).
_IRREGULAR = """am is are was were been being bore born beat beaten began begun bent bound bit
bitten blew blown broke broken brought built burnt bought caught chose chosen came cut dealt dug
did done drew drawn dreamt drank drunk drove driven ate eaten fell fallen fed felt fought found
fit flew flown forgot forgotten forgave forgiven got gotten gave given went gone ground grew grown
hung had has heard hid hidden hit held kept knew known laid led learnt left lent let lay lain lit
lost made meant met paid put quit read rode ridden rang rung rose risen ran said saw seen sought
sold sent set shook shaken shone shot shown shut sang sung sank sunk sat slept slid spoke spoken
spent spun split spread stood stole stolen stuck struck swam swum took taken taught told thought
threw thrown understood woke woken wore worn won wound wrote written""".split()


def _verb_forms(base: str) -> set[str]:
    forms = {base}
    if base.endswith("e"):
        forms |= {base + "s", base + "d", base[:-1] + "ing"}
    elif base.endswith("y") and base[-2:-1] not in "aeiou":
        forms |= {base[:-1] + "ies", base[:-1] + "ied", base + "ing"}
    else:
        es = base + ("es" if base.endswith(("s", "sh", "ch", "x", "z", "o")) else "s")
        forms |= {es, base + "ed", base + "ing"}
        if re.fullmatch(r"[^aeiou]*[aeiou][bdgklmnprt]", base):  # stop -> stopped, stopping
            forms |= {base + base[-1] + "ed", base + base[-1] + "ing"}
    return forms


VERBS = frozenset({f for v in _VERBS for f in _verb_forms(v)} | set(_IRREGULAR))


def starts_with_verb(text: str) -> bool:
    """Whether the first word token is an English verb form (the lexicon above)."""
    tokens = word_tokens(text)
    return bool(tokens) and tokens[0].lower() in VERBS


__all__ = [
    "PUNCTUATION",
    "STRIP",
    "STOP_WORDS",
    "VERBS",
    "no_punctuation",
    "word_tokens",
    "count_words",
    "count_stop_words",
    "split_into_sentences",
    "ascii_fold",
    "is_emoji",
    "syllables",
    "starts_with_verb",
]
