"""Preference pairs: TRL's formats, tokenized by TRL's rules, packed pair by pair into batches.

Rows (any file `data.read_rows` reads), TRL's preference dataset types and field names:
- explicit prompt: `{"prompt": ..., "chosen": ..., "rejected": ...}`, all three strings or all
  three message lists (conversational; optional `tools`);
- implicit prompt: `{"chosen": ..., "rejected": ...}`, the prompt being their common start
  (`extract_prompt`: the shared leading messages, or the shared leading characters of strings).
Other fields (scores, judge outputs written by `lfmkit prefs build`) are ignored.

Tokenization is TRL's `DPOTrainer._prepare_dataset`, so a file gives the same tokens here and
there: strings get the eos token appended to chosen and rejected (unless they end with it) and
are encoded with the tokenizer's special tokens (LFM2: a leading bos) as `prompt`,
`prompt + chosen`, `prompt + rejected`; conversations are rendered with the chat template
(`prompt` with the generation prompt, `prompt + chosen`, `prompt + rejected`, with `tools`).
The completion starts where the prompt's ids and the full sequence's ids stop agreeing (the
shorter of the two common prefixes), and each prompt + completion keeps its first `max_length`
tokens (TRL's `keep_start`); a pair whose prompt alone fills `max_length` is dropped.

A pair is one `PairDocument`: its chosen and rejected sequences as two `Document`s, the
completion length of each (TRL's `completion_mask.sum()`, the per-token normalizer), and the
reference log-probabilities once computed. `PreferencePlan` packs whole pairs into rows
(best-fit decreasing over the pair lengths, `batching.py`); its `collate` lays each pair's two
sequences side by side as two documents of a packed row, so attention, RoPE and the short
convolution restart at each sequence (`document_ids`) and nothing is padded to the longer one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..errors import DataError, LFMKitError
from ..text.tokenizer import Tokenizer
from .batching import Batch, DataPlan, Row, collate, empty_batch
from .data import DataSource, Document, SourceStats, _messages, read_rows, to_document


@dataclass
class PairDocument:
    """One preference pair, tokenized: `chosen` and `rejected` are prompt + completion each."""

    chosen: Document
    rejected: Document
    chosen_length: int  # completion tokens kept (TRL's per-sequence normalizer)
    rejected_length: int
    ref_logps: tuple[float, float] | None = None  # reference log-probs (chosen, rejected), once computed

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def input_ids(self) -> list[int]:
        """Every token of the pair, chosen then rejected (as they lie in a row)."""
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens

    @property
    def sequences(self) -> tuple[Document, Document]:
        return self.chosen, self.rejected


@dataclass
class PreferenceBatch(Batch):
    """A micro-batch of pairs: a packed `Batch` plus which sequence every token belongs to.

    `sequence_ids[b, t]` is 2 * pair + (0 chosen, 1 rejected), -1 on padding; `lengths` [pairs, 2]
    the completion lengths; `ref_logps` [pairs, 2] the reference log-probs (None before they
    are computed)."""

    sequence_ids: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    @property
    def pairs(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def loss_items(self) -> int:
        return self.pairs


def collate_pairs(rows: list[list[PairDocument]], pad_id: int) -> PreferenceBatch:
    """Rows of pairs as one packed batch, each sequence its own document."""
    flat = [[seq for pair in row for seq in pair.sequences] for row in rows]
    base = collate(flat, pad_id, packed=True)
    sequence_ids = torch.full(base.input_ids.shape, -1, dtype=torch.long)
    pairs = [pair for row in rows for pair in row]
    k = 0
    for r, row in enumerate(flat):
        at = 0
        for doc in row:
            sequence_ids[r, at : at + len(doc)] = k
            at += len(doc)
            k += 1
    lengths = torch.tensor([[p.chosen_length, p.rejected_length] for p in pairs], dtype=torch.float32)
    ref = None
    if all(p.ref_logps is not None for p in pairs):
        ref = torch.tensor([p.ref_logps for p in pairs], dtype=torch.float32)
    return PreferenceBatch(
        base.input_ids,
        base.targets,
        document_ids=base.document_ids,
        tokens=base.tokens,
        sequence_ids=sequence_ids,
        lengths=lengths,
        ref_logps=ref,
    )


class PreferencePlan(DataPlan):
    """The step plan over pairs: rows hold whole pairs (several when packing) and collate with
    `collate_pairs`. `max_length` here is the row capacity (2 x the per-sequence max_length)."""

    def collate(self, rows: list[Row], pad_id: int) -> PreferenceBatch:
        return collate_pairs(rows, pad_id)

    def empty_batch(self, pad_id: int) -> PreferenceBatch:
        """No pair: one padding token (what a process with no row left in a short step runs)."""
        base = empty_batch(pad_id, packed=True)
        return PreferenceBatch(
            base.input_ids,
            base.targets,
            document_ids=base.document_ids,
            tokens=0,
            sequence_ids=torch.full_like(base.input_ids, -1),
            lengths=torch.zeros((0, 2), dtype=torch.float32),
            ref_logps=torch.zeros((0, 2), dtype=torch.float32),
        )


# ---- rows to pairs ---------------------------------------------------------------------------


def extract_prompt(row: dict) -> dict:
    """TRL's `extract_prompt`: the prompt is the longest common start of chosen and rejected
    (messages for conversations, characters for strings, then one space given back to the
    completions), removed from both."""
    chosen, rejected = row["chosen"], row["rejected"]
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if chosen[idx - 1] == " ":
                idx -= 1
            break
    return {**row, "prompt": chosen[:idx], "chosen": chosen[idx:], "rejected": rejected[idx:]}


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PairEncoder:
    """One preference row -> (prompt ids, chosen ids, rejected ids) by TRL's rules."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        if tokenizer.eos_token is None:
            raise DataError(f"{tokenizer.path}: the tokenizer has no eos token, needed to end completions")

    def encode(self, row) -> tuple[list[int], list[int], list[int]]:
        if not isinstance(row, dict):
            raise DataError(f"a row must be a JSON object, got {type(row).__name__}")
        row = {k: v for k, v in row.items() if v is not None}
        if "chosen" not in row or "rejected" not in row:
            raise DataError(
                f"a preference row needs 'chosen' and 'rejected' (and optionally 'prompt'); "
                f"got {sorted(row) or 'no fields'}"
            )
        if "prompt" not in row:
            if type(row["chosen"]) is not type(row["rejected"]) or not isinstance(row["chosen"], (str, list)):
                raise DataError("'chosen' and 'rejected' must both be strings or both be message lists")
            row = extract_prompt(row)
        kinds = {k: type(row[k]) for k in ("prompt", "chosen", "rejected")}
        if all(t is str for t in kinds.values()):
            prompt, full_chosen, full_rejected = self._text(row)
        elif all(t is list for t in kinds.values()):
            prompt, full_chosen, full_rejected = self._chat(row)
        else:
            raise DataError(
                "'prompt', 'chosen' and 'rejected' must all be strings or all be message lists, got "
                + ", ".join(f"{k} {t.__name__}" for k, t in kinds.items())
            )
        n = min(common_prefix_length(prompt, full_chosen), common_prefix_length(prompt, full_rejected))
        return prompt[:n], full_chosen[n:], full_rejected[n:]

    def _text(self, row: dict) -> tuple[list[int], list[int], list[int]]:
        eos = self.tokenizer.eos_token
        chosen, rejected = (c if c.endswith(eos) else c + eos for c in (row["chosen"], row["rejected"]))
        encode = self.tokenizer.encode
        return (
            encode(row["prompt"], add_special_tokens=True),
            encode(row["prompt"] + chosen, add_special_tokens=True),
            encode(row["prompt"] + rejected, add_special_tokens=True),
        )

    def _chat(self, row: dict) -> tuple[list[int], list[int], list[int]]:
        tools = row.get("tools")
        if isinstance(tools, str):
            try:
                tools = json.loads(tools)
            except ValueError as exc:
                raise DataError(f"'tools' is a string but not JSON: {exc}") from None
        if tools is not None and not isinstance(tools, list):
            raise DataError(f"'tools' must be a list of tool schemas, got {type(tools).__name__}")
        prompt = _messages(row, "prompt") if row["prompt"] else []
        chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")

        def ids(messages, generation_prompt=False):
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                tokenize=True,
                add_generation_prompt=generation_prompt,
                chat_template=self.chat_template,
            )

        return ids(prompt, generation_prompt=True), ids(prompt + chosen), ids(prompt + rejected)


def to_pair(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int) -> PairDocument | None:
    """The pair as two truncated documents (the completions trained), or None when the prompt
    alone fills max_length (TRL drops those)."""
    if len(prompt) >= max_length:
        return None
    docs = []
    for completion in (chosen, rejected):
        ids = prompt + completion
        doc, _ = to_document(ids, [False] * len(prompt) + [True] * len(completion), max_length)
        docs.append(doc)
    kept = [min(len(prompt) + len(c), max_length) - len(prompt) for c in (chosen, rejected)]
    return PairDocument(docs[0], docs[1], kept[0], kept[1])


def load_pair_source(
    source: DataSource, encoder: PairEncoder, max_length: int
) -> tuple[list[PairDocument], SourceStats]:
    """Every usable pair of one source, with what happened to its rows."""
    stats = SourceStats(source.path)
    pairs = []
    for where, row in read_rows(source.path):
        stats.rows += 1
        try:
            prompt, chosen, rejected = encoder.encode(row)
        except LFMKitError as exc:
            raise DataError(f"{where}: {exc}") from None
        kind = "conversational" if isinstance(row.get("chosen"), list) else "text"
        stats.kinds[kind] = stats.kinds.get(kind, 0) + 1
        pair = to_pair(prompt, chosen, rejected, max_length)
        if pair is None:
            stats.dropped += 1
            continue
        stats.truncated += (len(prompt) + max(len(chosen), len(rejected))) > max_length
        pairs.append(pair)
        stats.documents += 1
        stats.tokens += len(pair)
        stats.trained_tokens += pair.trained_tokens
    if not pairs:
        raise DataError(
            f"{source.path}: no usable preference pairs ({stats.rows} rows, {stats.dropped} whose "
            f"prompt fills max_length)"
        )
    return pairs, stats


def load_pair_sources(
    sources: list[DataSource], tokenizer: Tokenizer, max_length: int, chat_template: str | None = None
) -> tuple[list[list[PairDocument]], list[SourceStats]]:
    encoder = PairEncoder(tokenizer, chat_template)
    loaded = [load_pair_source(s, encoder, max_length) for s in sources]
    return [pairs for pairs, _ in loaded], [stats for _, stats in loaded]


__all__ = [
    "PairDocument",
    "PreferenceBatch",
    "PreferencePlan",
    "collate_pairs",
    "PairEncoder",
    "extract_prompt",
    "to_pair",
    "load_pair_source",
    "load_pair_sources",
    "common_prefix_length",
]
