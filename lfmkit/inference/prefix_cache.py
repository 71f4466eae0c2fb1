"""A prefix cache for the hybrid state: resume a prompt from the longest cached token prefix.

Every request re-prefilling its whole conversation makes an agent's tenth turn pay for the
nine before it. An attention-only model can reuse any prefix of its K/V; a hybrid cannot roll
its conv windows back, so it can only resume at a point where the conv windows were saved.
LFM2's windows are tiny (`conv_L_cache` values per channel per conv layer), so we save them at
every point worth resuming from: the end of each prompt (with its next-token logits, so an
identical prompt needs no forward at all), the end of each generated answer, fixed token
intervals in long prompts (`interval`), and the point where a prompt leaves a cached path, when
that is at least `MIN_SPLIT` tokens past where it resumed (a shared system prompt then resumes
exactly where each later request's own text begins).

The cache is a radix tree over token ids. Each node owns the K/V of its own segment of tokens
(so a conversation's turns share their common K/V instead of each holding a copy) and may hold
a *snapshot*: the conv windows at its end (and the logits, at a prompt's end). Restoring a
node copies the K/V segments of its path and its conv windows into one row of an `LFM2State`.
Bytes are counted exactly (K/V, windows, logits); when a new entry would pass the budget,
least-recently-used leaves are evicted first (a node's ancestors are used whenever it is, so
the tree shrinks from its cold tips).

The engine (engine.py) and `ChatSession` (session.py) use the same cache; one cache belongs to
one model (its entries are that model's state). It is thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from ..errors import GenerationError
from ..model.state import LFM2State

DEFAULT_CACHE_MB = 1024
DEFAULT_INTERVAL = 512  # tokens between snapshots inside a long prompt
MIN_SPLIT = 32  # a prompt leaving a cached path is snapshotted there only this far past its hit


@dataclass
class Resume:
    """Where a prompt starts after `PrefixCache.resume`: `tokens` of it are restored into the row
    (0: none); `logits` are the next-token logits when the whole prompt was cached; the prefill
    should pause at each of `stops` (positions past `tokens`) to store a snapshot there."""

    tokens: int = 0
    logits: torch.Tensor | None = None
    stops: list[int] = field(default_factory=list)

    def next_stop(self, after: int, end: int) -> int:
        """The first stop after position `after`, or `end`."""
        return next((s for s in self.stops if s > after), end)


class _Node:
    __slots__ = ("parent", "tokens", "end", "children", "keys", "values", "conv", "logits", "used", "nbytes")

    def __init__(self, parent: "_Node | None", tokens: tuple[int, ...], keys: list, values: list):
        self.parent = parent
        self.tokens = tokens  # this node's own segment; its path holds end tokens in all
        self.end = (parent.end if parent is not None else 0) + len(tokens)
        self.children: dict[int, _Node] = {}
        self.keys, self.values = keys, values  # per layer: [kv_heads, len(tokens), head] or None
        self.conv: list[torch.Tensor | None] | None = None  # the snapshot's windows, if any
        self.logits: torch.Tensor | None = None
        self.used = 0
        self.nbytes = 0

    def path(self) -> list["_Node"]:
        """The nodes from the root's first child down to this one."""
        out, node = [], self
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _common(a, b) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    if tuple(a[:n]) == tuple(b[:n]):
        return n
    return next(i for i in range(n) if a[i] != b[i])


class PrefixCache:
    """Snapshots of single rows of `model`'s state keyed by token prefix, LRU within `max_bytes`."""

    def __init__(self, model, max_bytes: int, interval: int = DEFAULT_INTERVAL):
        if max_bytes < 0:
            raise GenerationError(f"the prefix cache budget must be >= 0 bytes, got {max_bytes}")
        if interval < 1:
            raise GenerationError(f"the prefix cache snapshot interval must be >= 1 token, got {interval}")
        self.model = model
        self.max_bytes = int(max_bytes)
        self.interval = int(interval)
        self._root = _Node(None, (), [], [])
        self._nodes: set[_Node] = set()
        self._lock = threading.RLock()
        self._clock = 0
        self.bytes = 0
        self.hits = 0  # resumes that restored at least one token
        self.misses = 0  # resumes that found nothing to restore
        self.hit_tokens = 0  # prompt tokens restored instead of prefilled
        self.evictions = 0  # nodes evicted to make room

    @classmethod
    def from_mb(cls, model, mb: float, interval: int = DEFAULT_INTERVAL) -> "PrefixCache | None":
        """A cache of `mb` MiB (None for 0: the cache is off)."""
        if not mb >= 0:
            raise GenerationError(f"the prefix cache size must be >= 0 MiB, got {mb}")
        return cls(model, int(mb * 2**20), interval) if mb > 0 else None

    @property
    def snapshots(self) -> int:
        """How many resumable points the cache holds."""
        with self._lock:
            return sum(1 for n in self._nodes if n.conv is not None)

    def count_misses(self, n: int = 1) -> None:
        """Count `n` prompts that had nothing to resume and were prefilled together (the engine's
        left-padded groups, which never call `resume`)."""
        with self._lock:
            self.misses += n

    def check_model(self, model) -> None:
        if model is not self.model:
            raise GenerationError("this prefix cache holds another model's state: give each model its own cache")

    # ---- finding -------------------------------------------------------------------------
    def _walk(self, tokens) -> tuple[list[_Node], int, _Node | None, int]:
        """Follow `tokens` down the tree: (whole nodes matched, tokens matched, the node the match
        ends inside or None, how far into that node's segment)."""
        path, node, i = [], self._root, 0
        while i < len(tokens):
            child = node.children.get(int(tokens[i]))
            if child is None:
                break
            m = _common(child.tokens, tokens[i : i + len(child.tokens)])
            if m < len(child.tokens):
                return path, i + m, child, m
            path.append(child)
            node, i = child, i + m
        return path, i, None, 0

    def lookup(self, prompt: list[int], need_logits: bool = True) -> Resume:
        """What `resume` would do for `prompt` (nothing is restored, counted or touched)."""
        with self._lock:
            return self._plan(prompt, need_logits)[0]

    def _plan(self, prompt: list[int], need_logits: bool) -> tuple[Resume, _Node | None]:
        path, matched, _, _ = self._walk(prompt)
        whole = not need_logits  # a snapshot of the whole prompt needs its logits to sample from
        best = next(
            (
                n
                for n in reversed(path)
                if n.conv is not None and (n.end < len(prompt) or whole or n.logits is not None)
            ),
            None,
        )
        hit = best.end if best is not None else 0
        stops = set(range(self.interval, len(prompt), self.interval))
        if matched < len(prompt) and matched - hit >= MIN_SPLIT:
            stops.add(matched)  # where the prompt leaves the cached paths
        plan = Resume(hit, best.logits if best is not None and hit == len(prompt) else None)
        plan.stops = sorted(s for s in stops if s > hit)
        return plan, best

    # ---- restoring -----------------------------------------------------------------------
    def resume(self, prompt: list[int], state: LFM2State, row: int, need_logits: bool = True) -> Resume:
        """Restore the longest usable cached prefix of `prompt` into `state` row `row` (which is
        then dense with `tokens` real tokens) and count the hit or miss. The row is left as it
        was when nothing is cached. Without `need_logits` (the caller feeds more tokens before it
        samples) the whole of `prompt` may come back without its next-token logits."""
        with self._lock:
            plan, node = self._plan(prompt, need_logits)
            if node is None:
                self.misses += 1
                return plan
            self._restore(node, state, row)
            self._touch(node)
            self.hits += 1
            self.hit_tokens += plan.tokens
            return plan

    def _restore(self, node: _Node, state: LFM2State, row: int) -> None:
        start = 0
        for seg in node.path():
            stop = start + len(seg.tokens)
            for dst, src in zip(state.keys + state.values, seg.keys + seg.values):
                if dst is not None:
                    dst[row, :, start:stop].copy_(src)
            start = stop
        for dst, src in zip(state.conv, node.conv):
            if dst is not None:
                dst[row].copy_(src)
        state.set_dense_row(row, node.end)

    # ---- storing -------------------------------------------------------------------------
    def store(self, tokens: list[int], state: LFM2State, row: int, logits: torch.Tensor | None = None) -> bool:
        """Save `state` row `row`, which holds exactly `tokens` (densely, no padding), as a resumable
        point; `logits` are its next-token logits, if known. Only the K/V of tokens the tree does
        not hold yet is copied. False when it cannot fit the budget (nothing is stored then)."""
        n = len(tokens)
        if n == 0:
            return False
        with self._lock:
            if int(state.lengths[row]) != n or int(state.positions[row]) != n:
                raise ValueError(f"row {row} holds {int(state.lengths[row])} slots, not the {n} tokens given")
            path, matched, inside, offset = self._walk(tokens)
            if matched == n and inside is None and path[-1].conv is not None:
                node = path[-1]
                if logits is not None and node.logits is None:
                    if not self._make_room(_nbytes([logits]), set(path)):
                        return False
                    self._set_snapshot(node, node.conv, logits.detach().clone())
                self._touch(node)
                return True
            need = (n - matched) * state.bytes_per_token() + _nbytes(c[row] for c in state.conv if c is not None)
            need += _nbytes([logits]) if logits is not None else 0
            keep = set(path) | ({inside} if inside is not None else set())
            if not self._make_room(need, keep):
                return False
            node = self._split(inside, offset) if inside is not None else (path[-1] if path else self._root)
            if matched < n:
                node = self._add_child(node, tokens[matched:], state, row)
            conv = [c[row].clone() if c is not None else None for c in state.conv]
            self._set_snapshot(node, conv, logits.detach().clone() if logits is not None else None)
            self._touch(node)
            return True

    def _add_child(self, parent: _Node, tokens: list[int], state: LFM2State, row: int) -> _Node:
        a, b = parent.end, parent.end + len(tokens)
        keys = [k[row, :, a:b].clone() if k is not None else None for k in state.keys]
        values = [v[row, :, a:b].clone() if v is not None else None for v in state.values]
        child = _Node(parent, tuple(int(t) for t in tokens), keys, values)
        parent.children[child.tokens[0]] = child
        self._nodes.add(child)
        self._account(child)
        return child

    def _split(self, node: _Node, offset: int) -> _Node:
        """Cut `node`'s segment after `offset` tokens; return the new upper part (no snapshot)."""
        upper = _Node(
            node.parent,
            node.tokens[:offset],
            [k[:, :offset].clone() if k is not None else None for k in node.keys],
            [v[:, :offset].clone() if v is not None else None for v in node.values],
        )
        node.parent.children[upper.tokens[0]] = upper
        node.parent = upper
        node.tokens = node.tokens[offset:]
        node.keys = [k[:, offset:].clone() if k is not None else None for k in node.keys]
        node.values = [v[:, offset:].clone() if v is not None else None for v in node.values]
        upper.children[node.tokens[0]] = node
        upper.used = node.used
        self._nodes.add(upper)
        self._account(upper)
        self._account(node)
        return upper

    def _set_snapshot(self, node: _Node, conv, logits) -> None:
        node.conv, node.logits = conv, logits
        self._account(node)

    def _account(self, node: _Node) -> None:
        new = _nbytes(node.keys + node.values) + _nbytes(node.conv or []) + _nbytes([node.logits])
        self.bytes += new - node.nbytes
        node.nbytes = new

    def _touch(self, node: _Node) -> None:
        self._clock += 1
        for n in node.path():
            n.used = self._clock

    # ---- evicting ------------------------------------------------------------------------
    def _make_room(self, need: int, keep: set[_Node]) -> bool:
        """Evict least-recently-used leaves (not in `keep`) until `need` more bytes fit."""
        if need > self.max_bytes:
            return False
        while self.bytes + need > self.max_bytes:
            leaves = [n for n in self._nodes if not n.children and n not in keep]
            if not leaves:
                return False
            self._remove(min(leaves, key=lambda n: n.used), keep)
        return True

    def _remove(self, node: _Node, keep: set[_Node]) -> None:
        """Drop a leaf, and its ancestors (not in `keep`) that are left as leaves without a snapshot."""
        while node.parent is not None and not node.children and node not in keep:
            del node.parent.children[node.tokens[0]]
            self._nodes.discard(node)
            self.bytes -= node.nbytes
            self.evictions += 1
            node = node.parent
            if node.conv is not None:
                break

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._root.children.clear()
            self._nodes.clear()
            self.bytes = 0

    def __repr__(self) -> str:
        return (
            f"PrefixCache({self.snapshots} snapshots, {self.bytes / 2**20:.1f}/{self.max_bytes / 2**20:.0f} MiB, "
            f"hits={self.hits}, misses={self.misses}, hit_tokens={self.hit_tokens})"
        )


__all__ = ["PrefixCache", "Resume", "DEFAULT_CACHE_MB", "DEFAULT_INTERVAL"]
