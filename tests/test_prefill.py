"""W8A8 prefill (int8 GEMMs on activations quantized per token) stays within the error bounds
docs/speed.md states, against float32 activations over the same quantized weights:
per product (a proven bound) and per model on random weights of several layouts; and the
bf16 prefill option still runs the bf16 GEMM; the float32 prefill is the dequantized float32
product, and it is what runs where the CPU's int8 and bf16 GEMMs are slow loops."""

import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_checkpoint

from lfmkit import LFM2, kernels
from lfmkit.errors import ConfigError
from lfmkit.fast import optimize, set_prefill
from lfmkit.kernels import gemm
from lfmkit.quant import QuantLinear
from lfmkit.quant import linear as quant_linear
from lfmkit.quant.formats import dequantize_int4, dequantize_int8
from lfmkit.quant.prefill import prefill_path, w8a8_available

pytestmark = pytest.mark.skipif(not w8a8_available(), reason=f"no C++ kernels or torch._int_mm: {kernels.build_error}")

# docs/speed.md, "W8A8 prefill": the logits' relative RMS error and cosine similarity
# against float32 activations over the same weights, on random-weight models
MODEL_RMS_BOUND, MODEL_COSINE_BOUND = 0.4, 0.92


@pytest.fixture(autouse=True)
def gemms_as_asked(monkeypatch):
    """The int8 and bf16 GEMMs run as the layers ask on any CPU: these tests check their
    arithmetic (on CPUs without VNNI / AVX-512 BF16 they are slow loops, but the shapes are
    small); the tests of the float32 fallback turn them off again."""
    monkeypatch.setattr(gemm, "int8_gemm_fast", lambda: True)
    monkeypatch.setattr(gemm, "bf16_gemm_fast", lambda: True)


@pytest.mark.parametrize("bits", [8, 4])
def test_each_product_is_within_the_per_token_rounding_bound(bits):
    """|y - y_float| <= max|x| / 254 * sum|w| (activations: half a step of absmax/127 per
    token); int4 adds the re-expression of its codes as int8 rows: <= row_scale / 2 * sum|x|."""
    g = torch.Generator().manual_seed(bits)
    lin = QuantLinear.from_float(torch.randn(96, 512, generator=g) * 0.05, bits)
    x = torch.randn(33, 512, generator=g) * torch.rand(512, generator=g) * 4  # uneven channels
    w = lin.dequantize()
    err = (lin(x) - F.linear(x, w)).abs()
    bound = x.abs().amax(1, keepdim=True) / 254 * w.abs().sum(1) * 1.0001
    if bits == 4:
        row_scale = lin.scales.float().abs().amax(1) * 8 / 127
        bound = bound + row_scale / 2 * (x.abs().sum(1, keepdim=True) + x.abs().amax(1, keepdim=True) * 512 / 254)
    assert bool((err <= bound + 1e-5).all())


def float_activations(model, ids):
    """The model's logits with the kernels off: float32 activations times the same quantized
    (dequantized) weights."""
    saved = kernels.load
    kernels.load = lambda: None
    try:
        for m in model.modules():
            m.__dict__.pop("_fast", None)
        return model(ids)
    finally:
        kernels.load = saved
        for m in model.modules():
            m.__dict__.pop("_fast", None)


@pytest.fixture(scope="module", params=["small", "1.2b", "2.6b"])
def layout(request, tmp_path_factory):
    # the toy layouts at widths int4 and int8 hold (small: 4 layers, 1.2b: 16, 2.6b: 30)
    wide = dict(hidden_size=64, intermediate_size=192, num_key_value_heads=2) if request.param == "small" else {}
    path, _ = make_checkpoint(tmp_path_factory.mktemp(request.param), layout=request.param, seed=2, **wide)
    return path


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_w8a8_prefill_logits_are_within_the_stated_bound(layout, mode):
    model = optimize(LFM2.from_pretrained(layout, dtype="float32"), quant=mode)
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(7))
    ref = float_activations(model, ids)
    got = {}
    for prefill in ("w8a8", "bf16"):
        set_prefill(model, prefill)
        got[prefill] = model(ids)
    for prefill, logits in got.items():
        rms = ((logits - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
        cos = F.cosine_similarity(logits, ref, dim=-1).min().item()
        assert rms <= MODEL_RMS_BOUND and cos >= MODEL_COSINE_BOUND, (prefill, rms, cos)
    assert not torch.allclose(got["w8a8"], got["bf16"])  # two different GEMMs ran


def test_prefill_mode_is_checked_and_kept_by_fused_views(tmp_path):
    path, _ = make_checkpoint(tmp_path, layout="small", seed=1, hidden_size=64, intermediate_size=192)
    with pytest.raises(ConfigError, match="prefill must be one of w8a8, bf16, float32"):
        optimize(LFM2.from_pretrained(path, dtype="float32"), quant="int8", prefill="fp8")
    model = optimize(LFM2.from_pretrained(path, dtype="float32"), quant="int4", prefill="bf16")
    ff = model.model.layers[0].feed_forward
    assert ff.w1.prefill == "bf16" and ff.fused().prefill == "bf16"
    set_prefill(model, "w8a8")
    assert ff.w2.prefill == "w8a8" and ff.fused().prefill == "w8a8"


@pytest.mark.parametrize("bits", [8, 4])
def test_a_short_row_padded_beside_a_long_one_gets_its_product_alone(bits):
    """Inside a model forward (`rows_of`), a row with few real tokens takes the decode kernels on
    them, as that prompt alone does, not the padded batch's GEMM; a long row takes the GEMM, as
    alone; padding positions come out zero."""
    from lfmkit.quant.linear import rows_of

    g = torch.Generator().manual_seed(bits)
    lin = QuantLinear.from_float(torch.randn(48, 512, generator=g) * 0.05, bits)
    x = torch.randn(2, 40, 512, generator=g)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, :37] = False  # row 1: a 3-token prompt, left-padded
    with rows_of(2, 40, mask):
        got = lin(x)
        head = lin(x[:, -1:])  # a head after logits_to_keep=1: one real token per row
    assert torch.equal(got[1, 37:], lin(x[1, 37:]))  # 3 rows alone: the kernels
    assert torch.equal(got[0], lin(x[0]))  # 40 rows alone: the GEMM
    assert not bool(got[1, :37].any())
    assert torch.equal(head, lin(x[:, -1:]))
    assert not torch.equal(lin(x[1, 37:]), lin(x[1])[37:])  # the two paths do differ


@pytest.mark.parametrize("bits", [8, 4])
def test_float32_prefill_is_the_dequantized_float32_product(bits, monkeypatch):
    """The weights dequantized by the kernels exactly as the reference dequantizes them, a tile
    of rows at a time (three tiles here), into a float32 GEMM."""
    monkeypatch.setattr(quant_linear, "PREFILL_TILE_BYTES", 64 * 512 * 4)  # 64 rows per tile
    g = torch.Generator().manual_seed(bits)
    lin = QuantLinear.from_float(torch.randn(160, 512, generator=g) * 0.05, bits)
    lin.prefill = "float32"
    if bits == 8:
        ref = dequantize_int8(lin.qweight, lin.scales)
    else:
        ref = dequantize_int4(lin.qweight, lin.scales, lin.group_size)
    assert torch.equal(lin.dequantize(torch.float32), ref)
    assert torch.equal(lin.dequantize(torch.float32, slice(5, 71)), ref[5:71])
    x = torch.randn(2, 20, 512, generator=g)
    torch.testing.assert_close(lin(x), F.linear(x, ref), rtol=1e-5, atol=1e-5)


def no_int_mm(*args, **kwargs):
    raise AssertionError("torch._int_mm ran")


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_where_the_cpu_lacks_fast_gemms_prefill_runs_float32(tmp_path, mode, monkeypatch):
    """AVX2 CPUs: "w8a8" and "bf16" layers prefill in float32 (never `torch._int_mm`), the same
    logits as prefill="float32"; `LFMKIT_SLOW_GEMMS` forces it on any CPU."""
    path, _ = make_checkpoint(tmp_path, layout="small", seed=4, hidden_size=64, intermediate_size=192)
    model = optimize(LFM2.from_pretrained(path, dtype="float32"), quant=mode, prefill="float32")
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(3))
    want = model(ids)
    assert (prefill_path("w8a8"), prefill_path("bf16"), prefill_path("float32")) == ("w8a8", "bf16", "float32")
    set_prefill(model, "w8a8")
    assert not torch.equal(model(ids), want)  # where the GEMM is fast: W8A8, other logits
    monkeypatch.undo()  # the real checks, under LFMKIT_SLOW_GEMMS
    monkeypatch.setenv(gemm.ENV, "int8, bf16")
    assert not gemm.int8_gemm_fast() and not gemm.bf16_gemm_fast()
    assert (prefill_path("w8a8"), prefill_path("bf16")) == ("float32", "float32")
    monkeypatch.setattr(torch, "_int_mm", no_int_mm)
    for prefill in ("w8a8", "bf16"):
        set_prefill(model, prefill)
        assert torch.equal(model(ids), want), prefill
