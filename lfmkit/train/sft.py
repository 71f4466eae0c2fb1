"""`sft(config)`: supervised fine-tuning of an LFM2 checkpoint, end to end.

Loads the reference model (float32 master weights) and its tokenizer, reads and tokenizes the
data (`data.py`), plans the steps (`batching.py`), lets `prepare_model(model)` adapt the model
(LoRA: `lfmkit.train.lora.apply_lora` when `lora_r` is set), trains (`trainer.py`), and leaves
in `output/`: the final model as a Hugging Face directory (config.json, model.safetensors, the
tokenizer files and chat template), `metrics.jsonl`, `loss.png`, `train_config.json` and the
checkpoints under `checkpoints/`.

The recipe is two phases other recipes reuse: `prepare_run(config)` (model, tokenizer, documents,
step plan, adapters) and `train_run(run, loss)` (the trainer); the distillation recipe
(`distill_recipe.py`) builds its teacher loss in between.

Under torchrun (WORLD_SIZE > 1) `prepare_run` joins the process group first (gloo on CPU, NCCL
on CUDA, `distributed.py`), every process on its own GPU, and `train_run` leaves it when done;
only process 0 prints.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..model import LFM2
from ..text.tokenizer import Tokenizer, copy_tokenizer_files
from .batching import DataPlan
from .config import SFTConfig
from .data import DataOptions, DataSource, Document, load_sources
from .distributed import destroy_process_group, init_process_group, is_main_process, local_rank, world_size_from_env
from .trainer import Trainer, TrainResult, check_output

LORA_MODULE = "lfmkit.train.lora"


def as_config(config: SFTConfig | dict | str | os.PathLike, kind: type[SFTConfig] = SFTConfig) -> SFTConfig:
    """A `kind` config (SFTConfig or a subclass) from itself, a dict of settings, or a YAML file path."""
    if isinstance(config, kind):
        config.validate()
        return config
    if isinstance(config, SFTConfig):
        raise ConfigError(f"expected a {kind.__name__}, got a {type(config).__name__}")
    if isinstance(config, dict):
        return kind.from_dict(config)
    return kind.from_yaml(config)


def resolve_device(name: str | None) -> torch.device:
    """The training device: `name`, default cuda when available, else cpu. Under torchrun a
    plain "cuda" is this process's GPU, cuda:LOCAL_RANK."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and device.index is None and world_size_from_env() > 1:
        device = torch.device("cuda", local_rank())
    return device


def model_tokenizer(model, name: str, needs: str) -> Tokenizer:
    """The tokenizer saved with `model` (loaded from `name`); a ConfigError saying what `needs` it
    when the checkpoint has none."""
    tokenizer_dir = getattr(model, "source_path", None)
    if not tokenizer_dir:
        raise ConfigError(f"model: {name} ships no tokenizer, which {needs}")
    return Tokenizer.from_pretrained(tokenizer_dir)


def save_hf_model(model: nn.Module, output: Path, tokenizer_dir: str | None, dtype: str | None = None) -> Path:
    """The final model in `output` as a Hugging Face directory: config.json and model.safetensors
    (float32 unless `dtype`), plus the tokenizer files and chat template. Written beside the
    run's other files through a temporary folder, each file replaced whole."""
    tmp = output / ".final-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), dtype=dtype or model.dtype)
    if tokenizer_dir:
        copy_tokenizer_files(tokenizer_dir, tmp)
    for f in tmp.iterdir():
        os.replace(f, output / f.name)
    tmp.rmdir()
    return output


def lora_hooks(config: SFTConfig) -> tuple[Callable | None, Callable | None]:
    """(prepare_model, save_model) for LoRA when `lora_r` is set, from lfmkit.train.lora;
    (None, None) otherwise. `save_model` is that module's `save_adapter(model, directory)`."""
    if config.lora_r is None:
        return None, None
    if importlib.util.find_spec(LORA_MODULE) is None:
        raise ConfigError("lora_r: LoRA training needs lfmkit.train.lora, which this installation does not have")
    lora = importlib.import_module(LORA_MODULE)
    options = {
        "r": config.lora_r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "targets": config.lora_targets,
    }
    options = {k: v for k, v in options.items() if v is not None}

    def prepare(model):
        return lora.apply_lora(model, **options)

    return prepare, getattr(lora, "save_adapter", None)


def read_chat_template(config: SFTConfig) -> str | None:
    """The source of `config.chat_template` (a .jinja file), or None when unset."""
    if not config.chat_template:
        return None
    try:
        return Path(config.chat_template).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"chat_template: cannot read {config.chat_template}: {exc}") from None


def print_data_summary(
    stats, sources, max_length: int, unit: str = "documents", dropped: str = "with nothing to train on"
) -> None:
    """One line per data source: what loading it kept, truncated and dropped."""
    for s, src in zip(stats, sources):
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(s.kinds.items()))
        print(
            f"data {s.path} (weight {src.weight:g}): {s.documents} {unit} ({kinds}), {s.tokens:,} tokens, "
            f"{s.trained_tokens:,} trained; {s.truncated} truncated to {max_length}, {s.dropped} {dropped}",
            flush=True,
        )


def load_data(config: SFTConfig, tokenizer: Tokenizer, verbose: bool = True):
    """(documents per source, weights) for the config's data, with a one-line summary per source."""
    sources = [DataSource.parse(spec) for spec in config.data]
    options = DataOptions(
        max_length=config.max_length,
        assistant_only_loss=config.assistant_only_loss,
        completion_only_loss=config.completion_only_loss,
        chat_template=read_chat_template(config),
    )
    docs, stats = load_sources(sources, tokenizer, options)
    if verbose:
        print_data_summary(stats, sources, config.max_length)
    return docs, [s.weight for s in sources]


@dataclass
class Run:
    """A run ready to train: the prepared model, its tokenizer, the documents and the step plan.
    `prepare_run` builds it and `train_run` trains it; a recipe (SFT, distillation) may add
    what its loss needs in between."""

    config: SFTConfig
    device: torch.device
    model: nn.Module
    tokenizer: Tokenizer
    tokenizer_dir: str
    documents: list[list[Document]]  # per data source
    plan: DataPlan
    save_model: Callable[[nn.Module, Path], None]
    joined_group: bool = False  # prepare_run joined torchrun's process group; train_run leaves it


def sft_data(config: SFTConfig, tokenizer: Tokenizer, verbose: bool = True) -> tuple[list[list[Document]], DataPlan]:
    """(documents per source, step plan) of the config's SFT data."""
    docs, weights = load_data(config, tokenizer, verbose)
    return docs, DataPlan(docs, weights, config.batch_size, config.max_length, config.packing, config.seed)


def prepare_run(
    config: SFTConfig,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    save_model: Callable[[nn.Module, Path], None] | None = None,
    verbose: bool = True,
    data: Callable = sft_data,
) -> Run:
    """Load `config.model` (float32 master weights) and its tokenizer, read the data and plan the
    steps (`data(config, tokenizer, verbose) -> (documents per source, plan)`; another recipe's
    documents only need `input_ids`, e.g. preference pairs) and adapt the model
    (`prepare_model`, or LoRA when the config sets lora_r)."""
    check_output(config)
    device = resolve_device(config.device)
    joined = init_process_group(device)
    verbose = verbose and is_main_process()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = LFM2.from_pretrained(config.model, dtype="float32", device=device)
    tokenizer = model_tokenizer(model, config.model, "training data needs")
    tokenizer_dir = model.source_path
    docs, plan = data(config, tokenizer, verbose)
    too_big = max(max(max(d.input_ids) for d in source) for source in docs)
    if too_big >= model.config.vocab_size:
        raise DataError(
            f"token id {too_big} is outside the model's vocabulary ({model.config.vocab_size}); "
            f"is the tokenizer the model's?"
        )

    lora_prepare, lora_save = lora_hooks(config) if prepare_model is None else (None, None)
    prepare_model = prepare_model or lora_prepare
    save_model = save_model or lora_save
    if prepare_model is not None:
        torch.manual_seed(config.seed)  # adapter initialisation is part of the run's randomness
        model = prepare_model(model) or model
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if save_model is None:

        def save_model(m, out):
            save_hf_model(m, out, tokenizer_dir, config.save_dtype)

    return Run(config, device, model, tokenizer, tokenizer_dir, docs, plan, save_model, joined)


def pad_id(tokenizer: Tokenizer) -> int:
    """The id padding is written with (the pad token, else eos; padding is never trained)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def train_run(run: Run, loss=None, verbose: bool = True) -> TrainResult:
    """Train a prepared run with `loss` (losses.py protocol; default next-token cross-entropy)."""
    try:
        return _train(run, loss, verbose and is_main_process())
    finally:
        if run.joined_group:
            destroy_process_group()


def _train(run: Run, loss, verbose: bool) -> TrainResult:
    config = run.config
    trainer = Trainer(run.model, run.plan, config, pad_id(run.tokenizer), loss_fn=loss, save_model=run.save_model)
    if verbose:
        print(
            f"training {trainer.total_steps} steps of {config.batch_size} sequences "
            f"({'packed' if config.packing else 'padded'}, max_length {config.max_length}) on "
            f"{where(trainer, run.device)}",
            flush=True,
        )
    return trainer.train()


def where(trainer: Trainer, device: torch.device) -> str:
    """Where a run trains, as its first line says: 'cpu', or '2 processes (ddp), cpu'."""
    return f"{trainer.world} processes ({trainer.strategy}), {device.type}" if trainer.world > 1 else str(device)


def sft(
    config: SFTConfig | dict | str | os.PathLike,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    save_model: Callable[[nn.Module, Path], None] | None = None,
    loss=None,
    verbose: bool = True,
) -> TrainResult:
    """Fine-tune `config.model` on `config.data`; see the module docstring for what is written.

    prepare_model: adapts the loaded model before training (freeze, wrap adapters); only the
    parameters that still require grad are trained and checkpointed. Default: LoRA when the
    config sets lora_r, else full fine-tuning.
    save_model: writes the final model into the output directory; default: a Hugging Face
    directory (or, with LoRA, the adapter module's save_adapter).
    loss: the loss callable (losses.py protocol); default next-token cross-entropy.
    """
    return train_run(prepare_run(as_config(config), prepare_model, save_model, verbose), loss, verbose)


__all__ = [
    "sft",
    "Run",
    "prepare_run",
    "sft_data",
    "train_run",
    "pad_id",
    "read_chat_template",
    "print_data_summary",
    "as_config",
    "save_hf_model",
    "lora_hooks",
    "load_data",
    "resolve_device",
]
