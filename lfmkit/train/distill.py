"""Knowledge-distillation losses: a teacher's next-token distribution as the student's target.

    loss_fn = DistillationLoss(kind="forward_kl", temperature=2.0, alpha=0.5)
    hidden = student(ids, attention_mask=mask, return_hidden=True)           # [B, T, H]
    teacher = TeacherHead.from_model(teacher_model, ids, mask)               # online, or:
    teacher = cache[i]["teacher"]                                            # top-k from a file
    out = loss_fn(hidden, targets, teacher, head=student.lm_head)           # out.loss.backward()

Divergences (per trained token, over the vocabulary, at temperature T):
- forward KL, KL(teacher || student): Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
  Neural Network" (soft-target cross-entropy minus the teacher's entropy: the same gradient);
- reverse KL, KL(student || teacher): mode-seeking, as in Gu et al. 2024, "MiniLLM: Knowledge
  Distillation of Large Language Models";
- generalized Jensen-Shannon divergence JSD(beta): Agarwal et al. 2024, "On-Policy Distillation of
  Language Models: Learning from Self-Generated Mistakes" (GKD), eq. 1.
The conventions are TRL's `GKDTrainer.generalized_jsd_loss` (tests/test_distill.py checks equality):
beta = 0 is forward KL, beta = 1 reverse KL, otherwise beta KL(t || m) + (1 - beta) KL(s || m) with
the mixture m = beta t + (1 - beta) s.

`DistillationLoss` mixes the divergence with the hard-label cross-entropy:
    loss = alpha * T^2 * divergence + (1 - alpha) * CE
(T^2 keeps the soft term's gradients at the scale of T = 1, Hinton et al. section 2), averaged over
the trained tokens (targets != -100) or divided by `num_items` (the trained tokens of a whole
global batch, so accumulation and processes do not change the loss, as TRL does).

Memory: the student's logits are computed from its hidden states and head `CHUNK_TOKENS` tokens at a
time, their gradient taken inside the forward, so no [tokens, vocab] float32 tensor of the student
or the teacher ever exists whole (a teacher given as hidden states + head is chunked the same way).

Top-k teacher: `write_teacher_cache` runs the teacher once and stores each trained token's k most
likely ids and their log-probs. The loss from them is an approximation: both distributions are
restricted to the teacher's top-k ids and renormalised over that support (the teacher's tail mass,
and the student's mass outside the support, are left out of the divergence; the CE term still uses
the student's full distribution). With k = vocab it is the full-logit loss exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io.safetensors import SafetensorsFile, parse_dtype

CHUNK_TOKENS = 256  # student/teacher rows per chunk: [256, 65536] float32 is 64 MiB
KINDS = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": None}  # kind -> beta (jsd: given)
IGNORE = -100


# ---- the divergence -----------------------------------------------------------------------------
def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalized JSD between log-distributions [n, m] -> [n], TRL's conventions (beta 0:
    KL(teacher || student), beta 1: KL(student || teacher); see the module doc)."""
    if beta == 0:
        return F.kl_div(student_logp, teacher_logp, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(teacher_logp, student_logp, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=student_logp.dtype, device=student_logp.device)
    mix = torch.logsumexp(torch.stack([student_logp + torch.log1p(-b), teacher_logp + torch.log(b)]), dim=0)
    kl_teacher = F.kl_div(mix, teacher_logp, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(mix, student_logp, reduction="none", log_target=True).sum(-1)
    return beta * kl_teacher + (1 - beta) * kl_student


# ---- teachers -----------------------------------------------------------------------------------
@dataclass
class TeacherLogits:
    """Teacher logits [..., vocab] with the student's leading shape (any dtype; read by chunk)."""

    logits: torch.Tensor

    def prepare(self, shape: torch.Size, rows: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
        _check_leading(self.logits, shape, "teacher logits")
        flat = self.logits.reshape(-1, self.logits.shape[-1])
        return lambda a, b: flat[rows[a:b]].float()


@dataclass
class TeacherHead:
    """Teacher hidden states [..., H] and its head (a module or callable giving logits): the
    teacher's logits are computed a chunk of tokens at a time, like the student's."""

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> "TeacherHead":
        """Run an lfmkit model (float or quantized) over the batch, without gradients."""
        return cls(model(input_ids, attention_mask=attention_mask, return_hidden=True), model.lm_head)

    def prepare(self, shape: torch.Size, rows: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
        _check_leading(self.hidden, shape, "teacher hidden states")
        flat = self.hidden.reshape(-1, self.hidden.shape[-1])
        return lambda a, b: self.head(flat[rows[a:b]]).float()


@dataclass
class TeacherTopK:
    """The teacher's top-k token ids and log-probs [..., k]: either with the student's leading shape,
    or [trained tokens, k] in order (what `write_teacher_cache` stores)."""

    ids: torch.Tensor
    logprobs: torch.Tensor

    def prepare(self, shape: torch.Size, rows: torch.Tensor) -> Callable[[int, int], tuple]:
        if self.ids.shape != self.logprobs.shape:
            raise ValueError(
                f"teacher top-k ids {tuple(self.ids.shape)} and log-probs {tuple(self.logprobs.shape)} differ in shape"
            )
        k = self.ids.shape[-1]
        ids, lp = self.ids.reshape(-1, k), self.logprobs.reshape(-1, k)
        if self.ids.shape[:-1] != shape:
            if ids.shape[0] != rows.numel():
                raise ValueError(
                    f"teacher top-k has {ids.shape[0]} rows: neither the student's shape "
                    f"{tuple(shape)} nor its {rows.numel()} trained tokens"
                )
            rows = torch.arange(rows.numel(), device=rows.device)
        return lambda a, b: (ids[rows[a:b]].long(), lp[rows[a:b]].float())


def _check_leading(t: torch.Tensor, shape: torch.Size, what: str) -> None:
    if t.shape[:-1] != shape:
        raise ValueError(f"{what} of shape {tuple(t.shape)} do not match the student's {tuple(shape)}")


# ---- the chunked loss ---------------------------------------------------------------------------
class Objective(NamedTuple):
    """What one chunk contributes: kd_weight * sum of divergences + ce_weight * sum of CE."""

    beta: float
    temperature: float
    kd_weight: float
    ce_weight: float

    def chunk(self, logits: torch.Tensor, teacher, targets: torch.Tensor):
        t = self.temperature
        if isinstance(teacher, tuple):  # top-k: both renormalised over the teacher's ids
            ids, t_lp = teacher
            s_logp = F.log_softmax(logits.gather(-1, ids) / t, dim=-1)
            t_logp = F.log_softmax(t_lp / t, dim=-1)
        else:
            if teacher.shape[-1] != logits.shape[-1]:
                raise ConfigError(
                    f"the teacher's vocabulary ({teacher.shape[-1]}) differs from the student's ({logits.shape[-1]})"
                )
            s_logp = F.log_softmax(logits / t, dim=-1)
            t_logp = F.log_softmax(teacher / t, dim=-1)
        kd = divergence(s_logp, t_logp, self.beta).sum()
        ce = F.cross_entropy(logits, targets, reduction="sum") if self.ce_weight else kd.new_zeros(())
        return self.kd_weight * kd + self.ce_weight * ce, kd, ce


class _ChunkedLoss(torch.autograd.Function):
    """Sums of (total, divergence, CE) over rows of `hidden` [N, H] (logits = hidden @ weight.T, or
    hidden itself when weight is None), chunk by chunk; the gradient of the total is computed per
    chunk during the forward and only scaled in the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, teacher_chunk, targets, objective: Objective, chunk: int):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        w = weight.detach().requires_grad_(need_w) if weight is not None else None
        sums = torch.zeros(3, dtype=torch.float64, device=hidden.device)
        for a in range(0, hidden.shape[0], chunk):
            b = min(hidden.shape[0], a + chunk)
            with torch.no_grad():
                teacher = teacher_chunk(a, b)
            h = hidden[a:b].detach().requires_grad_(need_h)
            with torch.enable_grad() if need_h or need_w else contextlib.nullcontext():
                logits = (F.linear(h.to(w.dtype), w) if w is not None else h).float()
                parts = objective.chunk(logits, teacher, targets[a:b])
                wrt = [x for x, need in ((h, need_h), (w, need_w)) if need]
                grads = list(torch.autograd.grad(parts[0], wrt)) if wrt else []
            if need_h:
                grad_h[a:b] = grads.pop(0)
            if need_w:
                grad_w += grads.pop(0)
            sums += torch.stack([p.detach().double() for p in parts])
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype if weight is not None else None
        total, kd, ce = (s.float() for s in sums)
        ctx.mark_non_differentiable(kd, ce)
        return total, kd, ce

    @staticmethod
    def backward(ctx, g_total, g_kd, g_ce):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * g_total.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * g_total).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


class DistillOutput(NamedTuple):
    loss: torch.Tensor  # differentiable scalar
    kd: torch.Tensor  # mean divergence per trained token (detached, for logging)
    ce: torch.Tensor  # mean hard-label CE per trained token (detached)
    tokens: int  # trained tokens in this call


def _head_weight(head) -> torch.Tensor | None:
    """The [vocab, H] matrix of a head given as a tensor or a linear module: an nn.Linear, a
    LoRALinear (base + B @ A * scaling, differentiable in the adapters) or a QuantLinear (its
    dequantized, frozen weight) all expose it as `.weight`."""
    return head if head is None or isinstance(head, torch.Tensor) else head.weight


def chunked_distill_loss(
    student: torch.Tensor,
    targets: torch.Tensor | None,
    teacher,
    objective: Objective,
    head=None,
    num_items: int | torch.Tensor | None = None,
    chunk_size: int = CHUNK_TOKENS,
) -> DistillOutput:
    """The objective over the trained tokens of `student` ([..., H] hidden states with `head`, or
    [..., vocab] logits when head is None), `targets` ([...], aligned: position i is trained to
    predict targets[i]; -100 = not trained; None = every position, no CE)."""
    shape = student.shape[:-1]
    if targets is None:
        if objective.ce_weight:
            raise ValueError("the hard-label CE term needs targets")
        targets = torch.zeros(shape, dtype=torch.long, device=student.device)
    elif targets.shape != shape:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match the student's {tuple(shape)}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    flat_targets = targets.reshape(-1)
    rows = (flat_targets != IGNORE).nonzero().squeeze(-1)
    teacher_chunk = (teacher if hasattr(teacher, "prepare") else TeacherLogits(teacher)).prepare(shape, rows)
    hidden = student.reshape(-1, student.shape[-1])[rows]
    total, kd, ce = _ChunkedLoss.apply(
        hidden, _head_weight(head), teacher_chunk, flat_targets[rows].long(), objective, chunk_size
    )
    n = int(rows.numel())
    denom = num_items if num_items is not None else max(n, 1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(total.device)
    return DistillOutput(total / denom, kd / max(n, 1), ce / max(n, 1), n)


def _check(kind: str, beta: float, temperature: float, alpha: float = 0.0) -> float:
    """The beta of `kind`, after checking every parameter (ConfigError naming it)."""
    if kind not in KINDS:
        raise ConfigError(f"distillation loss {kind!r} is not one of {', '.join(KINDS)}")
    if not 0 <= beta <= 1:
        raise ConfigError(f"distillation beta must be in [0, 1], got {beta}")
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be positive, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ConfigError(
            f"distillation alpha (weight of the divergence against the CE) must be in [0, 1], got {alpha}"
        )
    return beta if KINDS[kind] is None else KINDS[kind]


class DistillationLoss(nn.Module):
    """alpha * T^2 * divergence(kind) + (1 - alpha) * hard-label CE, mean over trained tokens.

    kind: "forward_kl" (Hinton et al. 2015), "reverse_kl" (Gu et al. 2024), "jsd" with `beta`
    (Agarwal et al. 2024). alpha = 1 is pure distillation, alpha = 0 plain SFT.
    forward(student, targets, teacher, head=None, num_items=None): `student` hidden states
    [..., H] with the student's `head` (weight tensor or linear module), or logits when head is
    None; `teacher` a TeacherLogits / TeacherHead / TeacherTopK (or a logits tensor)."""

    def __init__(
        self,
        kind: str = "forward_kl",
        beta: float = 0.5,
        temperature: float = 1.0,
        alpha: float = 0.5,
        chunk_size: int = CHUNK_TOKENS,
    ):
        super().__init__()
        b = _check(kind, beta, temperature, alpha)
        self.kind, self.chunk_size = kind, chunk_size
        self.objective = Objective(b, float(temperature), alpha * temperature**2, 1.0 - alpha)

    def forward(
        self,
        student: torch.Tensor,
        targets: torch.Tensor,
        teacher,
        head=None,
        num_items: int | torch.Tensor | None = None,
    ) -> DistillOutput:
        return chunked_distill_loss(student, targets, teacher, self.objective, head, num_items, self.chunk_size)

    def extra_repr(self) -> str:
        o = self.objective
        return f"kind={self.kind}, beta={o.beta}, temperature={o.temperature}, alpha={1.0 - o.ce_weight}"


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits,
    labels: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """Generalized JSD (GKD, Agarwal et al. 2024, eq. 1), mean over tokens with labels != -100 (all
    tokens when labels is None); no T^2 factor. Equals TRL's `GKDTrainer.generalized_jsd_loss`
    (reduction "batchmean") with labels, and without labels on [tokens, vocab] logits (on 3-D logits
    without labels TRL divides by the batch size instead)."""
    objective = Objective(_check("jsd", beta, temperature), float(temperature), 1.0, 0.0)
    return chunked_distill_loss(student_logits, labels, teacher_logits, objective, chunk_size=chunk_size).loss


def forward_kl(student_logits, teacher_logits, labels=None, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) at temperature T, mean over trained tokens (Hinton et al. 2015; no
    T^2 factor here, `DistillationLoss` applies it): `generalized_jsd` with beta = 0."""
    return generalized_jsd(student_logits, teacher_logits, labels, beta=0.0, temperature=temperature)


def reverse_kl(student_logits, teacher_logits, labels=None, temperature: float = 1.0) -> torch.Tensor:
    """KL(student || teacher) at temperature T, mean over trained tokens (Gu et al. 2024, MiniLLM):
    `generalized_jsd` with beta = 1."""
    return generalized_jsd(student_logits, teacher_logits, labels, beta=1.0, temperature=temperature)


def next_token_targets(
    input_ids: torch.Tensor, labels: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Aligned targets [B, T] from a batch in the Hugging Face convention (labels unshifted, -100 =
    no loss; no labels = every real token): position i is trained to predict token i + 1."""
    if labels is None:
        labels = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE)
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    if attention_mask is not None:  # a real token after padding is not predicted by a pad
        targets[:, :-1].masked_fill_(attention_mask[:, :-1] == 0, IGNORE)
    return targets


# ---- the teacher top-k cache --------------------------------------------------------------------
CACHE_INDEX = "teacher_cache.json"
CACHE_FORMAT = "lfmkit-teacher-topk"


@torch.no_grad()
def write_teacher_cache(
    teacher: nn.Module,
    batches: Iterable[dict],
    path: str | os.PathLike,
    k: int,
    dtype: torch.dtype | str = torch.float16,
    chunk_size: int = CHUNK_TOKENS,
    metadata: dict | None = None,
) -> Path:
    """Run `teacher` (an lfmkit model, float or quantized) once over `batches` and store, for each
    trained token, its k most likely next tokens: ids (int32) and log-probs (`dtype`).

    batches: dicts with `input_ids` [B, T], optional `attention_mask` and `labels` (Hugging Face
    convention, see `next_token_targets`), or aligned `targets` instead of labels (lfmkit's
    training batches), and `document_ids` for packed rows (see `LFM2.forward`). `path` becomes a
    folder with one safetensors shard per batch (input_ids, attention_mask or document_ids,
    aligned targets, topk_ids, topk_logprobs) and teacher_cache.json (with `metadata` merged in),
    written last (a folder without it is an incomplete cache); each shard is written under a
    temporary name and renamed when complete. Read it back with `TeacherCache`."""
    from safetensors.torch import save_file

    vocab = teacher.config.vocab_size
    if not isinstance(k, int) or not 1 <= k <= vocab:
        raise ConfigError(f"top-k must be an integer in [1, {vocab}] (the teacher's vocabulary), got {k!r}")
    store = parse_dtype(dtype) or torch.float32
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / CACHE_INDEX).unlink(missing_ok=True)
    shards, tokens = [], 0
    for i, batch in enumerate(batches):
        ids, mask, docs = batch["input_ids"], batch.get("attention_mask"), batch.get("document_ids")
        targets = batch["targets"] if "targets" in batch else next_token_targets(ids, batch.get("labels"), mask)
        rows = (targets.reshape(-1) != IGNORE).nonzero().squeeze(-1)
        hidden = teacher(ids, attention_mask=mask, document_ids=docs, return_hidden=True)
        hidden = hidden.reshape(-1, teacher.config.hidden_size)
        top_ids, top_lp = [], []
        for a in range(0, rows.numel(), chunk_size):
            logp = F.log_softmax(teacher.lm_head(hidden[rows[a : a + chunk_size]]).float(), dim=-1)
            values, indices = logp.topk(k, dim=-1)
            top_ids.append(indices.to(torch.int32))
            top_lp.append(values.clamp(min=torch.finfo(store).min).to(store))
        tensors = {
            "input_ids": ids.to(torch.int32),
            "targets": targets.to(torch.int32),
            "topk_ids": torch.cat(top_ids) if top_ids else torch.zeros(0, k, dtype=torch.int32),
            "topk_logprobs": torch.cat(top_lp) if top_lp else torch.zeros(0, k, dtype=store),
        }
        if mask is not None:
            tensors["attention_mask"] = mask.to(torch.int8)
        if docs is not None:
            tensors["document_ids"] = docs.to(torch.int32)
        name = f"shard-{i:05d}.safetensors"
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(out / (name + ".tmp")))
        os.replace(out / (name + ".tmp"), out / name)
        shards.append(name)
        tokens += int(rows.numel())
    index = {
        "format": CACHE_FORMAT,
        "version": 1,
        "k": k,
        "vocab_size": vocab,
        "dtype": str(store).split(".")[-1],
        "tokens": tokens,
        "shards": shards,
        "teacher": str(getattr(teacher, "source_path", None)),
        **(metadata or {}),
    }
    (out / (CACHE_INDEX + ".tmp")).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(out / (CACHE_INDEX + ".tmp"), out / CACHE_INDEX)
    return out


class TeacherCache:
    """A folder written by `write_teacher_cache`: `cache[i]` is batch i as a dict with input_ids,
    attention_mask and document_ids (each None when absent), targets (aligned, -100 = not trained)
    and teacher (a TeacherTopK over the trained tokens, in order), ready for `DistillationLoss`.
    `index` is teacher_cache.json (with the writer's metadata)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / CACHE_INDEX
        if not index_path.is_file():
            raise CheckpointError(f"{index_path}: not found (not a teacher cache, or its writing did not finish)")
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
            if self.index.get("format") != CACHE_FORMAT:
                raise CheckpointError(
                    f"{index_path}: not an lfmkit teacher cache (format {self.index.get('format')!r})"
                )
            self.k, self.vocab_size, self.shards = self.index["k"], self.index["vocab_size"], self.index["shards"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{index_path}: corrupt teacher cache index ({exc!r})") from None

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict:
        shard = SafetensorsFile(self.path / self.shards[i])
        names = {"input_ids", "targets", "topk_ids", "topk_logprobs"}
        if not names <= set(shard.entries):
            raise CheckpointError(f"{shard.path}: missing {sorted(names - set(shard.entries))}")
        t = {n: shard.read(n) for n in shard.entries}
        trained = int((t["targets"] != IGNORE).sum())
        if t["topk_ids"].shape != (trained, self.k) or t["topk_logprobs"].shape != (trained, self.k):
            raise CheckpointError(
                f"{shard.path}: top-k tensors of shape {list(t['topk_ids'].shape)} do not "
                f"match its {trained} trained tokens x k={self.k}"
            )
        mask, docs = t.get("attention_mask"), t.get("document_ids")
        return {
            "input_ids": t["input_ids"].long(),
            "attention_mask": None if mask is None else mask.long(),
            "document_ids": None if docs is None else docs.long(),
            "targets": t["targets"].long(),
            "teacher": TeacherTopK(t["topk_ids"], t["topk_logprobs"]),
        }

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def read_topk(self, shard: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, log-probs) [stop - start, k] of trained tokens start..stop of shard `shard`, in
        the order the shard lists its trained tokens, read without loading the rest of it."""
        files = self.__dict__.setdefault("_files", {})
        if shard not in files:
            files[shard] = SafetensorsFile(self.path / self.shards[shard])
        f = files[shard]
        for name in ("topk_ids", "topk_logprobs"):
            if name not in f.entries or f.entries[name][1][0] < stop:
                raise CheckpointError(
                    f"{f.path}: no {name} rows {start}..{stop} (the cache is incomplete or "
                    f"was changed after it was written)"
                )
        return f.read_rows("topk_ids", start, stop), f.read_rows("topk_logprobs", start, stop)


__all__ = [
    "DistillationLoss",
    "DistillOutput",
    "TeacherLogits",
    "TeacherHead",
    "TeacherTopK",
    "TeacherCache",
    "write_teacher_cache",
    "generalized_jsd",
    "forward_kl",
    "reverse_kl",
    "divergence",
    "next_token_targets",
    "chunked_distill_loss",
    "Objective",
    "CHUNK_TOKENS",
]
