"""The fine-tuning configuration: one dataclass, filled from defaults, a YAML file and flags.

Every default names its source in docs/training.md (most are transformers' `TrainingArguments`
or TRL's `SFTConfig` defaults, so a recipe ported from TRL means the same thing here). Keys in
YAML may be written with dashes or underscores (`learning-rate` = `learning_rate`). An unknown
key, a value of the wrong type or out of range is a `ConfigError` naming the key (and file).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

SCHEDULERS = ("linear", "cosine", "constant")
DISTRIBUTED = ("ddp", "fsdp")
OPTIMIZERS = ("adamw", "adamw_8bit")  # float32 moments (torch's fused AdamW), block-wise 8-bit ones
MASTER_WEIGHTS = ("float32", "kahan")  # with bf16_weights: float32 masters, or Kahan-compensated bf16


@dataclass
class SFTConfig:
    """Supervised fine-tuning of an LFM2 checkpoint (full, or LoRA when `lora_r` is set)."""

    model: str = ""
    data: list[str] = field(default_factory=list)  # "path" or "path:weight"
    output: str = ""
    # length of the run
    max_steps: int | None = None  # overrides epochs when set
    epochs: float = 3.0
    # optimization
    learning_rate: float = 2e-5
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # overrides warmup_ratio when > 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping (the norm is still logged)
    batch_size: int = 8  # sequences (rows) per optimizer step, global
    grad_accum: int = 1
    seed: int = 42
    # data
    max_length: int = 1024
    packing: bool = False
    assistant_only_loss: bool = True
    completion_only_loss: bool = True
    chat_template: str | None = None  # a .jinja file to render conversations with
    # memory and precision
    gradient_checkpointing: bool = False
    bf16: bool = False
    bf16_weights: bool = False  # bfloat16 working weights, float32 masters in the optimizer (mixed.py)
    master_weights: str = "float32"  # with bf16_weights: float32 masters, or kahan (none; compact_adamw.py)
    optim: str = "adamw"  # adamw, or adamw_8bit: block-wise 8-bit moments (compact_adamw.py)
    loss_chunk_size: int | None = None
    device: str | None = None  # default: cuda when available, else cpu
    distributed: str | None = None  # under torchrun: ddp (default) or fsdp
    save_dtype: str | None = None  # final model dtype; default: the training dtype
    # checkpoints
    save_every: int = 500
    save_limit: int | None = None  # keep only the newest N checkpoints
    resume: bool = False
    progress: bool = True
    # LoRA (lfmkit.train.lora)
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None

    # ---- building ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "SFTConfig":
        """A config from plain values (YAML, JSON, flags), each checked against its field's type."""
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(names))})")
            clean[name] = _coerce(value, hints[name], f"{where}: {key}")
        config = cls(**clean)
        config.validate(where)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> "SFTConfig":
        """A YAML file's settings, then `overrides` (e.g. flags given on the command line)."""
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading a YAML config needs pyyaml (pip install pyyaml)") from None
        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        if values is None:
            values = {}
        if isinstance(values, dict):
            values = {**values, **(overrides or {})}
        return cls.from_dict(values, where=str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- checks ------------------------------------------------------------------------
    def required(self) -> dict[str, str]:
        """The settings this use of the config cannot do without, and what each one is."""
        return {
            "model": "a checkpoint directory, Hub id or .gguf file",
            "data": "one or more files or dataset directories, path[:weight]",
            "output": "the directory for the model, checkpoints and metrics",
        }

    def validate(self, where: str = "config") -> None:
        def bad(name: str, why: str):
            raise ConfigError(f"{where}: {name} {why}")

        for name, why in self.required().items():
            if not getattr(self, name):
                bad(name, f"is required ({why})")
        positive = {
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "learning_rate": self.learning_rate,
            "epochs": self.epochs,
        }
        for name, value in positive.items():
            if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
                bad(name, f"must be positive, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", f"must be at least 1, got {self.max_steps}")
        if self.max_length < 2:
            bad("max_length", f"must be at least 2 tokens, got {self.max_length}")
        if self.batch_size % self.grad_accum:
            bad("batch_size", f"({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})")
        if self.lr_scheduler not in SCHEDULERS:
            bad("lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        for name in ("warmup_steps", "save_every", "weight_decay", "max_grad_norm", "adam_epsilon", "lora_dropout"):
            if getattr(self, name) < 0:
                bad(name, f"must not be negative, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                bad(name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("save_limit", "loss_chunk_size", "lora_r"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(name, f"must be at least 1, got {getattr(self, name)}")
        if self.lora_r is None and (self.lora_alpha is not None or self.lora_targets):
            bad("lora_r", "is needed when lora_alpha or lora_targets is set")
        if self.distributed not in (None, *DISTRIBUTED):
            bad("distributed", f"must be one of {', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        if self.optim not in OPTIMIZERS:
            bad("optim", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optim!r}")
        if self.master_weights not in MASTER_WEIGHTS:
            bad("master_weights", f"must be one of {', '.join(MASTER_WEIGHTS)}, got {self.master_weights!r}")
        if self.master_weights == "kahan" and not self.bf16_weights:
            bad("master_weights", "kahan needs bf16_weights (float32 weights are their own masters)")
        if self.save_dtype not in (None, "float32", "bfloat16", "float16"):
            bad("save_dtype", f"must be float32, bfloat16 or float16, got {self.save_dtype!r}")


KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
TEACHER_QUANTS = ("fp32", "bf16", "int8", "int4")
CACHE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class DistillConfig(SFTConfig):
    """Knowledge distillation of `teacher` into the student `model`: every SFT setting, plus the
    teacher (run online, or read from a top-k cache) and the loss
    alpha * T^2 * divergence(kd_loss) + (1 - alpha) * CE (lfmkit.train.distill)."""

    teacher: str = ""  # the teacher checkpoint (online, or to write the cache)
    teacher_quant: str | None = None  # fp32, bf16, int8, int4; default: its stored dtype
    teacher_cache: str | None = None  # train from this top-k cache instead of the teacher
    kd_loss: str = "forward_kl"
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha: the CE
    jsd_beta: float = 0.5  # kd_loss jsd only
    top_k: int = 64  # writing the cache: log-probs kept per trained token
    cache_dtype: str = "float16"  # writing the cache: dtype of those log-probs

    def required(self) -> dict[str, str]:
        need = super().required()
        if not self.teacher_cache:
            need["teacher"] = "the teacher checkpoint, or teacher_cache: a cache written by distill-cache"
        return need

    def validate(self, where: str = "config") -> None:
        super().validate(where)

        def bad(name: str, why: str):
            raise ConfigError(f"{where}: {name} {why}")

        if self.kd_loss not in KD_LOSSES:
            bad("kd_loss", f"must be one of {', '.join(KD_LOSSES)}, got {self.kd_loss!r}")
        if self.teacher_quant not in (None, *TEACHER_QUANTS):
            bad("teacher_quant", f"must be one of {', '.join(TEACHER_QUANTS)}, got {self.teacher_quant!r}")
        if self.cache_dtype not in CACHE_DTYPES:
            bad("cache_dtype", f"must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            bad("temperature", f"must be positive, got {self.temperature}")
        for name in ("alpha", "jsd_beta"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.top_k < 1:
            bad("top_k", f"must be at least 1, got {self.top_k}")


@dataclass
class DistillCacheConfig(DistillConfig):
    """The settings of `distill-cache`: a distillation config (the same YAML file serves both
    commands) of which it needs the teacher, the data settings and `teacher_cache`, the folder
    to write; `model`, when set, is the student whose tokenizer the data is read with."""

    def required(self) -> dict[str, str]:
        return {
            "teacher": "the teacher checkpoint to run",
            "data": "one or more files or dataset directories, path[:weight]",
            "teacher_cache": "the folder to write the teacher's top-k log-probs to",
        }


def _coerce(value, hint, where: str):
    """`value` as the field type `hint` (str, int, float, bool, list[str], or those | None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, str, f"{where}[{i}]") for i, v in enumerate(items)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if not float(number).is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return str(value)


__all__ = [
    "SFTConfig",
    "DISTRIBUTED",
    "OPTIMIZERS",
    "MASTER_WEIGHTS",
    "DistillConfig",
    "DistillCacheConfig",
    "SCHEDULERS",
    "KD_LOSSES",
    "TEACHER_QUANTS",
    "CACHE_DTYPES",
]
