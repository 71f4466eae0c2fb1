"""Weight-only int8/int4: kernels equal a dequantized reference, quantized models stay close to
float32, loading quantizes tensor by tensor to the same numbers, and decoding stays consistent."""

import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_checkpoint
from quant_helpers import act_quantized

from lfmkit import LFM2, kernels
from lfmkit.errors import ConfigError
from lfmkit.fast import logit_agreement, quantize
from lfmkit.loader import load_quantized
from lfmkit.quant import QuantLinear, dequantize_int4, quantize_int4, quantize_int8

needs_kernels = pytest.mark.skipif(kernels.load() is None, reason=f"no C++ kernels: {kernels.build_error}")


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_dequantize_error_is_bounded_by_half_a_step(bits):
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    if bits == 8:
        q, s = quantize_int8(w)
        err = (q.float() * s[:, None] - w).abs()
        assert bool((err <= s[:, None] / 2 + 1e-6).all())
    else:
        q, s = quantize_int4(w)
        back = dequantize_int4(q, s)
        step = s.float().repeat_interleave(32, dim=1).abs()
        err = (back - w).abs()
        # half a step (plus fp16 rounding of the scale), except where the value beyond +7 steps
        # is clamped (Q4_0's rule maps the signed extreme to -8, leaving +7 on the other side)
        inside = (w / s.float().repeat_interleave(32, dim=1)).abs() < 7.5
        assert bool((err[inside] <= step[inside] * 0.501 + 1e-6).all())
        assert bool((err <= step * 1.001 + 1e-6).all())
        # the largest-magnitude weight of every group is represented exactly (up to fp16 scale)
        g = w.reshape(96, -1, 32)
        idx = g.abs().argmax(-1, keepdim=True)
        assert torch.allclose(torch.gather(back.reshape(96, -1, 32), -1, idx), torch.gather(g, -1, idx), rtol=2e-3)


@needs_kernels
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 3, 6, 8, 13, 16])
@pytest.mark.parametrize("width", [512, 320])
def test_kernel_equals_dequantized_reference(bits, rows, width):
    g = torch.Generator().manual_seed(rows)
    lin = QuantLinear.from_float(torch.randn(72, width, generator=g) * 0.05, bits)
    x = torch.randn(rows, width, generator=g)
    ours = lin(x)
    # exact reference: the same int8 activations times the dequantized weights
    block = 256 if bits == 8 and width % 256 == 0 else 32
    exact = F.linear(act_quantized(x, block), lin.dequantize())
    assert torch.allclose(ours, exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())
    # and close to the float activations
    loose = F.linear(x, lin.dequantize())
    assert (ours - loose).abs().max() < 0.03 * loose.abs().max()


@needs_kernels
@pytest.mark.parametrize("bits", [8, 4])
def test_long_inputs_use_bf16_gemm_close_to_reference(bits):
    lin = QuantLinear.from_float(torch.randn(40, 256) * 0.05, bits)
    x = torch.randn(2, 30, 256)
    ref = F.linear(x, lin.dequantize())
    out = lin(x)
    assert out.shape == (2, 30, 40) and out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.parametrize("bits", [8, 4])
def test_pure_pytorch_fallback_equals_dequantized_linear(bits, monkeypatch):
    lin = QuantLinear.from_float(torch.randn(24, 128) * 0.05, bits)
    monkeypatch.setattr(kernels, "load", lambda: None)
    lin.__dict__["_fast"] = None
    x = torch.randn(3, 128)
    assert torch.equal(lin(x), F.linear(x, lin.dequantize()))


def test_bad_modes_and_shapes_are_clear_errors():
    with pytest.raises(ConfigError, match="int3"):
        from lfmkit.quant import check_mode

        check_mode("int3")
    with pytest.raises(ConfigError, match="in_features"):
        QuantLinear(48, 16, bits=4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 4 layers (conv, attn, conv, attn), widths the int4 format holds (multiples of 64). Deep toy
    # models with random weights are chaotic (their logits have no margins), so keep it shallow.
    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("q"),
        layout="small",
        seed=5,
        hidden_size=64,
        intermediate_size=192,
        num_key_value_heads=2,
    )
    return path, LFM2.from_pretrained(path, dtype="float32")


def long_prompt(n=96, vocab=512):
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(9))


def test_int8_model_agrees_with_float32(tiny):
    # weight-only int8 (bf16 prefill); the W8A8 prefill's own bound is in test_prefill.py
    path, ref = tiny
    acc = logit_agreement(ref, load_quantized(path, "int8", prefill="bf16"), long_prompt())
    assert acc["top1_agreement"] >= 0.95 and acc["cosine"] >= 0.999, acc


@torch.no_grad()
def test_int4_model_computes_with_its_dequantized_weights(tiny):
    """int4 on random weights drifts from float32 (see BENCHMARKS.md), but it must compute exactly
    what its 4-bit weights say: compare with float32 running the dequantized weights."""
    path, ref = tiny
    q = load_quantized(path, "int4")
    fake = LFM2.from_pretrained(path, dtype="float32")
    for _, p in fake.named_parameters():
        if p.dim() == 2:
            p.copy_(dequantize_int4(*quantize_int4(p)))
    acc = logit_agreement(fake, q, long_prompt())
    assert acc["top1_agreement"] >= 0.9 and acc["cosine"] >= 0.995, acc
    assert logit_agreement(ref, q, long_prompt())["cosine"] >= 0.8


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_streamed_load_equals_quantizing_the_loaded_model(tiny, mode):
    path, _ = tiny
    streamed = load_quantized(path, mode)
    whole = quantize(LFM2.from_pretrained(path, dtype="float32"), mode)
    a, b = dict(streamed.named_buffers()), dict(whole.named_buffers())
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = long_prompt(20)
    assert torch.equal(streamed(ids), whole(ids))


@torch.no_grad()
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_prefill_then_decode_matches_full_forward(tiny, mode):
    path, _ = tiny
    q = load_quantized(path, mode)
    ids = long_prompt(24)
    full = q(ids)
    state = q.new_state(1, max_length=32)
    pieces = [q.prefill(ids[:, :10], state, chunk_size=4)]
    for t in range(10, 24):
        pieces.append(q(ids[:, t : t + 1], state=state))
    steps = torch.cat(pieces, 1)
    # decode multiplies int8-quantized activations, the one-shot forward bf16 ones: close, not equal
    cos = F.cosine_similarity(full[:, 9:], steps, dim=-1)
    assert cos.min() > 0.995
    assert (full[:, 9:].argmax(-1) == steps.argmax(-1)).float().mean() >= 0.8


def test_quantized_model_is_smaller_and_tied_head_shared(tiny):
    path, ref = tiny
    from lfmkit.fast import weight_bytes

    q4, q8 = load_quantized(path, "int4"), load_quantized(path, "int8")
    assert weight_bytes(q4) < weight_bytes(q8) < weight_bytes(ref)
    assert q4.lm_head is q4.model.embed_tokens.table


def test_load_with_quant_loads_quantized(tiny):
    import lfmkit

    path, _ = tiny
    model = lfmkit.load(path, quant="int4")
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.bits == 4
    ids = long_prompt(8)
    assert torch.equal(model(ids), load_quantized(path, "int4")(ids))
