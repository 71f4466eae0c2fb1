"""The LFM2 model in plain PyTorch: RMSNorm, RoPE, the double-gated short convolution,
GQA attention with QK-norm, SwiGLU, and the tied head.

Module and parameter names follow the Hugging Face checkpoint layout exactly
(`model.layers.N.conv.in_proj.weight`, ...), so a checkpoint's tensors load by name.

`LFM2.forward(input_ids, attention_mask=None, state=None)` runs either a plain causal
forward (training, scoring) or one step against an `LFM2State` (prefill of any length,
chunked prefill, decode). RoPE positions count real tokens only, so left padding is exact.

Packed training rows: the stateless forward takes `document_ids` [batch, seq], a document
index per token; each maximal run of equal ids is one document, and the row computes exactly
what its documents compute run one by one: attention stays inside a document (block-diagonal
causal mask), RoPE positions restart at 0 at each document, and the short convolution's window
restarts too (the first `conv_L_cache - 1` outputs of a document see no B*x of the previous one).

This is the reference: plain modules, trainable, equal to transformers' `Lfm2ForCausalLM` in
values and gradients (tests/test_model.py, tests/test_gradients.py). Nothing here dispatches to
our kernels: quantized linears, fused weights, the C small ops and the fused decode step are
installed from outside, for inference, by `lfmkit.fast.optimize` (see lfmkit/fast/).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ATTENTION, LFM2Config
from .loading import load_model, save_model
from .state import LFM2State

# Token rows (batch x prompt tokens) per prefill pass. 256 rows already keep the bf16 GEMMs
# at full speed on CPU, and halve the activation memory of 512 (1.2B int4: peak RSS 978 -> 937 MiB).
PREFILL_CHUNK = 256


# Layers without PyTorch's default random init. Every weight is set afterwards, by
# LFM2.init_weights or from a checkpoint; and on the meta device (how loaders build the
# skeleton) the default init's random ops import torch's compiler stack: ~70 MiB of RSS and
# a second of start-up for nothing.
class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class Conv1d(nn.Conv1d):
    def reset_parameters(self) -> None:
        pass


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) computed in float32, cast back, times weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape [batch, seq, head_dim] for integer positions [batch, seq]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """Softmax attention, q [b, H, t, d], k/v [b, KV, S, d], mask [b, 1, t, S] bool (True = keep).

    A few query rows (decode) use two batched matmuls over the grouped heads, which on CPU is
    much faster than the fused kernels with a mask; longer inputs use PyTorch's SDPA.
    """
    b, h, t, d = q.shape
    kv = k.shape[1]
    if t <= 4 and not causal:
        g = h // kv
        qg = q.reshape(b, kv, g * t, d) * (d**-0.5)
        scores = torch.matmul(qg, k.transpose(-1, -2))  # [b, kv, g*t, S]
        if mask is not None:
            m = mask.expand(b, 1, t, mask.shape[-1]).repeat(1, 1, g, 1) if g > 1 else mask
            scores = scores.masked_fill(~m, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [b, kv, g*t, d]
        return out.reshape(b, h, t, d)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv != h)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv != h)


def attend_documents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spans: list[list[tuple[int, int]]]):
    """Causal attention inside each document of packed rows, one SDPA call per document: row r's
    documents are the token ranges spans[r] (covering the row). No [t, t] mask is ever built,
    and attention costs the sum of the squared document lengths, not the row length squared."""
    gqa = k.shape[1] != q.shape[1]
    rows = []
    for r, row in enumerate(spans):
        parts = [
            F.scaled_dot_product_attention(
                q[r : r + 1, :, a:b], k[r : r + 1, :, a:b], v[r : r + 1, :, a:b], is_causal=True, enable_gqa=gqa
            )
            for a, b in row
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)


@dataclass
class StepContext:
    """What every layer of one forward call shares: positions, masks and state slots."""

    cos: torch.Tensor  # [B or 1, 1, T, head_dim] (broadcasts over heads)
    sin: torch.Tensor
    token_mask: torch.Tensor | None  # [B, T] float/bool, 1 = real token; None = all real
    attn_mask: torch.Tensor | None  # [B, 1, T, S] bool; None = plain causal over T
    state: LFM2State | None = None
    start: int | None = None  # uniform write slot (all rows at the same length)
    slots: torch.Tensor | None = None  # [B, T] per-row write slots when rows differ
    kv_end: int = 0  # keys to attend over: [0, kv_end)
    doc_positions: torch.Tensor | None = None  # [B, T] position inside its document (packed rows)
    doc_spans: list[list[tuple[int, int]]] | None = None  # packed rows: each row's document ranges


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden: int, ff: int):
        super().__init__()
        self.w1 = Linear(hidden, ff, bias=False)
        self.w3 = Linear(hidden, ff, bias=False)
        self.w2 = Linear(ff, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ShortConv(nn.Module):
    """The double-gated LIV convolution: B, C, x = in_proj(h); y = C * conv(B * x)."""

    def __init__(self, config: LFM2Config, layer_idx: int):
        super().__init__()
        h = config.hidden_size
        self.layer_idx = layer_idx
        self.kernel = config.conv_L_cache
        self.in_proj = Linear(h, 3 * h, bias=config.conv_bias)
        self.conv = Conv1d(h, h, kernel_size=self.kernel, groups=h, bias=config.conv_bias, padding=self.kernel - 1)
        self.out_proj = Linear(h, h, bias=config.conv_bias)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.out_proj(self.mix(self.in_proj(x), ctx))

    def mix(self, bcx: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """C * conv(B * x) for in_proj's output [b, t, 3h]; reads and updates the conv window."""
        B, C, xx = bcx.chunk(3, dim=-1)  # each [b, t, h]
        bx = B * xx
        if ctx.token_mask is not None:
            # Padding contributes nothing to the window (with conv_bias, in_proj(0) != 0, so the
            # mask goes after the projection: a padded row equals the same prompt run alone).
            bx = bx * ctx.token_mask[..., None].to(bx.dtype)
        bx = bx.transpose(1, 2)  # [b, h, t]
        weight = self.conv.weight  # [h, 1, k]
        window = ctx.state.conv[self.layer_idx] if ctx.state is not None else None
        if ctx.doc_positions is not None:
            y = self.packed_conv(bx, ctx.doc_positions)
        elif window is None:
            y = F.conv1d(bx, weight, self.conv.bias, padding=self.kernel - 1, groups=bx.shape[1])
            y = y[..., : bx.shape[-1]]
        elif bx.shape[-1] == 1:
            # Decode: shift the window by one in place and take one dot product per channel.
            window.copy_(torch.cat((window[..., 1:], bx.to(window.dtype)), dim=-1))
            y = (window.to(bx.dtype) * weight[:, 0, :]).sum(-1, keepdim=True)
            if self.conv.bias is not None:
                y = y + self.conv.bias[:, None]
        else:
            full = torch.cat((window.to(bx.dtype), bx), dim=-1)  # [b, h, L + t]
            window.copy_(full[..., -window.shape[-1] :])
            y = F.conv1d(full, weight, self.conv.bias, groups=bx.shape[1])[..., -bx.shape[-1] :]
        return C * y.transpose(1, 2)

    def packed_conv(self, bx: torch.Tensor, doc_positions: torch.Tensor) -> torch.Tensor:
        """The causal depthwise conv of `bx` [b, h, t] with the window restarting at every
        document: y[t] = sum over lags j of w[k-1-j] * bx[t-j], taking lag j only where the token
        is at least j into its document (documents are contiguous runs, so t-j is then inside it)."""
        weight = self.conv.weight[:, 0, :]  # [h, k]; column k-1 multiplies lag 0
        t = bx.shape[-1]
        y = bx * weight[:, -1:]
        for lag in range(1, min(self.kernel, t)):
            shifted = F.pad(bx[..., : t - lag], (lag, 0))
            keep = (doc_positions >= lag)[:, None, :].to(bx.dtype)
            y = y + shifted * keep * weight[:, self.kernel - 1 - lag, None]
        if self.conv.bias is not None:
            y = y + self.conv.bias[:, None]
        return y


class Attention(nn.Module):
    """GQA with per-head RMSNorm on q and k (before RoPE), causal, scale head_dim^-0.5."""

    def __init__(self, config: LFM2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = config.head_size
        h = config.hidden_size
        self.q_proj = Linear(h, self.n_heads * self.head_dim, bias=False)
        self.k_proj = Linear(h, self.n_kv * self.head_dim, bias=False)
        self.v_proj = Linear(h, self.n_kv * self.head_dim, bias=False)
        self.out_proj = Linear(self.n_heads * self.head_dim, h, bias=False)
        self.q_layernorm = RMSNorm(self.head_dim, config.norm_eps)
        self.k_layernorm = RMSNorm(self.head_dim, config.norm_eps)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.project(x)
        q = self.q_layernorm(q.reshape(b, t, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_layernorm(k.reshape(b, t, self.n_kv, self.head_dim)).transpose(1, 2)
        v = v.reshape(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = apply_rope(q, ctx.cos, ctx.sin)
        k = apply_rope(k, ctx.cos, ctx.sin)
        state = ctx.state
        causal = t > 1
        if state is not None:
            kbuf, vbuf = state.keys[self.layer_idx], state.values[self.layer_idx]
            if ctx.start is not None:
                kbuf[:, :, ctx.start : ctx.start + t] = k
                vbuf[:, :, ctx.start : ctx.start + t] = v
            else:
                rows = torch.arange(b, device=x.device)[:, None]
                kbuf[rows, :, ctx.slots] = k.transpose(1, 2).to(kbuf.dtype)
                vbuf[rows, :, ctx.slots] = v.transpose(1, 2).to(vbuf.dtype)
            if ctx.kv_end > t or ctx.attn_mask is not None:  # else the chunk alone is the context
                k = kbuf[:, :, : ctx.kv_end].to(q.dtype)
                v = vbuf[:, :, : ctx.kv_end].to(q.dtype)
                causal = False if ctx.attn_mask is not None or t == 1 else causal
        if ctx.doc_spans is not None:
            out = attend_documents(q, k, v, ctx.doc_spans)
        elif causal and ctx.attn_mask is None and k.shape[2] != t:
            # A chunk after a prefix, no padding: query i sees keys up to prefix + i.
            prefix = k.shape[2] - t
            keys = torch.arange(k.shape[2], device=x.device)
            mask = (keys[None, :] <= prefix + torch.arange(t, device=x.device)[:, None])[None, None]
            out = attend(q, k, v, mask, causal=False)
        else:
            out = attend(q, k, v, ctx.attn_mask, causal=causal and ctx.attn_mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


class Block(nn.Module):
    """h = x + op(operator_norm(x)); out = h + ffn(ffn_norm(h)), op = conv or attention."""

    def __init__(self, config: LFM2Config, layer_idx: int):
        super().__init__()
        self.is_attention = config.layer_types[layer_idx] == ATTENTION
        if self.is_attention:
            self.self_attn = Attention(config, layer_idx)
        else:
            self.conv = ShortConv(config, layer_idx)
        self.operator_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.feed_forward = FeedForward(config.hidden_size, config.ff_dim)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        op = self.self_attn if self.is_attention else self.conv
        h = x + op(self.operator_norm(x), ctx)
        return h + self.feed_forward(self.ffn_norm(h))


class Backbone(nn.Module):
    def __init__(self, config: LFM2Config):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.embedding_norm = RMSNorm(config.hidden_size, config.norm_eps)


class LFM2(nn.Module):
    """An LFM2 (or dense same-layout) causal language model."""

    def __init__(self, config: LFM2Config):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not self.lm_head.weight.is_meta:
            self.init_weights()

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: LFM2Config,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = 0,
    ) -> "LFM2":
        """A model with random weights (std 0.02 linears, unit norms), e.g. for benchmarks."""
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            model = cls(config)  # initialised by init_weights, under the seed
        return model.to(dtype=dtype or torch.float32).eval()

    def init_weights(self, std: float = 0.02) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.Conv1d):
                nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
                nn.init.zeros_(m.bias)
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: torch.dtype | str | None = None, device: torch.device | str | None = None, **kwargs
    ) -> "LFM2":
        """Load a Hugging Face LFM2 checkpoint (directory, Hub id, or .gguf file) as the
        reference model: float weights, trainable (parameters require grad, as in
        transformers), in eval mode. For inference with quantized weights and our kernels use
        `lfmkit.load(path, quant=..., fast=True)`.

        kwargs: revision, cache_dir (Hub ids), strict (False tolerates missing tensors).
        """
        return load_model(cls, path, dtype=dtype, device=device, **kwargs)

    def save_pretrained(self, directory: str, **kwargs) -> None:
        """Write config.json + model.safetensors (Hugging Face layout, loadable by transformers).

        kwargs: dtype (cast on write), max_shard_bytes (shards + index)."""
        save_model(self, directory, **kwargs)

    def tie_weights(self) -> None:
        """Share the embedding with the head when the config ties them."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass instead of storing them
        (stateless training forwards only): memory per layer drops to its input."""
        self.gradient_checkpointing = enable

    gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embedding_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embedding_norm.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared (tied) tensors counted once

    def new_state(
        self, batch_size: int = 1, max_length: int | None = None, dtype: torch.dtype | None = None
    ) -> LFM2State:
        """Allocate an inference state for this model (default: the full context)."""
        return LFM2State(
            self.config,
            batch_size=batch_size,
            max_length=max_length or self.config.max_position_embeddings,
            dtype=dtype or self.dtype,
            device=self.device,
        )

    # ---- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: LFM2State | None = None,
        logits_to_keep: int = 0,
        return_hidden: bool = False,
        document_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab] (only the last `logits_to_keep` positions if > 0), or with
        `return_hidden` the final-norm hidden states [batch, seq, hidden] the head would read.

        attention_mask: [batch, seq] with 1 for real tokens and 0 for padding.
        state: an `LFM2State` to read and update in place (prefill or decode), or None for a
        stateless causal forward.
        document_ids: [batch, seq] integers for a packed row (stateless forward only, instead of
        attention_mask): each maximal run of equal ids is a document that sees only itself, with
        RoPE positions and the conv window restarting at its first token. Padding at the end of
        a row is simply one more document (its outputs are unused).
        """
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            if document_ids is not None and document_ids.dim() == 1:
                document_ids = document_ids[None]
        if document_ids is not None:
            ctx = self._packed_context(input_ids, document_ids, attention_mask, state)
        else:
            ctx = self._context(input_ids, attention_mask, state)
        x = self.model.embed_tokens(input_ids)
        recompute = self.gradient_checkpointing and state is None and torch.is_grad_enabled()
        for layer in self.model.layers:
            if recompute:
                x = checkpoint(layer, x, ctx, use_reentrant=False)
            else:
                x = layer(x, ctx)
        if state is not None:
            n_real = ctx.token_mask.sum(-1).long() if ctx.token_mask is not None else x.shape[1]
            state.advance(x.shape[1], n_real)
        x = self.model.embedding_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        if return_hidden:
            return x
        return self.lm_head(x)

    def prefill(
        self,
        input_ids: torch.Tensor,
        state: LFM2State,
        attention_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Run a prompt into `state` in chunks of `chunk_size` tokens per row; logits of the last
        position [batch, 1, vocab]. Chunking bounds the activation memory of long prompts while
        every chunk is still one large matrix multiply per weight. The default takes
        PREFILL_CHUNK token rows per pass across the batch (PREFILL_CHUNK // batch per row)."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        t = input_ids.shape[1]
        if t == 0:
            raise ValueError("prefill needs at least one token")
        chunk_size = chunk_size or max(1, PREFILL_CHUNK // input_ids.shape[0])
        logits = None
        for a in range(0, t, chunk_size):
            b = min(t, a + chunk_size)
            mask = attention_mask[:, a:b] if attention_mask is not None else None
            logits = self(input_ids[:, a:b], attention_mask=mask, state=state, logits_to_keep=1)
        return logits

    def _context(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, state: LFM2State | None
    ) -> StepContext:
        b, t = input_ids.shape
        device = input_ids.device
        cfg = self.config
        mask = None
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} does not match "
                    f"input_ids shape {tuple(input_ids.shape)}"
                )
            mask = attention_mask.to(device=device, dtype=torch.bool)
            if bool(mask.all()):
                mask = None
        if state is not None:
            if state.batch_size != b:
                raise ValueError(f"state has {state.batch_size} rows but input_ids has {b}")
            if mask is None and state.is_dense():
                return self._dense_context(state, t)
            if mask is not None:
                state.mark_padded()
        if mask is None:
            rel = torch.arange(t, device=device).expand(b, t)
        else:
            rel = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if state is not None:
            if state.batch_size != b:
                raise ValueError(f"state has {state.batch_size} rows but input_ids has {b}")
            state.check_room(t)
            positions = state.positions[:, None] + rel
        else:
            positions = rel
        dtype = self.model.embedding_norm.weight.dtype
        cos, sin = rope_tables(positions, cfg.head_size, cfg.rope_theta, dtype)
        cos, sin = cos[:, None], sin[:, None]
        token_mask = mask

        if state is None:
            attn_mask = None
            if mask is not None:
                causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
                attn_mask = causal[None] & mask[:, None, :]
                attn_mask = attn_mask | torch.eye(t, dtype=torch.bool, device=device)[None]
                attn_mask = attn_mask[:, None]
            return StepContext(cos, sin, token_mask, attn_mask)

        start = state.uniform_length()
        if start is not None:
            slots = None
            kv_end = start + t
            new_valid = mask if mask is not None else torch.ones(b, t, dtype=torch.bool, device=device)
            state.valid[:, start : start + t] = new_valid
            query_slot = (start + torch.arange(t, device=device)).expand(b, t)
        else:
            slots = state.lengths[:, None] + torch.arange(t, device=device)
            kv_end = int(slots.max()) + 1
            rows = torch.arange(b, device=device)[:, None]
            state.valid[rows, slots] = mask if mask is not None else True
            query_slot = slots
        attn_mask = None
        if cfg.attention_layers:
            key_slot = torch.arange(kv_end, device=device)
            allowed = state.valid[:, None, :kv_end] & (key_slot[None, None] <= query_slot[..., None])
            allowed = allowed | (key_slot[None, None] == query_slot[..., None])  # never an empty row
            attn_mask = allowed[:, None]
        return StepContext(cos, sin, token_mask, attn_mask, state=state, start=start, slots=slots, kv_end=kv_end)

    def _packed_context(
        self,
        input_ids: torch.Tensor,
        document_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        state: LFM2State | None,
    ) -> StepContext:
        """Positions and documents for packed rows: per-document RoPE positions, each row's
        document ranges (attention runs per document: `attend_documents`; none when every row
        is one document), and the positions the conv reads."""
        if state is not None or attention_mask is not None:
            raise ValueError(
                "document_ids is for the stateless training forward: pass it without state and without attention_mask"
            )
        if document_ids.shape != input_ids.shape:
            raise ValueError(
                f"document_ids shape {tuple(document_ids.shape)} does not match "
                f"input_ids shape {tuple(input_ids.shape)}"
            )
        b, t = input_ids.shape
        device = input_ids.device
        docs = document_ids.to(device)
        first = torch.ones(b, t, dtype=torch.bool, device=device)
        first[:, 1:] = docs[:, 1:] != docs[:, :-1]  # a document starts here
        index = torch.arange(t, device=device).expand(b, t)
        starts = torch.where(first, index, torch.zeros_like(index)).cummax(-1).values
        positions = index - starts
        cos, sin = rope_tables(positions, self.config.head_size, self.config.rope_theta, self.dtype)
        if not bool(first[:, 1:].any()):  # one document per row: a plain forward
            return StepContext(cos[:, None], sin[:, None], None, None)
        spans = []
        for row in first.cpu():
            starts = row.nonzero()[:, 0].tolist()
            spans.append(list(zip(starts, starts[1:] + [t])))
        return StepContext(cos[:, None], sin[:, None], None, None, doc_positions=positions, doc_spans=spans)

    def _dense_context(self, state: LFM2State, t: int) -> StepContext:
        """The fast path: every row at the same length, no padding anywhere, so positions are
        the slot numbers, RoPE comes from a cached table, and attention needs no mask."""
        start = state.uniform_length()
        state.check_room(t)
        state.valid[:, start : start + t] = True
        cos, sin = self._rope_cache(start + t)
        return StepContext(
            cos[start : start + t], sin[start : start + t], None, None, state=state, start=start, kv_end=start + t
        )

    def _rope_cache(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables for positions [0, n) with n >= length, grown by doubling."""
        cache = getattr(self, "_rope", None)
        dtype = self.model.embedding_norm.weight.dtype
        if cache is None or cache[0].shape[0] < length or cache[0].dtype != dtype or cache[0].device != self.device:
            n = max(256, 1 << (max(length, 1) - 1).bit_length())
            positions = torch.arange(n, device=self.device)[None]
            cos, sin = rope_tables(positions, self.config.head_size, self.config.rope_theta, dtype)
            cache = (cos[0], sin[0])
            object.__setattr__(self, "_rope", cache)  # a plain attribute, not a buffer
        return cache


__all__ = [
    "LFM2",
    "RMSNorm",
    "ShortConv",
    "Attention",
    "FeedForward",
    "Block",
    "StepContext",
    "rope_tables",
    "attend",
    "PREFILL_CHUNK",
]
