"""Distillation losses: equal to TRL's GKD generalized JSD (values and gradients, with and without
a label mask), the hidden-states + head API equal to the full-logit formula without ever holding
[tokens, vocab] at once, the top-k teacher cache (k = vocab gives the full-logit loss), and a
student that gets closer to its teacher."""

import os

import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_checkpoint
from torch.utils._python_dispatch import TorchDispatchMode

from lfmkit import LFM2, CheckpointError, ConfigError
from lfmkit.train.distill import (
    DistillationLoss,
    TeacherCache,
    TeacherHead,
    TeacherLogits,
    TeacherTopK,
    forward_kl,
    generalized_jsd,
    next_token_targets,
    reverse_kl,
    write_teacher_cache,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def trl_jsd():
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


def rand(*shape, seed=0, scale=3.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def masked_labels(b, t, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.4] = -100
    return labels


# ---- TRL is the oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("masked", [True, False], ids=["label-mask", "no-mask"])
def test_generalized_jsd_equals_trl_values_and_gradients(trl_jsd, beta, temperature, masked):
    b, t, v = 3, 7, 50
    student, teacher = rand(b, t, v, seed=1), rand(b, t, v, seed=2)
    labels = masked_labels(b, t, v) if masked else None
    if not masked:  # TRL's batchmean without labels divides by dim 0: per-token only on 2-D logits
        student, teacher = student.reshape(-1, v), teacher.reshape(-1, v)
    s_ours = student.clone().requires_grad_(True)
    s_trl = student.clone().requires_grad_(True)
    ours = generalized_jsd(s_ours, teacher, labels, beta=beta, temperature=temperature, chunk_size=4)
    theirs = trl_jsd(s_trl, teacher, labels, beta=beta, temperature=temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(s_ours.grad, s_trl.grad, rtol=1e-5, atol=1e-7)


def test_forward_and_reverse_kl_are_the_textbook_divergences():
    s, t = rand(10, 30, seed=3), rand(10, 30, seed=4)
    ps, pt = s.softmax(-1), t.softmax(-1)
    fwd = (pt * (pt.log() - ps.log())).sum(-1).mean()
    rev = (ps * (ps.log() - pt.log())).sum(-1).mean()
    torch.testing.assert_close(forward_kl(s, t), fwd)
    torch.testing.assert_close(reverse_kl(s, t), rev)
    t2 = 2.0
    ps2, pt2 = (s / t2).softmax(-1), (t / t2).softmax(-1)
    torch.testing.assert_close(forward_kl(s, t, temperature=t2), (pt2 * (pt2.log() - ps2.log())).sum(-1).mean())


# ---- the hidden-states + head API ----------------------------------------------------------------
def reference_loss(hidden, weight, teacher_logits, targets, beta, temperature, alpha):
    """The formula with everything materialized: alpha T^2 JSD + (1 - alpha) CE, mean over tokens."""
    keep = targets != -100
    logits = (hidden @ weight.T)[keep].float()
    t_logits = teacher_logits[keep].float()
    s_logp, t_logp = F.log_softmax(logits / temperature, -1), F.log_softmax(t_logits / temperature, -1)
    if beta == 0:
        div = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    elif beta == 1:
        div = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    else:
        m = torch.logaddexp(s_logp + torch.log1p(torch.tensor(-beta)), t_logp + torch.log(torch.tensor(beta)))
        div = beta * (t_logp.exp() * (t_logp - m)).sum(-1) + (1 - beta) * (s_logp.exp() * (s_logp - m)).sum(-1)
    ce = F.cross_entropy(logits, targets[keep], reduction="none")
    return (alpha * temperature**2 * div + (1 - alpha) * ce).mean()


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.3)])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_hidden_states_and_head_give_the_full_logit_loss_and_gradients(kind, beta, chunk):
    b, t, h, v = 2, 9, 16, 40
    hidden, weight = rand(b, t, h, seed=5, scale=1.0), rand(v, h, seed=6, scale=0.5)
    t_hidden, t_weight = rand(b, t, 12, seed=7, scale=1.0), rand(v, 12, seed=8, scale=0.5)
    targets = masked_labels(b, t, v, seed=9)
    ref_h, ref_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    expected = reference_loss(ref_h, ref_w, t_hidden @ t_weight.T, targets, beta, 2.0, 0.7)
    expected.backward()
    loss_fn = DistillationLoss(kind, beta=beta if kind == "jsd" else 0.5, temperature=2.0, alpha=0.7, chunk_size=chunk)
    teachers = [TeacherLogits(t_hidden @ t_weight.T), TeacherHead(t_hidden, lambda x: x @ t_weight.T)]
    for teacher in teachers:
        h_, w_ = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        out = loss_fn(h_, targets, teacher, head=w_)
        assert out.tokens == int((targets != -100).sum())
        torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
        out.loss.backward()
        torch.testing.assert_close(h_.grad, ref_h.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(w_.grad, ref_w.grad, rtol=1e-4, atol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tokens_by_vocab_tensor_is_ever_whole():
    n, h, v, chunk = 60, 16, 64, 8  # n * v = 3840; the head is v * h = 1024, a chunk 512
    hidden = rand(n, h, seed=10, scale=1.0).requires_grad_(True)
    weight = rand(v, h, seed=11, scale=0.5).requires_grad_(True)
    teacher = TeacherHead(rand(n, 12, seed=12, scale=1.0), lambda x: x @ rand(v, 12, seed=13).T)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(14))
    loss_fn = DistillationLoss("jsd", temperature=1.5, chunk_size=chunk)
    with LargestTensor() as seen:
        loss_fn(hidden, targets, teacher, head=weight).loss.backward()
    assert seen.largest <= v * max(h, chunk, 12) < n * v
    assert hidden.grad.abs().sum() > 0 and weight.grad.abs().sum() > 0


def test_a_lora_wrapped_or_quantized_head_counts_as_its_effective_weight():
    from lfmkit.quant import QuantLinear
    from lfmkit.train.lora import LoRALinear

    hidden, teacher = rand(2, 6, 64, seed=17, scale=1.0), rand(2, 6, 96, seed=18)
    targets = masked_labels(2, 6, 96, seed=19)
    loss_fn = DistillationLoss("jsd", temperature=2.0, chunk_size=5)
    base = torch.nn.Linear(64, 96, bias=False)
    lora = LoRALinear(base, r=4, scaling=2.0)
    torch.nn.init.normal_(lora.lora_B.weight, std=0.1)
    out = loss_fn(hidden, targets, teacher, head=lora)
    expected = loss_fn(hidden, targets, teacher, head=base.weight + lora.delta_weight().detach())
    torch.testing.assert_close(out.loss, expected.loss)
    out.loss.backward()
    assert lora.lora_A.weight.grad.abs().sum() > 0 and lora.lora_B.weight.grad.abs().sum() > 0
    quant = QuantLinear.from_float(base.weight.detach(), 8)
    torch.testing.assert_close(
        loss_fn(hidden, targets, teacher, head=quant).loss,
        loss_fn(hidden, targets, teacher, head=quant.dequantize()).loss,
    )


def test_num_items_divides_the_sum_and_parameters_are_checked():
    s, t = rand(6, 20, seed=15), rand(6, 20, seed=16)
    targets = torch.tensor([1, 2, 3, -100, 4, 5])
    loss = DistillationLoss("forward_kl", alpha=0.5)
    torch.testing.assert_close(loss(s, targets, t, num_items=10).loss * 10, loss(s, targets, t).loss * 5)
    for kwargs, name in [
        ({"kind": "kl"}, "'kl' is not one of"),
        ({"beta": 1.5}, "beta"),
        ({"temperature": 0}, "temperature"),
        ({"alpha": -0.1}, "alpha"),
    ]:
        with pytest.raises(ConfigError, match=name):
            DistillationLoss(**kwargs)
    with pytest.raises(ConfigError, match="vocabulary"):
        loss(s, targets, rand(6, 21))


def test_next_token_targets_shift_and_skip_padding():
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, 6, 7], [-100, -100, 3, 4, 5]])
    assert next_token_targets(ids, attention_mask=mask).tolist() == [[-100, -100, 6, 7, -100], [2, 3, 4, 5, -100]]
    assert next_token_targets(ids, labels, mask).tolist() == [[-100, -100, 6, 7, -100], [-100, 3, 4, 5, -100]]


# ---- with models: top-k cache and training -------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    teacher_dir, _ = make_checkpoint(tmp_path_factory.mktemp("teacher"), layout="small", seed=21)
    student_dir, _ = make_checkpoint(tmp_path_factory.mktemp("student"), layout="small", seed=22)
    return LFM2.from_pretrained(teacher_dir, dtype="float32"), student_dir


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(2, 512, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0
        labels = ids.masked_fill(mask == 0, -100)
        labels[0, :4] = -100  # a prompt: not trained
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def test_top_k_cache_with_k_equal_to_vocab_gives_the_full_logit_loss(pair, tmp_path):
    teacher, student_dir = pair
    student = LFM2.from_pretrained(student_dir, dtype="float32")
    data = batches(2)
    write_teacher_cache(teacher, data, tmp_path / "cache", k=512, dtype="float32")
    cache = TeacherCache(tmp_path / "cache")
    assert len(cache) == 2 and cache.k == 512
    loss_fn = DistillationLoss("jsd", beta=0.5, temperature=2.0, alpha=0.5, chunk_size=7)
    for batch, entry in zip(data, cache):
        assert torch.equal(entry["input_ids"], batch["input_ids"])
        targets = entry["targets"]
        assert torch.equal(targets, next_token_targets(batch["input_ids"], batch["labels"], batch["attention_mask"]))
        hidden = student(batch["input_ids"], attention_mask=batch["attention_mask"], return_hidden=True)
        online = TeacherHead.from_model(teacher, batch["input_ids"], batch["attention_mask"])
        full = loss_fn(hidden, targets, online, head=student.lm_head)
        cached = loss_fn(hidden, targets, entry["teacher"], head=student.lm_head)
        torch.testing.assert_close(cached.loss, full.loss, rtol=1e-5, atol=1e-6)
        assert cached.tokens == full.tokens == int((targets != -100).sum())


def test_top_k_cache_stores_the_teachers_most_likely_tokens(pair, tmp_path):
    teacher, _ = pair
    data = batches(1, seed=3)
    write_teacher_cache(teacher, data, tmp_path / "cache", k=4)
    entry = TeacherCache(tmp_path / "cache")[0]
    assert entry["teacher"].logprobs.dtype == torch.float16
    with torch.no_grad():
        logp = teacher(data[0]["input_ids"], attention_mask=data[0]["attention_mask"]).log_softmax(-1)
    top = logp[entry["targets"] != -100].topk(4, dim=-1)
    assert torch.equal(entry["teacher"].ids.long(), top.indices)
    torch.testing.assert_close(entry["teacher"].logprobs.float(), top.values, rtol=1e-3, atol=1e-2)
    s = torch.randn(*entry["targets"].shape, 512)
    approx = DistillationLoss("forward_kl", alpha=1.0)(s, entry["targets"], entry["teacher"])
    assert torch.isfinite(approx.loss) and approx.loss > 0


def test_cache_errors_name_the_problem(pair, tmp_path):
    teacher, _ = pair
    with pytest.raises(ConfigError, match="top-k must be an integer in"):
        write_teacher_cache(teacher, batches(1), tmp_path / "c", k=513)
    with pytest.raises(CheckpointError, match="teacher_cache.json: not found"):
        TeacherCache(tmp_path / "c")
    with pytest.raises(ValueError, match="neither the student's shape"):
        DistillationLoss()(
            torch.randn(2, 3, 8),
            torch.zeros(2, 3, dtype=torch.long),
            TeacherTopK(torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2)),
        )


def test_distillation_brings_the_student_closer_to_the_teacher(pair):
    teacher, student_dir = pair
    student = LFM2.from_pretrained(student_dir, dtype="float32").train()
    batch = batches(1, seed=7)[0]
    targets = next_token_targets(batch["input_ids"], batch["labels"], batch["attention_mask"])
    online = TeacherHead.from_model(teacher, batch["input_ids"], batch["attention_mask"])
    loss_fn = DistillationLoss("forward_kl", temperature=1.0, alpha=1.0)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    kds = []
    for _ in range(6):
        hidden = student(batch["input_ids"], attention_mask=batch["attention_mask"], return_hidden=True)
        out = loss_fn(hidden, targets, online, head=student.lm_head)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        kds.append(out.kd.item())
    assert kds[-1] < 0.7 * kds[0], kds
