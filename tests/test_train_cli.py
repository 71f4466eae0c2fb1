"""`lfmkit train sft` end to end on a tiny checkpoint: flags and YAML, the output a user gets,
one-line errors (exit 2) for bad settings and bad data, and the LoRA pass-through."""

import importlib.machinery
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from train_helpers import CHATS, PROMPT_COMPLETIONS, TEXTS, tiny_model_dir, write_jsonl

from lfmkit.cli import main
from lfmkit.train.metrics import read_metrics


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = tiny_model_dir(root / "model")
    chat = write_jsonl(root / "chat.jsonl", CHATS)
    other = write_jsonl(root / "other.jsonl", PROMPT_COMPLETIONS + TEXTS)
    return root, model_dir, chat, other


def base_args(files, output, *extra):
    root, model_dir, chat, other = files
    return [
        "train",
        "sft",
        "--no-progress",
        "--model",
        str(model_dir),
        "--data",
        f"{chat}:2",
        "--data",
        str(other),
        "--output",
        str(root / output),
        *extra,
    ]


def error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_train_sft_end_to_end(files, capsys, tok):
    from transformers import Lfm2ForCausalLM

    rc = main(
        base_args(
            files,
            "run",
            "--max-steps",
            "3",
            "--batch-size",
            "2",
            "--packing",
            "--max-length",
            "96",
            "--learning-rate",
            "1e-3",
            "--save-every",
            "2",
        )
    )
    out = files[0] / "run"
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and "documents" in printed
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["packing"] is True and saved["batch_size"] == 2 and saved["data"][0].endswith("chat.jsonl:2")
    ids = torch.tensor([tok.encode("Hello! How are you today?", add_special_tokens=True)])
    from lfmkit import LFM2

    with torch.no_grad():
        torch.testing.assert_close(
            Lfm2ForCausalLM.from_pretrained(out).eval()(ids).logits,
            LFM2.from_pretrained(out)(ids),
            rtol=1e-5,
            atol=1e-5,
        )
    # and --resume of a finished run has nothing left to do but succeeds
    assert (
        main(
            base_args(
                files,
                "run",
                "--max-steps",
                "3",
                "--batch-size",
                "2",
                "--packing",
                "--max-length",
                "96",
                "--learning-rate",
                "1e-3",
                "--resume",
            )
        )
        == 0
    )


def test_yaml_config_with_flags_overriding(files, tmp_path, capsys):
    root, model_dir, chat, other = files
    yaml_file = tmp_path / "sft.yaml"
    yaml_file.write_text(
        f"model: {model_dir}\ndata:\n  - {chat}\n  - {other}:0.5\noutput: {tmp_path / 'out'}\n"
        f"max-steps: 5\nlearning_rate: 3.0e-4\nbatch_size: 2\nprogress: false\nsave_every: 0\n"
    )
    assert main(["train", "sft", "--config", str(yaml_file), "--max-steps", "2"]) == 0
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["max_steps"] == 2 and saved["learning_rate"] == 3e-4 and saved["data"][1].endswith(":0.5")
    assert len(read_metrics(tmp_path / "out" / "metrics.jsonl")) == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "batch_size must be positive"),
        (["--batch-size", "4", "--grad-accum", "3"], "must be a multiple of grad_accum"),
        (["--max-length", "1"], "max_length must be at least 2"),
        (["--lora-alpha", "16"], "lora_r is needed"),
        (["--warmup-ratio", "1.5"], "warmup_ratio must be in [0, 1)"),
    ],
)
def test_bad_settings_are_one_line_errors(files, capsys, extra, message):
    assert main(base_args(files, "bad", *extra)) == 2
    assert message in error_line(capsys)


def test_bad_yaml_and_bad_data_are_one_line_errors(files, tmp_path, capsys):
    root, model_dir, _, _ = files
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(f"model: {model_dir}\nlearning_rat: 1e-4\n")
    assert main(["train", "sft", "--config", str(bad_yaml)]) == 2
    assert f"{bad_yaml}: unknown setting 'learning_rat'" in error_line(capsys)
    bad_yaml.write_text("model: [unclosed\n")
    assert main(["train", "sft", "--config", str(bad_yaml)]) == 2
    assert "not valid YAML" in error_line(capsys)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(TEXTS[0]) + "\n" + '{"messages": [{"role": "user"}], "oops": }' + "\n")
    args = [
        "train",
        "sft",
        "--no-progress",
        "--model",
        str(model_dir),
        "--data",
        str(rows),
        "--output",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    assert f"{rows}:2: not valid JSON" in error_line(capsys)
    assert main(args[:-3] + [str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o2")]) == 2
    assert "missing.jsonl: no such data file" in error_line(capsys)


def test_lora_flags_without_the_lora_module_are_a_clear_error(files, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lfmkit.train.lora" else real(name, *a)
    )
    monkeypatch.delitem(sys.modules, "lfmkit.train.lora", raising=False)
    assert main(base_args(files, "lora-missing", "--max-steps", "1", "--lora-r", "8")) == 2
    assert "LoRA training needs lfmkit.train.lora" in error_line(capsys)


def test_lora_flags_reach_apply_lora_and_save_adapter(files, monkeypatch):
    """The pass-through, with a stand-in module: apply_lora gets the flags, only what it leaves
    trainable is trained, and save_adapter writes the final output."""
    calls = {}
    fake = types.ModuleType("lfmkit.train.lora")
    fake.__spec__ = importlib.machinery.ModuleSpec("lfmkit.train.lora", None)

    def apply_lora(model, **options):
        calls["options"] = options
        for name, p in model.named_parameters():
            p.requires_grad_("out_proj" in name)
        return model

    def save_adapter(model, directory):
        calls["saved"] = Path(directory)
        (Path(directory) / "adapter_marker").write_text("ok")

    fake.apply_lora, fake.save_adapter = apply_lora, save_adapter
    monkeypatch.setitem(sys.modules, "lfmkit.train.lora", fake)
    rc = main(
        base_args(
            files,
            "lora",
            "--max-steps",
            "1",
            "--lora-r",
            "8",
            "--lora-alpha",
            "16",
            "--lora-targets",
            "out_proj,in_proj",
            "--lora-dropout",
            "0.1",
        )
    )
    assert rc == 0
    assert calls["options"] == {"r": 8, "alpha": 16.0, "dropout": 0.1, "targets": ["out_proj", "in_proj"]}
    out = files[0] / "lora"
    assert calls["saved"] == out and (out / "adapter_marker").is_file() and not (out / "model.safetensors").exists()


def test_lora_sft_resumes_exactly_and_its_adapter_loads_in_peft(files):
    """With the real lfmkit.train.lora (skipped where it is absent): LoRA through the CLI trains
    only the adapters, a run resumed from its middle checkpoint gives the same losses, and the
    PEFT adapter it writes gives lfmkit's logits in peft + transformers."""
    lora = pytest.importorskip("lfmkit.train.lora")
    peft = pytest.importorskip("peft")
    from transformers import Lfm2ForCausalLM

    from lfmkit import LFM2

    root, model_dir = files[0], files[1]
    flags = [
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--learning-rate",
        "5e-3",
        "--packing",
        "--lora-r",
        "4",
        "--lora-alpha",
        "8",
        "--lora-dropout",
        "0.1",
        "--lora-targets",
        "in_proj,out_proj,q_proj",
        "--save-every",
        "2",
    ]
    assert main(base_args(files, "lora-full", *flags)) == 0
    assert main(base_args(files, "lora-cut", *flags)) == 0
    cut = root / "lora-cut"
    shutil.rmtree(cut / "checkpoints" / "step-4")  # as if killed after step 4, checkpoint 2 standing
    assert main(base_args(files, "lora-cut", *flags, "--resume")) == 0
    full = root / "lora-full"
    assert [r["loss"] for r in read_metrics(cut / "metrics.jsonl")] == [
        r["loss"] for r in read_metrics(full / "metrics.jsonl")
    ]
    assert (full / "adapter_config.json").is_file() and not (full / "model.safetensors").exists()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        ours = lora.load_adapter(LFM2.from_pretrained(model_dir), full).eval()(ids)  # eval: no LoRA dropout
        theirs = peft.PeftModel.from_pretrained(Lfm2ForCausalLM.from_pretrained(model_dir), str(full)).eval()(ids)
        base = Lfm2ForCausalLM.from_pretrained(model_dir).eval()(ids).logits
    torch.testing.assert_close(theirs.logits, ours, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base, ours, atol=1e-4)
