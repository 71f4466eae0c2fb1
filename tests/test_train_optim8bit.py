"""`optim: adamw_8bit` (block-wise 8-bit AdamW moments) and `master_weights: kahan` (bfloat16
weights with Kahan-compensated updates, no float32 master): compact_adamw.py, blockwise.py.

The quantization round trip stays within half a code gap of the dynamic map, the kernel's table
lookup finds the codes a search finds, the C++ step equals the PyTorch definition, the
trajectory stays close to torch's AdamW's, states and updates match torchao's AdamW8bit (the
oracle, when installed), the loss goes down on a tiny model, a crashed run resumes bit for bit
(optimizer state restored in its own dtypes), LoRA trains with it, and unsupported
combinations are one-line errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from train_helpers import (
    CHATS,
    TEXTS,
    Interrupt,
    interrupting_loss,
    logged_losses,
    tiny_model_dir,
    tiny_run,
    write_jsonl,
)

from lfmkit import kernels
from lfmkit.cli import main
from lfmkit.errors import ConfigError
from lfmkit.train import compact_adamw
from lfmkit.train.blockwise import bucket_table, dequantize, dynamic_map, encode, midpoints, quantize
from lfmkit.train.compact_adamw import CompactAdamW
from lfmkit.train.config import SFTConfig
from lfmkit.train.sft import sft

STEPS = 4
floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


# ---- the quantization --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(floats, min_size=1, max_size=700), st.booleans())
def test_round_trip_error_is_within_half_a_code_gap(values, signed):
    x = torch.tensor(values, dtype=torch.float32)
    if not signed:
        x = x.abs()
    codes, scales = quantize(x, signed)
    back = dequantize(codes, scales, signed)
    q = dynamic_map(signed)
    # the farthest any point of the range is from a code: half the widest gap, or (signed) the
    # distance from -1 to the lowest code, -0.993: 0.0070 of the block's absmax (unsigned 0.0035)
    worst = max(float((q[1:] - q[:-1]).max()) / 2, float(q[0] + 1))
    block_max = scales.repeat_interleave(256)[: x.numel()]
    assert torch.all((back - x).abs() <= worst * block_max * (1 + 1e-4) + 1e-30)
    assert bool((torch.sign(back) * torch.sign(x) >= 0).all())  # never the wrong sign


def table_encode(y: torch.Tensor, signed: bool) -> torch.Tensor:
    """The kernel's lookup (lfmkit/kernels/csrc/optim.cpp, `encode`) written in PyTorch."""
    entry = bucket_table(signed).long()[(y.view(torch.int32).long() >> 16) & 0xFFFF]
    code = entry & 0xFF
    return code + (entry >> 8) * (y >= midpoints(signed)[code]).long()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=300), st.booleans())
def test_the_bucket_table_finds_the_codes_a_search_finds(values, signed):
    mids = midpoints(signed)[:-1]
    y = torch.cat([torch.tensor(values), mids, mids.nextafter(torch.tensor(2.0)), mids.nextafter(torch.tensor(-2.0))])
    if not signed:
        y = y.abs()
    assert torch.equal(table_encode(y, signed), encode(y, signed).long())


# ---- the optimizer step ------------------------------------------------------------------------
def stepped(dtype, eight_bit, kernel: bool, steps=3, shape=(97, 67), seed=0):  # a short last block
    """A parameter after `steps` CompactAdamW steps on fixed random gradients, and its state."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
    opt = CompactAdamW([p], lr=1e-2, weight_decay=0.1, eight_bit=eight_bit)
    original = compact_adamw.load_kernels
    if not kernel:
        compact_adamw.load_kernels = lambda: None
    try:
        for k in range(steps):
            p.grad = (torch.randn(shape, generator=gen) * (k + 1)).to(dtype)
            opt.step()
            assert p.grad is None  # released as soon as it was consumed
    finally:
        compact_adamw.load_kernels = original
    return p.detach(), opt.state[p]


def exact_weight(p, state):
    """The weight a Kahan-compensated parameter stands for: bfloat16 value + compensation."""
    return p.float() + state["compensation"].float() if "compensation" in state else p.float()


@pytest.mark.skipif(kernels.load() is None, reason="no C++ kernels on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eight_bit", [False, True])
def test_the_kernel_step_equals_the_pytorch_definition(dtype, eight_bit):
    (pk, sk), (pr, sr) = stepped(dtype, eight_bit, kernel=True), stepped(dtype, eight_bit, kernel=False)
    # an update is at most lr (1e-2); a code that rounds the other way moves it by <= 1.4% of that
    # and weight + compensation (two bfloat16 values) holds a weight to ~2^-16 of it
    atol = 1.5e-4 if eight_bit else 1e-6
    rtol = 2e-5 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(exact_weight(pk, sk), exact_weight(pr, sr), rtol=rtol, atol=atol)
    assert set(sk) == set(sr)
    for name in ("exp_avg", "exp_avg_sq"):
        if eight_bit:  # FMA contraction in the kernel may move a value across a midpoint, rarely
            assert sk[name].dtype == torch.uint8 and (sk[name] != sr[name]).float().mean() < 1e-3
            torch.testing.assert_close(sk[f"{name}_scale"], sr[f"{name}_scale"], rtol=1e-5, atol=0)
        else:
            torch.testing.assert_close(sk[name], sr[name], rtol=1e-5, atol=1e-7)


def test_small_tensors_keep_float32_moments_and_bf16_ones_get_compensation():
    big, small = torch.nn.Parameter(torch.zeros(64, 64)), torch.nn.Parameter(torch.zeros(64, dtype=torch.bfloat16))
    opt = CompactAdamW([big, small], eight_bit=True)
    big.grad, small.grad = torch.ones(64, 64), torch.ones(64, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[big]["exp_avg"].dtype == torch.uint8 and opt.state[big]["exp_avg_scale"].shape == (16,)
    assert "compensation" not in opt.state[big]
    assert opt.state[small]["exp_avg"].dtype == torch.float32 and "exp_avg_scale" not in opt.state[small]
    assert opt.state[small]["compensation"].dtype == torch.bfloat16


def regression_run(make_optimizer, dtype=torch.float32, steps=60):
    """Fit a 64x128 linear map by least squares; the weights after `steps` steps."""
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(128, 64, generator=gen)
    w = torch.nn.Parameter(torch.zeros(128, 64, dtype=dtype))
    opt = make_optimizer([w])
    for _ in range(steps):
        x = torch.randn(32, 64, generator=gen)
        loss = (x.to(dtype) @ w.t() - x @ target.t()).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return w.detach().float(), target


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_8bit_trajectory_stays_close_to_torch_adamw(dtype):
    ref, target = regression_run(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01))
    ours, _ = regression_run(lambda ps: CompactAdamW(ps, lr=1e-2, weight_decay=0.01), dtype)
    # 60 steps from zero, lr 1e-2: the weights moved ~0.5; 8-bit moments (and bfloat16 weights)
    # keep the path within 2% of that distance of torch's, and the fit as good.
    assert (ours - ref).norm() / ref.norm() < 2e-2
    assert (ours - target).norm() < 1.05 * (ref - target).norm()


def test_kahan_keeps_updates_below_half_a_bfloat16_ulp():
    """lr 1e-4 on weights of 1.0: each update is ~1e-4, below bfloat16's half ulp (2^-8 / 2) at
    1.0, so plain rounding would never move them; the compensation accumulates them."""
    w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = CompactAdamW([w], lr=1e-4, eight_bit=False)
    for _ in range(100):
        w.grad = torch.ones_like(w)
        opt.step()
    exact = exact_weight(w.detach(), opt.state[w])
    # within 1% of the 0.01 moved (the compensation is itself bfloat16: ~2^-9 of itself a step)
    torch.testing.assert_close(exact, torch.full((4096,), 1 - 100 * 1e-4), rtol=0, atol=1e-4)
    assert float(w.detach().float().mean()) < 1.0  # the bfloat16 weight itself moved too
    plain = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0)
    for _ in range(100):
        plain.grad = torch.ones_like(plain)
        plain_opt.step()
    assert torch.equal(plain.detach(), torch.ones_like(plain))  # rounding alone never moves them


def test_states_and_updates_match_torchao_adamw8bit(monkeypatch):
    torchao_optim = pytest.importorskip("torchao.optim")
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)  # torchao compiles its step; eager is enough here
    gen = torch.Generator().manual_seed(5)
    start = torch.randn(256, 64, generator=gen)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours_opt = CompactAdamW([ours], lr=1e-2, weight_decay=0.01)
    theirs_opt = torchao_optim.AdamW8bit([theirs], lr=1e-2, weight_decay=0.01, block_size=256)
    for _ in range(3):
        grad = torch.randn(256, 64, generator=gen)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        ours_opt.step()
        theirs_opt.step()
    mine, ao = ours_opt.state[ours], theirs_opt.state[theirs]
    for name in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(mine[f"{name}_scale"], ao[name].scale, rtol=1e-5, atol=0)
        assert (mine[name] != ao[name].codes).float().mean() < 2e-3  # the same map: codes agree
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=1e-5)


def test_state_dict_round_trip_keeps_every_dtype(tmp_path):
    p, state = stepped(torch.bfloat16, True, kernel=kernels.load() is not None)
    param = torch.nn.Parameter(p.clone())
    opt = CompactAdamW([param])
    opt.state[param] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    fresh = CompactAdamW([param])
    fresh.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    loaded = fresh.state[param]
    for k, v in state.items():
        assert (torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype) if torch.is_tensor(v) else loaded[k] == v


# ---- in the trainer ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("optim8bit")
    return root, tiny_model_dir(root / "model"), [str(write_jsonl(root / "data.jsonl", CHATS + TEXTS))]


def config(setup, name, **overrides):
    compact = dict(bf16_weights=True, master_weights="kahan", optim="adamw_8bit")
    return tiny_run(*setup, name, STEPS, **(compact | overrides))


@pytest.fixture(scope="module")
def runs(setup):
    masters = sft(config(setup, "masters", master_weights="float32", optim="adamw"), verbose=False)
    compact = sft(config(setup, "compact"), verbose=False)
    return masters, compact


def test_loss_goes_down_and_follows_the_float32_masters_run(runs):
    masters, compact = runs
    assert len(compact.losses) == STEPS and compact.losses[-1] < compact.losses[0]
    assert compact.losses[0] == masters.losses[0]  # the same bfloat16 weights before any step
    for ours, ref in zip(compact.losses, masters.losses):
        assert abs(ours - ref) / ref < 3e-2


def test_checkpoints_hold_bf16_weights_and_the_quantized_state(runs):
    _, compact = runs
    kept = load_file(str(compact.checkpoint / "trainable.safetensors"))
    assert {t.dtype for t in kept.values()} == {torch.bfloat16}
    state = torch.load(compact.checkpoint / "optimizer.pt", weights_only=True)["state"]
    dtypes = {k: {s[k].dtype for s in state.values() if k in s} for k in ("exp_avg", "compensation")}
    assert dtypes == {"exp_avg": {torch.uint8, torch.float32}, "compensation": {torch.bfloat16}}
    saved = load_file(str(compact.output / "model.safetensors"))
    assert torch.equal(saved["model.layers.0.feed_forward.w1.weight"], kept["model.layers.0.feed_forward.w1.weight"])


def test_a_crashed_run_resumes_exactly(setup, runs):
    _, compact = runs
    cfg = config(setup, "crashed")
    with pytest.raises(Interrupt):  # dies in step 4: checkpoint step-2 stands
        sft(cfg, loss=interrupting_loss(after_calls=6), verbose=False)
    result = sft(cfg | {"resume": True}, verbose=False)
    assert result.resumed_from == 2
    assert logged_losses(cfg["output"]) == logged_losses(compact.output)
    ours, ref = load_file(f"{cfg['output']}/model.safetensors"), load_file(str(compact.output / "model.safetensors"))
    for name, tensor in ref.items():
        assert torch.equal(ours[name], tensor), name


def test_8bit_moments_on_float32_weights_and_lora_train(setup):
    full = sft(config(setup, "fp32-8bit", bf16_weights=False, master_weights="float32", max_steps=2), verbose=False)
    assert full.losses[-1] < full.losses[0]
    lora = sft(config(setup, "lora-8bit", lora_r=8, max_steps=3, save_every=0), verbose=False)
    assert lora.losses[-1] < lora.losses[0]
    assert (lora.output / "adapter_model.safetensors").exists()


# ---- what is refused ---------------------------------------------------------------------------
def test_kahan_without_bf16_weights_and_unknown_optimizers_are_one_line_errors(setup, capsys):
    with pytest.raises(ConfigError, match="master_weights kahan needs bf16_weights"):
        SFTConfig.from_dict(config(setup, "x", bf16_weights=False))
    with pytest.raises(ConfigError, match="optim must be one of adamw, adamw_8bit"):
        SFTConfig.from_dict(config(setup, "x", optim="adamw_4bit"))
    _, model_dir, data = setup
    args = ["train", "sft", "--no-progress", "--model", str(model_dir), "--data", data[0], "--output", "o"]
    assert main([*args, "--master-weights", "kahan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "kahan needs bf16_weights" in err and "Traceback" not in err


def test_8bit_under_torchrun_is_refused(setup, monkeypatch):
    from lfmkit.train import trainer

    monkeypatch.setattr(trainer, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ConfigError, match="optim adamw_8bit: not supported under torchrun yet"):
        sft(config(setup, "torchrun", bf16_weights=False, master_weights="float32"), verbose=False)
