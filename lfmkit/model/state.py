"""The hybrid inference state: conv windows + K/V buffers for a batch of rows.

Conv layers carry a tiny fixed window (the last `conv_L_cache` values of `B * x` per channel);
attention layers carry K/V for every token. Everything is allocated once, for a batch size
and a maximum length, and updated in place, so decoding never reallocates.

Each row has its own fill level (`lengths`) and its own next RoPE position (`positions`), so
rows can be left-padded, of different lengths, or (in the engine) at unrelated points of
unrelated conversations. `valid` marks which K/V slots hold real tokens (left padding does not).

A snapshot is cheap: K/V slots below a row's length are never rewritten, so a snapshot only
keeps the conv windows (a few KB per layer) and the per-row counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ATTENTION, LFM2Config
from ..errors import ContextLengthError


@dataclass
class StateSnapshot:
    conv: list[torch.Tensor | None]
    lengths: torch.Tensor
    positions: torch.Tensor

    def nbytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self.conv if c is not None)


class LFM2State:
    """Preallocated per-layer state for `batch_size` rows of up to `max_length` tokens."""

    def __init__(
        self,
        config: LFM2Config,
        batch_size: int = 1,
        max_length: int = 2048,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.config = config
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.device = torch.device(device)
        kv_shape = (batch_size, config.num_key_value_heads, max_length, config.head_size)
        conv_shape = (batch_size, config.hidden_size, config.conv_L_cache)
        self.conv: list[torch.Tensor | None] = []
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        for t in config.layer_types:
            attn = t == ATTENTION
            self.conv.append(None if attn else torch.zeros(conv_shape, dtype=dtype, device=self.device))
            self.keys.append(torch.zeros(kv_shape, dtype=dtype, device=self.device) if attn else None)
            self.values.append(torch.zeros(kv_shape, dtype=dtype, device=self.device) if attn else None)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.valid = torch.zeros(batch_size, max_length, dtype=torch.bool, device=self.device)
        # Python mirror of lengths when all rows are equal (the common case): avoids a
        # device sync per layer per step. None when rows differ.
        self._uniform_length: int | None = 0
        # True while, in every row, every slot below its length holds a real token (so
        # positions == lengths): with uniform lengths the model then takes its fast path
        # (no masks, RoPE from a table). Any padded write clears it; _resync recomputes it.
        self._dense = True

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def bytes_per_token(self) -> int:
        """State bytes one more token adds to one row (K and V of each attention layer)."""
        return self.config.state_bytes_per_token(self.element_size)

    def fixed_bytes_per_row(self) -> int:
        """State bytes per row that do not grow with length (the conv windows)."""
        return self.config.state_fixed_bytes(self.element_size)

    def nbytes(self) -> int:
        """Total bytes allocated by this state."""
        tensors = [t for group in (self.conv, self.keys, self.values) for t in group if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def transformer_kv_bytes_per_token(self) -> int:
        """What a same-width all-attention model would store per token, for comparison."""
        c = self.config
        return c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_size * self.element_size

    # ---- counters ------------------------------------------------------------------------
    def uniform_length(self) -> int | None:
        """The common fill level of all rows, or None when rows differ."""
        return self._uniform_length

    def max_filled(self) -> int:
        if self._uniform_length is not None:
            return self._uniform_length
        return int(self.lengths.max())

    def check_room(self, new_tokens: int) -> None:
        end = self.max_filled() + new_tokens
        if end > self.max_length:
            raise ContextLengthError(
                f"the state holds at most {self.max_length} tokens per row; "
                f"{self.max_filled()} are used and {new_tokens} more were given"
            )

    def is_dense(self) -> bool:
        """All rows at the same length, every slot a real token (no padding, no ragged rows)."""
        return self._dense and self._uniform_length is not None

    def mark_padded(self) -> None:
        self._dense = False

    def padding_free(self) -> bool:
        """Every slot below each row's length holds a real token (rows may differ in length)."""
        return self._dense

    def counted_externally(self, n_slots: int) -> None:
        """A fused kernel advanced `lengths`, `positions` and `valid` in place by `n_slots` real
        tokens per row; keep the Python mirror of the common length in step."""
        if self._uniform_length is not None:
            self._uniform_length += n_slots

    def advance(self, n_slots: int, n_real: torch.Tensor | int) -> None:
        """Record that every row got `n_slots` new slots, `n_real[b]` of them real tokens."""
        self.lengths += n_slots
        self.positions += n_real
        if self._uniform_length is not None:
            self._uniform_length += n_slots

    def _resync(self) -> None:
        first = int(self.lengths[0])
        self._uniform_length = first if bool((self.lengths == first).all()) else None
        self._dense = bool((self.positions == self.lengths).all()) and all(
            bool(self.valid[r, : int(n)].all()) for r, n in enumerate(self.lengths.tolist())
        )

    # ---- lifecycle -----------------------------------------------------------------------
    def reset(self, rows: list[int] | torch.Tensor | None = None) -> None:
        """Forget everything (or only the given rows), keeping the allocation."""
        if rows is None:
            for c in self.conv:
                if c is not None:
                    c.zero_()
            self.lengths.zero_()
            self.positions.zero_()
            self.valid.zero_()
            self._uniform_length = 0
            self._dense = True
            return
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        for c in self.conv:
            if c is not None:
                c[idx] = 0
        self.lengths[idx] = 0
        self.positions[idx] = 0
        self.valid[idx] = False
        self._resync()

    def snapshot(self) -> StateSnapshot:
        """Save the state cheaply: conv windows and counters only (K/V below `lengths` is stable)."""
        return StateSnapshot(
            conv=[c.clone() if c is not None else None for c in self.conv],
            lengths=self.lengths.clone(),
            positions=self.positions.clone(),
        )

    def restore(self, snap: StateSnapshot) -> None:
        """Go back to a snapshot taken earlier on this state (undo turns, branch a chat).

        Valid as long as the K/V slots below the snapshot's lengths were not rewritten since,
        which holds for any snapshot taken on this state and not followed by a `reset`.
        """
        for mine, saved in zip(self.conv, snap.conv):
            if mine is not None:
                mine.copy_(saved)
        self.lengths.copy_(snap.lengths)
        self.positions.copy_(snap.positions)
        self._resync()

    def clone(self) -> "LFM2State":
        """A full independent copy (for branches that must both stay alive)."""
        new = LFM2State.__new__(LFM2State)
        new.__dict__.update(self.__dict__)
        new.conv = [c.clone() if c is not None else None for c in self.conv]
        new.keys = [k.clone() if k is not None else None for k in self.keys]
        new.values = [v.clone() if v is not None else None for v in self.values]
        new.lengths = self.lengths.clone()
        new.positions = self.positions.clone()
        new.valid = self.valid.clone()
        return new

    def copy_row(self, src: "LFM2State", src_row: int, dst_row: int) -> None:
        """Copy one row of another state (same config and dtype) into a row of this one."""
        n = int(src.lengths[src_row])
        if n > self.max_length:
            raise ContextLengthError(f"row holds {n} tokens, more than this state's {self.max_length}")
        for mine, theirs in zip(self.conv, src.conv):
            if mine is not None:
                mine[dst_row].copy_(theirs[src_row])
        for group_dst, group_src in ((self.keys, src.keys), (self.values, src.values)):
            for mine, theirs in zip(group_dst, group_src):
                if mine is not None:
                    mine[dst_row, :, :n].copy_(theirs[src_row, :, :n])
        self.valid[dst_row].zero_()
        self.valid[dst_row, :n] = src.valid[src_row, :n]
        self.lengths[dst_row] = n
        self.positions[dst_row] = src.positions[src_row]
        self._resync()

    def set_dense_row(self, row: int, n: int) -> None:
        """Record that `row` now holds `n` real tokens in its first `n` slots (its K/V and conv
        windows were written by the caller, e.g. restored from a prefix cache): no padding, the
        next RoPE position is `n`."""
        if n > self.max_length:
            raise ContextLengthError(f"row holds {n} tokens, more than this state's {self.max_length}")
        self.valid[row].zero_()
        self.valid[row, :n] = True
        self.lengths[row] = n
        self.positions[row] = n
        self._resync()

    def drop_left_padding(self, row: int, n: int) -> None:
        """Remove the first `n` slots of `row`, which must be left padding (no real tokens):
        its K/V move `n` slots down, so the row holds only its real tokens and has `n` more
        slots of room. Positions (RoPE) are unchanged: they count real tokens, not slots."""
        if n <= 0:
            return
        end = int(self.lengths[row])
        if n > end or bool(self.valid[row, :n].any()):
            raise ValueError(f"row {row}: the first {n} of its {end} slots are not all padding")
        for group in (self.keys, self.values):
            for t in group:
                if t is not None:
                    t[row, :, : end - n] = t[row, :, n:end].clone()
        self.valid[row, : end - n] = self.valid[row, n:end].clone()
        self.valid[row, end - n :] = False
        self.lengths[row] = end - n
        self._resync()

    def undoable_view(self, tokens: int) -> "LFM2State":
        """A view of this state for ONE forward of `tokens` (> 1) tokens per row that may then be
        undone in part by `keep_prefix` (speculative decoding verifies drafts this way).

        K/V, `lengths`, `positions` and `valid` are this state's own tensors; only the conv
        windows are new, `tokens` slots wider, holding this state's windows in their last slots.
        The multi-token conv path keeps the last `width` inputs of (window ++ chunk), so after
        the forward each wide window holds the old window followed by every input of the chunk,
        from which `keep_prefix` restores the window at any point of the chunk. This state's own
        windows are untouched until then.
        """
        if tokens < 2:
            raise ValueError(f"an undoable forward takes at least 2 tokens per row, got {tokens}")
        view = LFM2State.__new__(LFM2State)
        view.__dict__.update(self.__dict__)
        view.__dict__.pop("_fused_view", None)  # the fused step reads fixed-width windows
        view.conv = []
        for c in self.conv:
            if c is None:
                view.conv.append(None)
                continue
            wide = c.new_zeros(*c.shape[:-1], c.shape[-1] + tokens)
            wide[..., tokens:] = c
            view.conv.append(wide)
        view._undo_from = (self.lengths.clone(), self.positions.clone(), tokens)
        return view

    def keep_prefix(self, view: "LFM2State", kept: list[int]) -> None:
        """After one forward on `view = self.undoable_view(t)`: keep only the first `kept[r]`
        tokens (1 <= kept[r] <= t) of that forward in row r, as if the others were never fed.

        Each row's length and position move back, its slots past the new length stop being
        valid (their K/V is rewritten by the next write), and its conv window becomes the last
        `conv_L_cache` inputs up to its last kept token.
        """
        lengths, positions, t = view._undo_from
        if len(kept) != self.batch_size or not all(1 <= k <= t for k in kept):
            raise ValueError(f"keep_prefix: need {self.batch_size} counts in 1..{t}, got {kept}")
        keep = torch.as_tensor(kept, dtype=torch.long, device=self.device)
        width = self.config.conv_L_cache
        for mine, wide in zip(self.conv, view.conv):
            if mine is not None:
                index = (keep[:, None] + torch.arange(width, device=self.device))[:, None, :]
                mine.copy_(wide.gather(-1, index.expand(*mine.shape)))
        self.lengths.copy_(lengths + keep)
        self.positions.copy_(positions + keep)
        slots = torch.arange(self.max_length, device=self.device)
        self.valid &= slots[None] < self.lengths[:, None]
        self._resync()

    def rows(self, start: int, stop: int, lengths: list[int] | None = None, dense: bool | None = None) -> "LFM2State":
        """A zero-copy state over rows [start, stop): every write lands in this state.

        Batches shrink or split this way without copying K/V (finished rows leave a generate
        batch; the engine runs only its occupied slots). `lengths` (the rows' fill levels) and
        `dense` (no row holds padding) spare a device sync when the caller knows them; otherwise
        the view keeps this state's flags, which is exact when all rows share one length.
        """
        if (start, stop) == (0, self.batch_size) and lengths is None and dense is None:
            return self
        view = LFM2State.__new__(LFM2State)
        view.__dict__.update(self.__dict__)
        view.batch_size = stop - start
        view.conv = [c[start:stop] if c is not None else None for c in self.conv]
        view.keys = [k[start:stop] if k is not None else None for k in self.keys]
        view.values = [v[start:stop] if v is not None else None for v in self.values]
        view.lengths, view.positions = self.lengths[start:stop], self.positions[start:stop]
        view.valid = self.valid[start:stop]
        if lengths is not None:
            view._uniform_length = lengths[0] if all(x == lengths[0] for x in lengths) else None
        if dense is not None:
            view._dense = dense
        return view

    def to(self, device=None, dtype=None) -> "LFM2State":
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        new = self.clone()
        conv_cast = lambda t: t.to(device=device, dtype=dtype) if t is not None else None  # noqa: E731
        new.conv = [conv_cast(c) for c in new.conv]
        new.keys = [conv_cast(k) for k in new.keys]
        new.values = [conv_cast(v) for v in new.values]
        new.lengths, new.positions, new.valid = (t.to(device) for t in (new.lengths, new.positions, new.valid))
        new.device, new.dtype = device, dtype
        return new

    def __repr__(self) -> str:
        return (
            f"LFM2State(batch_size={self.batch_size}, max_length={self.max_length}, "
            f"dtype={self.dtype}, filled={self.lengths.tolist()}, "
            f"{self.nbytes() / 2**20:.1f} MiB, {self.bytes_per_token()} B/token)"
        )
