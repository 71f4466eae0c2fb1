"""`lfmkit info`: summaries for presets and checkpoints; bad input is one clear line, exit 2."""

import json
import subprocess
import sys

import pytest

from checkpoints import make_checkpoint
from lfmkit.cli import main


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "lfmkit", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_info_preset_text(capsys):
    assert main(["info", "lfm2-350m"]) == 0
    out = capsys.readouterr().out
    assert "354,483,968" in out and "CCACCACCACACACAC" in out and "12,288 B in bf16" in out


def test_info_checkpoint_json(tmp_path, capsys):
    path, ref = make_checkpoint(tmp_path, layout="2.6b")
    assert main(["info", str(path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["layers"] == 30 and facts["attention_layers"] == 8
    assert facts["parameters"] == sum(p.numel() for p in ref.parameters())
    assert facts["state_bytes_per_token_bf16"] == 8 * 2 * 1 * 16 * 2


@pytest.mark.parametrize("arg, message", [
    ("/no/such/model", "no such file or directory"),
    ("lfm2-9000b", "no such file or directory"),
])
def test_info_errors_are_one_line(arg, message):
    code, out, err = run_cli("info", arg)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err


def test_info_bad_config_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "lfm2", "hidden_size": 64}')
    code, _, err = run_cli("info", str(tmp_path))
    assert code == 2 and "config.json: missing field 'num_hidden_layers'" in err
    assert "Traceback" not in err


def test_help_lists_commands():
    code, out, _ = run_cli("--help")
    assert code == 0 and "info" in out
