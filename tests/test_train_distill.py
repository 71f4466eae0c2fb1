"""Distillation as a recipe (`lfmkit.train.distill_run`, `lfmkit train distill`) and the teacher
cache (`distill_cache`, `lfmkit train distill-cache` / `lfmkit distill cache`): the loss goes down
and the student's KL to the teacher drops; an online teacher and a k = vocab cache give the same
losses; alpha = 0 is the SFT loss; a resumed run repeats the uninterrupted one's losses; packing,
accumulation and LoRA work through the same trainer; bad settings, a teacher with another
vocabulary and a cache written for other data are one-line errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from train_helpers import CHATS, PROMPT_COMPLETIONS, TEXTS, logged_losses, tiny_model_dir, write_jsonl

from lfmkit import LFM2
from lfmkit.cli import main
from lfmkit.errors import CheckpointError, ConfigError
from lfmkit.train import distill_recipe
from lfmkit.train.batching import collate
from lfmkit.train.checkpoints import latest_checkpoint
from lfmkit.train.data import IGNORE_INDEX, Document
from lfmkit.train.distill import TeacherCache
from lfmkit.train.distill_recipe import batch_documents, distill_cache, distill_run, document_digest
from lfmkit.train.metrics import read_metrics
from lfmkit.train.sft import sft

STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    student = tiny_model_dir(root / "student")
    teacher, _ = make_checkpoint(root / "teacher", layout="small", seed=23, with_tokenizer=True)
    chat = write_jsonl(root / "chat.jsonl", CHATS)
    other = write_jsonl(root / "other.jsonl", PROMPT_COMPLETIONS + TEXTS)
    return root, student, teacher, [f"{chat}:2", str(other)]


def settings_of(setup, name, **overrides):
    root, student, teacher, data = setup
    values = dict(
        model=str(student),
        teacher=str(teacher),
        data=data,
        output=str(root / name),
        max_steps=STEPS,
        batch_size=4,
        grad_accum=2,
        max_length=128,
        learning_rate=1e-2,
        warmup_steps=1,
        lr_scheduler="cosine",
        packing=True,
        save_every=2,
        progress=False,
        kd_loss="forward_kl",
        temperature=1.0,
        alpha=0.9,
    )
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def uninterrupted(setup):
    cfg = settings_of(setup, "online")
    return distill_run(cfg, verbose=False), cfg


def kl_to_teacher(student: LFM2, teacher: LFM2, cfg) -> float:
    """Mean KL(teacher || student) at T = 1 over every trained token of the training documents."""
    from lfmkit.text.tokenizer import Tokenizer
    from lfmkit.train.config import DistillConfig
    from lfmkit.train.sft import load_data

    config = DistillConfig.from_dict(cfg)
    docs, _ = load_data(config, Tokenizer.from_pretrained(config.model), verbose=False)
    batch = collate([[d] for source in docs for d in source], 0, packed=False)
    keep = batch.targets != IGNORE_INDEX
    with torch.no_grad():
        s = student(batch.input_ids, attention_mask=batch.attention_mask)[keep].log_softmax(-1)
        t = teacher(batch.input_ids, attention_mask=batch.attention_mask)[keep].log_softmax(-1)
    return float((t.exp() * (t - s)).sum(-1).mean())


def test_distillation_lowers_the_loss_and_the_students_kl_to_the_teacher(uninterrupted):
    result, cfg = uninterrupted
    assert len(result.losses) == STEPS and result.losses[-1] < result.losses[0]
    teacher = LFM2.from_pretrained(cfg["teacher"])
    before = kl_to_teacher(LFM2.from_pretrained(cfg["model"]), teacher, cfg)
    after = kl_to_teacher(LFM2.from_pretrained(cfg["output"]), teacher, cfg)
    assert after < 0.8 * before, (before, after)
    records = read_metrics(Path(cfg["output"]) / "metrics.jsonl")
    for r in records:  # the logged parts make up the loss: 0.9 * T^2 * kd + 0.1 * ce
        assert r["loss"] == pytest.approx(0.9 * r["kd"] + 0.1 * r["ce"], rel=1e-5)
    assert records[-1]["kd"] < records[0]["kd"]
    saved = json.loads((Path(cfg["output"]) / "train_config.json").read_text())
    assert saved["teacher"] == cfg["teacher"] and saved["alpha"] == 0.9


def test_a_resumed_distillation_repeats_the_uninterrupted_losses(setup, uninterrupted, monkeypatch):
    _, full = uninterrupted
    cfg = settings_of(setup, "crashed", save_every=3)
    real = distill_recipe.TeacherLoss.__call__

    def crash_in_step_5(self, model, batch):
        if len(logged_losses(cfg["output"])) == 4:  # step 4 is logged, checkpoint step-3 stands
            raise KeyboardInterrupt
        return real(self, model, batch)

    monkeypatch.setattr(distill_recipe.TeacherLoss, "__call__", crash_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        distill_run(cfg, verbose=False)
    monkeypatch.setattr(distill_recipe.TeacherLoss, "__call__", real)
    out = Path(cfg["output"])
    assert latest_checkpoint(out).name == "step-3" and len(logged_losses(out)) == 4
    result = distill_run({**cfg, "resume": True}, verbose=False)
    assert result.resumed_from == 3
    assert logged_losses(out) == logged_losses(full["output"])  # exactly, step by step
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(Path(full["output"]) / "model.safetensors"))
    assert all(torch.equal(ours[n], t) for n, t in theirs.items())


@pytest.fixture(scope="module")
def full_cache(setup):
    path = setup[0] / "cache-full"
    distill_cache(
        settings_of(setup, "unused", teacher_cache=str(path), top_k=512, cache_dtype="float32"), verbose=False
    )
    return path


@pytest.mark.parametrize("packing", [True, False])
def test_an_online_teacher_and_a_full_cache_give_the_same_losses(setup, full_cache, packing):
    """The cache was written from packed rows; training packed or padded reads it alike."""
    common = dict(max_steps=2, kd_loss="jsd", jsd_beta=0.3, temperature=2.0, alpha=0.5, save_every=0, packing=packing)
    names = f"vs-online-{packing}", f"vs-cached-{packing}"
    online = distill_run(settings_of(setup, names[0], **common), verbose=False)
    cached = distill_run(
        settings_of(setup, names[1], teacher="", teacher_cache=str(full_cache), **common), verbose=False
    )
    assert cached.losses == pytest.approx(online.losses, rel=1e-5)
    a, b = (read_metrics(setup[0] / name / "metrics.jsonl") for name in names)
    assert [r["kd"] for r in b] == pytest.approx([r["kd"] for r in a], rel=1e-5)
    assert [r["ce"] for r in b] == pytest.approx([r["ce"] for r in a], rel=1e-5)


def test_the_cache_holds_each_distinct_document_once(setup, full_cache):
    """The chat file is mixed in twice per epoch; the teacher still ran once per document."""
    cache = TeacherCache(full_cache)
    n_chat, n_other = len(CHATS) - 1, len(PROMPT_COMPLETIONS + TEXTS)  # one chat has nothing to train on
    assert cache.index["documents"] == n_chat + n_other and cache.k == 512
    assert sum(int((e["targets"] != IGNORE_INDEX).sum()) for e in cache) == cache.index["tokens"]


def test_alpha_zero_is_the_sft_loss(setup):
    common = dict(max_steps=2, save_every=0)
    kd = distill_run(settings_of(setup, "alpha0", alpha=0.0, **common), verbose=False)
    cfg = {
        k: v
        for k, v in settings_of(setup, "sft", **common).items()
        if k not in ("teacher", "kd_loss", "temperature", "alpha")
    }
    plain = sft(cfg, verbose=False)
    assert kd.losses == pytest.approx(plain.losses, rel=1e-6)
    assert [r["ce"] for r in read_metrics(setup[0] / "alpha0" / "metrics.jsonl")] == pytest.approx(kd.losses)


def test_lora_distillation_trains_and_saves_the_adapter_only(setup):
    pytest.importorskip("lfmkit.train.lora")
    cfg = settings_of(setup, "lora", max_steps=2, lora_r=4, lora_alpha=8)
    result = distill_run(cfg, verbose=False)
    out = Path(cfg["output"])
    assert len(result.losses) == 2 and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()
    kept = load_file(str(out / "checkpoints" / "step-2" / "trainable.safetensors"))
    assert kept and all("lora_" in name for name in kept)


def test_a_cache_for_other_documents_or_no_cache_is_refused(setup, full_cache, tmp_path):
    with pytest.raises(ConfigError, match=r"was written for other training documents \(\d+ of this run's"):
        distill_run(settings_of(setup, "other-data", teacher_cache=str(full_cache), max_length=64), verbose=False)
    with pytest.raises(CheckpointError, match="teacher_cache.json: not found.*write it with `lfmkit train distill"):
        distill_run(settings_of(setup, "no-cache", teacher_cache=str(tmp_path / "none")), verbose=False)
    shutil.copytree(full_cache, tmp_path / "no-table")
    (tmp_path / "no-table" / distill_recipe.DOCUMENTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="a teacher cache without a document table"):
        distill_run(settings_of(setup, "no-table", teacher_cache=str(tmp_path / "no-table")), verbose=False)


def test_a_teacher_with_another_vocabulary_is_refused(setup, tmp_path):
    bigger, _ = make_checkpoint(tmp_path / "bigger", layout="small", seed=3, vocab_size=640, with_tokenizer=True)
    with pytest.raises(ConfigError, match="has a vocabulary of 640 ids, the student 512"):
        distill_run(settings_of(setup, "vocab-size", teacher=str(bigger)), verbose=False)
    renumbered = tmp_path / "renumbered"
    shutil.copytree(setup[2], renumbered)
    tok = json.loads((renumbered / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (renumbered / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConfigError, match="maps tokens to other ids than the student's"):
        distill_run(settings_of(setup, "vocab-ids", teacher=str(renumbered)), verbose=False)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.tuples(st.integers(2, 9), st.booleans()), min_size=1, max_size=6), min_size=1, max_size=5),
    st.booleans(),
)
def test_a_collated_batch_splits_back_into_its_documents(docs, packed):
    """What the cached teacher looks up: every document of a packed or padded batch, in order."""
    documents = [Document([t for t, _ in d], [t if trained else IGNORE_INDEX for t, trained in d]) for d in docs]
    documents = [d for d in documents if d.trained_tokens]
    if not documents:
        return
    rows = [documents[i : i + 2] for i in range(0, len(documents), 2)] if packed else [[d] for d in documents]
    batch = collate(rows, 0, packed)
    found = [
        document_digest(batch.input_ids[r, a:z], batch.targets[r, a:z])
        for r, a, z in batch_documents(batch)
        if (batch.targets[r, a:z] != IGNORE_INDEX).any()
    ]
    assert found == [document_digest(d.input_ids, d.targets) for row in rows for d in row]


# ---- the command line ----------------------------------------------------------------------------
def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_cli_cache_then_distill_from_one_yaml_file(setup, tmp_path, capsys, tok):
    """One YAML file drives `lfmkit distill cache` and then `lfmkit train distill`."""
    from transformers import Lfm2ForCausalLM

    root, student, teacher, data = setup
    yaml_file = tmp_path / "distill.yaml"
    yaml_file.write_text(
        f"model: {student}\nteacher: {teacher}\ndata: [{data[0]}, {data[1]}]\n"
        f"output: {tmp_path / 'run'}\nteacher_cache: {tmp_path / 'cache'}\ntop_k: 16\n"
        f"max_length: 128\npacking: true\nbatch_size: 4\nmax_steps: 2\nkd_loss: reverse_kl\n"
        f"learning_rate: 1.0e-3\nprogress: false\n"
    )
    assert main(["distill", "cache", "--config", str(yaml_file)]) == 0
    assert "wrote the teacher's top-16 log-probs of 7 documents" in capsys.readouterr().out
    assert main(["train", "distill", "--config", str(yaml_file), "--save-every", "1"]) == 0
    printed = capsys.readouterr().out
    assert "distilling from teacher top-k cache" in printed and "trained 2 steps" in printed
    out = tmp_path / "run"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all("kd" in r and "ce" in r for r in records)
    ids = torch.tensor([tok.encode("Hello! How are you today?", add_special_tokens=True)])
    with torch.no_grad():
        torch.testing.assert_close(
            Lfm2ForCausalLM.from_pretrained(out).eval()(ids).logits,
            LFM2.from_pretrained(out)(ids),
            rtol=1e-5,
            atol=1e-5,
        )


def test_cli_flags_online_teacher_and_distill_cache(setup, tmp_path, capsys):
    root, student, teacher, data = setup
    data_flags = ["--data", data[0], "--data", data[1], "--max-length", "128"]
    assert (
        main(
            [
                "train",
                "distill-cache",
                "--no-progress",
                "--teacher",
                str(teacher),
                *data_flags,
                "--output",
                str(tmp_path / "cache"),
                "--top-k",
                "4",
                "--teacher-quant",
                "int8",
            ]
        )
        == 0
    )
    assert TeacherCache(tmp_path / "cache").k == 4
    assert (
        main(
            [
                "train",
                "distill",
                "--no-progress",
                "--model",
                str(student),
                "--teacher",
                str(teacher),
                *data_flags,
                "--output",
                str(tmp_path / "run"),
                "--max-steps",
                "1",
                "--kd-loss",
                "jsd",
                "--jsd-beta",
                "0.2",
                "--temperature",
                "1.5",
                "--alpha",
                "0.9",
                "--teacher-quant",
                "int4",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (saved["kd_loss"], saved["jsd_beta"], saved["temperature"], saved["alpha"]) == ("jsd", 0.2, 1.5, 0.9)
    assert saved["teacher_quant"] == "int4" and len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alpha", "1.5"], "alpha must be in [0, 1], got 1.5"),
        (["--temperature", "0"], "temperature must be positive"),
        (["--jsd-beta", "-0.1"], "jsd_beta must be in [0, 1]"),
        (["--teacher", ""], "teacher is required"),
        (["--teacher-cache", "{root}/student"], "teacher_cache.json: not found"),
        (["--teacher", "{root}/nowhere"], "nowhere"),
    ],
)
def test_cli_bad_distill_settings_are_one_line_errors(setup, capsys, extra, message):
    root, student, teacher, data = setup
    args = [
        "train",
        "distill",
        "--no-progress",
        "--model",
        str(student),
        "--teacher",
        str(teacher),
        "--data",
        data[1],
        "--output",
        str(root / "bad"),
        "--max-steps",
        "1",
    ]
    assert main(args + [e.format(root=root) for e in extra]) == 2
    assert message in error_line(capsys)


def test_cli_bad_cache_settings_and_yaml_are_one_line_errors(setup, tmp_path, capsys):
    root, student, teacher, data = setup
    assert main(["train", "distill-cache", "--teacher", str(teacher), "--data", data[1]]) == 2
    assert "teacher_cache is required" in error_line(capsys)
    assert (
        main(
            [
                "train",
                "distill-cache",
                "--teacher",
                str(teacher),
                "--data",
                data[1],
                "--top-k",
                "1000",
                "--output",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    assert "top_k: 1000 is more than the teacher's vocabulary (512 ids)" in error_line(capsys)
    assert main(["train", "distill-cache", "--teacher", str(teacher), "--data", data[1], "--output", str(student)]) == 2
    assert "non-empty directory that holds no teacher cache" in error_line(capsys)
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(
        f"model: {student}\nteacher: {teacher}\ndata: [{data[1]}]\noutput: {tmp_path / 'o'}\nkd_loss: kl\n"
    )
    assert main(["train", "distill", "--config", str(yaml_file)]) == 2
    assert "kd_loss must be one of forward_kl, reverse_kl, jsd, got 'kl'" in error_line(capsys)
