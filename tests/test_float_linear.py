"""`FastLinear`: float32 inference products through oneDNN equal `F.linear`; training keeps
autograd's path; the fast model installs it on every linear and the reference gets nn.Linear back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lfmkit.fast import float_linear
from lfmkit.fast.float_linear import FastLinear, onednn_linear
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
    monkeypatch.setattr(float_linear, "_ONEDNN", False)
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
