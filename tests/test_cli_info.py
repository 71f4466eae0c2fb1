"""`lfmkit info`: summaries for presets and checkpoints; bad input is one clear line, exit 2."""

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
from checkpoints import make_checkpoint
from hypothesis import HealthCheck, given, settings
from test_config import REAL_STYLE, corrupt_config_json

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


@pytest.mark.parametrize(
    "arg, message",
    [
        ("/no/such/model", "no such file or directory"),
        ("lfm2-9000b", "no such file or directory"),
    ],
)
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


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer_types": 5}, "config.json: field 'layer_types': expected a non-empty array"),
        ({"hidden_size": 10**12}, "config.json: field 'hidden_size': expected an integer from 1 to 65,536"),
    ],
)
def test_info_on_a_corrupt_config_is_one_line_in_a_real_process(tmp_path, change, message):
    data = dict(REAL_STYLE, **change)
    data.pop("full_attn_idxs")
    (tmp_path / "config.json").write_text(json.dumps(data))
    code, out, err = run_cli("info", str(tmp_path))
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=corrupt_config_json())
def test_info_on_any_corrupt_config_prints_its_facts_or_one_error_line_exit_2(tmp_path, raw):
    (tmp_path / "config.json").write_bytes(raw)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["info", str(tmp_path)])
    if code == 0:
        assert err.getvalue() == "" and "parameters" in out.getvalue()
    else:
        assert code == 2 and out.getvalue() == ""
        assert err.getvalue().startswith(f"lfmkit info: error: {tmp_path / 'config.json'}: ")
        assert err.getvalue().count("\n") == 1
