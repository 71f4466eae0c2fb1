"""Every CPU path of the kernels (AVX-512 VNNI, AVX-VNNI, AVX2, portable C++), forced one at a
time with LFMKIT_ISA, computes what the PyTorch reference computes: the int8 and int4 matrix
products (one row to a small batch), the float streaming products and the fused decode step.
A path this CPU lacks is skipped (e.g. AVX-VNNI, the VEX encoding, on AMD Zen 4, which has only
the AVX-512 one)."""

import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_checkpoint
from quant_helpers import act_quantized

from lfmkit import LFM2, kernels
from lfmkit.errors import ConfigError
from lfmkit.fast import quantize
from lfmkit.kernels import gemm
from lfmkit.quant import QuantLinear
from lfmkit.quant.prefill import int4_rows_as_int8, w8a8_linear

pytestmark = pytest.mark.skipif(not kernels.supported_paths(), reason="no C++ compiler")


@pytest.fixture(params=list(kernels.PATHS))
def cpu_path(request, monkeypatch):
    """Force one kernel path for the test (skipped where this CPU cannot run it)."""
    name = request.param
    if name not in kernels.supported_paths():
        pytest.skip(f"this CPU has no {kernels.PATHS[name][2]} (it runs {', '.join(kernels.supported_paths())})")
    monkeypatch.setenv(kernels.ENV, name)
    kernels.reset()
    yield name
    monkeypatch.undo()
    kernels.reset()


def test_the_forced_path_is_the_one_loaded(cpu_path):
    assert kernels.load() is not None, kernels.build_error
    assert kernels.active_path() == cpu_path
    assert kernels.PATHS[cpu_path][2] in kernels.describe()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 5, 8, 13])
# wider than 2048: several passes over K; 1280: five 256-value superblocks, so the 512-bit int4
# kernel (AVX-512) takes two pairs and one alone
@pytest.mark.parametrize("width", [512, 320, 1280, 2112, 4608])
def test_each_path_multiplies_like_the_reference(cpu_path, bits, rows, width):
    g = torch.Generator().manual_seed(rows + width)
    lin = QuantLinear.from_float(torch.randn(40, width, generator=g) * 0.05, bits)
    x = torch.randn(rows, width, generator=g)
    # the same int8 activations (blocks of 32, or 256 for int8 where the width allows) times the
    # dequantized weights: equal up to float summation order
    block = 256 if bits == 8 and width % 256 == 0 else 32
    exact = F.linear(act_quantized(x, block), lin.dequantize())
    torch.testing.assert_close(lin(x), exact, rtol=1e-4, atol=1e-4 * exact.abs().max().item())


@pytest.mark.parametrize("dtype,widen", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("rows", [1, 8, 11])
def test_each_path_streams_float_products_like_f_linear(cpu_path, dtype, widen, rows):
    from lfmkit.fast.float_linear import stream_linear

    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(21, 300, generator=g).to(dtype), torch.randn(21, generator=g).to(dtype)
    x = torch.randn(rows, 300, generator=g).to(dtype)
    got = stream_linear(kernels.load(), x, w, b, widen=widen)
    exact = F.linear(x.float(), w.float(), b.float())
    tol = 1e-5 if dtype is torch.float32 else 2**-7
    torch.testing.assert_close(got.float(), exact, rtol=tol, atol=tol * 20)


def int4_as_int8_reference(lin: QuantLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """lfm_q4_to_q8 in PyTorch: one scale per row, 8 * max|group scale| / 127 (a row's largest
    |weight| under Q4_0's rule), codes round(q * group scale / row scale)."""
    s = lin.scales.float()
    row = s.abs().amax(1) * 8 / 127
    codes = (lin.dequantize() / s.repeat_interleave(32, 1)).round()  # q in [-8, 7]
    r = s * (1 / row[:, None])  # as the kernel: times the reciprocal
    return torch.round(codes * r.repeat_interleave(32, 1)).clamp(-127, 127), row


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [17, 40])
def test_each_path_runs_the_w8a8_prefill_product_like_the_reference(cpu_path, bits, rows, monkeypatch):
    g = torch.Generator().manual_seed(rows)
    lin = QuantLinear.from_float(torch.randn(72, 320, generator=g) * 0.05, bits)
    x = torch.randn(rows, 320, generator=g)
    if bits == 8:
        w = lin.dequantize()
    else:
        codes, row = int4_as_int8_reference(lin)
        w8, s8 = torch.empty(72, 320, dtype=torch.int8), torch.empty(72)
        int4_rows_as_int8(lin.qweight, lin.scales, w8, s8)
        assert torch.equal(w8.float(), codes) and torch.equal(s8, row)
        w = codes * row[:, None]
    exact = F.linear(act_quantized(x, 320), w)  # per-token int8 activations
    got = w8a8_linear(x, lin.qweight, lin.scales, bits)
    torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    monkeypatch.setattr(gemm, "int8_gemm_fast", lambda: True)  # else float32 prefill (no VNNI: quant/prefill.py)
    assert torch.equal(lin(x), got)  # a QuantLinear takes this path for more than 16 rows


@pytest.fixture(scope="module", params=[64, 256], ids=["hidden64", "hidden256"])
def ckpt(request, tmp_path_factory):
    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("paths"),
        layout="small",
        seed=3,
        hidden_size=request.param,
        intermediate_size=3 * request.param,
        num_key_value_heads=2,
    )
    return path


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_each_path_runs_the_fused_decode_step_like_the_module_path(cpu_path, ckpt, mode):
    model = quantize(LFM2.from_pretrained(ckpt, dtype="float32"), mode)
    assert model.fused_decode.available(), model.fused_decode.reason
    prompt = torch.tensor([list(range(5, 17)), list(range(40, 52))])

    def first_step():
        state = model.new_state(2, max_length=32)
        model.prefill(prompt, state)
        return model(torch.tensor([[3], [4]]), state=state)

    fused = first_step()
    model.__dict__.pop("fused_decode")  # the module path: one kernel call per linear
    module = first_step()
    # equal up to float rounding, or one int8 rounding flip of an activation (test_decode_step.py)
    scale = module.abs().amax(-1, keepdim=True)
    assert ((fused - module).abs() <= 0.01 * scale).all()


def test_forcing_an_unknown_or_missing_path_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(kernels.ENV, "sse9")
    kernels.reset()
    try:
        with pytest.raises(ConfigError, match="LFMKIT_ISA='sse9': choose auto, avx512vnni"):
            kernels.load()
        missing = [p for p in kernels.PATHS if p not in kernels.supported_paths()]
        if missing:
            monkeypatch.setenv(kernels.ENV, missing[0])
            with pytest.raises(ConfigError, match=f"this CPU has no {kernels.PATHS[missing[0]][2]}"):
                kernels.load()
    finally:
        monkeypatch.undo()
        kernels.reset()
    assert kernels.load() is not None
