"""GGML's Q8_0 and Q4_0 weight blocks, bit-exact with llama.cpp's reference quantiser.

Both formats cut each row into blocks of 32 values and store one float16 scale per block:

- Q8_0 (34 bytes per block): `d = max|x| / 127`, `q = roundf(x / d)` as int8; value = `d * q`.
- Q4_0 (18 bytes per block): `m` = the value with the largest magnitude (sign kept),
  `d = m / -8`, `q = min(15, trunc(x / d + 8.5))` as 4-bit codes; value = `d * (q - 8)`.
  Byte `j` of the 16 code bytes holds the code of value `j` in its low nibble and the code
  of value `j + 16` in its high nibble.

The arithmetic follows llama.cpp's `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` step
for step in float32 (scale from the float32 block, reciprocal, round half away from zero),
so the bytes equal what `llama-quantize` writes. Everything is vectorised over blocks with
torch; large matrices are processed in row chunks to bound the temporary memory.
"""

from __future__ import annotations

import torch

BLOCK = 32
BLOCK_BYTES = {"q8_0": 2 + BLOCK, "q4_0": 2 + BLOCK // 2}
CHUNK_ELEMENTS = 1 << 24  # ~64 MB of float32 temporaries per step


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf (halves away from zero), exact for every float32 (no `x + 0.5` rounding slip)."""
    a = x.abs()
    fl = torch.floor(a)
    return torch.sign(x) * (fl + torch.floor(2 * (a - fl)))


def _scale_bytes(d: torch.Tensor) -> torch.Tensor:
    """float32 scales [n, 1] -> their float16 little-endian bytes [n, 2]."""
    return d.to(torch.float16).view(torch.int16).view(torch.uint8).reshape(-1, 2)


def _q8_0_blocks(blocks: torch.Tensor) -> torch.Tensor:
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    d = amax / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = _roundf(blocks * inv).to(torch.int8).view(torch.uint8)
    return torch.cat((_scale_bytes(d), q), dim=-1)


def _q4_0_blocks(blocks: torch.Tensor) -> torch.Tensor:
    idx = blocks.abs().argmax(dim=-1, keepdim=True)  # first index of the largest magnitude
    m = torch.gather(blocks, -1, idx)
    d = m / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.trunc(blocks * inv + 8.5).clamp_(0, 15).to(torch.uint8)
    packed = q[:, : BLOCK // 2] | (q[:, BLOCK // 2 :] << 4)
    return torch.cat((_scale_bytes(d), packed), dim=-1)


_QUANTISERS = {"q8_0": _q8_0_blocks, "q4_0": _q4_0_blocks}


def can_quantize(shape: tuple[int, ...] | torch.Size) -> bool:
    """GGML blocks run along rows: the row length must be a multiple of 32."""
    return len(shape) >= 1 and shape[-1] % BLOCK == 0 and shape[-1] > 0


def quantize(weight: torch.Tensor, qtype: str) -> torch.Tensor:
    """Quantise a [..., cols] float tensor (cols % 32 == 0) to uint8 blocks [..., cols/32 * bytes]."""
    if qtype not in _QUANTISERS:
        raise ValueError(f"unknown GGML block type {qtype!r}; expected one of {sorted(_QUANTISERS)}")
    if not can_quantize(weight.shape):
        raise ValueError(f"{qtype}: row length {weight.shape[-1]} is not a multiple of {BLOCK}")
    fn = _QUANTISERS[qtype]
    cols = weight.shape[-1]
    flat = weight.detach().reshape(-1, cols)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // cols)
    out = torch.empty(flat.shape[0], cols // BLOCK * BLOCK_BYTES[qtype], dtype=torch.uint8)
    for start in range(0, flat.shape[0], rows_per_chunk):
        part = flat[start : start + rows_per_chunk].to("cpu", torch.float32)
        blocks = part.reshape(-1, BLOCK)
        out[start : start + part.shape[0]] = fn(blocks).reshape(part.shape[0], -1)
    return out.reshape(*weight.shape[:-1], -1)


def dequantize(
    data: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 blocks (any leading shape, rows of whole blocks) -> float tensor of `shape`."""
    if qtype not in BLOCK_BYTES:
        raise ValueError(f"unknown GGML block type {qtype!r}")
    blocks = data.reshape(-1, BLOCK_BYTES[qtype])
    d = blocks[:, :2].contiguous().view(torch.float16).to(torch.float32)  # [n, 1]
    if qtype == "q8_0":
        q = blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    else:
        codes = blocks[:, 2:]
        q = torch.cat((codes & 0x0F, codes >> 4), dim=-1).to(torch.float32) - 8
    return (d * q).reshape(shape).to(dtype)


def split_blocks(data: torch.Tensor, qtype: str, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of a [rows, cols] matrix -> (codes int8 [rows, cols] centred on 0, scales float32
    [rows, cols/32]): the pieces a per-group int8/int4 matmul kernel wants."""
    blocks = data.reshape(rows, cols // BLOCK, BLOCK_BYTES[qtype])
    scales = blocks[..., :2].contiguous().view(torch.float16).to(torch.float32).reshape(rows, cols // BLOCK)
    if qtype == "q8_0":
        codes = blocks[..., 2:].contiguous().view(torch.int8)
    else:
        c = blocks[..., 2:]
        codes = (torch.cat((c & 0x0F, c >> 4), dim=-1).to(torch.int16) - 8).to(torch.int8)
    return codes.reshape(rows, cols), scales
