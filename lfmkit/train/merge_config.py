"""mergekit's YAML merge config, read for the methods `lfmkit merge` runs.

    merge_method: ties                 # linear slerp task_arithmetic ties dare_linear dare_ties model_stock
    base_model: ./sft
    models:
      - model: ./dpo-a
        parameters: {weight: 0.6, density: 0.5}
      - model: ./dpo-b
        parameters:
          weight: [0.2, 0.8]           # a gradient: interpolated over the layers
          density: [{filter: self_attn, value: 0.7}, {value: 0.4}]
    parameters: {normalize: true, int8_mask: true}
    dtype: bfloat16                    # the working dtype inputs are cast to (out_dtype: the stored one)
    tokenizer_source: base             # where the tokenizer comes from (base, union, or a model)

The `slices:` form is read too, for slices that keep the layer layout (each source's
`layer_range` the slice's own, the slices tiling the layers in order): mergekit's SLERP
examples use it. Parameter values are resolved per tensor exactly as mergekit does: a model's
own `parameters` first, then the slice's, then the top-level ones; a list of numbers is a
gradient over the layers (layer i of n reads position i / (n - 1) of it; the embeddings and the
head read position 0); a list of `{filter, value}` picks the first whose filter is a substring
of the tensor name. Everything is checked here, before any tensor is read: an error names the
config file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io.safetensors import parse_dtype
from .merge_methods import METHODS, REQUIRED, Method, Param

TOP_LEVEL_KEYS = {
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
}
NOT_SUPPORTED = {"modules": "the `modules:` form (multi-module models) does not apply to LFM2; use `models:`"}
TRUE_WORDS, FALSE_WORDS = {"true", "yes", "on", "1", "t", "y"}, {"false", "no", "off", "0", "f", "n"}


@dataclass(frozen=True)
class Source:
    """One input model of a slice, as the config names it."""

    model: str
    parameters: dict[str, Any]
    where: str  # e.g. "models[1]" or "slices[0].sources[1]"


@dataclass(frozen=True)
class Segment:
    """A run of layers merged from the same sources with the same parameters: the whole model
    for the `models:` form, one slice for `slices:` (layers None: all of them)."""

    sources: tuple[Source, ...]
    base_model: str | None
    parameters: dict[str, Any]
    layers: tuple[int, int] | None
    where: str


@dataclass(frozen=True)
class MergeConfig:
    method: Method
    segments: tuple[Segment, ...]
    base_model: str | None
    parameters: dict[str, Any]
    dtype: torch.dtype | None
    out_dtype: torch.dtype | None
    tokenizer_source: str | None  # None, "base", "union" or a model
    file: str  # the config's name in messages
    text: str = field(default="", repr=False)  # the YAML as written (saved with the merge)
    notes: tuple[str, ...] = ()  # settings read but ignored, as mergekit ignores them

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {where}: {message}")


# ---- reading ------------------------------------------------------------------------------------
def load_merge_config(config: str | os.PathLike | dict | MergeConfig) -> MergeConfig:
    """A MergeConfig from a YAML file, a dict in the same shape, or a MergeConfig (returned as is)."""
    if isinstance(config, MergeConfig):
        return config
    import yaml

    if isinstance(config, dict):
        return parse_merge_config(config, "merge config", yaml.safe_dump(config, sort_keys=False))
    path = Path(config)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    return parse_merge_config(data, str(path), text)


class _Problems:
    """`fail(where, message)`: the ConfigError to raise; `fail.note(...)`: a setting ignored."""

    def __init__(self, file: str):
        self.file, self.notes = file, []

    def __call__(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {where}: {message}")

    def note(self, where: str, message: str) -> None:
        self.notes.append(f"{self.file}: {where}: {message}")


def parse_merge_config(data: Any, file: str, text: str = "") -> MergeConfig:
    fail = _Problems(file)
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping with merge_method and models, got {type(data).__name__}")
    for key in data:
        if key in NOT_SUPPORTED:
            raise fail(key, f"not supported by lfmkit merge: {NOT_SUPPORTED[key]}")
        if key not in TOP_LEVEL_KEYS:
            raise fail(key, f"unknown field (expected one of {', '.join(sorted(TOP_LEVEL_KEYS))})")
    name = data.get("merge_method")
    if name is None:
        raise fail("merge_method", f"missing (one of {', '.join(METHODS)})")
    if name not in METHODS:
        raise fail("merge_method", f"unknown method {name!r} (lfmkit merges with {', '.join(METHODS)})")
    method = METHODS[name]
    base = _model_name(data.get("base_model"), "base_model", fail, optional=True)
    parameters = _parameters(data.get("parameters"), "parameters", method, fail)
    if ("models" in data) == ("slices" in data):
        raise fail("models", "give exactly one of `models:` and `slices:`")
    if "models" in data:
        segments = (_models_segment(data["models"], base, method, fail),)
    else:
        segments = _slice_segments(data["slices"], base, method, fail)
    dtype = _dtype(data.get("dtype"), "dtype", fail)
    out_dtype = _dtype(data.get("out_dtype"), "out_dtype", fail)
    tokenizer_source = _tokenizer_source(data, base, fail)
    _chat_template(data.get("chat_template"), fail)
    return MergeConfig(
        method, segments, base, parameters, dtype, out_dtype, tokenizer_source, file, text, tuple(fail.notes)
    )


def _model_name(value: Any, where: str, fail, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(where, f"expected a checkpoint directory or Hugging Face id, got {value!r}")
    if "+" in value and not Path(value).exists():
        raise fail(where, f"{value!r}: LoRA references (model+lora) are not supported; merge the adapter first")
    return value


def _models_segment(models: Any, base: str | None, method: Method, fail) -> Segment:
    if not isinstance(models, list) or not models:
        raise fail("models", "expected a non-empty list of {model: ..., parameters: ...}")
    sources = tuple(_source(m, f"models[{i}]", method, fail) for i, m in enumerate(models))
    return Segment(sources, base, {}, None, "models")


def _slice_segments(slices: Any, base: str | None, method: Method, fail) -> tuple[Segment, ...]:
    if not isinstance(slices, list) or not slices:
        raise fail("slices", "expected a non-empty list of {sources: [...]}")
    segments, start = [], 0
    for i, s in enumerate(slices):
        where = f"slices[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"]:
            raise fail(where, "expected {sources: [{model: ..., layer_range: [start, end]}, ...]}")
        for key in s:
            if key not in ("sources", "base_model", "parameters"):
                raise fail(f"{where}.{key}", "unknown field (expected sources, base_model, parameters)")
        sources = tuple(
            _source(src, f"{where}.sources[{j}]", method, fail, sliced=True) for j, src in enumerate(s["sources"])
        )
        ranges = {tuple(src["layer_range"]) for src in s["sources"]}
        first = tuple(s["sources"][0]["layer_range"])
        if len(ranges) > 1 or first[0] != start or first[1] <= first[0]:
            raise fail(
                f"{where}.sources[0].layer_range",
                f"lfmkit merges layer i with layer i: every source of a slice needs the same "
                f"layer_range, and the slices must tile the layers in order from 0 (this slice "
                f"should start at layer {start}); layer stacking is not supported",
            )
        start = first[1]
        slice_base = _model_name(s.get("base_model"), f"{where}.base_model", fail, optional=True) or base
        params = _parameters(s.get("parameters"), f"{where}.parameters", method, fail)
        segments.append(Segment(sources, slice_base, params, first, where))
    return tuple(segments)


def _source(entry: Any, where: str, method: Method, fail, sliced: bool = False) -> Source:
    allowed = ("model", "parameters", "layer_range") if sliced else ("model", "parameters")
    if not isinstance(entry, dict) or "model" not in entry:
        raise fail(where, "expected {model: PATH, parameters: {...}}")
    for key in entry:
        if key not in allowed:
            raise fail(f"{where}.{key}", f"unknown field (expected {', '.join(allowed)})")
    if sliced:
        r = entry.get("layer_range")
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise fail(f"{where}.layer_range", f"expected [start, end] (two integers), got {r!r}")
    model = _model_name(entry["model"], f"{where}.model", fail)
    return Source(
        model, _parameters(entry.get("parameters"), f"{where}.parameters", method, fail, per_model=True), where
    )


def _parameters(value: Any, where: str, method: Method, fail, per_model: bool = False) -> dict[str, Any]:
    """A `parameters:` mapping, every setting checked against the method's parameter of that name.
    Like mergekit, a parameter of another method, and a model's own value of a parameter that
    applies to the whole merge, are ignored (with a note); a name no method has is an error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, f"expected a mapping of parameter names to values, got {value!r}")
    kept = {}
    for name, setting in value.items():
        p = method.param(name)
        if p is None:
            if any(m.param(name) for m in METHODS.values()):
                fail.note(f"{where}.{name}", f"ignored: not a parameter of {method.name}")
                continue
            known = ", ".join(q.name for q in method.params)
            raise fail(f"{where}.{name}", f"not a parameter of any merge method ({method.name} takes {known})")
        if per_model and p.scope == "shared":
            fail.note(
                f"{where}.{name}",
                f"ignored: '{name}' applies to the whole merge; set it in the top-level `parameters:` (or a slice's)",
            )
            continue
        check_setting(setting, p, f"{where}.{name}", fail)
        kept[name] = setting
    return kept


def check_setting(setting: Any, p: Param, where: str, fail) -> None:
    """A scalar, a gradient (list of scalars), or {filter, value} conditions (one or a list)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(e, dict) for e in setting):
        for i, cond in enumerate(setting):
            extra = set(cond) - {"filter", "value"}
            if "value" not in cond or extra:
                raise fail(f"{where}[{i}]", "expected {filter: TEXT, value: ...} (filter optional)")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise fail(f"{where}[{i}].filter", f"expected text, got {cond['filter']!r}")
            if isinstance(cond["value"], (dict, list)) and not _scalars(cond["value"]):
                raise fail(f"{where}[{i}].value", "expected a value or a list of values")
            check_setting(cond["value"], p, f"{where}[{i}].value", fail)
        return
    values = setting if isinstance(setting, list) else [setting]
    if not values or not _scalars(values):
        raise fail(
            where,
            f"expected a {p.kind.__name__}, a list of them (a gradient) or {{filter, value}} "
            f"conditions, got {setting!r}",
        )
    for v in values:
        coerce(v, p, lambda msg: fail(where, msg))


def _scalars(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(e, (bool, int, float, str)) for e in values)


def coerce(value: Any, p: Param, fail=None) -> Any:
    """A YAML scalar as the parameter's type (mergekit's lax pydantic rules: numeric text is a
    number, so `1e-3`, which YAML reads as text, works; true/false/yes/no/1/0 are booleans)."""
    if p.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
    elif not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and number == number:
            if p.name == "density" and not 0 <= number <= 1:
                raise (fail or _plain)(f"density must be between 0 and 1, got {value!r}")
            return number
    raise (fail or _plain)(f"expected a {p.kind.__name__} for '{p.name}', got {value!r}")


def _plain(message: str) -> ConfigError:
    return ConfigError(message)


def _chat_template(value: Any, fail) -> None:
    if value is None:
        return
    if value != "auto":
        raise fail(
            "chat_template",
            "not supported by lfmkit merge: the merged model keeps its tokenizer "
            "source's chat template (only `auto` is accepted)",
        )
    fail.note("chat_template", "auto: the tokenizer source's chat template is kept")


def _dtype(value: Any, where: str, fail) -> torch.dtype | None:
    if value is None:
        return None
    try:
        return parse_dtype(str(value))
    except ConfigError:
        raise fail(where, f"unsupported dtype {value!r}; choose float32, bfloat16 or float16") from None


def _tokenizer_source(data: dict, base: str | None, fail) -> str | None:
    value, where = data.get("tokenizer_source"), "tokenizer_source"
    if "tokenizer" in data:
        if "tokenizer_source" in data:
            raise fail("tokenizer", "give tokenizer_source or tokenizer, not both")
        tok = data["tokenizer"]
        if not isinstance(tok, dict) or set(tok) - {"source"}:
            raise fail(
                "tokenizer",
                "only `tokenizer: {source: ...}` is supported (lfmkit does not add tokens or resize vocabularies)",
            )
        value, where = tok.get("source", "union"), "tokenizer.source"
    if value is None:
        return None
    if value == "base" and base is None:
        raise fail(where, "'base' needs a base_model")
    return value if value in ("base", "union") else _model_name(value, where, fail)


# ---- resolving a parameter for one tensor -------------------------------------------------------
def evaluate_setting(setting: Any, tensor: str, t: float, p: Param) -> Any:
    """The value of one setting for `tensor` at layer position t in [0, 1], or None when no
    condition matches (then the next, lower-precedence `parameters` are asked)."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return coerce(setting, p)
    if not setting:
        return None
    if _scalars(setting):
        values = [coerce(e, p) for e in setting]
        if p.kind is bool:
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return coerce((1 - frac) * values[i0] + frac * values[i1], p)
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor and f in tensor):
            return evaluate_setting(cond["value"], tensor, t, p)
    return None


def resolve(p: Param, scopes: list[dict[str, Any]], tensor: str, t: float) -> Any:
    """The parameter's value from the first scope that sets it for this tensor, else its default
    (REQUIRED when it has none: the caller reports where it is missing)."""
    for scope in scopes:
        if p.name in scope:
            value = evaluate_setting(scope[p.name], tensor, t, p)
            if value is not None:
                return value
    return p.default if p.default is REQUIRED else coerce(p.default, p)


__all__ = [
    "MergeConfig",
    "Segment",
    "Source",
    "load_merge_config",
    "parse_merge_config",
    "evaluate_setting",
    "resolve",
    "coerce",
]
