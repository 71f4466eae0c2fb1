"""LoRA adapters for LFM2 (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"),
in PEFT's format, over float or quantized (QLoRA-style) base weights.

    apply_lora(model, targets=("q_proj", "in_proj", "w1"), r=8, alpha=16)   # freezes the base
    ... train: only lora_A / lora_B require grad ...
    save_adapter(model, "out/adapter")        # adapter_config.json + adapter_model.safetensors
    load_adapter(other, "out/adapter")        # also reads adapters written by peft
    merge_lora(model); model.save_pretrained("out/merged")   # a plain Hugging Face checkpoint

One wrapper module (`LoRALinear`, as in mlx-lm's tuner/lora.py) wraps any linear: the reference
model's `nn.Linear`s, including the short convolution's `in_proj` / `out_proj`, or a
`lfmkit.quant.QuantLinear` (int8 / int4): the base output is computed by the quantized layer, the
low-rank update `B(A(dropout(x))) * alpha / r` is added in float32, as PEFT does.

Target names follow PEFT's rule (a module matches a name when its dotted path equals it or ends
with "." + name; a single string is a regular expression matched against the whole path;
"all-linear" is every linear but the output head), and are checked against the model: a name that
matches nothing (`o_proj`, `gate_proj` from other models' recipes) or a module that is not a
linear is a ConfigError naming it and listing LFM2's names; never a silent skip.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..fast import deoptimize
from ..io.safetensors import SafetensorsFile
from ..quant.linear import PREFILL_TILE_BYTES, QuantEmbedding, QuantLinear

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model
# What other architectures' recipes call LFM2's linears (for the error message only).
OTHER_NAMES = {
    "o_proj": "out_proj",
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
    "dense": "out_proj",
    "fc1": "w1",
    "fc2": "w2",
}
# PEFT LoRA options that change what an adapter computes and that we do not implement: an
# adapter setting any of them is refused by name rather than loaded wrongly.
UNSUPPORTED_PEFT = (
    "use_dora",
    "lora_bias",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "use_qalora",
    "alora_invocation_tokens",
    "fan_in_fan_out",
)


@dataclass(frozen=True)
class LoRAConfig:
    """Which linears get adapters and their shape: rank r, scaling alpha / r (alpha / sqrt(r)
    with rsLoRA), dropout on the adapter's input."""

    targets: tuple[str, ...] | str = DEFAULT_TARGETS
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    use_rslora: bool = False

    def __post_init__(self):
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))
        if not self.targets:
            raise ConfigError("lora targets: empty (name at least one linear, e.g. q_proj)")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora r (rank) must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise ConfigError(f"lora alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_peft(self, base_model_name_or_path: str | None = None) -> dict:
        """adapter_config.json as PEFT writes it (the fields that matter; PEFT fills the rest)."""
        targets = self.targets if isinstance(self.targets, str) else sorted(set(self.targets))
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": targets,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_dora": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": None,
        }

    @classmethod
    def from_peft(cls, cfg: dict, source: str) -> "LoRAConfig":
        """Read a PEFT adapter_config.json (dict); refuse what we cannot compute, by field name."""
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: not a JSON object")
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ConfigError(f"{source}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
        for key in UNSUPPORTED_PEFT:
            if cfg.get(key):
                raise ConfigError(f"{source}: {key}={cfg[key]!r} is not supported by lfmkit's LoRA")
        if cfg.get("bias", "none") != "none":
            raise ConfigError(f"{source}: bias={cfg['bias']!r} is not supported (only 'none')")
        targets = cfg.get("target_modules")
        if not isinstance(targets, (str, list)):
            raise ConfigError(f"{source}: target_modules must be a list of names or a regex string")
        try:
            return cls(
                targets=targets,
                r=cfg.get("r", 8),
                alpha=cfg.get("lora_alpha", 8),
                dropout=cfg.get("lora_dropout", 0.0),
                use_rslora=bool(cfg.get("use_rslora", False)),
            )
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


# ---- the wrapper --------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """base_layer(x) + lora_B(lora_A(dropout(x))) * scaling, with float32 adapters.

    Parameter names are PEFT's (`base_layer`, `lora_A`, `lora_B`) without its adapter-name level.
    Initialised as PEFT does: A kaiming-uniform (a = sqrt(5)), B zeros, so a fresh adapter leaves
    the model's output unchanged."""

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0):
        super().__init__()
        device = _device_of(base)
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=torch.float32)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling = scaling
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    disabled = False  # set by `adapters_disabled`: the layer is its base layer

    @property
    def weight(self) -> torch.Tensor:
        """The weight this layer multiplies by, base + B @ A * scaling (float32, differentiable in
        the adapters), for code that inspects `.weight` (as QuantLinear's dequantizing property)."""
        if self.disabled:
            return self.base_layer.weight.float()
        return self.base_layer.weight.float() + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.disabled:
            return y
        a = self.lora_A.weight
        delta = self.lora_B(self.lora_A(self.lora_dropout(x.to(a.dtype)))) * self.scaling
        return y + delta.to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the base weight: B @ A * scaling, [out, in], float32."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def _device_of(module: nn.Module) -> torch.device:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return torch.device("cpu")


class _QuantMatmul(torch.autograd.Function):
    """y = layer(x) by the quantized layer's own forward; dx = dy @ W with W dequantized a tile of
    rows at a time (as QLoRA's backward does), so adapters before a quantized layer train."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer, ctx.x_dtype = layer, x.dtype
        return QuantLinear.forward(layer, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layer = ctx.layer
        n, k = layer.out_features, layer.in_features
        g = grad.reshape(-1, n).float()
        gx = torch.zeros(g.shape[0], k, dtype=torch.float32, device=g.device)
        tile = max(1, PREFILL_TILE_BYTES // (4 * k))
        for r0 in range(0, n, tile):
            rows = slice(r0, min(n, r0 + tile))
            gx.addmm_(g[:, rows], layer.dequantize(torch.float32, rows))
        return gx.reshape(*grad.shape[:-1], k).to(ctx.x_dtype), None


class FrozenQuantLinear(QuantLinear):
    """A QuantLinear (same buffers and name) whose output carries the gradient back to its input;
    its weights stay frozen. `apply_lora` swaps every QuantLinear of the model to this class: the
    kernel path of a plain QuantLinear returns a tensor with no gradient history."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuantMatmul.apply(x, self)
        return super().forward(x)


# ---- targets ------------------------------------------------------------------------------------
def wrappable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Dotted name -> linear layer for every linear LoRA can wrap, in model order. A tied output
    head is left out: it is the embedding matrix, and merging an update into it would change the
    input embeddings too; so is a quantized embedding's table (it is looked up, not multiplied)."""
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    tables = {id(m.table) for m in model.modules() if isinstance(m, QuantEmbedding)}  # lookups, not products
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, QuantLinear)) and not (tied and name == "lm_head") and id(m) not in tables:
            found[name] = m
    return found


def resolve_targets(model: nn.Module, targets: Sequence[str] | str) -> list[str]:
    """The dotted names of the linears `targets` selects (PEFT's matching rule), or a ConfigError
    naming the first target that matches no module, or a module that is not a wrappable linear."""
    linears = wrappable_linears(model)
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        if targets == "all-linear":
            return [n for n in linears if n != "lm_head"]
        try:
            hits = {targets: [n for n in names if re.fullmatch(targets, n)]}
        except re.error as exc:
            raise ConfigError(f"lora targets: {targets!r} is not a valid regular expression ({exc})") from None
    else:
        hits = {t: [n for n in names if n == t or n.endswith("." + t)] for t in targets}
    chosen: dict[str, None] = {}
    for target, matched in hits.items():
        if not matched:
            raise ConfigError(
                f"lora target {target!r} matches no module of this model{_hint(target)}; "
                f"valid names: {', '.join(_leaf_names(linears))} (or dotted paths such as "
                f"{next(iter(linears), 'model.layers.0.conv.in_proj')})"
            )
        for n in matched:
            if n not in linears:
                why = (
                    "the tied output head (it is the embedding matrix)"
                    if n == "lm_head"
                    else f"a {type(model.get_submodule(n)).__name__}, not a linear layer"
                )
                raise ConfigError(
                    f"lora target {target!r} matches '{n}', {why}; valid names: {', '.join(_leaf_names(linears))}"
                )
            chosen[n] = None
    return list(chosen)


def _leaf_names(linears: dict[str, nn.Module]) -> list[str]:
    return sorted({n.rpartition(".")[2] for n in linears})


def _hint(target: str) -> str:
    leaf = target.rpartition(".")[2]
    return f" (LFM2 calls it {OTHER_NAMES[leaf]!r})" if leaf in OTHER_NAMES else ""


# ---- apply / save / load / merge ----------------------------------------------------------------
def apply_lora(
    model: nn.Module,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    use_rslora: bool = False,
) -> nn.Module:
    """Wrap the target linears of `model` in LoRA adapters, in place; freeze everything else.

    Returns the model; `model.lora_config` records the `LoRAConfig`. The fast inference paths
    (`lfmkit.fast.optimize`), which fuse base weights and would bypass the adapters, are swapped
    back to the reference modules (quantized weights stay quantized: that is QLoRA)."""
    config = LoRAConfig(targets=targets, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora)
    if has_lora(model):
        raise ConfigError("this model already has LoRA adapters (merge_lora first, or start from the base)")
    names = resolve_targets(model, config.targets)
    deoptimize(model)
    model.requires_grad_(False)
    for m in model.modules():
        if type(m) is QuantLinear:
            m.__class__ = FrozenQuantLinear
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, LoRALinear(getattr(owner, attr), config.r, config.scaling, config.dropout))
    model.lora_config = config
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Within the block every adapter is off and the model computes its base (PEFT's
    `disable_adapter()`): e.g. the reference model of preference training."""
    layers = list(lora_layers(model).values())
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under PEFT's names (`base_model.model.<module>.lora_A.weight`)."""
    out = {}
    for name, m in lora_layers(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight
    return out


def save_adapter(model: nn.Module, directory: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapters as PEFT does: adapter_config.json + adapter_model.safetensors.

    `peft.PeftModel.from_pretrained(<transformers model>, directory)` loads it. Each file is
    written under a temporary name and renamed when complete. base_model_name_or_path defaults
    to the folder the model was loaded from."""
    from safetensors.torch import save_file

    config = getattr(model, "lora_config", None)
    if config is None or not has_lora(model):
        raise ConfigError("save_adapter: this model has no LoRA adapters (apply_lora or load_adapter first)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    base = base_model_name_or_path if base_model_name_or_path is not None else getattr(model, "source_path", None)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    tmp = out / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / ADAPTER_WEIGHTS)
    tmp = out / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config.to_peft(None if base is None else str(base)), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / ADAPTER_CONFIG)
    return out


def read_adapter_config(directory: str | os.PathLike) -> LoRAConfig:
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a PEFT adapter folder holds {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return LoRAConfig.from_peft(raw, str(path))


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Add the PEFT LoRA adapter in `directory` (ours or one peft wrote) to `model`, in place:
    `apply_lora` with the adapter's config, then its tensors by name. Missing, unexpected or
    mis-shaped tensors are a CheckpointError naming the tensor, raised before the model changes."""
    config = read_adapter_config(directory)
    weights = Path(directory) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(
            f"{weights}: not found (older PEFT .bin adapters are not read; re-save the "
            f"adapter with safe_serialization=True)"
        )
    stored = SafetensorsFile(weights)
    if has_lora(model):
        raise ConfigError("this model already has LoRA adapters (load the adapter into the base model)")
    linears = wrappable_linears(model)
    expected = {}
    for name in resolve_targets(model, config.targets):
        lin = linears[name]
        expected[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (config.r, lin.in_features)
        expected[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (lin.out_features, config.r)
    missing = sorted(set(expected) - set(stored.entries))
    unexpected = sorted(set(stored.entries) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"{weights}: tensors do not match the adapter config's targets ({what}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for name, shape in expected.items():
        if stored.entries[name][1] != shape:
            raise CheckpointError(
                f"{weights}: tensor '{name}' has shape {list(stored.entries[name][1])}, the model expects {list(shape)}"
            )
    apply_lora(model, config.targets, config.r, config.alpha, config.dropout, config.use_rslora)
    with torch.no_grad():
        for name, param in lora_state_dict(model).items():
            param.copy_(stored.read(name))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its float base weight (W += B @ A * scaling) and unwrap it, in
    place: the model is again plain (saved by `save_pretrained` as a Hugging Face checkpoint), with
    the same outputs as before the merge. Its parameters stay frozen. Quantized bases cannot take
    the update: load the base in float, `load_adapter`, then merge."""
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("merge_lora: this model has no LoRA adapters")
    for name, m in layers.items():
        if not isinstance(m.base_layer, nn.Linear):
            raise ConfigError(
                f"merge_lora: '{name}' wraps a quantized layer; merge into float base weights "
                f"(load the base in float, load_adapter, merge_lora)"
            )
    with torch.no_grad():
        for name, m in layers.items():
            base = m.base_layer
            base.weight += m.delta_weight().to(base.weight.dtype)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, base)
    model.__dict__.pop("lora_config", None)
    return model


__all__ = [
    "DEFAULT_TARGETS",
    "LoRAConfig",
    "LoRALinear",
    "FrozenQuantLinear",
    "apply_lora",
    "has_lora",
    "lora_layers",
    "adapters_disabled",
    "lora_state_dict",
    "resolve_targets",
    "wrappable_linears",
    "save_adapter",
    "load_adapter",
    "read_adapter_config",
    "merge_lora",
]
