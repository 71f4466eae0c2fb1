"""Packing is exact: a packed row computes what its documents compute one by one (logits, loss
and every gradient), whatever the layout; best-fit decreasing keeps every document once and
never overfills a row; the loss of a packed batch equals the loss of the same batch padded."""

import pytest
import torch
from checkpoints import make_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from lfmkit import LFM2
from lfmkit.train.batching import collate, pack_best_fit_decreasing
from lfmkit.train.data import Document, to_document
from lfmkit.train.losses import CausalLMLoss

LAYOUTS = {
    "small-conv-bias": ("small", {"conv_bias": True}),
    "1.2b-gqa2": ("1.2b", {}),
    "all-conv-kernel4": ("small", {"layer_types": ["conv"] * 3, "conv_L_cache": 4}),
}
# Lengths chosen around the conv window (3): documents of 1 and 2 tokens sit entirely inside
# the window of the previous document's tail.
LENGTHS = [5, 1, 2, 9, 3]


@pytest.fixture(scope="module", params=list(LAYOUTS))
def model(request, tmp_path_factory):
    layout, overrides = LAYOUTS[request.param]
    path, _ = make_checkpoint(tmp_path_factory.mktemp(request.param), layout=layout, seed=7, **overrides)
    return LFM2.from_pretrained(path, dtype="float32").train()


def documents(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g) for n in lengths]


def packed(docs):
    ids = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    return ids, doc_ids


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def test_packed_row_logits_equal_each_document_alone(model):
    docs = documents(model.config.vocab_size)
    ids, doc_ids = packed(docs)
    got = model(ids, document_ids=doc_ids)
    alone = torch.cat([model(d[None]) for d in docs], dim=1)
    assert rel(got, alone) < 1e-5


@torch.no_grad()
def test_packed_attention_builds_no_row_by_row_mask(model, monkeypatch):
    """Attention over a packed row runs per document: every SDPA call is causal, maskless and
    no longer than one document (a long packed row never holds a [t, t] mask)."""
    import torch.nn.functional as F

    calls, sdpa = [], F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((q.shape[2], k.shape[2], attn_mask, is_causal))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    docs = documents(model.config.vocab_size, lengths=[7, 12, 5, 9])
    ids, doc_ids = packed(docs)
    model(torch.cat([ids, ids.flip(1)]), document_ids=torch.cat([doc_ids, doc_ids.flip(1)]))
    assert len(calls) == 2 * len(docs) * len(model.config.attention_layers)
    assert all(mask is None and causal and q == k <= 12 for q, k, mask, causal in calls)


@torch.no_grad()
def test_without_document_ids_the_documents_leak_into_each_other(model):
    """The control: a plain forward of the same row differs after the first document, so the
    test above would catch a packing that only restarted some of attention, RoPE or the conv."""
    docs = documents(model.config.vocab_size)
    ids, _ = packed(docs)
    plain = model(ids)
    alone = torch.cat([model(d[None]) for d in docs], dim=1)
    first = len(docs[0])
    assert rel(plain[:, :first], alone[:, :first]) < 1e-5
    assert rel(plain[:, first : first + 1], alone[:, first : first + 1]) > 1e-3


@torch.no_grad()
def test_conv_window_restarts_exactly_at_each_boundary(model):
    """Changing the last tokens of one document changes nothing in the next one."""
    docs = documents(model.config.vocab_size, [6, 4])
    ids, doc_ids = packed(docs)
    other = ids.clone()
    other[0, 3:6] = (other[0, 3:6] + 1) % model.config.vocab_size
    a, b = model(ids, document_ids=doc_ids), model(other, document_ids=doc_ids)
    assert torch.equal(a[:, 6:], b[:, 6:])


def test_packed_row_gradients_equal_the_documents_run_one_by_one(model):
    docs = documents(model.config.vocab_size)
    ids, doc_ids = packed(docs)

    def loss_of(logits, tokens):
        return torch.nn.functional.cross_entropy(logits[0, :-1], tokens[1:], reduction="sum")

    model.zero_grad(set_to_none=True)
    logits = model(ids, document_ids=doc_ids)
    bounds = torch.tensor([0] + [len(d) for d in docs]).cumsum(0).tolist()
    total = sum(loss_of(logits[:, a:b], ids[0, a:b]) for a, b in zip(bounds, bounds[1:]))
    total.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    alone = sum(loss_of(model(d[None]), d) for d in docs)
    alone.backward()
    torch.testing.assert_close(total, alone, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        assert rel(packed_grads[n], p.grad) < 1e-5, n


def test_packed_and_padded_loss_of_the_same_batch_are_equal(model):
    """The trainer's two paths: packed rows (document_ids) and one padded row per document
    (attention_mask) give the same summed loss and the same gradients."""
    vocab = model.config.vocab_size
    docs = []
    for d in documents(vocab, [7, 3, 12, 2, 5, 9]):
        trained = [j >= len(d) // 3 for j in range(len(d))]  # a prompt part without loss
        docs.append(to_document(d.tolist(), trained, max_length=64)[0])
    loss = CausalLMLoss(chunk_size=5)
    rows = [[docs[i] for i in b] for b in pack_best_fit_decreasing([len(d) for d in docs], 16)]
    assert len(rows) < len(docs)
    results = []
    for batch in (collate(rows, 0, packed=True), collate([[d] for d in docs], 0, packed=False)):
        model.zero_grad(set_to_none=True)
        out = loss(model, batch)
        out.total.backward()
        results.append(
            (out.total.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, batch.trained_tokens)
        )
    (a, ga, na), (b, gb, nb) = results
    assert na == nb == sum(d.trained_tokens for d in docs)
    assert abs(float(a - b)) / float(b) < 1e-5
    for n in ga:
        assert rel(ga[n], gb[n]) < 1e-5, n


def test_gradient_checkpointing_keeps_packed_gradients(model):
    docs = documents(model.config.vocab_size)
    ids, doc_ids = packed(docs)
    grads = []
    for enable in (False, True):
        model.gradient_checkpointing_enable(enable)
        model.zero_grad(set_to_none=True)
        model(ids, document_ids=doc_ids).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.gradient_checkpointing_enable(False)
    for n in grads[0]:
        assert rel(grads[1][n], grads[0][n]) < 1e-6, n


def test_document_ids_are_refused_with_a_state_or_an_attention_mask(model):
    ids, doc_ids = packed(documents(model.config.vocab_size, [3, 2]))
    with pytest.raises(ValueError, match="stateless"):
        model(ids, document_ids=doc_ids, state=model.new_state(1, 16))
    with pytest.raises(ValueError, match="stateless"):
        model(ids, document_ids=doc_ids, attention_mask=torch.ones_like(ids))
    with pytest.raises(ValueError, match="shape"):
        model(ids, document_ids=doc_ids[:, :-1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=0, max_size=60), st.integers(40, 64))
def test_best_fit_decreasing_places_every_document_once_within_capacity(lengths, capacity):
    bins = pack_best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # Best fit never opens a row while the items of two rows would fit in one.
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > capacity


def test_best_fit_decreasing_matches_the_textbook_rule():
    """Longest first, each into the fullest row that still has room (here: a known answer)."""
    assert pack_best_fit_decreasing([5, 3, 4, 2, 6, 1], 7) == [[4, 5], [0, 3], [2, 1]]


def test_collate_marks_documents_and_padding():
    a = Document([5, 6, 7], [6, 7, -100])
    b = Document([8, 9], [9, -100])
    batch = collate([[a, b], [b]], pad_id=0, packed=True)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [8, 9, 0, 0, 0]]
    assert batch.document_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert batch.targets.tolist() == [[6, 7, -100, 9, -100], [9, -100, -100, -100, -100]]
    assert batch.tokens == 7 and batch.trained_tokens == 4
    padded = collate([[a], [b]], pad_id=0, packed=False)
    assert padded.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and padded.document_ids is None
