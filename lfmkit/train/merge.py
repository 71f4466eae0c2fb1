"""Merge LFM2 checkpoints from a mergekit YAML config, tensor by tensor (`lfmkit merge`).

    from lfmkit.train.merge import merge
    merge("merge.yaml", "merged/")        # or a dict shaped like the YAML; seed= for DARE

The output is a normal Hugging Face checkpoint folder (config.json, safetensors, tokenizer
files) that lfmkit and transformers load. The merge runs in three steps:

1. read the config (`merge_config.py`: every field checked, errors name the file and field);
2. open every input model through the one loader loop (`io.checkpoint.load_tensors`: headers
   only, checked against its own config), check they all have the same tensors and shapes, and
   resolve every parameter for every tensor, so a bad config fails before anything is written;
3. stream: the loader loop walks the driving model (the base model, else the first listed) and,
   for each tensor name, reads that tensor from every input, merges it (`merge_methods.py`)
   and hands it to a `ShardWriter`, which writes a shard as soon as it is full. So memory is
   one tensor per input model plus at most one output shard (`max_shard_bytes`), not a model
   per input.

DARE (`dare_linear`, `dare_ties`) drops delta entries at random. The drop masks of tensor NAME
come from a CPU `torch.Generator` seeded with `tensor_seed(seed, NAME)` = (seed +
crc32(NAME)) mod 2**63, consumed in the config's order of the non-base models (one Bernoulli
draw per entry each), so the same config and seed give the same bytes whatever order tensors
are merged in. (mergekit seeds torch's global generator once with `--random-seed` and draws in
its own graph order, so its DARE output cannot be reproduced across tools; a tensor merged by
mergekit's method with torch seeded to tensor_seed(seed, NAME) equals ours.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, LFMKitError
from ..io.checkpoint import Checkpoint, StoredTensor, load_tensors, open_checkpoint
from ..io.hub import resolve_model_path
from ..io.safetensors import ShardWriter
from ..model import LFM2
from ..model.loading import expected_tensors
from ..text.tokenizer import TOKENIZER_FILE, TOKENIZER_FILES, vocabulary_table
from .merge_config import MergeConfig, Segment, load_merge_config, resolve
from .merge_methods import REQUIRED

DEFAULT_MAX_SHARD_BYTES = 2**30  # 1 GiB: the most output held before it is written
CONFIG_COPY = "mergekit_config.yml"
LAYER = re.compile(r"^model\.layers\.(\d+)\.")
HEAD = "lm_head.weight"  # mergekit's "post" weight: merged with the last slice's sources


@dataclass
class _Input:
    """One input model: the config field that names it, its checkpoint, its tensors (headers)."""

    name: str
    where: str
    ckpt: Checkpoint
    tensors: dict[str, StoredTensor]


@dataclass
class _Models:
    """The config's models, opened once each: a model named twice (./m and m) is one _Input."""

    keys: dict[str, Path]  # model reference as written -> its resolved folder
    by_key: dict[Path, _Input]

    def __getitem__(self, name: str) -> _Input:
        return self.by_key[self.keys[name]]


@dataclass
class _Plan:
    """How one output tensor is made: its inputs (config order), the base's position, parameters."""

    inputs: list[_Input]
    base_index: int | None
    params: dict[str, Any]


def tensor_seed(seed: int, name: str) -> int:
    """The seed of tensor `name`'s DARE drop masks (see the module docstring)."""
    return (seed + zlib.crc32(name.encode("utf-8"))) % 2**63


def merge(
    config: str | os.PathLike | dict | MergeConfig,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Merge the checkpoints `config` names into the folder `output`; return its path."""
    cfg = load_merge_config(config)
    inputs = _open_inputs(cfg)
    driver = inputs[cfg.base_model or cfg.segments[0].sources[0].model]
    _check_same_tensors(cfg, driver, inputs)
    plans = _plan(cfg, driver, inputs)
    tokenizer_dir = _tokenizer_dir(cfg, driver, inputs)
    out = _prepare_output(Path(output), inputs, overwrite)

    with ShardWriter(out, max_shard_bytes) as writer:

        def sink(t: StoredTensor) -> None:
            writer.add(t.name, _merge_tensor(cfg, t.name, plans[t.name], seed))

        load_tensors(driver.ckpt, {n: t.shape for n, t in driver.tensors.items()}, sink)
    _write_config(driver.ckpt.path, out, cfg.out_dtype or cfg.dtype)
    for fname in TOKENIZER_FILES:
        src = (driver.ckpt.path if fname == "generation_config.json" else tokenizer_dir) / fname
        if src.is_file():
            shutil.copyfile(src, out / fname)
    (out / CONFIG_COPY).write_text(cfg.text, encoding="utf-8")
    return out


# ---- inputs ---------------------------------------------------------------------------------------
def _open_inputs(cfg: MergeConfig) -> _Models:
    """Every model the config names, opened and indexed (tensor headers only)."""
    named = (
        ([(cfg.base_model, "base_model")] if cfg.base_model else [])
        + [(s.model, f"{s.where}.model") for seg in cfg.segments for s in seg.sources]
        + [(seg.base_model, f"{seg.where}.base_model") for seg in cfg.segments if seg.base_model]
    )
    models = _Models({}, {})
    for name, where in named:
        try:
            key = models.keys.setdefault(name, resolve_model_path(name).resolve())
            if key in models.by_key:
                continue
            ckpt = open_checkpoint(key)
            if ckpt.format != "safetensors":
                raise ConfigError(f"{name}: lfmkit merge reads safetensors checkpoints, not {ckpt.format}")
            with torch.device("meta"):
                expected = expected_tensors(LFM2(ckpt.config))
            tensors: dict[str, StoredTensor] = {}
            load_tensors(ckpt, expected, lambda t, tensors=tensors: tensors.__setitem__(t.name, t))
        except LFMKitError as exc:
            raise cfg.error(where, str(exc)) from None
        models.by_key[key] = _Input(name, where, ckpt, tensors)
    return models


def _check_same_tensors(cfg: MergeConfig, driver: _Input, inputs: _Models) -> None:
    for inp in inputs.by_key.values():
        for name, t in driver.tensors.items():
            other = inp.tensors.get(name)
            if other is None:
                raise cfg.error(
                    inp.where,
                    f"{inp.name} has no tensor '{name}', which {driver.where} "
                    f"{driver.name} has: merged models need the same architecture",
                )
            if other.shape != t.shape:
                raise cfg.error(
                    inp.where,
                    f"{inp.name}: tensor '{name}' has shape {list(other.shape)}, but "
                    f"{driver.where} {driver.name} has {list(t.shape)}: merged models "
                    f"need the same architecture",
                )
        extra = sorted(set(inp.tensors) - set(driver.tensors))
        if extra:
            raise cfg.error(
                inp.where,
                f"{inp.name} has tensor '{extra[0]}', which {driver.where} "
                f"{driver.name} has not: merged models need the same architecture",
            )


def _segment_inputs(cfg: MergeConfig, seg: Segment, inputs: _Models) -> tuple[list[_Input], int | None]:
    """A segment's inputs in mergekit's order (its sources; the base appended when the `models:`
    form does not list it) and the base's position; checks the method's input count."""
    method = cfg.method
    keys = [inputs.keys[s.model] for s in seg.sources]
    for i, k in enumerate(keys):
        if k in keys[:i]:
            raise cfg.error(seg.sources[i].where, f"{seg.sources[i].model!r} is listed twice")
    base = inputs.keys[seg.base_model] if seg.base_model else None
    if base is not None and base not in keys:
        if seg.layers is not None and method.needs_base:
            raise cfg.error(
                f"{seg.where}.sources", f"the base model {seg.base_model!r} must be one of the slice's sources"
            )
        if seg.layers is None:
            keys.append(base)
    if method.needs_base and base is None:
        raise cfg.error("base_model", f"{method.name} needs a base_model (the model the others are merged onto)")
    lo, hi = method.min_inputs, method.max_inputs
    if len(keys) < lo or (hi is not None and len(keys) > hi):
        want = f"exactly {lo}" if lo == hi else f"at least {lo}" if len(keys) < lo else f"at most {hi}"
        counted = " (the base_model included)" if method.needs_base else ""
        raise cfg.error(seg.where, f"{method.name} merges {want} models{counted}; got {len(keys)}")
    base_index = keys.index(base) if method.needs_base else None
    return [inputs.by_key[k] for k in keys], base_index


# ---- the plan: every parameter of every tensor, before anything is written ----------------------
def _plan(cfg: MergeConfig, driver: _Input, inputs: _Models) -> dict[str, _Plan]:
    n_layers = driver.ckpt.config.num_hidden_layers
    segments = cfg.segments
    if segments[0].layers is not None and segments[-1].layers[1] != n_layers:
        raise cfg.error(
            "slices", f"the slices cover layers 0..{segments[-1].layers[1]}, but {driver.name} has {n_layers} layers"
        )
    seg_inputs = [_segment_inputs(cfg, seg, inputs) for seg in segments]
    plans = {}
    for name in driver.tensors:
        i, t = _position(name, segments, n_layers)
        plans[name] = _tensor_plan(cfg, segments[i], inputs, *seg_inputs[i], name, t)
    return plans


def _position(name: str, segments: tuple[Segment, ...], n_layers: int) -> tuple[int, float]:
    """Which segment merges tensor `name`, and its position t in [0, 1] for gradients: layer i of
    a segment of n layers is at i / (n - 1); the embeddings and the head at 0 (as in mergekit)."""
    m = LAYER.match(name)
    if m is None:
        return (len(segments) - 1 if name == HEAD else 0), 0.0
    layer = int(m.group(1))
    for i, seg in enumerate(segments):
        start, end = seg.layers or (0, n_layers)
        if start <= layer < end:
            n = end - start
            return i, (layer - start) / (n - 1) if n > 1 else 1.0
    raise AssertionError(f"layer {layer} outside the checked slices")  # _plan checked the tiling


def _tensor_plan(
    cfg: MergeConfig,
    seg: Segment,
    inputs: _Models,
    seg_inputs: list[_Input],
    base_index: int | None,
    tensor: str,
    t: float,
) -> _Plan:
    own = {id(inputs[s.model]): s for s in seg.sources}  # an input's own entry in this segment
    params: dict[str, Any] = {}
    for p in cfg.method.params:
        if p.scope == "shared":
            value = resolve(p, [seg.parameters, cfg.parameters], tensor, t)
            if value is REQUIRED:
                raise cfg.error("parameters", f"{cfg.method.name} needs '{p.name}' (missing for tensor {tensor})")
            params[p.name] = value
            continue
        values = []
        for i, inp in enumerate(seg_inputs):
            if p.scope == "non_base" and i == base_index:
                continue
            entry = own.get(id(inp))
            value = resolve(p, [entry.parameters if entry else {}, seg.parameters, cfg.parameters], tensor, t)
            if value is REQUIRED:
                raise cfg.error(
                    entry.where if entry else inp.where,
                    f"{cfg.method.name} needs '{p.name}' for {inp.name} (missing for tensor "
                    f"{tensor}); set it in its parameters or the top-level ones",
                )
            values.append(value)
        params[p.name] = values
    return _Plan(seg_inputs, base_index, params)


# ---- merging and writing ----------------------------------------------------------------------------
def _merge_tensor(cfg: MergeConfig, name: str, plan: _Plan, seed: int) -> torch.Tensor:
    """Read `name` from every input (cast to the config's dtype), merge in the promoted dtype."""
    tensors = [inp.tensors[name].read(cfg.dtype) for inp in plan.inputs]
    work = reduce(torch.promote_types, (x.dtype for x in tensors))
    tensors = [x.to(work) for x in tensors]
    generator = torch.Generator().manual_seed(tensor_seed(seed, name)) if cfg.method.random else None
    out = cfg.method.run(tensors, plan.base_index, plan.params, generator)
    del tensors
    return (out.to(cfg.out_dtype) if cfg.out_dtype is not None else out).contiguous()


def _prepare_output(out: Path, inputs: _Models, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    for inp in inputs.by_key.values():
        if out.resolve() == inp.ckpt.path.resolve():
            raise ConfigError(f"{out}: is the input model {inp.name} ({inp.where}); write the merge elsewhere")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out}: exists and is not empty; pass --overwrite (overwrite=True) to replace the checkpoint in it"
            )
        for old in out.glob("*.safetensors*"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_config(src: Path, out: Path, dtype: torch.dtype | None) -> None:
    """The driving model's config.json as it is (every field kept), with the merge's dtype."""
    data = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if dtype is not None:
        name = str(dtype).replace("torch.", "")
        keys = [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype"]
        data.update(dict.fromkeys(keys, name))
    (out / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _tokenizer_dir(cfg: MergeConfig, driver: _Input, inputs: _Models) -> Path:
    """Where the tokenizer files come from: the driving model, or `tokenizer_source`. With a
    tokenizer_source, every input that ships a tokenizer must have the same vocabulary: lfmkit
    does not permute embeddings into a merged vocabulary (mergekit's `union` of different ones)."""
    source = cfg.tokenizer_source
    if source is None:
        return driver.ckpt.path
    where = "tokenizer_source"
    if source in ("base", "union"):
        tok_dir = inputs[cfg.base_model].ckpt.path if source == "base" else driver.ckpt.path
    else:
        try:
            tok_dir = resolve_model_path(source)
        except LFMKitError as exc:
            raise cfg.error(where, str(exc)) from None
    if not (tok_dir / TOKENIZER_FILE).is_file():
        raise cfg.error(where, f"{tok_dir}: no {TOKENIZER_FILE}")
    vocab = vocabulary_table(tok_dir)
    for inp in inputs.by_key.values():
        if (inp.ckpt.path / TOKENIZER_FILE).is_file() and vocabulary_table(inp.ckpt.path) != vocab:
            raise cfg.error(
                where,
                f"{inp.name} has a different vocabulary from {tok_dir}: lfmkit merges models "
                f"that share a tokenizer (it does not build a vocabulary union)",
            )
    return tok_dir


__all__ = ["merge", "tensor_seed", "DEFAULT_MAX_SHARD_BYTES"]
