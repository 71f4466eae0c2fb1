"""lfmkit's LFM2 equals transformers' Lfm2ForCausalLM (the reference) on random weights."""

import pytest
import torch
from checkpoints import make_checkpoint

from lfmkit import LFM2

CASES = {
    # name: (layout, hf overrides)
    "1.2b-layout-gqa2": ("1.2b", {}),
    "2.6b-layout-30-layers-no-auto-adjust-gqa4": ("2.6b", {}),
    "gqa1-untied-head": ("small", {"tie_word_embeddings": False}),
    "multiplier-and-rounding": ("small", {"block_ffn_dim_multiplier": 1.5, "intermediate_size": 100}),
    "all-conv": ("small", {"layer_types": ["conv"] * 3}),
    "conv-bias-wide-head-gqa2": ("small", {"conv_bias": True, "num_key_value_heads": 2, "hidden_size": 96}),
}


def rel_err(ref: torch.Tensor, ours: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (ref - ours).abs()
    if mask is not None:
        diff = diff * mask[..., None]
    return float(diff.max() / ref.abs().max())


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    layout, overrides = CASES[request.param]
    path, ref = make_checkpoint(tmp_path_factory.mktemp(request.param), layout=layout, seed=3, **overrides)
    ours = LFM2.from_pretrained(path, dtype="float32")
    return ref, ours


def hf_positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def test_full_sequence_logits_match(pair):
    ref, ours = pair
    for length in (1, 7, 33):  # odd lengths too
        ids = torch.randint(0, ref.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
        assert rel_err(ref(ids, use_cache=False).logits, ours(ids)) < 1e-4


@torch.no_grad()
def test_left_padded_batch_matches(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, ref.config.vocab_size, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :16] = 0  # a single real token
    ids = ids.masked_fill(mask == 0, 0)
    expected = ref(ids, attention_mask=mask, position_ids=hf_positions(mask), use_cache=False).logits
    if not ref.config.conv_bias:  # the reference leaks the pads' in_proj bias into the conv window
        assert rel_err(expected, ours(ids, attention_mask=mask), mask) < 1e-4
    # And each padded row equals that prompt run alone, unpadded.
    for row in range(3):
        alone = ours(ids[row : row + 1, mask[row].bool()])
        batched = ours(ids, attention_mask=mask)[row : row + 1, mask[row].bool()]
        assert rel_err(alone, batched) < 1e-4


@torch.no_grad()
def test_prefill_then_decode_and_chunked_prefill_equal_full_forward(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, ref.config.vocab_size, (2, 21), generator=g)
    full = ref(ids, use_cache=False).logits
    state = ours.new_state(batch_size=2, max_length=64)
    pieces = [ours(ids[:, :9], state=state)]
    for t in range(9, 21):
        pieces.append(ours(ids[:, t : t + 1], state=state))
    assert rel_err(full, torch.cat(pieces, 1)) < 1e-4
    state.reset()
    chunks = [ours(ids[:, a:b], state=state) for a, b in ((0, 4), (4, 5), (5, 16), (16, 21))]
    assert rel_err(full, torch.cat(chunks, 1)) < 1e-4


@torch.no_grad()
def test_left_padded_prefill_then_decode(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(2, ref.config.vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    if ref.config.conv_bias:  # see test_left_padded_batch_matches: compare with our unpadded forward
        expected = ours(ids, attention_mask=mask)
    else:
        expected = ref(ids, attention_mask=mask, position_ids=hf_positions(mask), use_cache=False).logits
    state = ours.new_state(batch_size=2, max_length=32)
    got = [ours(ids[:, :8], attention_mask=mask[:, :8], state=state)]
    for t in range(8, 12):
        got.append(ours(ids[:, t : t + 1], state=state))
    assert rel_err(expected, torch.cat(got, 1), mask) < 1e-4


@torch.no_grad()
def test_greedy_32_tokens_equal_transformers_generate(pair):
    ref, ours = pair
    prompt = torch.randint(2, ref.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(5))
    if ref.config.layer_types.count("full_attention"):
        expected = ref.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )[0, 6:].tolist()
    else:  # the reference's cache needs an attention layer: recompute the whole sequence instead
        seq = prompt
        for _ in range(32):
            nxt = ref(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
        expected = seq[0, 6:].tolist()
    state = ours.new_state(1, 64)
    logits = ours(prompt, state=state, logits_to_keep=1)
    got = []
    for _ in range(32):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        got.append(int(nxt))
        logits = ours(nxt, state=state)
    assert got == expected


@torch.no_grad()
def test_rows_at_different_lengths_decode_like_alone(pair):
    _, ours = pair
    g = torch.Generator().manual_seed(6)
    a = torch.randint(2, ours.config.vocab_size, (1, 5), generator=g)
    b = torch.randint(2, ours.config.vocab_size, (1, 11), generator=g)
    singles = []
    for prompt in (a, b):
        st = ours.new_state(1, 32)
        ours(prompt, state=st)
        singles.append((st, ours(torch.tensor([[3]]), state=st)))
    big = ours.new_state(2, 32)
    for row, prompt in enumerate((a, b)):
        st = ours.new_state(1, 32)
        ours(prompt, state=st)
        big.copy_row(st, 0, row)
    assert big.uniform_length() is None
    out = ours(torch.tensor([[3], [3]]), state=big)
    for row in range(2):
        assert rel_err(singles[row][1][0], out[row]) < 1e-5
    assert big.lengths.tolist() == [6, 12]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_runs_and_stays_close(tmp_path, dtype):
    path, ref = make_checkpoint(tmp_path, layout="small", seed=7)
    ours = LFM2.from_pretrained(path, dtype=dtype)
    assert ours.dtype == dtype
    ids = torch.randint(0, ref.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(8))
    out = ours(ids)
    assert out.dtype == dtype
    assert rel_err(ref(ids, use_cache=False).logits, out.float()) < 0.05
    state = ours.new_state(1, 32)
    stepped = torch.cat(
        [ours(ids[:, :10], state=state)] + [ours(ids[:, t : t + 1], state=state) for t in range(10, 16)], 1
    )
    assert rel_err(out.float(), stepped.float()) < 0.05


def test_random_init_model_from_preset_config_shapes():
    from lfmkit import LFM2Config

    cfg = LFM2Config.from_preset(
        "lfm2-350m", num_hidden_layers=3, layer_types=["conv", "full_attention", "conv"], vocab_size=256
    )
    model = LFM2.from_config(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.shape == (1, 3, 256) and torch.isfinite(out).all()


def test_dense_qwen_shape_with_explicit_head_dim(tmp_path):
    """The all-attention layout with head_dim * heads != hidden matches the reference too."""
    path, ref = make_checkpoint(
        tmp_path,
        layout="small",
        seed=9,
        layer_types=["full_attention"] * 2,
        head_dim=32,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ours = LFM2.from_pretrained(path, dtype="float32")
    assert ours.config.head_size == 32
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert rel_err(ref(ids, use_cache=False).logits, ours(ids)) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@torch.no_grad()
def test_cuda_matches_cpu(tmp_path, dtype):
    path, ref = make_checkpoint(tmp_path, layout="1.2b", seed=11)
    cpu = LFM2.from_pretrained(path, dtype="float32")
    gpu = LFM2.from_pretrained(path, dtype=dtype, device="cuda")
    assert gpu.device.type == "cuda"
    ids = torch.randint(2, 512, (2, 19), generator=torch.Generator().manual_seed(12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    expected = cpu(ids, attention_mask=mask)
    got = gpu(ids.cuda(), attention_mask=mask.cuda()).float().cpu()
    assert rel_err(expected, got, mask) < (1e-4 if dtype == torch.float32 else 0.05)
    state = gpu.new_state(2, 32)
    steps = [gpu(ids[:, :15].cuda(), attention_mask=mask[:, :15].cuda(), state=state)]
    steps += [gpu(ids[:, t : t + 1].cuda(), state=state) for t in range(15, 19)]
    assert rel_err(expected, torch.cat(steps, 1).float().cpu(), mask) < (1e-4 if dtype == torch.float32 else 0.05)


def test_constructed_model_is_initialised_and_from_config_is_seeded():
    from lfmkit import LFM2Config

    cfg = LFM2Config.from_preset(
        "lfm2-350m",
        num_hidden_layers=2,
        layer_types=["conv", "full_attention"],
        vocab_size=256,
        hidden_size=128,
        block_ff_dim=384,
    )
    model = LFM2(cfg)  # no checkpoint: every weight still gets the documented init
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif p.dim() >= 2:
            assert 0.015 < p.std().item() < 0.025, name
    a, b = LFM2.from_config(cfg, seed=3), LFM2.from_config(cfg, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_building_on_meta_does_not_import_the_compiler_stack():
    """Loaders build the model on the meta device first; PyTorch's default random init there
    would import dynamo/inductor/sympy (~70 MiB of resident memory and a second of start-up)."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from lfmkit import LFM2, LFM2Config\n"
        "with torch.device('meta'):\n"
        "    LFM2(LFM2Config.from_preset('lfm2-350m'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sympy' or m.startswith('torch._dynamo'))[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
