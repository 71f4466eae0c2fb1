"""Distillation as a recipe: `distill_run(config)` trains a student against a teacher, and
`distill_cache(config)` runs an expensive teacher once and keeps its top-k log-probs.

    from lfmkit.train import distill_run, distill_cache
    distill_cache({"teacher": "./LFM2-2.6B", "data": ["chats.jsonl"], "teacher_cache": "cache/", "top_k": 64})
    distill_run({"model": "./LFM2-350M", "teacher_cache": "cache/", "data": ["chats.jsonl"], "output": "run"})

`distill_run` is the SFT recipe (`sft.prepare_run` / `sft.train_run`: the same data, packing,
step plan, trainer, checkpoints, resume, LoRA and output) with one change, the loss:
`TeacherLoss`, which follows the trainer's loss protocol (losses.py) and computes
`DistillationLoss` (distill.py: alpha * T^2 * divergence + (1 - alpha) * CE, chunked) on each
micro-batch, logging the divergence and the CE as `kd` and `ce` in metrics.jsonl. The teacher is

- online (`teacher`): loaded with `lfmkit.load` (fast paths; `teacher_quant` int8 / int4 / bf16),
  frozen, run without gradients on every micro-batch exactly as the student sees it (packed rows
  with their document_ids), in its own dtype, outside the student's autocast; or
- cached (`teacher_cache`): a folder `distill_cache` wrote.

The cache is keyed by document. `distill_cache` tokenizes the data exactly as training does
(`sft.load_data`: the same formats, template, loss masks, truncation), runs the teacher once
over each distinct document (packed into rows with `--packing`, which is exact, so a document's
outputs do not depend on its neighbours) and stores, beside the shards `write_teacher_cache`
writes, `documents.safetensors`: for each document a digest of its token ids and loss mask and
where its trained tokens' top-k lie. Training looks every document of a micro-batch up by its
digest, so one cache serves any batch size, packing, seed, mixing weights or number of epochs,
and the teacher runs once per document, not once per pass. The cache's fingerprint (a hash of
the set of document digests) must equal the training run's: a cache written for other data,
another tokenizer, template, max_length or loss mask is refused with one line.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, DataError
from ..io.safetensors import SafetensorsFile
from ..loader import load
from ..text.tokenizer import TOKENIZER_FILE, Tokenizer, vocabulary_table
from .batching import Batch, collate, pack_best_fit_decreasing
from .config import DistillCacheConfig, DistillConfig
from .data import IGNORE_INDEX, Document
from .distill import CACHE_INDEX, DistillationLoss, TeacherCache, TeacherHead, TeacherTopK, write_teacher_cache
from .losses import LossOutput, default_chunk_size
from .sft import as_config, load_data, pad_id, prepare_run, resolve_device, train_run
from .trainer import TrainResult

DOCUMENTS_FILE = "documents.safetensors"
DIGEST_BYTES = 16


# ---- documents: digests and the fingerprint ----------------------------------------------------
def document_digest(input_ids, targets) -> bytes:
    """A 16-byte digest of one document's token ids and aligned targets (lists or 1-D tensors):
    what the teacher reads and which of its outputs are trained."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    ids = torch.as_tensor(input_ids, dtype=torch.int64).cpu()
    h.update(ids.numel().to_bytes(8, "little"))
    h.update(ids.contiguous().numpy().tobytes())
    h.update(torch.as_tensor(targets, dtype=torch.int64).cpu().contiguous().numpy().tobytes())
    return h.digest()


def fingerprint(digests: Iterable[bytes]) -> str:
    """sha256 of the set of document digests: the same documents in any order or number of
    repeats give the same fingerprint, any other document changes it."""
    h = hashlib.sha256()
    for d in sorted(set(digests)):
        h.update(d)
    return h.hexdigest()


def unique_documents(sources: list[list[Document]]) -> dict[bytes, Document]:
    """The distinct documents of all sources, by digest, in first-seen order."""
    out: dict[bytes, Document] = {}
    for source in sources:
        for doc in source:
            out.setdefault(document_digest(doc.input_ids, doc.targets), doc)
    return out


def batch_documents(batch: Batch) -> Iterator[tuple[int, int, int]]:
    """(row, start, stop) of each segment of a collated batch, in order: the documents of a packed
    row (maximal runs of equal document_ids) or each unpacked row's real tokens; a packed row's
    trailing padding is one more segment, with no trained token."""
    b, t = batch.input_ids.shape
    if batch.document_ids is not None:
        docs = batch.document_ids.cpu()
        for r in range(b):
            cuts = ((docs[r, 1:] != docs[r, :-1]).nonzero().squeeze(-1) + 1).tolist()
            edges = [0, *cuts, t]
            yield from ((r, a, z) for a, z in zip(edges, edges[1:]))
    else:
        lengths = batch.attention_mask.sum(-1).tolist() if batch.attention_mask is not None else [t] * b
        yield from ((r, 0, int(n)) for r, n in enumerate(lengths))


# ---- the teachers ------------------------------------------------------------------------------
def check_same_vocabulary(
    teacher: nn.Module, student_vocab: int | None, student_tokenizer_dir: str | None, name: str
) -> None:
    """Distillation compares the two next-token distributions id by id: the vocabulary sizes must
    match (when `student_vocab` is known), and so must the tokenizers' token -> id tables when
    both models ship one."""
    vocab = teacher.config.vocab_size
    if student_vocab is not None and vocab != student_vocab:
        raise ConfigError(
            f"teacher: {name} has a vocabulary of {vocab:,} ids, the student {student_vocab:,}; "
            f"distillation compares next-token distributions id by id, so teacher and student "
            f"must share one tokenizer"
        )
    teacher_dir = getattr(teacher, "source_path", None)
    dirs = [Path(d) for d in (teacher_dir, student_tokenizer_dir) if d]
    if (
        len(dirs) == 2
        and all((d / TOKENIZER_FILE).is_file() for d in dirs)
        and vocabulary_table(dirs[0]) != vocabulary_table(dirs[1])
    ):
        raise ConfigError(
            f"teacher: {name}'s tokenizer ({dirs[0] / TOKENIZER_FILE}) maps tokens to other ids "
            f"than the student's ({dirs[1] / TOKENIZER_FILE}); teacher and student must share "
            f"one tokenizer"
        )


def load_teacher(config: DistillConfig, device: torch.device) -> nn.Module:
    """The teacher for inference (`lfmkit.load`: fast paths, `teacher_quant`), frozen, in eval mode."""
    teacher = load(config.teacher, quant=config.teacher_quant, device=device)
    return teacher.requires_grad_(False).eval()


class OnlineTeacher:
    """The teacher model run on each micro-batch: `teacher(batch)` is a `TeacherHead` (its
    final-norm hidden states and head, read a chunk of tokens at a time by the loss)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def _own_precision(self):
        """The teacher runs in the dtype it was loaded in, also inside the student's bf16 autocast
        (so online and cached teachers compute the same numbers)."""
        return torch.autocast(self.model.device.type, enabled=False)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._own_precision():
            return self.model.lm_head(hidden)

    def __call__(self, batch: Batch) -> TeacherHead:
        with torch.no_grad(), self._own_precision():
            hidden = self.model(**batch.model_inputs(), return_hidden=True)
        return TeacherHead(hidden, self._head)

    def describe(self) -> str:
        return f"teacher {getattr(self.model, 'source_path', None) or 'model'} (online, {self.model.dtype})"


class CachedTeacher:
    """The top-k log-probs `distill_cache` wrote: `teacher(batch)` is a `TeacherTopK` over the
    batch's trained tokens in order, each document's rows found by its digest."""

    def __init__(self, path: str | os.PathLike):
        self.cache = open_cache(path)
        table_path = self.cache.path / DOCUMENTS_FILE
        self.fingerprint = self.cache.index.get("documents_fingerprint")
        if not table_path.is_file() or self.fingerprint is None:
            raise CheckpointError(
                f"{self.cache.path}: a teacher cache without a document table (written by "
                f"write_teacher_cache directly?); training reads caches `lfmkit train "
                f"distill-cache` writes"
            )
        docs_file = SafetensorsFile(table_path)
        names = ("digests", "shard", "offset", "count")
        if docs_file.metadata.get("fingerprint") != self.fingerprint or not set(names) <= set(docs_file.entries):
            raise CheckpointError(
                f"{table_path}: does not belong to {CACHE_INDEX} beside it (another "
                f"fingerprint, or tensors missing); write the cache again"
            )
        digests, shard, offset, count = (docs_file.read(n) for n in names)
        self.table = {
            bytes(d): (s, o, c) for d, s, o, c in zip(digests.numpy(), shard.tolist(), offset.tolist(), count.tolist())
        }

    def check_documents(self, sources: list[list[Document]], vocab_size: int) -> None:
        """Refuse a cache written for other documents than this run's, or another vocabulary."""
        if self.cache.vocab_size != vocab_size:
            raise ConfigError(
                f"teacher_cache: {self.cache.path} holds a teacher with a vocabulary of "
                f"{self.cache.vocab_size:,} ids, the student has {vocab_size:,}"
            )
        ours = unique_documents(sources)
        if fingerprint(ours) != self.fingerprint:
            missing = sum(d not in self.table for d in ours)
            raise ConfigError(
                f"teacher_cache: {self.cache.path} was written for other training documents ({missing:,} of this "
                f"run's {len(ours):,} documents are not in it, it holds {len(self.table):,}); write it again "
                f"with `lfmkit train distill-cache` and this run's data settings (data, max_length, chat "
                f"template, loss masks, tokenizer)"
            )

    def __call__(self, batch: Batch) -> TeacherTopK:
        ids, targets = batch.input_ids.cpu(), batch.targets.cpu()
        top_ids, top_lp = [], []
        for r, a, z in batch_documents(batch):
            n = int((targets[r, a:z] != IGNORE_INDEX).sum())
            if not n:
                continue
            entry = self.table.get(document_digest(ids[r, a:z], targets[r, a:z]))
            if entry is None or entry[2] != n:
                raise DataError(
                    f"teacher_cache: {self.cache.path} has no top-k for a document of this batch "
                    f"(row {r}, tokens {a}..{z}); write the cache again for this data"
                )
            shard, offset, _ = entry
            got = self.cache.read_topk(shard, offset, offset + n)
            top_ids.append(got[0])
            top_lp.append(got[1])
        device = batch.input_ids.device
        if not top_ids:
            empty = torch.zeros(0, self.cache.k, device=device)
            return TeacherTopK(empty.long(), empty)
        return TeacherTopK(torch.cat(top_ids).to(device), torch.cat(top_lp).to(device))

    def describe(self) -> str:
        i = self.cache.index
        return (
            f"teacher top-k cache {self.cache.path} (k={self.cache.k}, {len(self.table):,} documents, "
            f"{i.get('tokens', 0):,} trained tokens, teacher {i.get('teacher')})"
        )


def open_cache(path: str | os.PathLike) -> TeacherCache:
    try:
        return TeacherCache(path)
    except CheckpointError as exc:
        raise CheckpointError(f"teacher_cache: {exc}; write it with `lfmkit train distill-cache`") from None


# ---- the loss ----------------------------------------------------------------------------------
class TeacherLoss:
    """The distillation loss in the trainer's protocol (losses.py): for a micro-batch, the
    student's hidden states and head against `teacher(batch)` through `DistillationLoss`, as a
    sum over trained tokens; `parts` carry the divergence (`kd`) and, when alpha < 1, the
    hard-label cross-entropy (`ce`), which the trainer logs as means per trained token."""

    def __init__(self, teacher, loss: DistillationLoss):
        self.teacher = teacher
        self.loss = loss

    def __call__(self, model: nn.Module, batch: Batch) -> LossOutput:
        teacher = self.teacher(batch)
        hidden = model(**batch.model_inputs(), return_hidden=True)
        out = self.loss(hidden, batch.targets, teacher, head=model.lm_head, num_items=1)
        parts = {"kd": out.kd * out.tokens}
        if self.loss.objective.ce_weight:
            parts["ce"] = out.ce * out.tokens
        return LossOutput(out.loss, parts)


def distillation_loss(config: DistillConfig, vocab_size: int) -> DistillationLoss:
    chunk = config.loss_chunk_size or default_chunk_size(vocab_size)
    return DistillationLoss(
        config.kd_loss, beta=config.jsd_beta, temperature=config.temperature, alpha=config.alpha, chunk_size=chunk
    )


# ---- the recipes -------------------------------------------------------------------------------
def distill_run(
    config: DistillConfig | dict | str | os.PathLike, prepare_model=None, save_model=None, verbose: bool = True
) -> TrainResult:
    """Distil `config.teacher` (or `config.teacher_cache`) into `config.model` on `config.data`.

    Writes what `sft` writes (the model or LoRA adapter, metrics.jsonl with `kd` and `ce`,
    loss.png, train_config.json, checkpoints); `prepare_model` and `save_model` as in `sft`."""
    config = as_config(config, DistillConfig)
    cached = CachedTeacher(config.teacher_cache) if config.teacher_cache else None
    run = prepare_run(config, prepare_model, save_model, verbose)
    vocab = run.model.config.vocab_size
    if cached is not None:
        cached.check_documents(run.documents, vocab)
        teacher = cached
    else:
        model = load_teacher(config, run.device)
        check_same_vocabulary(model, vocab, run.tokenizer_dir, config.teacher)
        teacher = OnlineTeacher(model)
    if verbose:
        print(
            f"distilling from {teacher.describe()}: {config.kd_loss}, temperature {config.temperature:g}, "
            f"alpha {config.alpha:g}",
            flush=True,
        )
    return train_run(run, TeacherLoss(teacher, distillation_loss(config, vocab)), verbose)


def distill_cache(config: DistillCacheConfig | DistillConfig | dict | str | os.PathLike, verbose: bool = True) -> Path:
    """Run `config.teacher` once over every distinct document of `config.data` (tokenized as
    training will tokenize it) and write the top-k cache to `config.teacher_cache`."""
    if isinstance(config, DistillConfig) and not isinstance(config, DistillCacheConfig):
        config = DistillCacheConfig.from_dict(config.to_dict())
    config = as_config(config, DistillCacheConfig)
    out = Path(config.teacher_cache)
    check_cache_output(out)
    device = resolve_device(config.device)
    teacher = load_teacher(config, device)
    if config.top_k > teacher.config.vocab_size:
        raise ConfigError(
            f"top_k: {config.top_k} is more than the teacher's vocabulary ({teacher.config.vocab_size:,} ids)"
        )
    tokenizer = Tokenizer.from_pretrained(config.model or teacher.source_path or config.teacher)
    if config.model:
        check_same_vocabulary(teacher, None, tokenizer.path, config.teacher)
    docs = unique_documents(load_data(config, tokenizer, verbose)[0])
    too_big = max(max(d.input_ids) for d in docs.values())
    if too_big >= teacher.config.vocab_size:
        raise DataError(f"token id {too_big} is outside the teacher's vocabulary ({teacher.config.vocab_size:,})")
    plan = teacher_batches(list(docs.values()), config)
    out.mkdir(parents=True, exist_ok=True)
    (out / CACHE_INDEX).unlink(missing_ok=True)  # an interrupted rewrite must not read as complete
    digest = fingerprint(docs)
    write_document_table(out, plan, digest)
    meta = {
        "documents": len(docs),
        "documents_fingerprint": digest,
        "data": list(config.data),
        "max_length": config.max_length,
        "tokenizer": str(tokenizer.path),
    }
    batches = (collated(rows, tokenizer, config.packing, device) for rows in plan)
    if verbose and config.progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(plan), desc="teacher", unit="batch", dynamic_ncols=True)
    elif verbose:
        print(f"running the teacher over {len(docs):,} documents in {len(plan):,} batches", flush=True)
    return write_teacher_cache(
        teacher,
        batches,
        out,
        k=config.top_k,
        dtype=config.cache_dtype,
        chunk_size=default_chunk_size(teacher.config.vocab_size),
        metadata=meta,
    )


def check_cache_output(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"teacher_cache: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not ((out / CACHE_INDEX).exists() or (out / DOCUMENTS_FILE).exists()):
        raise ConfigError(
            f"teacher_cache: {out} is a non-empty directory that holds no teacher cache; choose an empty or new one"
        )


def teacher_batches(docs: list[Document], config: DistillConfig) -> list[list[list[Document]]]:
    """The teacher's batches: the documents packed into rows of max_length (with packing) or one
    per row, longest rows first, micro-batch-sized (batch_size / grad_accum rows, as training)."""
    if config.packing:
        rows = [[docs[i] for i in b] for b in pack_best_fit_decreasing([len(d) for d in docs], config.max_length)]
    else:
        rows = [[d] for d in docs]
    rows.sort(key=lambda row: -sum(len(d) for d in row))
    size = max(1, config.batch_size // config.grad_accum)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def collated(rows: list[list[Document]], tokenizer: Tokenizer, packed: bool, device: torch.device) -> dict:
    """One teacher batch in the form `write_teacher_cache` reads (aligned targets, document_ids)."""
    b = collate(rows, pad_id(tokenizer), packed).to(device)
    fields = {
        "input_ids": b.input_ids,
        "targets": b.targets,
        "attention_mask": b.attention_mask,
        "document_ids": b.document_ids,
    }
    return {k: v for k, v in fields.items() if v is not None}


def write_document_table(out: Path, plan: list[list[list[Document]]], digest: str) -> None:
    """documents.safetensors: per document its digest and where its trained tokens lie (shard =
    batch number, offset and count within the shard's trained tokens, which run row by row)."""
    from safetensors.torch import save_file

    digests, where = [], []
    for shard, rows in enumerate(plan):
        offset = 0
        for row in rows:
            for doc in row:
                n = doc.trained_tokens
                digests.append(document_digest(doc.input_ids, doc.targets))
                where.append((shard, offset, n))
                offset += n
    table = torch.tensor(where, dtype=torch.int64).reshape(-1, 3)
    tensors = {
        "digests": torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).reshape(-1, DIGEST_BYTES),
        "shard": table[:, 0].to(torch.int32).contiguous(),
        "offset": table[:, 1].contiguous(),
        "count": table[:, 2].contiguous(),
    }
    tmp = out / (DOCUMENTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"fingerprint": digest})
    os.replace(tmp, out / DOCUMENTS_FILE)


__all__ = [
    "distill_run",
    "distill_cache",
    "TeacherLoss",
    "OnlineTeacher",
    "CachedTeacher",
    "load_teacher",
    "check_same_vocabulary",
    "document_digest",
    "fingerprint",
    "batch_documents",
    "DOCUMENTS_FILE",
]
