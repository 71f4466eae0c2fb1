"""`dpo(config)`: preference optimization of an LFM2 checkpoint on chosen / rejected pairs.

    from lfmkit.train import dpo
    dpo({"model": "./sft-run", "data": ["pairs.jsonl"], "output": "dpo-run", "loss": "sigmoid_norm"})

The recipe is SFT's (`sft.prepare_run` / `sft.train_run`: the model, the tokenizer, LoRA, the
trainer, checkpoints, resume, metrics) with preference pairs (`preference_data.py`) and a
preference loss (`preference.py`). The reference policy's log-probabilities are computed once, before the first
step, for every pair: from `ref_model` when given, else from the starting model itself (with
LoRA, the same model with its adapters switched off, which is the starting model whatever the
adapters hold). They are kept on the pairs and written to `<output>/reference_logps.safetensors`
with a fingerprint of the reference and the pairs' tokens, so `--resume` reads them back instead
of running the reference again; the reference model is never held during training. SimPO is
reference-free and skips all of this.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..model import LFM2
from ..text.tokenizer import Tokenizer
from .batching import pack_best_fit_decreasing
from .data import DataSource
from .dpo_config import DPOConfig
from .lora import adapters_disabled, has_lora
from .preference import PreferenceLoss, make_objective, sequence_log_probs
from .preference_data import PairDocument, PreferencePlan, collate_pairs, load_pair_sources
from .sft import as_config, prepare_run, print_data_summary, read_chat_template, train_run
from .trainer import TrainResult, distributed

REFERENCE_FILE = "reference_logps.safetensors"


def preference_data(
    config: DPOConfig, tokenizer: Tokenizer, verbose: bool = True
) -> tuple[list[list[PairDocument]], PreferencePlan]:
    """(pairs per source, step plan) of the config's data, with a one-line summary per source;
    the plan's rows hold up to 2 x max_length tokens (a pair at its longest)."""
    sources = [DataSource.parse(spec) for spec in config.data]
    pairs, stats = load_pair_sources(sources, tokenizer, config.max_length, read_chat_template(config))
    if verbose:
        print_data_summary(stats, sources, config.max_length, unit="pairs", dropped="whose prompt fills max_length")
    plan = PreferencePlan(
        pairs, [s.weight for s in sources], config.batch_size, 2 * config.max_length, config.packing, config.seed
    )
    return pairs, plan


def reference_log_probs(
    model: nn.Module,
    pairs: list[PairDocument],
    row_capacity: int,
    rows_per_batch: int,
    bf16: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Summed completion log-probs [pairs, 2] of `model` (no grad, eval mode), the pairs packed
    best-fit decreasing into rows of `row_capacity` tokens, `rows_per_batch` rows per forward."""
    out = torch.empty(len(pairs), 2, dtype=torch.float64)
    rows = pack_best_fit_decreasing([len(p) for p in pairs], row_capacity)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            for a in range(0, len(rows), rows_per_batch):
                group = rows[a : a + rows_per_batch]
                batch = collate_pairs([[pairs[i] for i in row] for row in group], pad_id=0).to(model.device)
                values = sequence_log_probs(model, batch, chunk_size).double().cpu()
                out[[i for row in group for i in row]] = values
    finally:
        model.train(was_training)
    return out


def reference_fingerprint(config: DPOConfig, pairs: list[PairDocument], lora: bool) -> str:
    """What the cached reference log-probs depend on: the reference, its precision, every token."""
    h = hashlib.sha256()
    reference = config.ref_model or config.model
    h.update(
        json.dumps(
            {
                "reference": reference,
                "adapters_off": lora and not config.ref_model,
                "bf16": config.bf16,
                "bf16_weights": config.bf16_weights,
            }
        ).encode()
    )
    for p in pairs:
        h.update(json.dumps([p.chosen.input_ids, p.chosen.targets, p.rejected.input_ids, p.rejected.targets]).encode())
    return h.hexdigest()


def attach_reference(
    config: DPOConfig, model: nn.Module, sources: list[list[PairDocument]], verbose: bool = True
) -> None:
    """Set `ref_logps` on every pair: read from the run's cache on resume when it matches, else
    computed (and cached by rank 0)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    pairs = list({id(p): p for source in sources for p in source}.values())
    lora = has_lora(model)
    fingerprint = reference_fingerprint(config, pairs, lora)
    path = Path(config.output) / REFERENCE_FILE
    values = None
    if config.resume and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                values = f.get_tensor("logps")
    if values is None:
        values = _compute_reference(config, model, pairs, lora)
        if distributed()[0] == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"logps": values.contiguous()}, str(tmp), metadata={"fingerprint": fingerprint})
            os.replace(tmp, path)
        how = "computed"
    else:
        how = f"read from {path}"
    for p, (chosen, rejected) in zip(pairs, values.tolist()):
        p.ref_logps = (chosen, rejected)
    if verbose:
        source = config.ref_model or (f"{config.model}, adapters off" if lora else config.model)
        print(f"reference log-probs of {len(pairs)} pairs {how} (reference: {source})", flush=True)


def _compute_reference(config: DPOConfig, model: nn.Module, pairs: list[PairDocument], lora: bool) -> torch.Tensor:
    capacity, rows = 2 * config.max_length, max(1, config.batch_size // config.grad_accum)
    if not config.ref_model:
        # Under bf16_weights the policy trains in bfloat16: the starting model is scored in
        # bfloat16 too (a copy, dropped after), so the first step's implicit rewards are 0.
        start = copy.deepcopy(model).to(torch.bfloat16) if config.bf16_weights else model
        with adapters_disabled(start):
            return reference_log_probs(start, pairs, capacity, rows, config.bf16, config.loss_chunk_size)
    ref = LFM2.from_pretrained(config.ref_model, dtype="float32", device=model.device)
    if ref.config.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"ref_model: {config.ref_model} has a vocabulary of {ref.config.vocab_size}, the model "
            f"{model.config.vocab_size}; the reference must share the policy's tokenizer"
        )
    try:
        return reference_log_probs(ref, pairs, capacity, rows, config.bf16, config.loss_chunk_size)
    finally:
        del ref


def dpo(
    config: DPOConfig | dict | str | os.PathLike, prepare_model=None, save_model=None, verbose: bool = True
) -> TrainResult:
    """Train `config.model` on the preference pairs of `config.data` with `config.loss`; the
    output directory holds what `sft` leaves (model or adapter, metrics, checkpoints) plus the
    reference cache. `prepare_model` / `save_model` as in `sft`."""
    config = as_config(config, DPOConfig)
    run = prepare_run(config, prepare_model, save_model, verbose, data=preference_data)
    if config.needs_reference:
        attach_reference(config, run.model, run.documents, verbose)
    loss = PreferenceLoss(make_objective(config.loss, config.beta, config.simpo_gamma), config.loss_chunk_size)
    return train_run(run, loss, verbose)


__all__ = [
    "dpo",
    "preference_data",
    "reference_log_probs",
    "attach_reference",
    "reference_fingerprint",
    "REFERENCE_FILE",
]
