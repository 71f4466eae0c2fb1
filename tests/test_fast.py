"""Each fast path installed by `lfmkit.fast.optimize` agrees with its reference fallback: the fast
module classes against the reference classes over the same weights, with kernels and without,
and quantized models keep the Hugging Face names of every layer."""

import pytest
import torch
from checkpoints import make_checkpoint

from lfmkit import LFM2, kernels
from lfmkit.fast import deoptimize, optimize
from lfmkit.fast.modules import FastFeedForward, FastRMSNorm
from lfmkit.model.lfm2 import FeedForward, RMSNorm
from lfmkit.quant import QuantLinear, fused_view

needs_kernels = pytest.mark.skipif(kernels.load() is None, reason=f"no C++ kernels: {kernels.build_error}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # hidden 64: every linear fits int4 and int8, so q/k/v and w1/w3 are fused
    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("fast"),
        layout="small",
        seed=4,
        hidden_size=64,
        intermediate_size=192,
        num_key_value_heads=2,
    )
    return path


def run(model, ids):
    """Full logits, then prefill + 6 single-token steps: the logits of every call."""
    with torch.inference_mode():
        out = [model(ids)]
        state = model.new_state(ids.shape[0], max_length=32)
        out.append(model.prefill(ids, state))
        tok = out[-1][:, -1:].argmax(-1)
        for _ in range(6):
            out.append(model(tok, state=state))
            tok = out[-1][:, -1].argmax(-1, keepdim=True)
    return out


IDS = torch.tensor([[1, 5, 9, 33, 200, 17, 4], [1, 44, 45, 46, 47, 48, 49]])


@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_fast_paths_equal_the_reference_classes_over_the_same_weights(ckpt, quant):
    fast = optimize(LFM2.from_pretrained(ckpt, dtype="float32"), quant=quant)
    got = run(fast, IDS)
    slow = deoptimize(fast)  # the same (quantized) weights, reference module classes
    assert type(slow) is LFM2 and not any(type(m).__name__.startswith("Fast") for m in slow.modules())
    want = run(slow, IDS)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_kernels_unavailable_falls_back_to_the_same_numbers(ckpt, monkeypatch):
    fast = optimize(LFM2.from_pretrained(ckpt, dtype="float32"))
    with_kernels = run(fast, IDS)
    monkeypatch.setattr(kernels, "load", lambda: None)
    for a, b in zip(run(fast, IDS), with_kernels):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_small_op_kernels_equal_the_reference_ops():
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(96, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(96, generator=g))
    x = torch.randn(3, 5, 96, generator=g)
    ref = norm(x)
    norm.__class__ = FastRMSNorm
    with torch.no_grad():
        torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-6)
    ff = FeedForward(96, 64)
    for p in ff.parameters():
        torch.nn.init.normal_(p, std=0.1, generator=g)
    ref = ff(x)
    ff.__class__ = FastFeedForward
    with torch.no_grad():
        torch.testing.assert_close(ff(x), ref, rtol=1e-5, atol=1e-6)


def test_quantized_models_keep_hugging_face_names_and_fuse_groups(ckpt):
    model = optimize(LFM2.from_pretrained(ckpt, dtype="float32"), quant="int4")
    float_names = {
        n.removesuffix(".weight")
        for n in LFM2.from_pretrained(ckpt).state_dict()
        if n.endswith(("proj.weight", "w1.weight", "w2.weight", "w3.weight"))
    }
    quantized = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert float_names <= quantized
    attn = model.model.layers[1].self_attn
    qkv = attn.fused()
    assert qkv is not None and qkv.out_features == sum(m.out_features for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    x = torch.randn(1, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            qkv(x), torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], -1), rtol=1e-5, atol=1e-6
        )
    assert not any(p.requires_grad for p in model.parameters())  # a quantized model is for inference


def test_a_replaced_part_ends_the_fusion_and_the_group_runs_layer_by_layer(ckpt):
    model = optimize(LFM2.from_pretrained(ckpt, dtype="float32"), quant="int8")
    ffn = model.model.layers[0].feed_forward
    assert ffn.fused() is not None
    x = torch.randn(1, 2, 64)
    with torch.no_grad():
        before = ffn(x)
        w1 = ffn.w1
        ffn.w1 = QuantLinear.over(w1.qweight.clone(), w1.scales.clone(), w1.in_features, w1.bits)
        assert fused_view([ffn.w1, ffn.w3]) is None and ffn.fused() is None
        torch.testing.assert_close(ffn(x), before, rtol=1e-5, atol=1e-6)


def test_dtype_casts_keep_the_quantized_format(ckpt):
    model = optimize(LFM2.from_pretrained(ckpt, dtype="float32"), quant="int4")
    with torch.inference_mode():
        before = model(IDS)
    model.float()  # as optimize(..., quant="fp32") would
    lin = model.model.layers[0].feed_forward.w2
    assert lin.scales.dtype == torch.float16 and lin.qweight.dtype == torch.uint8
    assert model.model.layers[0].feed_forward.fused() is not None  # still stored back to back
    with torch.inference_mode():
        torch.testing.assert_close(model(IDS), before)
