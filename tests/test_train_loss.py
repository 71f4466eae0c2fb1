"""The loss: chunked fused head + cross-entropy equals the plain one (values and gradients)
without keeping [tokens, vocab] logits for backward; step 1 of a run equals transformers' loss
on the same tokens and mask, padded or packed; accumulation does not change the step."""

import pytest
import torch
import torch.nn.functional as F
from train_helpers import CHATS, PROMPT_COMPLETIONS, TEXTS, tiny_model_dir, write_jsonl

from lfmkit import LFM2
from lfmkit.text.tokenizer import Tokenizer
from lfmkit.train.batching import DataPlan, collate, micro_batches
from lfmkit.train.config import SFTConfig
from lfmkit.train.data import IGNORE_INDEX
from lfmkit.train.losses import CausalLMLoss, chunked_head_cross_entropy, linear_cross_entropy
from lfmkit.train.sft import load_data, sft
from lfmkit.train.trainer import Trainer


def inputs(n=37, h=16, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, h, generator=g)).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g)
    return hidden, weight, targets


@pytest.mark.parametrize("chunk", [1, 8, 36, 37, 1000])
def test_chunked_cross_entropy_equals_the_full_one_with_gradients(chunk):
    hidden, weight, targets = inputs()
    got = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    (0.25 * got).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (0.25 * want).backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(gh, hidden.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, weight.grad, rtol=1e-5, atol=1e-7)


def test_the_generic_head_path_agrees():
    hidden, weight, targets = inputs(seed=1)
    head = torch.nn.Linear(16, 100, bias=True)
    want = F.cross_entropy(head(hidden), targets, reduction="sum")
    got = chunked_head_cross_entropy(head, hidden, targets, chunk_size=5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_no_tokens_by_vocab_tensor_is_kept_for_backward():
    hidden, weight, targets = inputs(n=64, h=8, vocab=512)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_cross_entropy(hidden, weight, targets, chunk_size=8).backward()
    assert shapes and all(s[0] * (s[1] if len(s) > 1 else 1) < 64 * 512 for s in shapes), shapes


def test_bf16_autocast_is_close_to_float32():
    hidden, weight, targets = inputs(seed=2)
    want = linear_cross_entropy(hidden, weight, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, targets)
    assert got.dtype == torch.float32
    assert abs(float(got.detach() - want.detach())) / float(want.detach()) < 2e-2


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss")
    model_dir = tiny_model_dir(root / "model")
    data = write_jsonl(root / "d.jsonl", CHATS + PROMPT_COMPLETIONS + TEXTS)
    return root, model_dir, data


def hf_loss(model_dir, docs):
    """transformers' loss on the documents as one right-padded batch, labels -100 off the mask."""
    from transformers import Lfm2ForCausalLM

    ref = Lfm2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    width = max(len(d) for d in docs)
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for r, d in enumerate(docs):
        ids[r, : len(d)] = torch.tensor(d.input_ids)
        mask[r, : len(d)] = 1
        labels[r, 1 : len(d)] = torch.tensor(d.targets[:-1])  # label t = the token trained at t
    with torch.no_grad():
        return float(ref(input_ids=ids, attention_mask=mask, labels=labels).loss)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_step_one_loss_equals_transformers_on_the_same_tokens_and_mask(run_inputs, packing):
    root, model_dir, data = run_inputs
    config = SFTConfig(
        model=str(model_dir),
        data=[str(data)],
        output=str(root / f"out-{packing}"),
        max_steps=1,
        batch_size=4,
        grad_accum=2,
        packing=packing,
        max_length=96,
        progress=False,
        save_every=0,
    )
    result = sft(config, verbose=False)
    docs, weights = load_data(config, Tokenizer.from_pretrained(model_dir), verbose=False)
    _, rows = DataPlan(docs, weights, 4, 96, packing, config.seed).step_rows(0)
    step_docs = [d for row in rows for d in row]
    if packing:
        assert len(step_docs) > len(rows)  # several documents share a row
    want = hf_loss(model_dir, step_docs)
    assert abs(result.losses[0] - want) / want < 1e-5


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradient_accumulation_does_not_change_the_step(run_inputs):
    root, model_dir, data = run_inputs
    tokenizer = Tokenizer.from_pretrained(model_dir)
    results = []
    for accum in (1, 2, 4):
        config = SFTConfig(
            model=str(model_dir),
            data=[str(data)],
            output=str(root / f"acc{accum}"),
            max_steps=1,
            batch_size=4,
            grad_accum=accum,
            max_length=96,
            progress=False,
            save_every=0,
            learning_rate=1e-3,
        )
        docs, weights = load_data(config, tokenizer, verbose=False)
        plan = DataPlan(docs, weights, 4, 96, False, config.seed)
        model = LFM2.from_pretrained(model_dir, dtype="float32")
        trainer = Trainer(model, plan, config, pad_id=0)
        trainer.optimizer.step = trainer.optimizer.zero_grad = lambda *a, **k: None  # keep the gradients
        record = trainer.step(0)
        results.append((record["loss"], record["grad_norm"], [p.grad.clone() for p in model.parameters()]))
    (l1, n1, g1) = results[0]
    for loss, norm, grads in results[1:]:
        assert abs(loss - l1) / l1 < 1e-6 and abs(norm - n1) / n1 < 1e-5
        for a, b in zip(grads, g1):
            assert float((a - b).abs().max() / b.abs().max()) < 1e-5


def test_micro_batches_split_rows_evenly_per_process():
    rows = [[i] for i in range(7)]
    assert micro_batches(rows, 3) == [[[0], [1], [2]], [[3], [4]], [[5], [6]]]
    assert micro_batches(rows, 2, rank=1, world_size=2) == [[[1], [3]], [[5]]]
    assert micro_batches(rows[:1], 4) == [[[0]]]


def test_causal_lm_loss_counts_only_trained_tokens(run_inputs):
    _, model_dir, _ = run_inputs
    model = LFM2.from_pretrained(model_dir, dtype="float32")
    from lfmkit.train.data import Document

    doc = Document([1, 20, 30, 40], [IGNORE_INDEX, 30, IGNORE_INDEX, IGNORE_INDEX])
    out = CausalLMLoss()(model, collate([[doc]], 0, packed=False))
    with torch.no_grad():
        logits = model(torch.tensor([doc.input_ids]))
    want = F.cross_entropy(logits[0, 1:2], torch.tensor([30]), reduction="sum")
    torch.testing.assert_close(out.total.detach(), want, rtol=1e-6, atol=1e-6)
