"""GGUF in and out: the file llama.cpp and Ollama run, for LFM2 (architecture `lfm2`).

`write_gguf(model, path, type="f16")` writes every `lfm2.*` key llama.cpp reads, the
tokenizer (byte-level BPE, pre-tokenizer `lfm2`) and the chat template, and the tensors under
llama.cpp's names. Tensor types follow llama.cpp's own conventions: 1-D tensors (norms) and
the short-convolution kernel always stay float32 (the SSM_CONV op reads float32 kernels), the
other matrices take the requested type. A q8_0/q4_0 matrix whose rows are not a multiple of 32
falls back to f16, and with q4_0 the (tied) embedding is written as q8_0 — the output matrix is
the most sensitive one, and llama-quantize also keeps it above 4 bits.

The writer streams: tensor headers first, then one converted tensor at a time, so exporting
needs little memory beyond the model itself.

`load_gguf_model(path)` is the way back (f32/f16/bf16/q8_0/q4_0, dequantised), used by
`LFM2.from_pretrained("model.gguf")`; `read_gguf_config(path)` reads only the config;
`iter_gguf_weights(path)` yields the raw blocks for code that keeps q8_0/q4_0 weights packed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..config import ATTENTION, CONV, LFM2Config
from ..errors import CheckpointError, ExportError
from . import ggml_quant
from .gguf_vocab import GGUFVocab, read_vocab, write_tokenizer

ARCH = "lfm2"
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# general.file_type values (llama.cpp's LLAMA_FTYPE_*)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}
QUANTIZATION_VERSION = 2

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


# ---- validation ------------------------------------------------------------------------------
def check_exportable(config: LFM2Config, type: str = "f16") -> None:
    """Raise ExportError for what llama.cpp's LFM2 graph cannot express."""
    if type not in TYPES:
        raise ExportError(f"unsupported GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    if config.conv_bias:
        raise ExportError("config field 'conv_bias' is true: llama.cpp's LFM2 short convolution has no "
                          "biases, so this model cannot be written as GGUF")
    if config.num_attention_heads * config.head_size != config.hidden_size:
        raise ExportError(f"config field 'head_dim': {config.num_attention_heads} heads x {config.head_size} "
                          f"!= hidden_size {config.hidden_size}; llama.cpp's LFM2 needs "
                          f"heads x head_dim == hidden_size (dense Qwen3-shaped presets cannot be written)")
    if not config.conv_layers:
        raise ExportError("the model has no short-convolution layers: architecture 'lfm2' in llama.cpp is "
                          "the conv+attention hybrid (an all-attention model is not an LFM2)")
    if config.conv_L_cache < 2:
        raise ExportError(f"config field 'conv_L_cache' is {config.conv_L_cache}; llama.cpp needs at least 2")


def _check_weights(model) -> dict[str, torch.Tensor]:
    """The model's float tensors by Hugging Face name (tied head left out)."""
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        try:
            gguf_name(name)
        except KeyError:
            raise ExportError(f"tensor '{name}' has no GGUF counterpart (a quantised or modified model? "
                              f"export the float model)") from None
        if not torch.is_floating_point(p):
            raise ExportError(f"tensor '{name}' is {p.dtype}, not floating point: dequantise the model "
                              f"before exporting")
        tensors[name] = p
    return tensors


# ---- writing ---------------------------------------------------------------------------------
@dataclass
class _Planned:
    name: str
    shape: tuple[int, ...]          # numpy (row-major) shape of the stored array
    qtype: "object"                 # gguf.GGMLQuantizationType
    nbytes: int
    np_dtype: np.dtype
    make: Callable[[], np.ndarray]


def _tensor_type(name: str, t: torch.Tensor, type: str) -> str:
    if t.dim() <= 1 or name.endswith("shortconv.conv.weight"):
        return "f32"
    if type in ("q8_0", "q4_0"):
        if not ggml_quant.can_quantize(t.shape):
            return "f16"
        if type == "q4_0" and name in ("token_embd.weight", "output.weight"):
            return "q8_0"
    return type


def _plan(name: str, t: torch.Tensor, kind: str) -> _Planned:
    from gguf import GGMLQuantizationType as Q

    t = t.detach()
    if name.endswith("shortconv.conv.weight"):
        t = t.reshape(t.shape[0], -1)            # [hidden, 1, k] -> [hidden, k]
    shape = tuple(t.shape)
    n = t.numel()
    if kind == "f32":
        return _Planned(name, shape, Q.F32, 4 * n, np.dtype(np.float32),
                        lambda: t.to("cpu", torch.float32).contiguous().numpy())
    if kind == "f16":
        return _Planned(name, shape, Q.F16, 2 * n, np.dtype(np.float16),
                        lambda: t.to("cpu", torch.float16).contiguous().numpy())
    if kind == "bf16":
        byte_shape = shape[:-1] + (shape[-1] * 2,)
        return _Planned(name, byte_shape, Q.BF16, 2 * n, np.dtype(np.uint8),
                        lambda: t.to("cpu", torch.bfloat16).contiguous().view(torch.uint8).numpy()
                        .reshape(byte_shape))
    qtype = Q.Q8_0 if kind == "q8_0" else Q.Q4_0
    per_row = shape[-1] // ggml_quant.BLOCK * ggml_quant.BLOCK_BYTES[kind]
    byte_shape = shape[:-1] + (per_row,)
    nbytes = int(np.prod(byte_shape))
    return _Planned(name, byte_shape, qtype, nbytes, np.dtype(np.uint8),
                    lambda: ggml_quant.quantize(t, kind).numpy())


def _add_metadata(writer, config: LFM2Config, vocab, type: str, name: str | None) -> None:
    writer.add_name(name or config.name or "LFM2")
    writer.add_type("model")
    writer.add_file_type(FILE_TYPES[type])
    if type in ("q8_0", "q4_0"):
        writer.add_quantization_version(QUANTIZATION_VERSION)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.ff_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv([config.num_key_value_heads if t == ATTENTION else 0 for t in config.layer_types])
    writer.add_rope_freq_base(float(config.rope_theta))
    writer.add_layer_norm_rms_eps(float(config.norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_shortconv_l_cache(config.conv_L_cache)
    # tokenizer
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("lfm2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for setter, value in ((writer.add_bos_token_id, vocab.bos_token_id),
                          (writer.add_eos_token_id, vocab.eos_token_id),
                          (writer.add_pad_token_id, vocab.pad_token_id)):
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _tokenizer_dir_of(model, tokenizer_dir) -> Path:
    if tokenizer_dir is not None:
        return Path(tokenizer_dir)
    src = getattr(model, "source_path", None)
    if src and Path(src).is_dir():
        return Path(src)
    raise ExportError("a GGUF file embeds the tokenizer, but this model was not loaded from a folder with "
                      "tokenizer.json: pass tokenizer_dir= (CLI: --tokenizer DIR)")


def write_gguf(model, path: str | os.PathLike, type: str = "f16", tokenizer_dir: str | os.PathLike | None = None,
               name: str | None = None) -> Path:
    """Write `model` (an LFM2, or a checkpoint path to load) as a GGUF file llama.cpp runs.

    type: f32 | f16 | bf16 | q8_0 | q4_0. tokenizer_dir: folder with tokenizer.json (default:
    the folder the model was loaded from). Returns the path written.
    """
    import gguf

    type = str(type).lower()
    if not hasattr(model, "config"):
        from ..checkpoint import load_model

        src = model
        model = load_model(src)
        if tokenizer_dir is None and Path(str(src)).is_dir():
            tokenizer_dir = src
    config: LFM2Config = model.config
    check_exportable(config, type)
    tensors = _check_weights(model)
    vocab = read_vocab(_tokenizer_dir_of(model, tokenizer_dir), config.vocab_size,
                       bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_ids[0],
                       pad_token_id=config.pad_token_id)

    planned = []
    for hf, t in tensors.items():
        g = gguf_name(hf)
        planned.append(_plan(g, t, _tensor_type(g, t, type)))

    out = Path(path)
    if out.is_dir():
        raise ExportError(f"{out}: is a directory; give the .gguf file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        _add_metadata(writer, config, vocab, type, name)
        for p in planned:
            writer.add_tensor_info(p.name, p.shape, p.np_dtype, p.nbytes, raw_dtype=p.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for p in planned:
            writer.write_tensor_data(p.make())
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


# ---- reading ---------------------------------------------------------------------------------
def _open(path: str | os.PathLike):
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
    reader = reader or _open(path)

    def need(key):
        v = _field(reader, f"{ARCH}.{key}")
        if v is None:
            raise CheckpointError(f"{path}: GGUF key '{ARCH}.{key}' is missing")
        return v

    n_layers = int(need("block_count"))
    kv = need("attention.head_count_kv")
    kv = [int(x) for x in kv] if isinstance(kv, list) else [int(kv)] * n_layers
    if len(kv) != n_layers:
        raise CheckpointError(f"{path}: '{ARCH}.attention.head_count_kv' has {len(kv)} entries for "
                              f"{n_layers} blocks")
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
            vocab_size=int(vocab), hidden_size=hidden, num_hidden_layers=n_layers,
            num_attention_heads=heads, num_key_value_heads=max(kv) or heads,
            head_dim=int(key_len) if key_len and int(key_len) != hidden // heads else None,
            block_ff_dim=int(need("feed_forward_length")), block_auto_adjust_ff_dim=False,
            layer_types=[ATTENTION if k > 0 else CONV for k in kv],
            conv_L_cache=int(_field(reader, f"{ARCH}.shortconv.l_cache", 3)),
            norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(_field(reader, f"{ARCH}.rope.freq_base", 1_000_000.0)),
            max_position_embeddings=int(_field(reader, f"{ARCH}.context_length", 128_000)),
            tie_word_embeddings=not has_output,
            bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id", 1)),
            eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id", 7)),
            pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
            torch_dtype="float32", name=_field(reader, "general.name"),
        )
    except Exception as exc:  # ConfigError or a bad value type
        raise CheckpointError(f"{path}: GGUF keys do not describe a valid LFM2 model ({exc})") from None


@dataclass
class GGUFWeight:
    """One stored tensor: its lfmkit name, GGML type name and raw data (a view of the file)."""

    name: str
    type: str                  # "f32", "f16", "bf16", "q8_0", "q4_0"
    shape: tuple[int, ...]     # the lfmkit parameter shape
    data: np.ndarray           # float array, or uint8 blocks for bf16/q8_0/q4_0

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dequantised copy as a torch tensor of `self.shape`."""
        if self.type in ("f32", "f16"):
            return torch.from_numpy(np.array(self.data)).reshape(self.shape).to(dtype)
        if self.type == "bf16":
            raw = torch.from_numpy(np.array(self.data, dtype=np.uint8)).view(torch.bfloat16)
            return raw.reshape(self.shape).to(dtype)
        return ggml_quant.dequantize(torch.from_numpy(np.array(self.data)), self.type, self.shape, dtype)

    def blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For q8_0/q4_0 matrices: (int8 codes [out, in], float32 scales [out, in/32])."""
        if self.type not in ("q8_0", "q4_0"):
            raise ValueError(f"{self.name} is {self.type}, not a block-quantised matrix")
        rows, cols = self.shape
        return ggml_quant.split_blocks(torch.from_numpy(np.array(self.data)), self.type, rows, cols)


def iter_gguf_weights(path: str | os.PathLike, reader=None) -> Iterator[GGUFWeight]:
    """Every tensor of an LFM2 GGUF file under its lfmkit name, undecoded."""
    reader = reader or _open(path)
    names = {0: "f32", 1: "f16", 30: "bf16", 8: "q8_0", 2: "q4_0"}
    for t in reader.tensors:
        kind = names.get(int(t.tensor_type))
        if kind is None:
            raise CheckpointError(f"{path}: tensor '{t.name}' has GGML type {t.tensor_type.name}; lfmkit reads "
                                  f"F32, F16, BF16, Q8_0 and Q4_0 (re-export with one of those)")
        try:
            name = hf_name(t.name)
        except KeyError:
            raise CheckpointError(f"{path}: unexpected tensor '{t.name}' for architecture lfm2") from None
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if name.endswith("conv.conv.weight"):
            shape = (shape[0], 1, shape[1])
        yield GGUFWeight(name, kind, shape, t.data)


def load_gguf_model(path: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None):
    """Build an LFM2 from a GGUF file (weights dequantised to `dtype`; default float32,
    bfloat16 for bf16 files)."""
    from ..model import LFM2

    reader = _open(path)
    config = read_gguf_config(path, reader)
    weights = list(iter_gguf_weights(path, reader))
    if dtype is None:
        dtype = torch.bfloat16 if weights and all(w.type in ("bf16", "f32") for w in weights) \
            and any(w.type == "bf16" for w in weights) else torch.float32
    config = config.copy(torch_dtype=str(dtype).replace("torch.", ""))
    with torch.device("meta"):
        model = LFM2(config)
    expected = dict(model.named_parameters(remove_duplicate=False))
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    device = torch.device(device) if device is not None else torch.device("cpu")
    seen = set()
    for w in weights:
        if w.name not in expected:
            raise CheckpointError(f"{path}: tensor '{gguf_name(w.name)}' does not fit the model its keys describe")
        param = expected[w.name]
        if tuple(param.shape) != w.shape:
            raise CheckpointError(f"{path}: tensor '{gguf_name(w.name)}' has shape {list(w.shape)}, the keys "
                                  f"imply {list(param.shape)}")
        module_name, _, attr = w.name.rpartition(".")
        setattr(model.get_submodule(module_name), attr,
                torch.nn.Parameter(w.to_tensor(dtype).to(device), requires_grad=False))
        seen.add(w.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"{path}: missing tensors: " + ", ".join(gguf_name(m) for m in missing[:8]))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.gguf_path = str(path)
    # source_path is where lfmkit looks for tokenizer files: the tokenizer embedded in the file,
    # written out as a Hugging Face tokenizer folder (tokenizes exactly as llama.cpp does).
    vocab = read_gguf_vocab(path, reader)
    model.source_path = str(_tokenizer_folder(vocab, config.max_position_embeddings)) if vocab else None
    return model.eval()


_TOKENIZER_DIRS: list = []


def _tokenizer_folder(vocab: GGUFVocab, context: int) -> Path:
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lfmkit-gguf-tokenizer-"))
    if not _TOKENIZER_DIRS:
        atexit.register(lambda: [shutil.rmtree(x, ignore_errors=True) for x in _TOKENIZER_DIRS])
    _TOKENIZER_DIRS.append(d)
    return write_tokenizer(vocab, d, model_max_length=context)


def read_gguf_vocab(path: str | os.PathLike, reader=None) -> GGUFVocab | None:
    """The tokenizer stored in a GGUF file (None when it has none)."""
    reader = reader or _open(path)
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

    return GGUFVocab(tokens=list(tokens), token_types=[int(t) for t in types],
                     merges=list(_field(reader, "tokenizer.ggml.merges") or []),
                     bos_token_id=opt_int("tokenizer.ggml.bos_token_id"),
                     eos_token_id=opt_int("tokenizer.ggml.eos_token_id"),
                     pad_token_id=opt_int("tokenizer.ggml.padding_token_id"),
                     add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
                     add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
                     chat_template=_field(reader, "tokenizer.chat_template"))


def extract_tokenizer(path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Write the GGUF file's tokenizer as tokenizer.json + tokenizer_config.json into `directory`."""
    vocab = read_gguf_vocab(path)
    if vocab is None:
        raise CheckpointError(f"{path}: the GGUF file carries no tokenizer")
    return write_tokenizer(vocab, directory, model_max_length=read_gguf_config(path).max_position_embeddings)


def gguf_summary(path: str | os.PathLike) -> dict:
    """What a GGUF file holds: size, tensor count per type, and its main keys (for the CLI)."""
    reader = _open(path)
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
