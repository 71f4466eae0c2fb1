"""Structured output: a grammar enforced on every sampled token, with llguidance.

    c = Constraint.json_schema(schema, tokenizer)      # also .json_object(tok), .lark(text, tok),
                                                       # .tool_calls(tools, tok, name=None, parallel=True)
    params = SamplingParams(max_tokens=256, constraint=c)
    generate(model, prompt, params, tokenizer=tok)      # the engine and ChatSession take it alike

Compiling checks the grammar at once: a JSON Schema keyword llguidance does not implement
(`if`/`then`, `not`, `uniqueItems`, `contains`, `propertyNames`, `dependentSchemas`, an unknown
`format`, a regex with look-around, a remote `$ref`, ...) raises `GrammarError` whose `.features`
names them and whose message says where they are in the schema, before anything runs.

Decoding (sampling.BatchSampler): each constrained row has a `RowMatcher`. Every step the masks
of all constrained rows of the batch are computed together (`allowed_tokens`: one [rows, V/32]
bit-mask buffer, unpacked at once) and disallowed logits become -inf before penalties and
sampling; then `advance` hands each matcher its row's token. The
end-of-turn token is allowed only where the grammar accepts and is the only token once the
grammar is complete, so a row ends exactly where its grammar does. Unconstrained rows are not
touched and a row's mask depends only on its own tokens: batching changes no row's output.

Finishing within `max_tokens`: a grammar-valid but unfinished text (a string still open when
the budget runs out) would not parse. In a row's last `FINISH_WINDOW` tokens, each sampled token
is kept only if the row can still finish after it: a deterministic closer (close the open
string, then `}` `]` `)`, `,`, an empty string or a 0 where a value must come, else the
grammar's longest allowed token, end-of-turn as soon as the grammar accepts) is run on a
copy of the matcher and must reach the end in the tokens left; otherwise the row switches to
the closer for good. So an output that could fit always ends complete, for every schema whose
shortest completion the closer finds (it may miss it for grammars that need long forced text).
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import numpy as np
import torch

from ..errors import GenerationError
from ..text.tool_grammar import JSON_FORMAT, TOOL_CALL_END_TOKEN, tool_call_grammar

FINISH_WINDOW = 64  # tokens before max_tokens from which every row is kept able to finish
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")


class GrammarError(GenerationError):
    """A grammar or schema that cannot be enforced; `.features` names unsupported keywords."""

    def __init__(self, message: str, features: list[str] | None = None):
        super().__init__(message)
        self.features = list(features or [])


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GrammarError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


# ---- the tokenizer as llguidance sees it (built once per tokenizer and vocabulary size) ---------
class _Vocab:
    """llguidance's view of a tokenizer for `size` logits, and the ids the closer prefers."""

    def __init__(self, tokenizer, size: int):
        llg = _llguidance()
        if tokenizer.eos_token_id is None:
            raise GrammarError("structured output needs a tokenizer with an eos (end-of-turn) token")
        if size < tokenizer.vocab_size:
            raise GrammarError(f"the model has {size} logits but the tokenizer {tokenizer.vocab_size} ids")
        self.size = size
        self.eos = tokenizer.eos_token_id
        self.ll = llg.LLTokenizer(tokenizer.backend.to_str(), n_vocab=size, eos_token=self.eos)
        self.bytes = [self.ll.decode_bytes([t]) for t in range(size)]  # what each token writes

        def single(text: str) -> list[int]:
            ids = tokenizer.encode(text)
            return ids if len(ids) == 1 else []

        end = tokenizer.token_to_id(TOOL_CALL_END_TOKEN)
        self.in_string = single('"')
        self.outside = [self.eos] + ([end] if end is not None else [])
        for text in ("}", "]", ")", ",", '"', "0"):
            self.outside += single(text)
        # the closer's tie-break: longer tokens first (fewer steps through forced text), then lower ids
        lengths = np.array([len(b) for b in self.bytes], dtype=np.int64)
        self.rank = lengths * size - np.arange(size)


_VOCABS: "weakref.WeakKeyDictionary[Any, dict[int, _Vocab]]" = weakref.WeakKeyDictionary()


def _vocab(tokenizer, size: int | None = None) -> _Vocab:
    size = tokenizer.vocab_size if size is None else size
    per = _VOCABS.setdefault(tokenizer, {})
    if size not in per:
        per[size] = _Vocab(tokenizer, size)
    return per[size]


# ---- compiled constraints ---------------------------------------------------------------------
def _schema_paths(schema: Any, keys: set[str], path: str = "$") -> list[str]:
    """Where in `schema` the keywords `keys` appear (JSON-path style), for error messages."""
    found = []
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in keys:
                found.append(f"{path}.{k}")
            found += _schema_paths(v, keys, f"{path}.{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            found += _schema_paths(v, keys, f"{path}[{i}]")
    return found


def _without(schema: Any, keys: set[str]) -> Any:
    """`schema` with the keywords `keys` removed everywhere."""
    if isinstance(schema, dict):
        return {k: _without(v, keys) for k, v in schema.items() if k not in keys}
    if isinstance(schema, list):
        return [_without(v, keys) for v in schema]
    return schema


def _unimplemented(message: str) -> set[str]:
    hit = _UNIMPLEMENTED.search(message)
    return {k.strip().strip('"') for k in hit.group(1).split(",") if k.strip()} if hit else set()


def _grammar_problem(message: str, schema: Any = None, vocab: "_Vocab | None" = None) -> GrammarError:
    """A GrammarError for llguidance's complaint. For a schema it names every unimplemented
    keyword (llguidance stops at the first: the schema is recompiled without the ones found)
    and where each appears."""
    features = _unimplemented(message)
    if "oneOf constraints are not supported" in message:
        places = _schema_paths(schema, {"oneOf"}) if schema is not None else []
        where = f" (at {', '.join(places[:8])})" if places else ""
        return GrammarError(
            f"unsupported JSON Schema feature: 'oneOf' with branches that can overlap{where}: structured output "
            "can enforce 'oneOf' only when at most one branch can match; use 'anyOf' if any branch will do",
            ["oneOf"],
        )
    if not features:
        first = message.strip().splitlines()[0] if message.strip() else "unknown problem"
        if "look-around" in message:
            first = "a regex 'pattern' uses look-around (look-ahead / look-behind), which is not supported"
        return GrammarError(f"cannot enforce this {'schema' if schema is not None else 'grammar'}: {first}")
    llg = _llguidance()
    for _ in range(16):
        if schema is None or vocab is None:
            break
        grammar = llg.LLMatcher.grammar_from_json_schema(_without(schema, features), defaults=dict(JSON_FORMAT))
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, vocab.ll)
        more = _unimplemented(messages[0]) - features if is_error and messages else set()
        if not more:
            break
        features |= more
    names = sorted(features)
    places = _schema_paths(schema, features) if schema is not None else []
    where = f" (at {', '.join(places[:8])})" if places else ""
    pronoun = "them" if len(names) > 1 else "it"
    return GrammarError(
        f"unsupported JSON Schema feature{'s' if len(names) > 1 else ''}: {', '.join(repr(f) for f in names)}"
        f"{where}: structured output cannot enforce {pronoun} while decoding; remove or rewrite {pronoun}",
        names,
    )


class Constraint:
    """A compiled grammar (llguidance's format) for one tokenizer; rows get matchers from it."""

    def __init__(self, grammar: str, tokenizer, description: str, schema: Any = None):
        llg = _llguidance()
        vocab = _vocab(tokenizer)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, vocab.ll)
        if is_error:
            raise _grammar_problem(messages[0] if messages else "", schema, vocab)
        self.grammar = grammar
        self.tokenizer = tokenizer
        self.description = description
        self._protos: dict[int, Any] = {}

    @classmethod
    def json_schema(cls, schema: Any, tokenizer) -> "Constraint":
        """JSON text valid against `schema` (a dict or a bool), written compactly."""
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"a JSON schema must be an object (or true/false), got {type(schema).__name__}")
        try:
            grammar = _llguidance().LLMatcher.grammar_from_json_schema(schema, defaults=dict(JSON_FORMAT))
        except (ValueError, TypeError) as exc:
            raise GrammarError(f"not a usable JSON schema: {exc}") from None
        return cls(grammar, tokenizer, "json_schema", schema)

    @classmethod
    def json_object(cls, tokenizer) -> "Constraint":
        """Any JSON object (OpenAI's `response_format: {"type": "json_object"}`)."""
        return cls.json_schema({"type": "object"}, tokenizer).described("json_object")

    @classmethod
    def lark(cls, text: str, tokenizer) -> "Constraint":
        """A grammar in llguidance's Lark dialect (`start: ...`; `%json {...}`, `<|special|>` tokens)."""
        return cls(_llguidance().LLMatcher.grammar_from_lark(text), tokenizer, "grammar")

    @classmethod
    def tool_calls(cls, tools: list[dict], tokenizer, name: str | None = None, parallel: bool = True) -> "Constraint":
        """LFM2 calls to `tools`, after the `tool_grammar.forced_prefix(tools, name)` the prompt ends with."""
        return cls.lark(tool_call_grammar(tools, name, parallel), tokenizer).described(
            f"tool call to {name}" if name else "tool calls"
        )

    def described(self, description: str) -> "Constraint":
        self.description = description
        return self

    def matcher(self, vocab_size: int, max_tokens: int) -> "RowMatcher":
        """A fresh matcher for one row of `vocab_size` logits that may write `max_tokens` tokens."""
        proto = self._protos.get(vocab_size)
        if proto is None:
            proto = _llguidance().LLMatcher(_vocab(self.tokenizer, vocab_size).ll, self.grammar, log_level=0)
            if proto.is_error():
                raise _grammar_problem(proto.get_error())
            self._protos[vocab_size] = proto
        return RowMatcher(proto.deep_copy(), _vocab(self.tokenizer, vocab_size), max_tokens)

    def __repr__(self) -> str:
        return f"Constraint({self.description})"


# ---- one row ----------------------------------------------------------------------------------
def _scan(state: tuple[bool, bool], data: bytes) -> tuple[bool, bool]:
    """(inside a "string", after a backslash) once `data` is written."""
    inside, escaped = state
    for b in data:
        if inside:
            if escaped:
                escaped = False
            elif b == 0x5C:
                escaped = True
            elif b == 0x22:
                inside = False
        elif b == 0x22:
            inside = True
    return inside, escaped


def _bits(mask: bytes, size: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")[:size].astype(bool)


class RowMatcher:
    """The grammar state of one row: its mask each step, the token it takes, the finish guard."""

    def __init__(self, matcher, vocab: _Vocab, max_tokens: int):
        self.m = matcher
        self.vocab = vocab
        self.left = max_tokens  # tokens this row may still write
        self.scan = (False, False)
        self.closing = False  # finishing by the closer from now on

    def _closer(self, allowed: np.ndarray, scan: tuple[bool, bool]) -> int:
        """The closer's token for a state: a preferred closing token if allowed, else the longest allowed one."""
        for t in self.vocab.in_string if scan[0] else self.vocab.outside:
            if allowed[t]:
                return t
        if not allowed.any():
            return self.vocab.eos
        return int(np.argmax(np.where(allowed, self.vocab.rank, -1)))

    def _finishes(self, matcher, scan, budget: int) -> bool:
        """Whether the closer ends (end-of-turn included) from this state within `budget` tokens."""
        m = matcher.deep_copy()
        for _ in range(budget):
            if m.is_accepting():
                return True
            t = self._closer(_bits(m.compute_bitmask(), self.vocab.size), scan)
            if not m.consume_token(t):
                return False
            scan = _scan(scan, self.vocab.bytes[t])
        return False

    def guard(self, token: int, allowed: np.ndarray) -> int:
        """The token to take: the sampled one, unless it would leave no room to finish."""
        if token == self.vocab.eos or (not self.closing and self.left > FINISH_WINDOW):
            return token
        if not self.closing:
            after = self.m.deep_copy()
            if after.consume_token(token) and self._finishes(
                after, _scan(self.scan, self.vocab.bytes[token]), self.left - 1
            ):
                return token
            self.closing = True
        return self._closer(allowed, self.scan)

    def consume(self, token: int) -> None:
        self.left -= 1
        if token != self.vocab.eos:
            self.scan = _scan(self.scan, self.vocab.bytes[token])
        self.m.consume_token(token)


# ---- a batch ----------------------------------------------------------------------------------
def allowed_tokens(rows: list[RowMatcher], vocab_size: int) -> torch.Tensor:
    """[len(rows), vocab_size] bool: the tokens each row's grammar allows now, every row's bit mask
    written into one [rows, V/32] buffer (row by row on this thread, the GIL released: measured
    faster than llguidance's thread pool at batch 1 and 8, benchmarks/structured.py) and unpacked
    at once. A row whose grammar allows nothing (it failed) may only end."""
    words = (vocab_size + 31) // 32
    bits = np.zeros((len(rows), words), dtype=np.int32)
    for i, r in enumerate(rows):
        r.m.unsafe_compute_mask_ptr(bits[i].ctypes.data, words * 4)
    allowed = unpack_masks(bits, vocab_size)
    for i in np.flatnonzero(~allowed.numpy().any(axis=1)):
        allowed[i, rows[i].vocab.eos] = True
    return allowed


def unpack_masks(bits: np.ndarray, vocab_size: int) -> torch.Tensor:
    """[rows, V/32] int32 bit masks (bit j of word w: token 32w + j) as a [rows, V] bool tensor."""
    allowed = np.unpackbits(bits.view(np.uint8), axis=-1, bitorder="little")[:, :vocab_size]
    return torch.from_numpy(allowed.view(np.bool_))


def mask_logits(logits: torch.Tensor, index: list[int], allowed: torch.Tensor) -> torch.Tensor:
    """`logits` [B, V] with the tokens rows `index` may not take at -inf (a new tensor)."""
    allowed = allowed.to(logits.device)
    if index == list(range(logits.shape[0])):
        return torch.where(allowed, logits, float("-inf"))
    out = logits.clone()
    idx = torch.tensor(index, dtype=torch.long, device=logits.device)
    out[idx] = torch.where(allowed, out[idx], float("-inf"))
    return out


def advance(rows: list[RowMatcher], tokens: list[int], allowed: torch.Tensor) -> list[int]:
    """Each row takes its token (after the finish guard, which may replace it); the tokens taken."""
    taken = []
    masks = allowed.numpy()
    for r, t, a in zip(rows, tokens, masks):
        t = r.guard(t, a)
        r.consume(t)
        taken.append(t)
    return taken


__all__ = ["Constraint", "GrammarError", "RowMatcher", "FINISH_WINDOW", "allowed_tokens", "mask_logits", "advance"]
