"""Speculative decoding: draft a few tokens cheaply, verify them all in ONE forward of the target.

At batch 1 a decode step streams every weight once for one token; verifying `k` drafted tokens
costs about the same pass (a `k + 1`-token chunk at the row's offset), and every accepted draft
is a token gained. The drafters (a smaller model, or n-gram prompt lookup) are in drafters.py.

Exactness. Greedy rows: the target's token at each position is `BatchSampler.sample` of the
verify logits (penalties included), a draft is accepted while it equals that token, and the
first mismatch emits the target's token, so the output is plain greedy decoding's (bit for bit
when the verify runs on the fused step or step by step, see `_verify_forward`; up to float
rounding on a float model's chunk forward). Sampled rows
use the rejection rule of Leviathan, Kalman & Matias, "Fast Inference from Transformers via
Speculative Decoding" (ICML 2023, Algorithm 1) and Chen et al., "Accelerating Large Language
Model Decoding with Speculative Sampling" (2023): draft x drawn from q is accepted with
probability min(1, p(x) / q(x)); on rejection the token is drawn from the residual
norm(max(0, p - q)); after k accepted drafts a bonus token is drawn from p. Each emitted token
is then distributed exactly as p, the distribution plain sampling draws from (`BatchSampler.
distribution`: penalties over the history so far, temperature, top_k, top_p, min_p). A
deterministic drafter (n-gram, or a greedy draft) has q = one-hot(x). The draft's q never needs
penalties: any q keeps the output exact, only the acceptance rate depends on it.

Rollback. The verify forward runs on `LFM2State.undoable_view` (conv windows widened to keep
every input of the chunk; the fused and step-by-step paths fill them from the conv inputs they
report); `keep_prefix` then keeps, per row, only the tokens up to the first
rejected one: lengths and positions move back (K/V past a row's length is rewritten by the
next write) and the conv window is restored to the last `conv_L_cache` inputs at the accepted
position. tests/test_speculative.py checks the rolled-back state against one that never saw the
rejected tokens, tensor by tensor, and its next logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import GenerationError
from ..model.state import LFM2State
from .completion import TokenLogprob
from .drafters import DEFAULT_K, Draft, ModelDrafter, NgramDrafter, draw
from .sampling import BatchSampler, SamplingParams, derived_seed

MAX_K = 32
NGRAM = "ngram"


# ---- the rejection rule (Leviathan et al. 2023, Algorithm 1) ---------------------------------
def acceptance_probability(p: torch.Tensor, q: torch.Tensor | None, x: int) -> float:
    """min(1, p(x) / q(x)) for a draft x drawn from q (None: q = one-hot(x), so p(x))."""
    qx = 1.0 if q is None else float(q[x])
    return min(1.0, float(p[x]) / qx)


def residual(p: torch.Tensor, q: torch.Tensor | None, x: int) -> torch.Tensor:
    """The distribution a rejected draft's replacement is drawn from: norm(max(0, p - q)).

    With q = one-hot(x) that is p without x. Where p <= q everywhere (then p == q and nothing
    is ever rejected, up to rounding) it is p itself."""
    p = p.to(torch.float64)
    if q is None:
        r = p.clone()
        r[x] = 0.0
    else:
        r = (p - q.to(torch.float64)).clamp_(min=0.0)
    total = float(r.sum())
    return r / total if total > 0 else p / p.sum()


def uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


# ---- verification ----------------------------------------------------------------------------
@dataclass
class SpecRow:
    """One running sequence as the verifier sees it."""

    context: list[int]  # every token so far; the last one is emitted but not yet fed
    drafter: NgramDrafter | ModelDrafter
    slot: int  # its BatchSampler row
    params: SamplingParams
    budget: int  # tokens it may still emit (>= 1)
    stop_ids: frozenset[int] = frozenset()


@dataclass
class Verdict:
    """What one row emits this step: the drafts it accepted, then the target's own token (unless
    it ended on an accepted stop token)."""

    tokens: list[int]
    logprobs: list[TokenLogprob | None]
    drafted: int
    accepted: int


@dataclass
class Verification:
    """One verify forward's outcome; `commit(kept)` then rolls each row back to its kept tokens."""

    state: LFM2State
    view: LFM2State | None  # None: no drafts, a plain one-token step
    verdicts: list[Verdict]
    committed: bool = False

    def commit(self, kept: list[int]) -> None:
        """Keep the first kept[i] tokens fed for row i (its last emitted token and any draft it
        did not take are dropped): kept[i] is how many of its emitted tokens were used."""
        if self.committed:
            return
        self.committed = True
        if self.view is not None:
            self.state.keep_prefix(self.view, kept)


@dataclass
class SpeculationStats:
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_step(self) -> float | None:
        return self.emitted / self.steps if self.steps else None


@dataclass
class Speculator:
    """How to speculate: a draft model (an LFM2 with the target's vocabulary) or "ngram", and
    k drafts per step (`adaptive`: per row, k grows by one after a fully accepted step and
    shrinks by one after a step that accepted nothing, within 1..k)."""

    draft: object
    k: int = DEFAULT_K
    adaptive: bool = False
    max_ngram: int = 3
    stats: SpeculationStats = field(default_factory=SpeculationStats)

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise GenerationError(f"draft_k (--draft-k): expected an integer from 1 to {MAX_K}, got {self.k!r}")
        if isinstance(self.draft, str) and self.draft != NGRAM:
            raise GenerationError(f"draft: expected a model or {NGRAM!r}, got {self.draft!r}")
        if not isinstance(self.draft, str) and not hasattr(self.draft, "new_state"):
            raise GenerationError(f"draft: expected an LFM2 model or {NGRAM!r}, got {type(self.draft).__name__}")

    @property
    def name(self) -> str:
        if isinstance(self.draft, str):
            return self.draft
        return str(getattr(self.draft, "source_path", None) or "draft model")

    def check(self, model) -> None:
        """Refuse a draft model whose vocabulary or device differs from the target's."""
        if isinstance(self.draft, str):
            return
        ours, theirs = model.config.vocab_size, self.draft.config.vocab_size
        if ours != theirs:
            raise GenerationError(
                f"draft model: its vocabulary has {theirs} tokens and the target's {ours}: a draft must share "
                "the target's tokenizer"
            )
        if self.draft.device != model.device:
            raise GenerationError(f"draft model: it is on {self.draft.device} and the target on {model.device}")

    def new_drafter(self, max_length: int) -> NgramDrafter | ModelDrafter:
        """A drafter for sequences whose context stays under `max_length` tokens."""
        if isinstance(self.draft, str):
            return NgramDrafter(self.max_ngram)
        return ModelDrafter(self.draft, max_length + self.k + 1)

    def start(self, drafter, params: SamplingParams, seed: int | None) -> None:
        """Make `drafter` draft for a new sequence sampled with `params` (and `seed`). A drafter
        may serve one sequence after another: it catches up from what they share."""
        drafter.reset(params, seed)
        drafter.k = self.k  # drafts per step for this sequence (adaptive: changes as it goes)

    # ---- one step ------------------------------------------------------------------------
    @torch.no_grad()
    def verify(self, model, state: LFM2State, rows: list[SpecRow], sampler: BatchSampler) -> Verification:
        """Draft for every row, run the k+1-token verify forward, accept; `commit` follows.

        The state must have room for `1 + k` more slots in every row (rows with fewer drafts
        are padded with their own last token; those slots are rolled back)."""
        drafts = [self._propose(r) for r in rows]
        t = 1 + max(len(d.tokens) for d in drafts)
        ids = torch.tensor(
            [[r.context[-1], *d.tokens] + [r.context[-1]] * (t - 1 - len(d.tokens)) for r, d in zip(rows, drafts)],
            dtype=torch.long,
            device=model.device,
        )
        logits, view = _verify_forward(model, ids, state)
        verdicts = _accept(logits, drafts, rows, sampler)
        self._record(rows, verdicts)
        return Verification(state, view, verdicts)

    def _propose(self, row: SpecRow) -> Draft:
        if row.params.constraint is not None and not row.params.is_greedy:
            return Draft([])  # a sampled constrained row decodes plainly (see `_accept`)
        k = min(getattr(row.drafter, "k", self.k), row.budget - 1)
        draft = row.drafter.propose(row.context, k) if k > 0 else Draft([])
        for i, tok in enumerate(draft.tokens):  # nothing after a stop token is ever emitted
            if tok in row.stop_ids:
                cut = i + 1
                return Draft(draft.tokens[:cut], draft.probs[:cut] if draft.probs is not None else None)
        return draft

    def _record(self, rows: list[SpecRow], verdicts: list[Verdict]) -> None:
        st = self.stats
        st.steps += 1
        for row, v in zip(rows, verdicts):
            st.drafted += v.drafted
            st.accepted += v.accepted
            st.emitted += len(v.tokens)
            if self.adaptive and v.drafted:
                k = row.drafter.k + (v.accepted == v.drafted) - (v.accepted == 0)
                row.drafter.k = max(1, min(self.k, k))

    # ---- the generate loop -----------------------------------------------------------------
    @torch.no_grad()
    def decode_rows(
        self,
        model,
        state: LFM2State,
        logits: torch.Tensor,
        rows: list,
        sampler: BatchSampler,
        should_stop: Callable[[], bool] | None = None,
        drafters: list | None = None,
    ) -> Iterator[list[tuple[object, str, int]]]:
        """`generate.decode_rows` with drafts: the same rows (`generate._Row`), the same yields
        (one list of (row, new text, token) per emitted position), the same running-row
        compaction. The first token comes from the prefill logits, as without drafts; the state
        must have `k` slots of room past each row's prompt plus max_tokens."""
        self.check(model)
        if drafters is None:
            drafters = [self.new_drafter(state.max_length) for _ in rows]
            for row, d in zip(rows, drafters):
                self.start(d, row.params, derived_seed(row.params.seed, row.index))
        running = list(range(len(rows)))  # running[i]: the row (and sampler slot) in state row i
        out = sampler.sample(logits, running)
        emitted = [[(tok, e)] for tok, e in zip(out.tokens.tolist(), _entries(logits, out.tokens, rows, running))]
        check: Verification | None = None
        while True:
            yield from self._consume(rows, running, emitted, check)
            done = [i for i, r in enumerate(running) if rows[r].finish_reason is not None]
            for i in reversed(done):  # fill each finished row's place with the last running row
                last = len(running) - 1
                if i != last:
                    state.copy_row(state, last, i)
                    running[i] = running[last]
                running.pop()
            if not running:
                return
            if done:
                state = state.rows(0, len(running))
            if should_stop is not None and should_stop():
                yield [(rows[r], rows[r].abort(), -1) for r in running]
                return
            spec_rows = [
                SpecRow(
                    rows[r].prompt_ids + rows[r].token_ids,
                    drafters[r],
                    r,
                    rows[r].params,
                    rows[r].completion.max_tokens - rows[r].completion.count,
                    rows[r].completion.stop_ids,
                )
                for r in running
            ]
            check = self.verify(model, state, spec_rows, sampler)
            emitted = [list(zip(v.tokens, v.logprobs)) for v in check.verdicts]

    @staticmethod
    def _consume(rows, running, emitted, check: Verification | None):
        """Hand each row its emitted tokens in order until it finishes, one yield per position;
        the state is rolled back (`check.commit`) before the last yield, so whoever reads the
        state on a row's final token sees exactly what was fed."""
        kept = [0] * len(running)
        width = max(len(e) for e in emitted)
        for j in range(width):
            step = []
            for i, r in enumerate(running):
                row = rows[r]
                if j < len(emitted[i]) and row.finish_reason is None:
                    tok, entry = emitted[i][j]
                    step.append((row, row.accept(tok, entry), tok))
                    kept[i] += 1
            more = any(rows[r].finish_reason is None and kept[i] < len(emitted[i]) for i, r in enumerate(running))
            if not more and check is not None:
                check.commit(kept)
            if step:
                yield step
            if not more:
                return


def _verify_forward(model, ids: torch.Tensor, state: LFM2State) -> tuple[torch.Tensor, LFM2State | None]:
    """Logits [B, t, V] of ids [B, t] fed at each row's next slots, and the undoable view to
    roll back with (None for t == 1: a plain step).

    - A quantized model's fused step takes all t tokens in one call, bit for bit as t
      single-token steps (so greedy output is plain decoding's exactly).
    - A float model runs the module forward of the chunk on the view: the same as single steps
      up to float rounding.
    - A quantized model on the CPU without the fused step (widths its kernels cannot take)
      quantizes activations on the fly, which turns float rounding into visible differences:
      it verifies step by step (exact, without the speed-up).
    The first and last report each token's conv input, from which the wide windows are built."""
    t = ids.shape[1]
    if t == 1:
        return model(ids, state=state), None
    view = state.undoable_view(t)
    b, h = state.batch_size, state.config.hidden_size
    cols = [None if c is None else torch.empty(b, t, h, dtype=c.dtype, device=c.device) for c in state.conv]
    fused = model.__dict__.get("fused_decode")
    logits = fused(ids, state, cols) if fused is not None else None
    if logits is None and getattr(model, "quant_mode", None) in ("int8", "int4") and state.device.type == "cpu":
        logits = _step_by_step(model, ids, state, cols)
    if logits is None:
        return model(ids, state=view), view
    for i, c in enumerate(cols):
        if c is not None:
            view.conv[i] = torch.cat((view.conv[i][..., t:], c.transpose(1, 2)), dim=-1)
    return logits, view


def _step_by_step(model, ids: torch.Tensor, state: LFM2State, cols: list) -> torch.Tensor:
    """t single-token steps (each token's conv input into `cols`); logits [B, t, V]."""
    out = []
    for j in range(ids.shape[1]):
        out.append(model(ids[:, j : j + 1], state=state)[:, -1])
        for c, col in zip(state.conv, cols):
            if c is not None:
                col[:, j] = c[..., -1]
    return torch.stack(out, 1)


def _accept(logits: torch.Tensor, drafts: list[Draft], rows: list[SpecRow], sampler: BatchSampler) -> list[Verdict]:
    """Walk the verify logits [B, t, V] position by position: each open row takes the target's
    token there (greedy) or the rejection rule's (sampled), and stays open while it accepts.

    Structured output: `BatchSampler.sample` masks a constrained row's logits with its grammar
    and advances its matcher by the token it picks. Greedy rows go through it at every position
    they reach, so the grammar sees exactly the emitted tokens (a draft it disallows is
    rejected there). A sampled constrained row has no drafts (`_propose`) and is sampled by it
    too: plain decoding, since the rejection rule's draws would bypass the matcher."""
    verdicts = [Verdict([], [], len(d.tokens), 0) for d in drafts]
    open_rows = list(range(len(rows)))
    for j in range(logits.shape[1]):
        if not open_rows:
            break
        chosen: dict[int, tuple[int, bool]] = {}
        plain = [i for i in open_rows if rows[i].params.is_greedy or rows[i].params.constraint is not None]
        sampled = [i for i in open_rows if i not in plain]
        if plain:
            out = sampler.sample(logits[plain, j], [rows[i].slot for i in plain])
            for i, tok in zip(plain, out.tokens.tolist()):
                d = drafts[i].tokens
                chosen[i] = (tok, j < len(d) and d[j] == tok)
        if sampled:
            p = sampler.distribution(logits[sampled, j], [rows[i].slot for i in sampled])
            for n, i in enumerate(sampled):
                tok, ok = _rejection_step(p[n], drafts[i], j, sampler.generators[rows[i].slot])
                sampler.record([rows[i].slot], torch.tensor([tok]))
                chosen[i] = (tok, ok)
        still = []
        for i in open_rows:
            tok, ok = chosen[i]
            v = verdicts[i]
            v.tokens.append(tok)
            v.logprobs.append(_logprob(logits[i, j], tok, rows[i].params))
            if ok:
                v.accepted += 1
                if tok not in rows[i].stop_ids:
                    still.append(i)
        open_rows = still
    return verdicts


def _rejection_step(p: torch.Tensor, draft: Draft, j: int, generator: torch.Generator) -> tuple[int, bool]:
    """The token at draft position j of a sampled row, and whether it is the accepted draft."""
    if j >= len(draft.tokens):
        return draw(p, generator), False  # every draft accepted: the bonus token, from p
    x = draft.tokens[j]
    q = draft.probs[j] if draft.probs is not None else None
    if uniform(generator) < acceptance_probability(p, q, x):
        return x, True
    return draw(residual(p, q, x), generator), False


def _logprob(logits: torch.Tensor, token: int, params: SamplingParams) -> TokenLogprob | None:
    """The raw logprob of `token` (and the top alternatives) when the row asked for them."""
    if not params.wants_logprobs:
        return None
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = []
    if params.top_logprobs:
        values, ids = logp.topk(params.top_logprobs)
        top = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token, float(logp[token]), top)


def _entries(logits: torch.Tensor, tokens: torch.Tensor, rows: list, running: list[int]):
    return [_logprob(logits[i], int(tokens[i]), rows[r].params) for i, r in enumerate(running)]


def speculator(draft, k: int = DEFAULT_K, adaptive: bool = False) -> Speculator | None:
    """A `Speculator` from what a caller passes as `draft=` (None, "ngram", a model, or a
    Speculator, which is returned as it is)."""
    if draft is None or isinstance(draft, Speculator):
        return draft
    return Speculator(draft, k=k, adaptive=adaptive)


__all__ = [
    "Speculator",
    "SpeculationStats",
    "NgramDrafter",
    "ModelDrafter",
    "Draft",
    "SpecRow",
    "Verdict",
    "Verification",
    "speculator",
    "acceptance_probability",
    "residual",
    "draw",
    "DEFAULT_K",
    "NGRAM",
]
