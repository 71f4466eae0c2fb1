"""The hybrid state: preallocated, updated in place, cheap to snapshot, honest about its size."""

import pytest
import torch

from lfmkit import LFM2, ContextLengthError, LFM2Config, LFM2State


@pytest.fixture(scope="module")
def model():
    cfg = LFM2Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        block_ff_dim=64,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
        max_position_embeddings=256,
    )
    return LFM2.from_config(cfg, seed=0)


def test_sizes_are_reported_and_constant_for_conv(model):
    st = model.new_state(batch_size=2, max_length=100)
    cfg = model.config
    assert st.bytes_per_token() == 2 * 2 * 2 * 8 * 4  # 2 attn layers, K+V, 2 kv heads, 8 dims, fp32
    assert st.fixed_bytes_per_row() == 2 * 32 * 3 * 4
    assert st.nbytes() == 2 * (100 * st.bytes_per_token() + st.fixed_bytes_per_row())
    assert st.transformer_kv_bytes_per_token() == 2 * st.bytes_per_token()
    assert cfg.state_bytes_per_token(4) == st.bytes_per_token()
    assert "B/token" in repr(st)


@torch.no_grad()
def test_decode_does_not_reallocate(model):
    st = model.new_state(1, 64)
    ptrs = [t.data_ptr() for t in st.conv + st.keys + st.values if t is not None]
    model(torch.tensor([[1, 2, 3, 4]]), state=st)
    for tok in range(5, 15):
        model(torch.tensor([[tok]]), state=st)
    assert [t.data_ptr() for t in st.conv + st.keys + st.values if t is not None] == ptrs
    assert st.lengths.tolist() == [14] and st.positions.tolist() == [14]


@torch.no_grad()
def test_snapshot_restore_undoes_tokens(model):
    st = model.new_state(1, 64)
    model(torch.tensor([[5, 6, 7]]), state=st)
    snap = st.snapshot()
    assert snap.nbytes() == st.fixed_bytes_per_row()  # only conv windows are copied
    first = model(torch.tensor([[9]]), state=st)
    model(torch.tensor([[10, 11]]), state=st)
    st.restore(snap)
    again = model(torch.tensor([[9]]), state=st)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    # A clone is an independent branch.
    branch = st.clone()
    a = model(torch.tensor([[12]]), state=st)
    b = model(torch.tensor([[12]]), state=branch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@torch.no_grad()
def test_reset_rows_and_full_reset(model):
    st = model.new_state(2, 32)
    model(torch.tensor([[1, 2], [3, 4]]), state=st)
    st.reset(rows=[1])
    assert st.lengths.tolist() == [2, 0] and st.uniform_length() is None
    assert float(st.conv[0][1].abs().sum()) == 0
    st.reset()
    assert st.lengths.tolist() == [0, 0] and st.uniform_length() == 0


@torch.no_grad()
def test_context_overflow_is_a_clear_error(model):
    st = model.new_state(1, 8)
    model(torch.arange(1, 7)[None], state=st)
    with pytest.raises(ContextLengthError, match="at most 8 tokens per row; 6 are used and 3 more"):
        model(torch.tensor([[1, 2, 3]]), state=st)
    assert st.lengths.tolist() == [6]  # nothing was written


def test_bad_sizes_rejected(model):
    with pytest.raises(ValueError, match="batch_size"):
        LFM2State(model.config, batch_size=0)
    with pytest.raises(ValueError, match="state has 1 rows"):
        model(torch.tensor([[1], [2]]), state=model.new_state(1, 8))


@torch.no_grad()
def test_bfloat16_state_with_float32_model(model):
    st = model.new_state(1, 16, dtype=torch.bfloat16)
    ids = torch.tensor([[3, 4, 5, 6]])
    stepped = torch.cat([model(ids[:, :2], state=st)] + [model(ids[:, t : t + 1], state=st) for t in (2, 3)], 1)
    torch.testing.assert_close(stepped, model(ids), rtol=0.05, atol=0.05)


@torch.no_grad()
def test_rows_view_decodes_in_place_like_the_full_batch(model):
    ids = torch.randint(0, 128, (3, 6), generator=torch.Generator().manual_seed(2))
    full = model.new_state(3, 32)
    model(ids, state=full)
    sub = model.new_state(3, 32)
    model(ids, state=sub)
    view = sub.rows(1, 3)
    assert view.batch_size == 2 and view.keys[1].data_ptr() != sub.keys[1].data_ptr()
    step = torch.tensor([[5], [9], [11]])
    expected = model(step, state=full)[1:]
    got = model(step[1:], state=view)
    assert torch.allclose(got, expected, atol=1e-6)
    assert sub.lengths.tolist() == [6, 7, 7]  # the view's writes landed in the parent
    assert torch.equal(sub.keys[1][1:, :, :7], full.keys[1][1:, :, :7])
    assert sub.rows(0, 3) is sub
