"""The one step that makes a model fast for inference: `optimize(model, quant=None)`.

    model = LFM2.from_pretrained(path)        # the reference: trainable, equal to transformers
    optimize(model, quant="int4")             # in place: int4 linears, fused q/k/v and w1/w3,
                                              # C small ops, the fused decode step

What it installs, each with the reference as its fallback:
- quantization (`quant="int8" | "int4"`): every linear whose width the format holds becomes a
  `QuantLinear` under its own Hugging Face name; q/k/v and w1/w3 are allocated back to back so
  the fast modules multiply by each group in one kernel call; the tied embedding/head becomes one
  quantized table. A quantized model is an inference model: its linears are buffers, and its
  remaining float parameters (norms, conv filters) are frozen (`requires_grad=False`) by this
  call. `quant="bf16"` casts, `None`/`"fp32"` keeps float32 weights.
- the fast module classes of fast/modules.py, swapped in by class (parameters and names kept);
  each runs its kernel path only when no gradient is needed, so a float model with fast paths
  still trains and equals the reference.
- the fused decode step (`model.fused_decode`), used for single-token steps of quantized models.
- the prefill mode of the quantized linears (`prefill="w8a8"`, the default: int8 GEMMs on
  activations quantized per token; `"bf16"`: bf16 GEMMs on weights dequantized per tile; see
  quant/prefill.py); `set_prefill(model, mode)` changes it later.

`deoptimize(model)` swaps the reference classes back (quantized weights stay quantized).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.formats import bits_of, check_mode, fits
from ..quant.linear import QuantEmbedding, QuantLinear, adjacent
from ..quant.prefill import check_prefill
from .decode_step import FusedDecode
from .modules import REFERENCE, SWAPS

CHUNK_ROWS = 128  # rows quantized at a time (bounds temporary memory)
# Linears that read the same input, stored back to back when quantized (in this order).
GROUPS = (("w1", "w3"), ("q_proj", "k_proj", "v_proj"))


def install_quantized_linears(model: nn.Module, mode: str, group_size: int = 32) -> dict[str, QuantLinear]:
    """Replace the model's linears and embedding by empty quantized layers (works on a model on
    the meta device too); return {checkpoint weight name: the layer that takes it}."""
    bits = bits_of(mode)
    targets: dict[str, QuantLinear] = {}
    tied = model.config.tie_word_embeddings
    for pname, parent in list(model.named_modules()):
        for group in GROUPS:
            mods = [getattr(parent, n, None) for n in group]
            if not all(isinstance(m, nn.Linear) for m in mods):
                continue
            k = mods[0].in_features
            if not fits(k, bits, group_size) or any(m.bias is not None for m in mods):
                continue
            for n, q in zip(group, adjacent(k, [m.out_features for m in mods], bits, group_size)):
                setattr(parent, n, q)
                targets[f"{pname}.{n}.weight"] = q
    for name, lin in list(model.named_modules()):
        if not isinstance(lin, nn.Linear) or (tied and name == "lm_head") or lin.bias is not None:
            continue
        if fits(lin.in_features, bits, group_size):
            q = QuantLinear(lin.in_features, lin.out_features, bits, group_size)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, q)
            targets[f"{name}.weight"] = q
    emb = model.model.embed_tokens
    if fits(emb.embedding_dim, bits, group_size):
        table = QuantLinear(emb.embedding_dim, emb.num_embeddings, bits, group_size)
        model.model.embed_tokens = QuantEmbedding(table)
        targets["model.embed_tokens.weight"] = table
        if tied:
            model.lm_head = table
    model.quant_mode = mode
    return targets


def quantize_rows(layer: QuantLinear, read_rows, rows: int) -> None:
    """Fill `layer` from a float source, CHUNK_ROWS rows at a time (read_rows(start, stop))."""
    for r0 in range(0, rows, CHUNK_ROWS):
        r1 = min(rows, r0 + CHUNK_ROWS)
        layer.set_weight(read_rows(r0, r1), slice(r0, r1))


def install_fast_modules(model: nn.Module, prefill: str = "w8a8") -> nn.Module:
    """Swap in the fast module classes (same parameters and names) and the fused decode step;
    set the quantized linears' prefill mode."""
    set_prefill(model, prefill)
    for m in model.modules():
        fast = SWAPS.get(type(m))
        if fast is not None:
            m.__class__ = fast
    model.__dict__["fused_decode"] = FusedDecode(model)
    return model


def set_prefill(model: nn.Module, mode: str) -> nn.Module:
    """How the quantized linears run many-token products: "w8a8", "bf16" or "float32"
    (quant/prefill.py; where this CPU's int8 or bf16 GEMM is slow, float32 runs instead)."""
    mode = check_prefill(mode)
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.prefill = mode
        m.__dict__.pop("_fused", None)  # fused views copy the mode of their parts: rebuild them
    return model


def optimize(model: nn.Module, quant: str | None = None, group_size: int = 32, prefill: str = "w8a8") -> nn.Module:
    """Install the inference fast paths on `model` in place (see the module doc); returns it."""
    mode = check_mode(quant) if quant is not None else None
    check_prefill(prefill)
    if mode == "fp32":
        model.float()
    elif mode == "bf16":
        model.to(torch.bfloat16)
    elif mode in ("int8", "int4"):
        model.float()
        old = {
            f"{n}.weight": m.weight
            for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Embedding)) and not isinstance(m, QuantLinear)
        }
        with torch.no_grad():
            for name, layer in install_quantized_linears(model, mode, group_size).items():
                w = old[name].detach()
                quantize_rows(layer, lambda a, b, w=w: w[a:b], w.shape[0])
        model.requires_grad_(False)
    return install_fast_modules(model, prefill)


def quantize(model: nn.Module, mode: str = "int8", group_size: int = 32) -> nn.Module:
    """Quantize a loaded LFM2 in place and install the fast paths: `optimize(model, quant=mode)`."""
    return optimize(model, quant=mode, group_size=group_size)


def deoptimize(model: nn.Module) -> nn.Module:
    """Swap the reference classes back in and drop the fused decode step (in place)."""
    for m in model.modules():
        ref = REFERENCE.get(type(m))
        if ref is not None:
            m.__class__ = ref
        m.__dict__.pop("_fused", None)
    model.__dict__.pop("fused_decode", None)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights the model holds (each shared tensor once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen and not t.is_meta:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def logit_agreement(reference: nn.Module, candidate: nn.Module, ids: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity and top-1 agreement of the two models' logits over `ids` [1, T]."""
    a = reference(ids).float().reshape(-1, reference.config.vocab_size)
    b = candidate(ids).float().reshape(-1, reference.config.vocab_size)
    cos = F.cosine_similarity(a, b, dim=-1).mean().item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return {"cosine": cos, "top1_agreement": top1, "tokens": int(a.shape[0])}
