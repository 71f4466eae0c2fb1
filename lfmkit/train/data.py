"""Training data: the formats users already have, tokenized into documents with a loss mask.

Sources (`read_rows`), chosen by what the path is:
- `*.jsonl`: one JSON object per line (blank lines skipped); `*.json`: a JSON array of objects;
- `*.parquet`: one row per record (needs pyarrow);
- `*.txt`: plain text, one document per non-empty line (as `datasets`' "text" builder reads it);
- a directory written by `datasets`' `save_to_disk` (needs `datasets`; a DatasetDict gives "train").

Rows, recognised by their fields (TRL's dataset types, same field names):
- `{"messages": [...], "tools": [...]}`: a conversation (OpenAI-style messages, assistant
  `tool_calls`, `tool` results, reasoning as `reasoning_content` or `<think>…</think>` in the
  content), rendered with the chat template; the loss covers the template's `{% generation %}`
  blocks (the assistant turns, tool calls in LFM2's Pythonic format included), exactly the
  tokens transformers' `return_assistant_tokens_mask` marks; `assistant_only_loss=False` trains
  every token.
- `{"prompt": ..., "completion": ...}`: strings (bos + prompt + completion + eos) or message
  lists (prompt rendered with the generation prompt, then the completion turns); the loss covers
  the completion (`completion_only_loss=False`: everything).
- `{"text": ...}`: plain language modeling, bos + text + eos, every token trained.

A document is `Document(input_ids, targets)`, already shifted: `targets[t]` is the token the
model should predict at position t (`input_ids[t + 1]` when that token is trained, else
IGNORE_INDEX), so packed documents never predict across a boundary. Documents longer than
`max_length` keep their first `max_length` tokens (TRL's "keep_start"); documents left with
nothing to train on are dropped and counted. Every problem with a file or a row raises
`DataError` naming the file and the line (or row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, LFMKitError
from ..text.chat_template import LFM2_CHAT_TEMPLATE, has_generation_blocks
from ..text.tokenizer import Tokenizer

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class DataSource:
    """One data file or dataset directory and its mixing weight (passes over it per epoch)."""

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "DataSource":
        """`path` or `path:weight` (the weight a positive number; a path may itself hold colons)."""
        path, sep, tail = str(spec).rpartition(":")
        if sep and path:
            try:
                weight = float(tail)
            except ValueError:
                return cls(str(spec))
            if not math.isfinite(weight) or weight <= 0:
                raise DataError(f"--data {spec}: the mixing weight must be a positive number, got {tail!r}")
            return cls(path, weight)
        return cls(str(spec))


@dataclass
class Document:
    """One tokenized example: `targets[t]` is the id to predict at position t, or IGNORE_INDEX."""

    input_ids: list[int]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


@dataclass
class DataOptions:
    """How rows become documents."""

    max_length: int = 1024
    assistant_only_loss: bool = True
    completion_only_loss: bool = True
    chat_template: str | None = None  # template source; None = `training_chat_template(tokenizer)`


@dataclass
class SourceStats:
    """What loading one source did, for the run summary."""

    path: str
    rows: int = 0
    documents: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to train on (e.g. no assistant turn)
    kinds: dict[str, int] = field(default_factory=dict)


def training_chat_template(tokenizer: Tokenizer) -> str:
    """The chat template training renders with by default: the checkpoint's own when it marks
    assistant text with `{% generation %}`, else LFM2's built-in template. (LFM2's published
    templates carry no generation markers and render structured `tool_calls` only as content;
    the built-in one marks assistant turns and writes tool calls in LFM2's Pythonic format.)"""
    own = tokenizer.chat_template if tokenizer.has_chat_template else None
    if own and has_generation_blocks(own):
        return own
    return LFM2_CHAT_TEMPLATE


# ---- reading rows --------------------------------------------------------------------------


def read_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(location, row) for every row of a data file or dataset directory; location is
    "file:line" (JSONL, text) or "file: row N" (JSON, Parquet, datasets)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{path}: no such data file or directory")
    if p.is_dir():
        yield from _dataset_rows(p)
    elif p.suffix == ".jsonl":
        yield from _jsonl_rows(p)
    elif p.suffix == ".json":
        yield from _json_rows(p)
    elif p.suffix == ".parquet":
        yield from _parquet_rows(p)
    elif p.suffix in (".txt", ".text"):
        yield from _text_rows(p)
    else:
        raise DataError(
            f"{path}: unknown data format {p.suffix or '(no suffix)'!r}; use .jsonl, .json, "
            f".parquet, .txt or a `datasets` directory"
        )


def _lines(p: Path) -> Iterator[tuple[int, str]]:
    try:
        with p.open(encoding="utf-8") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _jsonl_rows(p: Path) -> Iterator[tuple[str, dict]]:
    for lineno, line in _lines(p):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not valid JSON: {exc}") from None
        yield where, row


def _json_rows(p: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise DataError(
            f"{p}: expected a JSON array of rows, got {type(data).__name__} (use .jsonl for one row per line)"
        )
    for i, row in enumerate(data, start=1):
        yield f"{p}: row {i}", row


def _text_rows(p: Path) -> Iterator[tuple[str, dict]]:
    for lineno, line in _lines(p):
        text = line.rstrip("\r\n")
        if text.strip():
            yield f"{p}:{lineno}", {"text": text}


def _parquet_rows(p: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        reader = pq.ParquetFile(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types
        raise DataError(f"{p}: not a readable Parquet file: {exc}") from None
    index = 0
    for batch in reader.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield f"{p}: row {index}", row


def _dataset_rows(p: Path) -> Iterator[tuple[str, dict]]:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((p / m).is_file() for m in markers):
        raise DataError(f"{p}: a directory, but not one written by `datasets`' save_to_disk (no {' / '.join(markers)})")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{p}: reading a saved dataset needs the `datasets` package (pip install datasets)") from None
    try:
        data = datasets.load_from_disk(str(p))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types
        raise DataError(f"{p}: cannot load the saved dataset: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise DataError(f"{p}: a DatasetDict without a 'train' split (splits: {', '.join(data)})")
        data = data["train"]
    for i, row in enumerate(data, start=1):
        yield f"{p}: row {i}", row


# ---- rows to documents ---------------------------------------------------------------------


class RowEncoder:
    """Turns one row into (input_ids, trained) with the tokenizer and the training template."""

    def __init__(self, tokenizer: Tokenizer, options: DataOptions):
        self.tokenizer = tokenizer
        self.options = options
        self.template = options.chat_template or training_chat_template(tokenizer)
        self.template_marks_assistant = has_generation_blocks(self.template)
        if tokenizer.eos_token_id is None:
            raise DataError(f"{tokenizer.path}: the tokenizer has no eos token, needed to end training documents")

    def kind(self, row: dict) -> str:
        if "messages" in row:
            return "chat"
        if "prompt" in row and "completion" in row:
            return "prompt-completion"
        if "text" in row:
            return "text"
        raise DataError(
            f"expected the fields 'messages', 'prompt' + 'completion', or 'text'; got {sorted(row) or 'no fields'}"
        )

    def encode(self, row) -> tuple[str, list[int], list[bool]]:
        if not isinstance(row, dict):
            raise DataError(f"a row must be a JSON object, got {type(row).__name__}")
        row = {k: v for k, v in row.items() if v is not None}  # columnar formats fill absent fields with None
        kind = self.kind(row)
        if kind == "chat":
            ids, trained = self.chat(
                _messages(row, "messages"), row.get("tools"), assistant_only=self.options.assistant_only_loss
            )
        elif kind == "prompt-completion":
            ids, trained = self.prompt_completion(row["prompt"], row["completion"], row.get("tools"))
        else:
            ids, trained = self.text(row["text"])
        return kind, ids, trained

    def render(
        self, messages: list[dict], tools, add_generation_prompt: bool = False, spans: list | None = None
    ) -> str:
        if tools is not None and not isinstance(tools, list):
            raise DataError(f"'tools' must be a list of tool schemas, got {type(tools).__name__}")
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            chat_template=self.template,
            add_generation_prompt=add_generation_prompt,
            generation_spans=spans,
        )

    def chat(self, messages: list[dict], tools, assistant_only: bool) -> tuple[list[int], list[bool]]:
        """A rendered conversation; trained = the tokens of its generation blocks (or all)."""
        if assistant_only and not self.template_marks_assistant:
            raise DataError(
                "the chat template has no {% generation %} blocks, so assistant tokens cannot be "
                "found; set assistant_only_loss: false or give a template that marks them"
            )
        spans: list[tuple[int, int]] = []
        text = self.render(messages, tools, spans=spans)
        ids, offsets = self.tokenizer.encode_with_offsets(text)
        return ids, _overlapping(offsets, spans if assistant_only else [(0, len(text))])

    def prompt_completion(self, prompt, completion, tools) -> tuple[list[int], list[bool]]:
        """Trained: the completion (after the prompt's text, or its rendering with the generation
        prompt), and for conversations only its generation blocks when assistant_only_loss."""
        only = self.options.completion_only_loss
        if isinstance(prompt, str) and isinstance(completion, str):
            text = prompt + completion + self.tokenizer.eos_token
            ids, offsets = self.tokenizer.encode_with_offsets(text, add_special_tokens=True)
            return ids, _overlapping(offsets, [(len(prompt) if only else 0, len(text))])
        if isinstance(prompt, list) and isinstance(completion, list):
            head_msgs = _messages({"prompt": prompt}, "prompt")
            messages = head_msgs + _messages({"completion": completion}, "completion")
            spans: list[tuple[int, int]] = []
            text = self.render(messages, tools, spans=spans)
            if not (self.options.assistant_only_loss and self.template_marks_assistant):
                spans = [(0, len(text))]
            if only:
                head = self.render(head_msgs, tools, add_generation_prompt=True)
                if not text.startswith(head):
                    raise DataError(
                        "the rendered prompt (with its generation prompt) is not a prefix of the "
                        "rendered prompt + completion, so the completion cannot be located"
                    )
                spans = [(max(a, len(head)), b) for a, b in spans if b > len(head)]
            ids, offsets = self.tokenizer.encode_with_offsets(text)
            return ids, _overlapping(offsets, spans)
        raise DataError(
            f"'prompt' and 'completion' must both be strings or both be message lists, got "
            f"{type(prompt).__name__} and {type(completion).__name__}"
        )

    def text(self, text) -> tuple[list[int], list[bool]]:
        if not isinstance(text, str):
            raise DataError(f"'text' must be a string, got {type(text).__name__}")
        full = text + self.tokenizer.eos_token
        ids, _ = self.tokenizer.encode_with_offsets(full, add_special_tokens=True)
        return ids, [True] * len(ids)


def _messages(row: dict, key: str) -> list[dict]:
    """The row's message list, checked enough that a template error is never the first sign."""
    messages = row[key]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"'{key}' must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"'{key}'[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"'{key}'[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise DataError(f"'{key}'[{i}].content must be a string or a list of parts, got {type(content).__name__}")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, list):
                raise DataError(f"'{key}'[{i}].tool_calls must be a list, on an assistant message")
            for j, call in enumerate(calls):
                fn = call.get("function", call) if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise DataError(
                        f"'{key}'[{i}].tool_calls[{j}] needs a function name "
                        f"({{'function': {{'name': ..., 'arguments': {{...}}}}}})"
                    )
    return messages


def _overlapping(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token: does its character span overlap one of `spans`? (spans sorted, disjoint)"""
    out = []
    k = 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        out.append(k < len(spans) and spans[k][0] < end and end > start)
    return out


def to_document(ids: list[int], trained: list[bool], max_length: int) -> tuple[Document, bool]:
    """Truncate to `max_length` tokens and shift the mask into targets; (document, truncated)."""
    truncated = len(ids) > max_length
    ids, trained = ids[:max_length], trained[:max_length]
    targets = [ids[t + 1] if trained[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return Document(list(ids), targets + [IGNORE_INDEX]), truncated


def load_source(source: DataSource, encoder: RowEncoder) -> tuple[list[Document], SourceStats]:
    """Every usable document of one source, with what happened to its rows."""
    stats = SourceStats(source.path)
    documents = []
    for where, row in read_rows(source.path):
        stats.rows += 1
        try:
            kind, ids, trained = encoder.encode(row)
        except LFMKitError as exc:  # our template / tokenizer errors too: say which row
            raise DataError(f"{where}: {exc}") from None
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        doc, truncated = to_document(ids, trained, encoder.options.max_length)
        stats.truncated += truncated
        n = doc.trained_tokens
        if n == 0:
            stats.dropped += 1
            continue
        documents.append(doc)
        stats.documents += 1
        stats.tokens += len(doc)
        stats.trained_tokens += n
    if not documents:
        raise DataError(
            f"{source.path}: no usable training documents ({stats.rows} rows, {stats.dropped} with nothing to train on)"
        )
    return documents, stats


def load_sources(
    sources: list[DataSource], tokenizer: Tokenizer, options: DataOptions
) -> tuple[list[list[Document]], list[SourceStats]]:
    """Documents of every source, in order, and their loading stats."""
    encoder = RowEncoder(tokenizer, options)
    loaded = [load_source(s, encoder) for s in sources]
    return [docs for docs, _ in loaded], [stats for _, stats in loaded]


__all__ = [
    "IGNORE_INDEX",
    "DataSource",
    "Document",
    "DataOptions",
    "SourceStats",
    "RowEncoder",
    "training_chat_template",
    "read_rows",
    "to_document",
    "load_source",
    "load_sources",
]
