"""`FastLinear`: float inference products (few rows through lfmkit's streaming kernel, more
through oneDNN) equal `F.linear`; training keeps autograd's path; the fast model installs it on
every linear and the reference gets nn.Linear back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lfmkit import kernels
from lfmkit.fast import float_linear
from lfmkit.fast.float_linear import FastLinear, onednn_linear, small_linear, stream_linear, widened_linear
from lfmkit.kernels import gemm
from lfmkit.model.lfm2 import Linear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


@pytest.mark.parametrize("shape", [(1, 64), (8, 64), (3, 5, 64), (2, 300, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_product_equals_f_linear(shape, bias):
    torch.manual_seed(0)
    layer = Linear(64, 96, bias=bias)
    torch.nn.init.normal_(layer.weight)
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        got = onednn_linear(x, layer.weight, layer.bias)
        assert got is not None and got.shape == (*shape[:-1], 96)
        torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)


def test_gradients_and_other_dtypes_take_f_linear(monkeypatch):
    layer = Linear(16, 8, bias=False)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(4, 16)
    assert onednn_linear(x, layer.weight, None) is None  # grad mode, weight requires grad
    assert onednn_linear(x.bfloat16(), layer.weight.detach().bfloat16(), None) is None
    layer.__class__ = FastLinear
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(8, 16).contiguous())
    monkeypatch.setattr(gemm, "_ONEDNN", False)
    with torch.no_grad():
        assert onednn_linear(x, layer.weight, None) is None


def test_the_fast_model_uses_it_and_deoptimize_removes_it(tmp_path):
    from checkpoints import make_checkpoint

    import lfmkit
    from lfmkit.fast.install import deoptimize

    path, ref = make_checkpoint(tmp_path / "m", layout="small", seed=2)
    model = lfmkit.load(path)
    assert type(model.lm_head) is FastLinear and type(model.model.layers[0].feed_forward.w2) is FastLinear
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)
    deoptimize(model)
    assert type(model.lm_head) is Linear


def bf16_reference(x, w, b):
    """The float32 sum of the bfloat16 products (exact in float32), rounded once to bfloat16:
    what oneDNN's bf16 matmul and the streaming kernel compute, up to summation order."""
    return F.linear(x.float(), w.float(), None if b is None else b.float())


needs_kernels = pytest.mark.skipif(kernels.load() is None, reason="no C++ kernels")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 17])
# widths past and short of a vector (16 floats, 32 bf16 pairs); an odd number of outputs
@pytest.mark.parametrize("k,n", [(1024, 96), (37, 5), (100, 7), (4608, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_streaming_kernel_equals_f_linear(dtype, rows, k, n, bias):
    g = torch.Generator().manual_seed(rows * k + n)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    x = torch.randn(2, rows, k, generator=g).to(dtype)[1]  # a view: the kernel takes its rows
    with torch.no_grad():
        got = small_linear(x, w, b)
    assert got is not None and got.shape == (rows, n) and got.dtype is dtype
    exact = bf16_reference(x, w, b)
    if dtype is torch.float32:
        torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-4 * k**0.5)
    else:  # one bfloat16 rounding of (nearly) the exact sum: within one bf16 step of it
        torch.testing.assert_close(got.float(), exact, rtol=2**-7, atol=1e-3 * k**0.5)
        torch.testing.assert_close(got.float(), F.linear(x, w, b).float(), rtol=2**-7, atol=1e-3 * k**0.5)
        widened = stream_linear(kernels.load(), x, w, b, widen=True)
        torch.testing.assert_close(widened.float(), exact, rtol=2**-7, atol=1e-3 * k**0.5)


@needs_kernels
def test_fast_linear_takes_the_kernel_for_few_rows_only(monkeypatch):
    layer = Linear(64, 32, bias=False)
    torch.nn.init.normal_(layer.weight)
    layer.__class__ = FastLinear
    calls = []
    real = float_linear.stream_linear
    monkeypatch.setattr(float_linear, "stream_linear", lambda *a, **kw: calls.append(a[1].shape) or real(*a, **kw))
    with torch.no_grad():
        for rows in (1, float_linear.SMALL_ROWS, float_linear.SMALL_ROWS + 1):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-4)
        layer.bfloat16()
        layer(torch.randn(2, 64).bfloat16())
    assert calls == [(1, 64), (float_linear.SMALL_ROWS, 64), (2, 64)]
    # gradients: autograd's path, never the kernel
    layer.float()
    x = torch.randn(2, 64, requires_grad=True)
    layer(x).sum().backward()
    assert len(calls) == 3 and x.grad is not None


@needs_kernels
@pytest.mark.parametrize("amx", [True, False])
def test_bf16_products_of_five_rows_or_more_take_amx_tiles_except_the_head(monkeypatch, amx):
    """On AMX CPUs oneDNN's bf16 tiles beat the streaming kernel from AMX_TILE_ROWS rows, except
    on head-sized weights (AMX_STREAM_BYTES); elsewhere the kernel takes up to SMALL_ROWS rows."""
    monkeypatch.setattr(gemm, "amx_bf16", lambda: amx)
    monkeypatch.setattr(float_linear, "AMX_STREAM_BYTES", 64 * 512 * 2)  # `head` below is head-sized
    calls = []
    real = float_linear.stream_linear
    record = lambda *a, **kw: calls.append((a[1].shape[0], a[2].shape[0])) or real(*a, **kw)  # noqa: E731
    monkeypatch.setattr(float_linear, "stream_linear", record)
    small, head = Linear(64, 32, bias=False), Linear(64, 512, bias=False)
    for layer in (small, head):
        torch.nn.init.normal_(layer.weight)
        layer.__class__ = FastLinear
        layer.bfloat16()
    few, tiles = float_linear.AMX_TILE_ROWS - 1, float_linear.AMX_TILE_ROWS
    with torch.no_grad():
        for rows in (few, tiles, float_linear.SMALL_ROWS):
            for layer in (small, head):
                x = torch.randn(rows, 64).bfloat16()
                torch.testing.assert_close(layer(x).float(), F.linear(x, layer.weight).float(), rtol=2e-2, atol=5e-2)
    if amx:
        assert calls == [(few, 32), (few, 512), (tiles, 512), (float_linear.SMALL_ROWS, 512)]
    else:
        assert calls == [(r, n) for r in (few, tiles, float_linear.SMALL_ROWS) for n in (32, 512)]


@needs_kernels
def test_a_bf16_fast_model_decodes_like_the_reference(tmp_path):
    from checkpoints import make_checkpoint

    import lfmkit

    path, _ = make_checkpoint(tmp_path / "m", layout="small", seed=3)
    fast = lfmkit.load(path, dtype="bfloat16")
    ref = lfmkit.LFM2.from_pretrained(path, dtype="bfloat16")
    ids = torch.tensor([[1, 5, 9, 20, 33, 7], [1, 8, 2, 44, 3, 9]])
    with torch.no_grad():
        states = [m.new_state(batch_size=2, max_length=16) for m in (fast, ref)]
        for m, st in zip((fast, ref), states):
            m.prefill(ids, st)
        step = torch.tensor([[11], [12]])
        got, want = fast(step, state=states[0]), ref(step, state=states[1])
    torch.testing.assert_close(got.float(), want.float(), rtol=0.02, atol=0.05)


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_products_widen_to_float32_where_bf16_gemms_are_slow(bias, monkeypatch):
    """Without AVX-512 BF16 / AMX, many-row bfloat16 products are float32 GEMMs on widened weight
    tiles (three here), not PyTorch's bfloat16 loop: the float32 product rounded once."""
    monkeypatch.setattr(float_linear, "WIDEN_TILE_BYTES", 64 * 128 * 4)
    g = torch.Generator().manual_seed(1)
    layer = Linear(128, 150, bias=bias).to(torch.bfloat16).requires_grad_(False)
    layer.weight.copy_(torch.randn(150, 128, generator=g))
    if bias:
        layer.bias.copy_(torch.randn(150, generator=g))
    layer.__class__ = FastLinear
    x = torch.randn(3, 12, 128, generator=g).bfloat16()
    b = None if layer.bias is None else layer.bias.float()
    want = F.linear(x.float(), layer.weight.float(), b).bfloat16()
    monkeypatch.setattr(gemm, "bf16_gemm_fast", lambda: True)
    assert widened_linear(x, layer.weight, layer.bias) is None
    monkeypatch.setattr(gemm, "bf16_gemm_fast", lambda: False)
    with torch.no_grad():
        got = layer(x)
    assert got.dtype is torch.bfloat16 and got.shape == (3, 12, 150)
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)  # one bfloat16 rounding apart at most
    assert torch.equal(got, widened_linear(x, layer.weight, layer.bias))
