"""LFM2Config: every field of the LFM2 family, its presets, and config.json in and out.

Real checkpoints spell the same fields in several ways (`block_ff_dim` or `intermediate_size`,
`full_attn_idxs` or `layer_types`, `rope_theta` or `rope_parameters`, ...); `from_dict`
accepts all of them and `to_dict` writes a config.json that `transformers` loads as the same
model. The dense all-attention presets (Qwen3 shapes) exist so benchmarks can compare the
hybrid with a same-class transformer inside one engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONV = "conv"
ATTENTION = "full_attention"
SUPPORTED_MODEL_TYPES = ("lfm2",)


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
        if not self.layer_types:
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
        def need(cond: bool, fieldname: str, msg: str):
            if not cond:
                raise ConfigError(f"config field '{fieldname}': {msg}")

        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config field 'model_type': unsupported model type {self.model_type!r} "
                f"(lfmkit supports {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "block_ff_dim", "conv_L_cache", "max_position_embeddings"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
                 f"must be a positive integer, got {value!r}")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"{self.num_key_value_heads} does not divide num_attention_heads={self.num_attention_heads}")
        if self.head_dim is None:
            need(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                 f"{self.num_attention_heads} does not divide hidden_size={self.hidden_size}")
        need(self.head_size % 2 == 0, "head_dim", f"must be even for RoPE, got {self.head_size}")
        need(len(self.layer_types) == self.num_hidden_layers, "layer_types",
             f"has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}")
        bad = sorted({t for t in self.layer_types if t not in (CONV, ATTENTION)})
        need(not bad, "layer_types", f"unknown layer type(s) {bad}; expected '{CONV}' or '{ATTENTION}'")
        need(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")

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
        """Build from any config.json variant seen in real LFM2 checkpoints."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        d = dict(data)
        model_type = d.get("model_type", "lfm2")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: field 'model_type': unsupported model type {model_type!r} "
                f"(lfmkit supports {', '.join(SUPPORTED_MODEL_TYPES)})"
            )

        def pick(*names, default=None, required=False):
            for n in names:
                if n in d and d[n] is not None:
                    return d[n]
            if required:
                raise ConfigError(f"{source}: missing field '{names[0]}'")
            return default

        n_layers = pick("num_hidden_layers", required=True)
        layer_types = pick("layer_types")
        if layer_types is None:
            idxs = pick("full_attn_idxs")
            if idxs is None:
                idxs = list(range(n_layers))  # the reference's default: all attention
            if not isinstance(idxs, list) or not all(isinstance(i, int) for i in idxs):
                raise ConfigError(f"{source}: field 'full_attn_idxs' must be a list of integers")
            layer_types = [ATTENTION if i in idxs else CONV for i in range(n_layers)]
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_theta = pick("rope_theta", default=None)
        if rope_theta is None:
            rope_theta = rope.get("rope_theta", 1_000_000.0) if isinstance(rope, dict) else 1_000_000.0
        if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ConfigError(f"{source}: field 'rope_parameters.rope_type': only 'default' RoPE is supported, "
                              f"got {rope.get('rope_type', rope.get('type'))!r}")
        dtype = pick("torch_dtype", "dtype", default="bfloat16")
        kwargs = dict(
            vocab_size=pick("vocab_size", default=65536),
            hidden_size=pick("hidden_size", required=True),
            num_hidden_layers=n_layers,
            num_attention_heads=pick("num_attention_heads", "num_heads", required=True),
            num_key_value_heads=pick("num_key_value_heads", default=None),
            head_dim=pick("head_dim", default=None),
            block_ff_dim=pick("block_ff_dim", "intermediate_size", required=True),
            block_auto_adjust_ff_dim=pick("block_auto_adjust_ff_dim", default=True),
            block_multiple_of=pick("block_multiple_of", default=256),
            block_ffn_dim_multiplier=d.get("block_ffn_dim_multiplier", 1.0),
            layer_types=list(layer_types),
            conv_L_cache=pick("conv_L_cache", default=3),
            conv_bias=pick("conv_bias", default=False),
            norm_eps=pick("norm_eps", "rms_norm_eps", default=1e-5),
            rope_theta=float(rope_theta),
            max_position_embeddings=pick("max_position_embeddings", default=128_000),
            tie_word_embeddings=pick("tie_word_embeddings", "tie_embedding", default=True),
            bos_token_id=pick("bos_token_id", default=1),
            eos_token_id=pick("eos_token_id", default=7),
            pad_token_id=pick("pad_token_id", default=0),
            torch_dtype=str(dtype).replace("torch.", ""),
            model_type=model_type,
        )
        if kwargs["num_key_value_heads"] is None:
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except TypeError as exc:  # e.g. comparing a string with an int
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "LFM2Config":
        """Read `config.json` from a checkpoint directory (or the file itself)."""
        p = Path(path)
        file = p / "config.json" if p.is_dir() else p
        if not p.exists():
            raise ConfigError(f"{p}: no such file or directory")
        if not file.is_file():
            raise ConfigError(f"{file}: missing config.json")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{file}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(file))

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


def _hybrid(hidden, layers, attn, heads, ff, auto=True) -> LFM2Config:
    return LFM2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8,
        block_ff_dim=ff, block_auto_adjust_ff_dim=auto,
        layer_types=[ATTENTION if i in attn else CONV for i in range(layers)],
        max_position_embeddings=128_000,
    )


def _dense(hidden, layers, heads, kv, head_dim, ff, vocab=151_936) -> LFM2Config:
    """A Qwen3-shaped dense transformer: all attention, QK-norm, SwiGLU, explicit head_dim."""
    return LFM2Config(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=head_dim, block_ff_dim=ff, block_auto_adjust_ff_dim=False,
        layer_types=[ATTENTION] * layers, norm_eps=1e-6, max_position_embeddings=40_960,
        bos_token_id=151_643, eos_token_id=151_645, pad_token_id=151_643,
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
}

# The dense baseline each hybrid preset is compared with.
DENSE_BASELINE = {"lfm2-350m": "qwen3-0.6b-shape", "lfm2-1.2b": "qwen3-1.7b-shape"}
