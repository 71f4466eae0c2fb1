"""LFM2Config: every field of the LFM2 family, its presets, and config.json in and out.

Real checkpoints spell the same fields in several ways (`block_ff_dim` or `intermediate_size`,
`full_attn_idxs` or `layer_types`, `rope_theta` or `rope_parameters`, ...); `from_dict`
accepts all of them and `to_dict` writes a config.json that `transformers` loads as the same
model. The dense all-attention presets (Qwen3 shapes) exist so benchmarks can compare the
hybrid with a same-class transformer inside one engine.

Every field is checked for its type and range, and the fields against each other, when a
config is built (`validate`): a corrupt config.json fails with one `ConfigError` line naming
the file, the field as the file spells it, what was expected and what it holds, never later
in a model build or an allocation. Two spellings of one field that disagree are an error too
(transformers would silently pick one, not always the one lfmkit would).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .checks import is_finite_number, is_int, json_type, read_json_object, shown
from .errors import ConfigError

CONV = "conv"
ATTENTION = "full_attention"
SUPPORTED_MODEL_TYPES = ("lfm2",)
# torch_dtype values a config.json may hold (io.safetensors maps them to torch dtypes; others load as float32).
CONFIG_DTYPES = ("bfloat16", "float16", "float32", "float64", "bf16", "fp16", "fp32", "half", "float")

# The largest value each size field accepts: far above any real language model, yet small
# enough that every shape derived from them is a tensor torch can describe (a corrupt
# `hidden_size: 10**12` is refused here, not in an allocation).
SIZE_LIMITS = {
    "vocab_size": 1 << 21,
    "hidden_size": 1 << 16,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "block_ff_dim": 1 << 20,
    "block_multiple_of": 1 << 20,
    "conv_L_cache": 1024,
    "max_position_embeddings": 1 << 24,
}
MAX_FFN_MULTIPLIER = 1024  # block_ffn_dim_multiplier's cap (its product with any block_ff_dim stays finite)
BOOL_FIELDS = ("block_auto_adjust_ff_dim", "conv_bias", "tie_word_embeddings")
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")

# Other config.json spellings of a field, as real checkpoints write them.
ALIASES = {
    "num_attention_heads": ("num_heads",),
    "block_ff_dim": ("intermediate_size",),
    "norm_eps": ("rms_norm_eps",),
    "tie_word_embeddings": ("tie_embedding",),
    "torch_dtype": ("dtype",),
}


def _field_error(name: str, detail: str) -> ConfigError:
    """A ConfigError about one field; `from_dict` re-words it with the file's spelling."""
    exc = ConfigError(f"config field '{name}': {detail}")
    exc.field, exc.detail = name, detail
    return exc


def _need_size(name: str, value: Any, low: int = 1) -> None:
    high = SIZE_LIMITS[name]
    if not (is_int(value) and low <= value <= high):
        raise _field_error(name, f"expected an integer from {low} to {high:,}, got {shown(value)}")


def _need_positive(name: str, value: Any, high: float = math.inf) -> None:
    if not (is_finite_number(value) and 0 < value <= high):
        limit = f" up to {high:,}" if high < math.inf else ""
        raise _field_error(name, f"expected a positive finite number{limit}, got {shown(value)}")


@dataclass
class LFM2Config:
    vocab_size: int = 65536
    hidden_size: int = 1024
    num_hidden_layers: int = 16
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    block_ff_dim: int = 6656
    block_auto_adjust_ff_dim: bool = True
    block_multiple_of: int = 256
    block_ffn_dim_multiplier: float | None = 1.0
    layer_types: list[str] = field(default_factory=list)
    conv_L_cache: int = 3
    conv_bias: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 128_000
    tie_word_embeddings: bool = True
    bos_token_id: int = 1
    eos_token_id: int | list[int] = 7
    pad_token_id: int = 0
    torch_dtype: str = "bfloat16"
    model_type: str = "lfm2"
    name: str | None = None

    def __post_init__(self):
        if isinstance(self.layer_types, list) and not self.layer_types:  # the default: all attention
            _need_size("num_hidden_layers", self.num_hidden_layers)
            self.layer_types = [ATTENTION] * self.num_hidden_layers
        self.validate()

    # ---- derived facts -------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def ff_dim(self) -> int:
        """The FFN width actually used (the `block_auto_adjust_ff_dim` rule of the reference)."""
        ff = self.block_ff_dim
        if not self.block_auto_adjust_ff_dim:
            return ff
        ff = int(2 * ff / 3)
        if self.block_ffn_dim_multiplier is not None:
            ff = int(self.block_ffn_dim_multiplier * ff)
            m = self.block_multiple_of
            ff = m * ((ff + m - 1) // m)
        return ff

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == ATTENTION]

    @property
    def conv_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == CONV]

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    @property
    def is_hybrid(self) -> bool:
        return bool(self.conv_layers)

    def num_parameters(self) -> int:
        """Exact parameter count (tied embeddings counted once)."""
        h, hd = self.hidden_size, self.head_size
        bias = 1 if self.conv_bias else 0
        total = self.vocab_size * h + h  # embedding + final norm
        if not self.tie_word_embeddings:
            total += self.vocab_size * h
        ffn = 3 * h * self.ff_dim + 2 * h  # w1, w2, w3 + two norms
        conv = h * 3 * h + bias * 3 * h + h * self.conv_L_cache + bias * h + h * h + bias * h
        q = self.num_attention_heads * hd
        kv = self.num_key_value_heads * hd
        attn = h * q + 2 * h * kv + q * h + 2 * hd
        for t in self.layer_types:
            total += ffn + (conv if t == CONV else attn)
        return total

    def state_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Bytes of inference state each new token adds (K and V of the attention layers)."""
        return len(self.attention_layers) * 2 * self.num_key_value_heads * self.head_size * dtype_bytes

    def state_fixed_bytes(self, dtype_bytes: int = 2) -> int:
        """Bytes of state per sequence that do not grow with length (the conv windows)."""
        return len(self.conv_layers) * self.hidden_size * self.conv_L_cache * dtype_bytes

    # ---- checks --------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first field whose type, range or consistency is wrong."""
        self._check_kinds()
        self._check_shapes()
        self._check_token_ids()

    def _check_kinds(self) -> None:
        """Each field on its own: the JSON type and range it must have."""
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise _field_error(
                "model_type",
                f"unsupported model type {shown(self.model_type)} (lfmkit supports {', '.join(SUPPORTED_MODEL_TYPES)})",
            )
        for name in SIZE_LIMITS:
            if name != "head_dim" or self.head_dim is not None:
                _need_size(name, getattr(self, name), low=2 if name == "head_dim" else 1)
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise _field_error(name, f"expected true or false, got {shown(getattr(self, name))}")
        _need_positive("norm_eps", self.norm_eps)
        _need_positive("rope_theta", self.rope_theta)
        if self.block_ffn_dim_multiplier is not None:
            _need_positive("block_ffn_dim_multiplier", self.block_ffn_dim_multiplier, high=MAX_FFN_MULTIPLIER)
        if self.torch_dtype not in CONFIG_DTYPES:
            raise _field_error(
                "torch_dtype", f"expected one of {', '.join(CONFIG_DTYPES)}, got {shown(self.torch_dtype)}"
            )
        if self.name is not None and not isinstance(self.name, str):
            raise _field_error("name", f"expected a string, got {shown(self.name)}")
        types = self.layer_types
        if not isinstance(types, (list, tuple)):
            raise _field_error("layer_types", f"expected an array of '{CONV}' / '{ATTENTION}', got {shown(types)}")
        for i, t in enumerate(types):
            if not isinstance(t, str) or t not in (CONV, ATTENTION):
                raise _field_error("layer_types", f"entry {i} is {shown(t)}; expected '{CONV}' or '{ATTENTION}'")

    def _check_shapes(self) -> None:
        """The fields against each other: heads, layer count, the derived head and FFN sizes."""
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if heads % kv:
            raise _field_error("num_key_value_heads", f"{kv} does not divide num_attention_heads={heads}")
        if self.head_dim is None and self.hidden_size % heads:
            raise _field_error("num_attention_heads", f"{heads} does not divide hidden_size={self.hidden_size}")
        if self.head_size % 2:
            raise _field_error("head_dim", f"must be even for RoPE, got {self.head_size}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise _field_error(
                "layer_types", f"has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}"
            )
        high = SIZE_LIMITS["block_ff_dim"]
        if not 1 <= self.ff_dim <= high:
            raise _field_error(
                "block_ff_dim",
                f"{self.block_ff_dim} gives an FFN width of {self.ff_dim} after "
                f"block_auto_adjust_ff_dim (2/3, times block_ffn_dim_multiplier, "
                f"rounded up to block_multiple_of); expected 1 to {high:,}",
            )

    def _check_token_ids(self) -> None:
        """bos / eos / pad: ids inside the vocabulary (eos: one id or a non-empty list)."""
        expected = f"expected a token id from 0 to {self.vocab_size - 1} (vocab_size - 1)"
        for name in TOKEN_ID_FIELDS:
            value = getattr(self, name)
            if name == "eos_token_id" and isinstance(value, (list, tuple)):
                if not value:
                    raise _field_error(name, "expected a token id or a non-empty array of them, got []")
                for i, token_id in enumerate(value):
                    if not self._in_vocab(token_id):
                        raise _field_error(name, f"entry {i} is {shown(token_id)}; {expected}")
            elif not self._in_vocab(value):
                raise _field_error(name, f"{expected}, got {shown(value)}")

    def _in_vocab(self, token_id: Any) -> bool:
        return is_int(token_id) and 0 <= token_id < self.vocab_size

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "LFM2Config":
        key = name.lower()
        if key not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return replace(PRESETS[key], name=key, **overrides)

    # ---- config.json ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "LFM2Config":
        """Build from any config.json variant seen in real LFM2 checkpoints.

        Every error is one ConfigError line: `<source>: field '<name as spelled>': <what is wrong>`.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {json_type(data)}")
        spelled: dict[str, str] = {}  # field -> the key the data spells it with
        try:
            return cls._from_fields(data, spelled)
        except ConfigError as exc:
            name = getattr(exc, "field", None)
            if name is None:
                raise ConfigError(f"{source}: {exc}") from None
            raise ConfigError(f"{source}: field '{spelled.get(name, name)}': {exc.detail}") from None

    @classmethod
    def _from_fields(cls, d: dict[str, Any], spelled: dict[str, str]) -> "LFM2Config":
        def pick(name: str, default: Any = None, required: bool = False) -> Any:
            """The field's value under any of its spellings (null counts as absent)."""
            found = [(key, d[key]) for key in (name, *ALIASES.get(name, ())) if d.get(key) is not None]
            if not found:
                if required:
                    also = "".join(f" (or '{alias}')" for alias in ALIASES.get(name, ()))
                    raise ConfigError(f"missing field '{name}'{also}")
                return default
            _agree(found)
            spelled[name] = found[0][0]
            return found[0][1]

        model_type = pick("model_type", default="lfm2")
        if model_type not in SUPPORTED_MODEL_TYPES:  # before any other field: a llama config is not a bad LFM2
            raise _field_error(
                "model_type",
                f"unsupported model type {shown(model_type)} (lfmkit supports {', '.join(SUPPORTED_MODEL_TYPES)})",
            )
        n_layers = pick("num_hidden_layers", required=True)
        _need_size("num_hidden_layers", n_layers)
        heads = pick("num_attention_heads", required=True)
        dtype = pick("torch_dtype", default="bfloat16")
        multiplier = d.get("block_ffn_dim_multiplier", 1.0)  # an explicit null: no multiplier, no rounding
        return _agrees_with_attention_indices(
            d,
            cls(
                vocab_size=pick("vocab_size", default=65536),
                hidden_size=pick("hidden_size", required=True),
                num_hidden_layers=n_layers,
                num_attention_heads=heads,
                num_key_value_heads=pick("num_key_value_heads", default=heads),
                head_dim=pick("head_dim"),
                block_ff_dim=pick("block_ff_dim", required=True),
                block_auto_adjust_ff_dim=pick("block_auto_adjust_ff_dim", default=True),
                block_multiple_of=pick("block_multiple_of", default=256),
                block_ffn_dim_multiplier=multiplier,
                layer_types=_layer_types(d, n_layers),
                conv_L_cache=pick("conv_L_cache", default=3),
                conv_bias=pick("conv_bias", default=False),
                norm_eps=pick("norm_eps", default=1e-5),
                rope_theta=_rope_theta(d),
                max_position_embeddings=pick("max_position_embeddings", default=128_000),
                tie_word_embeddings=pick("tie_word_embeddings", default=True),
                bos_token_id=pick("bos_token_id", default=1),
                eos_token_id=pick("eos_token_id", default=7),
                pad_token_id=pick("pad_token_id", default=0),
                torch_dtype=dtype.replace("torch.", "") if isinstance(dtype, str) else dtype,
                model_type=model_type,
            ),
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "LFM2Config":
        """Read `config.json` from a checkpoint directory (or the file itself)."""
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: no such file or directory")
        file = p / "config.json" if p.is_dir() else p
        if not file.is_file():
            raise ConfigError(f"{file}: missing config.json")
        return cls.from_dict(read_json_object(file, ConfigError), source=str(file))

    def to_dict(self) -> dict[str, Any]:
        """A config.json that both lfmkit and transformers' Lfm2ForCausalLM read as this model."""
        out = {
            "architectures": ["Lfm2ForCausalLM"],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.block_ff_dim,
            "block_ff_dim": self.block_ff_dim,
            "block_auto_adjust_ff_dim": self.block_auto_adjust_ff_dim,
            "block_multiple_of": self.block_multiple_of,
            "block_ffn_dim_multiplier": self.block_ffn_dim_multiplier,
            "layer_types": list(self.layer_types),
            "full_attn_idxs": self.attention_layers,
            "conv_L_cache": self.conv_L_cache,
            "conv_bias": self.conv_bias,
            "norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "tie_embedding": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
            "use_cache": True,
        }
        if self.head_dim is not None:
            out["head_dim"] = self.head_dim
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        file = d / "config.json"
        file.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return file

    def summary(self) -> dict[str, Any]:
        """Facts a user wants at a glance (used by `lfmkit info`)."""
        return {
            "name": self.name,
            "parameters": self.num_parameters(),
            "hidden_size": self.hidden_size,
            "layers": self.num_hidden_layers,
            "conv_layers": len(self.conv_layers),
            "attention_layers": len(self.attention_layers),
            "attention_layer_indices": self.attention_layers,
            "heads": self.num_attention_heads,
            "kv_heads": self.num_key_value_heads,
            "head_dim": self.head_size,
            "ff_dim": self.ff_dim,
            "vocab_size": self.vocab_size,
            "context_length": self.max_position_embeddings,
            "tied_embeddings": self.tie_word_embeddings,
            "state_bytes_per_token_bf16": self.state_bytes_per_token(2),
            "state_fixed_bytes_bf16": self.state_fixed_bytes(2),
        }

    def copy(self, **changes: Any) -> "LFM2Config":
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _agree(found: list[tuple[str, Any]]) -> None:
    """Two spellings of one field in one file must hold the same value."""
    (first, a), *rest = found
    for key, b in rest:
        if a != b or isinstance(a, bool) != isinstance(b, bool):
            raise ConfigError(
                f"fields '{first}' ({shown(a)}) and '{key}' ({shown(b)}) disagree; "
                f"they are two spellings of one setting"
            )


def _attention_indices(d: dict[str, Any], n_layers: int) -> list[int]:
    """`full_attn_idxs` checked: an array of layer indices in [0, n_layers)."""
    idxs = d["full_attn_idxs"]
    if not isinstance(idxs, list):
        raise _field_error("full_attn_idxs", f"expected an array of layer indices, got {shown(idxs)}")
    for i in idxs:
        if not (is_int(i) and 0 <= i < n_layers):
            raise _field_error(
                "full_attn_idxs", f"entry {shown(i)} is not a layer index from 0 to num_hidden_layers-1={n_layers - 1}"
            )
    return idxs


def _agrees_with_attention_indices(d: dict[str, Any], config: LFM2Config) -> LFM2Config:
    """A file with both `layer_types` and `full_attn_idxs` must mean the same layout by each."""
    if d.get("layer_types") is not None and d.get("full_attn_idxs") is not None:
        idxs = _attention_indices(d, config.num_hidden_layers)
        if sorted(set(idxs)) != config.attention_layers:
            raise _field_error(
                "full_attn_idxs", f"{shown(idxs)} disagrees with layer_types (attention at {config.attention_layers})"
            )
    return config


def _layer_types(d: dict[str, Any], n_layers: int) -> list[str]:
    """`layer_types`, else the layout `full_attn_idxs` names, else all attention (the reference's default)."""
    types = d.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or not types:
            raise _field_error(
                "layer_types", f"expected a non-empty array of '{CONV}' / '{ATTENTION}', got {shown(types)}"
            )
        return list(types)
    if d.get("full_attn_idxs") is None:
        return [ATTENTION] * n_layers
    idxs = set(_attention_indices(d, n_layers))
    return [ATTENTION if i in idxs else CONV for i in range(n_layers)]


def _rope_theta(d: dict[str, Any]) -> float:
    """`rope_theta`, at the top level or inside `rope_parameters` / `rope_scaling` (default RoPE only)."""
    rope_key, rope = "rope_parameters", {}
    found = [(key, d[key]) for key in ("rope_parameters", "rope_scaling") if d.get(key) is not None]
    if found:
        _agree(found)
        rope_key, rope = found[0]
        if not isinstance(rope, dict):
            raise _field_error(rope_key, f"expected an object, got {shown(rope)}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", None):
            raise _field_error(f"{rope_key}.rope_type", f"only 'default' RoPE is supported, got {shown(kind)}")
    thetas = [
        (key, value)
        for key, value in (("rope_theta", d.get("rope_theta")), (f"{rope_key}.rope_theta", rope.get("rope_theta")))
        if value is not None
    ]
    if not thetas:
        return 1_000_000.0
    _agree(thetas)
    key, theta = thetas[0]
    _need_positive(key, theta)
    return float(theta)


def _hybrid(hidden, layers, attn, heads, ff, auto=True) -> LFM2Config:
    return LFM2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=8,
        block_ff_dim=ff,
        block_auto_adjust_ff_dim=auto,
        layer_types=[ATTENTION if i in attn else CONV for i in range(layers)],
        max_position_embeddings=128_000,
    )


def _dense(hidden, layers, heads, kv, head_dim, ff, vocab=151_936) -> LFM2Config:
    """A Qwen3-shaped dense transformer: all attention, QK-norm, SwiGLU, explicit head_dim."""
    return LFM2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        block_ff_dim=ff,
        block_auto_adjust_ff_dim=False,
        layer_types=[ATTENTION] * layers,
        norm_eps=1e-6,
        max_position_embeddings=40_960,
        bos_token_id=151_643,
        eos_token_id=151_645,
        pad_token_id=151_643,
    )


_ATTN_16 = (2, 5, 8, 10, 12, 14)
PRESETS: dict[str, LFM2Config] = {
    "lfm2-350m": _hybrid(1024, 16, _ATTN_16, 16, 6656),
    "lfm2-700m": _hybrid(1536, 16, _ATTN_16, 24, 10240),
    "lfm2-1.2b": _hybrid(2048, 16, _ATTN_16, 32, 12288),
    "lfm2-2.6b": _hybrid(2048, 30, (2, 5, 9, 13, 17, 21, 24, 27), 32, 10752, auto=False),
    # Same-class dense transformers for side-by-side benchmarks (not LFM2 checkpoints).
    "qwen3-0.6b-shape": _dense(1024, 28, 16, 8, 128, 3072),
    "qwen3-1.7b-shape": _dense(2048, 28, 16, 8, 128, 6144),
    "qwen3-4b-shape": _dense(2560, 36, 32, 8, 128, 9728),
}

# The dense baseline each hybrid preset is compared with.
DENSE_BASELINE = {"lfm2-350m": "qwen3-0.6b-shape", "lfm2-1.2b": "qwen3-1.7b-shape", "lfm2-2.6b": "qwen3-4b-shape"}
