"""GGUF out: the file llama.cpp and Ollama run, for LFM2 (architecture `lfm2`).

`write_gguf(model, path, type="f16")` writes every `lfm2.*` key llama.cpp reads, the
tokenizer (byte-level BPE, pre-tokenizer `lfm2`) and the chat template, and the tensors under
llama.cpp's names. Tensor types follow llama.cpp's own conventions: 1-D tensors (norms) and
the short-convolution kernel always stay float32 (the SSM_CONV op reads float32 kernels), the
other matrices take the requested type. A q8_0/q4_0 matrix whose rows are not a multiple of 32
falls back to f16, and with q4_0 the (tied) embedding is written as q8_0 — the output matrix is
the most sensitive one, and llama-quantize also keeps it above 4 bits.

The writer streams: tensor headers first, then one converted tensor at a time, so exporting
needs little memory beyond the model itself. Reading GGUF files back is `lfmkit.io.gguf`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import ATTENTION, LFM2Config
from ..errors import ExportError
from ..io import ggml as ggml_quant
from ..io.gguf import ARCH, gguf_name
from ..io.gguf_vocab import read_vocab

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# general.file_type values (llama.cpp's LLAMA_FTYPE_*)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}
QUANTIZATION_VERSION = 2


# ---- validation ------------------------------------------------------------------------------
def check_exportable(config: LFM2Config, type: str = "f16") -> None:
    """Raise ExportError for what llama.cpp's LFM2 graph cannot express."""
    if type not in TYPES:
        raise ExportError(f"unsupported GGUF type {type!r}; choose one of {', '.join(TYPES)}")
    if config.conv_bias:
        raise ExportError(
            "config field 'conv_bias' is true: llama.cpp's LFM2 short convolution has no "
            "biases, so this model cannot be written as GGUF"
        )
    if config.num_attention_heads * config.head_size != config.hidden_size:
        raise ExportError(
            f"config field 'head_dim': {config.num_attention_heads} heads x {config.head_size} "
            f"!= hidden_size {config.hidden_size}; llama.cpp's LFM2 needs "
            f"heads x head_dim == hidden_size (dense Qwen3-shaped presets cannot be written)"
        )
    if not config.conv_layers:
        raise ExportError(
            "the model has no short-convolution layers: architecture 'lfm2' in llama.cpp is "
            "the conv+attention hybrid (an all-attention model is not an LFM2)"
        )
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
            raise ExportError(
                f"tensor '{name}' has no GGUF counterpart (a quantised or modified model? export the float model)"
            ) from None
        if not torch.is_floating_point(p):
            raise ExportError(
                f"tensor '{name}' is {p.dtype}, not floating point: dequantise the model before exporting"
            )
        tensors[name] = p
    return tensors


# ---- writing ---------------------------------------------------------------------------------
@dataclass
class _Planned:
    name: str
    shape: tuple[int, ...]  # numpy (row-major) shape of the stored array
    qtype: "object"  # gguf.GGMLQuantizationType
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
        t = t.reshape(t.shape[0], -1)  # [hidden, 1, k] -> [hidden, k]
    shape = tuple(t.shape)
    n = t.numel()
    if kind == "f32":
        return _Planned(
            name, shape, Q.F32, 4 * n, np.dtype(np.float32), lambda: t.to("cpu", torch.float32).contiguous().numpy()
        )
    if kind == "f16":
        return _Planned(
            name, shape, Q.F16, 2 * n, np.dtype(np.float16), lambda: t.to("cpu", torch.float16).contiguous().numpy()
        )
    if kind == "bf16":
        byte_shape = shape[:-1] + (shape[-1] * 2,)
        return _Planned(
            name,
            byte_shape,
            Q.BF16,
            2 * n,
            np.dtype(np.uint8),
            lambda: t.to("cpu", torch.bfloat16).contiguous().view(torch.uint8).numpy().reshape(byte_shape),
        )
    qtype = Q.Q8_0 if kind == "q8_0" else Q.Q4_0
    per_row = shape[-1] // ggml_quant.BLOCK * ggml_quant.BLOCK_BYTES[kind]
    byte_shape = shape[:-1] + (per_row,)
    nbytes = int(np.prod(byte_shape))
    return _Planned(name, byte_shape, qtype, nbytes, np.dtype(np.uint8), lambda: ggml_quant.quantize(t, kind).numpy())


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
    for setter, value in (
        (writer.add_bos_token_id, vocab.bos_token_id),
        (writer.add_eos_token_id, vocab.eos_token_id),
        (writer.add_pad_token_id, vocab.pad_token_id),
    ):
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
    raise ExportError(
        "a GGUF file embeds the tokenizer, but this model was not loaded from a folder with "
        "tokenizer.json: pass tokenizer_dir= (CLI: --tokenizer DIR)"
    )


def write_gguf(
    model,
    path: str | os.PathLike,
    type: str = "f16",
    tokenizer_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> Path:
    """Write `model` (an LFM2, or a checkpoint path to load) as a GGUF file llama.cpp runs.

    type: f32 | f16 | bf16 | q8_0 | q4_0. tokenizer_dir: folder with tokenizer.json (default:
    the folder the model was loaded from). Returns the path written.
    """
    import gguf

    type = str(type).lower()
    if not hasattr(model, "config"):
        from ..model.lfm2 import LFM2

        src = model
        model = LFM2.from_pretrained(src)
        if tokenizer_dir is None and Path(str(src)).is_dir():
            tokenizer_dir = src
    config: LFM2Config = model.config
    check_exportable(config, type)
    tensors = _check_weights(model)
    vocab = read_vocab(
        _tokenizer_dir_of(model, tokenizer_dir),
        config.vocab_size,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_ids[0],
        pad_token_id=config.pad_token_id,
    )

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
