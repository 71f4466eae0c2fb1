"""From documents to optimizer steps: mixing, packing, shuffling, micro-batches and tensors.

- `pack_best_fit_decreasing(lengths, capacity)`: documents into rows of at most `capacity`
  tokens, longest first, each into the fullest row it still fits (TRL's "bfd" strategy, without
  splitting: documents are already truncated to `max_length`).
- `DataPlan`: the rows of every epoch, a pure function of (documents, weights, seed, epoch), so a
  resumed run sees exactly the rows an uninterrupted one would. A source of weight w contributes
  floor(w) full passes and a seeded random fraction w - floor(w) of its documents per epoch. Rows
  are then shuffled; with packing, the epoch's documents are packed first. Optimizer step k of
  an epoch takes rows [k*B, (k+1)*B) (B = batch_size, global), the last step of an epoch may be
  shorter, and a step is split into micro-batches per process (`micro_batches`).
- `collate(rows, ...)` → `Batch`: right-padded tensors; packed rows carry `document_ids`
  (see `LFM2.forward`), unpacked rows an `attention_mask`. `DataPlan.collate` is what the
  trainer calls, so a plan of other documents (preference pairs) brings its own batches.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace

import torch

from .data import IGNORE_INDEX, Document

Row = list[Document]


def pack_best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total <= capacity (best-fit decreasing).

    Bins are found by remaining capacity in a segment tree over 0..capacity, so packing n
    documents costs O(n log capacity)."""
    if any(n > capacity or n <= 0 for n in lengths):
        raise ValueError(f"every length must be in 1..{capacity}")
    size = 1
    while size < capacity + 1:
        size *= 2
    has = [False] * (2 * size)  # has[node]: some bin's remaining capacity lies in the node's range
    by_room: dict[int, list[int]] = {}  # remaining capacity -> bins with exactly that room

    def mark(room: int, value: bool) -> None:
        node = room + size
        has[node] = value
        node //= 2
        while node:
            has[node] = has[2 * node] or has[2 * node + 1]
            node //= 2

    def smallest_room_at_least(need: int) -> int | None:
        stack = [(1, 0, size - 1)]
        while stack:  # leftmost marked leaf in [need, size)
            node, lo, hi = stack.pop()
            if hi < need or not has[node]:
                continue
            if lo == hi:
                return lo
            mid = (lo + hi) // 2
            stack.append((2 * node + 1, mid + 1, hi))
            stack.append((2 * node, lo, mid))
        return None

    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        room = smallest_room_at_least(n)
        if room is None:
            b, room = len(bins), capacity
            bins.append([])
        else:
            b = by_room[room].pop()
            if not by_room[room]:
                mark(room, False)
        bins[b].append(i)
        left = room - n
        if left > 0:
            by_room.setdefault(left, []).append(b)
            mark(left, True)
    return bins


class DataPlan:
    """Which rows every optimizer step trains on (see the module docstring)."""

    def __init__(
        self,
        sources: list[list[Document]],
        weights: list[float],
        batch_size: int,
        max_length: int,
        packing: bool,
        seed: int,
    ):
        if len(sources) != len(weights):
            raise ValueError("one weight per source")
        self.sources = sources
        self.weights = weights
        self.batch_size = batch_size
        self.max_length = max_length
        self.packing = packing
        self.seed = seed
        self._rows: tuple[int, list[Row]] | None = None
        self._steps: dict[int, int] = {}

    def epoch_documents(self, epoch: int) -> list[Document]:
        """The documents of one epoch: each source's full passes, then its seeded fraction."""
        docs: list[Document] = []
        for s, (source, weight) in enumerate(zip(self.sources, self.weights)):
            whole = math.floor(weight)
            docs.extend(source * whole)
            extra = round((weight - whole) * len(source))
            if extra:
                picked = random.Random(f"{self.seed}:{epoch}:source{s}").sample(range(len(source)), extra)
                docs.extend(source[i] for i in sorted(picked))
        return docs

    def epoch_rows(self, epoch: int) -> list[Row]:
        """The shuffled rows of one epoch (cached for the current epoch)."""
        if self._rows is not None and self._rows[0] == epoch:
            return self._rows[1]
        docs = self.epoch_documents(epoch)
        if self.packing:
            rows = [[docs[i] for i in b] for b in pack_best_fit_decreasing([len(d) for d in docs], self.max_length)]
        else:
            rows = [[d] for d in docs]
        random.Random(f"{self.seed}:{epoch}:order").shuffle(rows)
        self._rows = (epoch, rows)
        self._steps[epoch] = math.ceil(len(rows) / self.batch_size)
        return rows

    def steps_in_epoch(self, epoch: int) -> int:
        if epoch not in self._steps:
            varies = self.packing and not all(float(w).is_integer() for w in self.weights)
            if self._steps and not varies:  # same number of documents, and the same bins if packed
                self._steps[epoch] = next(iter(self._steps.values()))
            else:
                self.epoch_rows(epoch)
        return self._steps[epoch]

    def total_steps(self, epochs: float) -> int:
        """Optimizer steps in `epochs` epochs (a fractional last epoch rounds its steps up)."""
        whole = math.floor(epochs)
        total = sum(self.steps_in_epoch(e) for e in range(whole))
        if epochs > whole:
            total += math.ceil((epochs - whole) * self.steps_in_epoch(whole))
        return total

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within it) of global optimizer step `step` (0-based)."""
        epoch = 0
        while step >= self.steps_in_epoch(epoch):
            step -= self.steps_in_epoch(epoch)
            epoch += 1
        return epoch, step

    def collate(self, rows: list[Row], pad_id: int) -> "Batch":
        """One micro-batch of this plan's rows as tensors (what the trainer feeds the loss)."""
        return collate(rows, pad_id, self.packing)

    def empty_batch(self, pad_id: int) -> "Batch":
        """A micro-batch with nothing to train, for a process with no rows left in a short step
        (distributed.py: every process must run as many forwards and backwards)."""
        return empty_batch(pad_id, self.packing)

    def step_rows(self, step: int) -> tuple[int, list[Row]]:
        """(epoch, rows) of global optimizer step `step`, all processes together."""
        epoch, k = self.locate(step)
        rows = self.epoch_rows(epoch)
        return epoch, rows[k * self.batch_size : (k + 1) * self.batch_size]


def micro_batches(rows: list[Row], grad_accum: int, rank: int = 0, world_size: int = 1) -> list[list[Row]]:
    """This process's share of a step's rows (every world_size-th), in `grad_accum` micro-batches
    as even as possible; a short last step can leave some empty (they are skipped)."""
    mine = rows[rank::world_size]
    base, extra = divmod(len(mine), grad_accum)
    out, start = [], 0
    for i in range(grad_accum):
        n = base + (i < extra)
        out.append(mine[start : start + n])
        start += n
    return [m for m in out if m]


@dataclass
class Batch:
    """One micro-batch as tensors. `targets` are already shifted (IGNORE_INDEX = no loss)."""

    input_ids: torch.Tensor  # [b, t]
    targets: torch.Tensor  # [b, t]
    attention_mask: torch.Tensor | None = None  # [b, t] unpacked rows with padding
    document_ids: torch.Tensor | None = None  # [b, t] packed rows
    tokens: int = 0  # real (non-padding) tokens

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def loss_items(self) -> int:
        """What the loss sums over, which the trainer averages by: trained tokens here (a
        preference batch counts pairs)."""
        return self.trained_tokens

    def model_inputs(self) -> dict:
        """Keyword arguments for `model(...)`."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "document_ids": self.document_ids}

    def to(self, device) -> "Batch":
        """The batch with every tensor field (a subclass's too) on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def empty_batch(pad_id: int, packed: bool) -> Batch:
    """A micro-batch with nothing to train (one padding token, no target): what a process with
    no rows left in a short step runs, so that its collectives match the other processes'. Its
    loss is 0 and reaches every parameter with a zero gradient."""
    ids = torch.full((1, 1), pad_id, dtype=torch.long)
    targets = torch.full((1, 1), IGNORE_INDEX, dtype=torch.long)
    return Batch(ids, targets, document_ids=torch.zeros((1, 1), dtype=torch.long) if packed else None, tokens=0)


def collate(rows: list[Row], pad_id: int, packed: bool) -> Batch:
    """Right-pad rows to the longest; packed rows number their documents (padding is one more)."""
    width = max(sum(len(d) for d in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    docs = torch.zeros((len(rows), width), dtype=torch.long) if packed else None
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, row in enumerate(rows):
        at = 0
        for k, doc in enumerate(row):
            n = len(doc)
            ids[r, at : at + n] = torch.tensor(doc.input_ids)
            targets[r, at : at + n] = torch.tensor(doc.targets)
            if docs is not None:
                docs[r, at : at + n] = k
            at += n
        real[r, :at] = True
        if docs is not None:
            docs[r, at:] = len(row)
    mask = None if packed or bool(real.all()) else real.long()
    return Batch(ids, targets, attention_mask=mask, document_ids=docs, tokens=int(real.sum()))


__all__ = ["pack_best_fit_decreasing", "DataPlan", "micro_batches", "Batch", "collate", "empty_batch"]
