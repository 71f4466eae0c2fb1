"""GGUF reading: the `lfm2` tensor names, config, tokenizer and weights of a GGUF file.

`read_gguf_config(path)` reads only the config; `iter_gguf_weights(path)` yields every tensor
under its Hugging Face name, undecoded (`GGUFWeight.to_tensor()` dequantises f32/f16/bf16/
q8_0/q4_0, `.blocks()` keeps q8_0/q4_0 packed); `read_gguf_vocab(path)` the embedded tokenizer.
Loading a model from these lives in `lfmkit.io.checkpoint` (the one loader loop); writing
GGUF files lives in `lfmkit.export.gguf`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..config import ATTENTION, CONV, LFM2Config
from ..errors import CheckpointError
from . import ggml
from .gguf_vocab import GGUFVocab, write_tokenizer

ARCH = "lfm2"

# Hugging Face name (after `model.layers.N.`) -> GGUF name (after `blk.N.`)
LAYER_NAMES = {
    "operator_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "conv.in_proj.weight": "shortconv.in_proj.weight",
    "conv.conv.weight": "shortconv.conv.weight",
    "conv.out_proj.weight": "shortconv.out_proj.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.out_proj.weight": "attn_output.weight",
    "self_attn.q_layernorm.weight": "attn_q_norm.weight",
    "self_attn.k_layernorm.weight": "attn_k_norm.weight",
}
GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.embedding_norm.weight": "token_embd_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    raise KeyError(hf_name)


def hf_name(gguf_tensor: str) -> str:
    for hf, g in GLOBAL_NAMES.items():
        if g == gguf_tensor:
            return hf
    parts = gguf_tensor.split(".", 2)  # blk, N, rest
    if len(parts) == 3 and parts[0] == "blk":
        for hf, g in LAYER_NAMES.items():
            if g == parts[2]:
                return f"model.layers.{parts[1]}.{hf}"
    raise KeyError(gguf_tensor)


# ---- reading ---------------------------------------------------------------------------------
def open_reader(path: str | os.PathLike):
    from gguf import GGUFReader

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such GGUF file")
    try:
        reader = GGUFReader(str(p))
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError, struct.error, ...
        raise CheckpointError(f"{p}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise CheckpointError(f"{p}: GGUF architecture is {arch!r}; lfmkit reads 'lfm2' files only")
    return reader


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_gguf_config(path: str | os.PathLike, reader=None) -> LFM2Config:
    """The LFM2Config stored in a GGUF file's `lfm2.*` keys (no tensors read)."""
    reader = reader or open_reader(path)

    def need(key):
        v = _field(reader, f"{ARCH}.{key}")
        if v is None:
            raise CheckpointError(f"{path}: GGUF key '{ARCH}.{key}' is missing")
        return v

    n_layers = int(need("block_count"))
    kv = need("attention.head_count_kv")
    kv = [int(x) for x in kv] if isinstance(kv, list) else [int(kv)] * n_layers
    if len(kv) != n_layers:
        raise CheckpointError(f"{path}: '{ARCH}.attention.head_count_kv' has {len(kv)} entries for {n_layers} blocks")
    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = _field(reader, f"{ARCH}.vocab_size") or (len(tokens.data) if tokens is not None else None)
    if vocab is None:
        raise CheckpointError(f"{path}: neither '{ARCH}.vocab_size' nor a token list is present")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    key_len = _field(reader, f"{ARCH}.attention.key_length")
    try:
        return LFM2Config(
            vocab_size=int(vocab),
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=max(kv) or heads,
            head_dim=int(key_len) if key_len and int(key_len) != hidden // heads else None,
            block_ff_dim=int(need("feed_forward_length")),
            block_auto_adjust_ff_dim=False,
            layer_types=[ATTENTION if k > 0 else CONV for k in kv],
            conv_L_cache=int(_field(reader, f"{ARCH}.shortconv.l_cache", 3)),
            norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(_field(reader, f"{ARCH}.rope.freq_base", 1_000_000.0)),
            max_position_embeddings=int(_field(reader, f"{ARCH}.context_length", 128_000)),
            tie_word_embeddings=not has_output,
            bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
            eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 7)),
            pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
            torch_dtype="float32",
            name=_field(reader, "general.name"),
        )
    except Exception as exc:  # ConfigError or a bad value type
        raise CheckpointError(f"{path}: GGUF keys do not describe a valid LFM2 model ({exc})") from None


@dataclass
class GGUFWeight:
    """One stored tensor: its lfmkit name, GGML type name and raw data (a view of the file)."""

    name: str
    type: str  # "f32", "f16", "bf16", "q8_0", "q4_0"
    shape: tuple[int, ...]  # the lfmkit parameter shape
    data: np.ndarray  # float array, or uint8 blocks for bf16/q8_0/q4_0

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantised copy as a torch tensor of `self.shape`."""
        if self.type in ("f32", "f16"):
            return torch.from_numpy(np.array(self.data)).reshape(self.shape).to(dtype)
        if self.type == "bf16":
            raw = torch.from_numpy(np.array(self.data, dtype=np.uint8)).view(torch.bfloat16)
            return raw.reshape(self.shape).to(dtype)
        return ggml.dequantize(torch.from_numpy(np.array(self.data)), self.type, self.shape, dtype)

    def blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For q8_0/q4_0 matrices: (int8 codes [out, in], float32 scales [out, in/32])."""
        if self.type not in ("q8_0", "q4_0"):
            raise ValueError(f"{self.name} is {self.type}, not a block-quantised matrix")
        rows, cols = self.shape
        return ggml.split_blocks(torch.from_numpy(np.array(self.data)), self.type, rows, cols)


def iter_gguf_weights(path: str | os.PathLike, reader=None) -> Iterator[GGUFWeight]:
    """Every tensor of an LFM2 GGUF file under its lfmkit name, undecoded."""
    reader = reader or open_reader(path)
    names = {0: "f32", 1: "f16", 30: "bf16", 8: "q8_0", 2: "q4_0"}
    for t in reader.tensors:
        kind = names.get(int(t.tensor_type))
        if kind is None:
            raise CheckpointError(
                f"{path}: tensor '{t.name}' has GGML type {t.tensor_type.name}; lfmkit reads "
                f"F32, F16, BF16, Q8_0 and Q4_0 (re-export with one of those)"
            )
        try:
            name = hf_name(t.name)
        except KeyError:
            raise CheckpointError(f"{path}: unexpected tensor '{t.name}' for architecture lfm2") from None
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if name.endswith("conv.conv.weight"):
            shape = (shape[0], 1, shape[1])
        yield GGUFWeight(name, kind, shape, t.data)


TOKENIZER_DIRS: list = []


def tokenizer_folder(vocab: GGUFVocab, context: int) -> Path:
    """The GGUF file's tokenizer written out as a Hugging Face tokenizer folder (removed at exit):
    it tokenizes exactly as llama.cpp does."""
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lfmkit-gguf-tokenizer-"))
    if not TOKENIZER_DIRS:
        atexit.register(lambda: [shutil.rmtree(x, ignore_errors=True) for x in TOKENIZER_DIRS])
    TOKENIZER_DIRS.append(d)
    return write_tokenizer(vocab, d, model_max_length=context)


def read_gguf_vocab(path: str | os.PathLike, reader=None) -> GGUFVocab | None:
    """The tokenizer stored in a GGUF file (None when it has none)."""
    reader = reader or open_reader(path)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        return None
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(f"{path}: tokenizer model {model!r} is not supported (LFM2 uses 'gpt2' BPE)")
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)

    def opt_int(key):
        v = _field(reader, key)
        return int(v) if v is not None else None

    return GGUFVocab(
        tokens=list(tokens),
        token_types=[int(t) for t in types],
        merges=list(_field(reader, "tokenizer.ggml.merges") or []),
        bos_token_id=opt_int("tokenizer.ggml.bos_token_id"),
        eos_token_id=opt_int("tokenizer.ggml.eos_token_id"),
        pad_token_id=opt_int("tokenizer.ggml.padding_token_id"),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )


def extract_tokenizer(path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Write the GGUF file's tokenizer as tokenizer.json + tokenizer_config.json into `directory`."""
    vocab = read_gguf_vocab(path)
    if vocab is None:
        raise CheckpointError(f"{path}: the GGUF file carries no tokenizer")
    return write_tokenizer(vocab, directory, model_max_length=read_gguf_config(path).max_position_embeddings)


def gguf_summary(path: str | os.PathLike) -> dict:
    """What a GGUF file holds: size, tensor count per type, and its main keys (for the CLI)."""
    reader = open_reader(path)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return {
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "tensors": len(reader.tensors),
        "tensor_types": counts,
        "file_type": _field(reader, "general.file_type"),
        "vocab": len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0,
        "chat_template": "tokenizer.chat_template" in reader.fields,
    }
