"""`lfmkit bench`: runs on a tiny checkpoint, emits valid --json, and --compare runs the other
engines on the same weights. No timing assertions: numbers only have to be positive."""

import json

import pytest
import torch
from checkpoints import make_checkpoint

from lfmkit import LFM2, LFM2Config
from lfmkit.cli import main

FIELDS = ("prefill_tok_s", "ttft_s", "decode_tok_s", "peak_rss_bytes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, _ = make_checkpoint(
        tmp_path_factory.mktemp("bench"),
        layout="small",
        seed=2,
        hidden_size=64,
        intermediate_size=192,
        num_key_value_heads=2,
        with_tokenizer=True,
    )
    return path


def run_json(capsys, argv):
    assert main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]


def test_bench_json_per_mode(tiny, capsys):
    rows = run_json(
        capsys,
        [
            "bench",
            str(tiny),
            "--quant",
            "int8,int4,fp32",
            "--prompt-len",
            "24",
            "--decode-tokens",
            "6",
            "--batch",
            "3",
            "--batch-tokens",
            "3",
            "--repeats",
            "1",
            "--bandwidth-mib",
            "64",
            "--json",
        ],
    )
    assert [r["weights"] for r in rows] == ["int8", "int4", "fp32"]
    for r in rows:
        assert r["engine"] == "lfmkit" and r["batch"] == 3
        for f in FIELDS + ("decode_batch_tok_s", "state_bytes_per_token", "weight_bytes", "bandwidth_share"):
            assert r[f] > 0, f
    assert rows[1]["weight_bytes"] < rows[0]["weight_bytes"] < rows[2]["weight_bytes"]


def test_bench_compare_runs_transformers_and_llama_on_same_weights(tiny, capsys):
    rows = run_json(
        capsys,
        [
            "bench",
            str(tiny),
            "--quant",
            "int8",
            "--prompt-len",
            "16",
            "--decode-tokens",
            "5",
            "--batch",
            "1",
            "--transformers-tokens",
            "4",
            "--repeats",
            "1",
            "--compare",
            "--json",
        ],
    )
    engines = {r["engine"]: r for r in rows}
    assert "transformers" in engines and "lfmkit" in engines
    try:
        import llama_cpp  # noqa: F401

        assert engines["llama.cpp"]["weights"] == "q8_0"
    except ImportError:
        assert "llama.cpp" not in engines
    for r in rows:
        for f in FIELDS:
            assert r[f] > 0, (r["engine"], f)


def test_bench_table_and_bad_arguments(tiny, capsys):
    assert (
        main(
            [
                "bench",
                str(tiny),
                "--quant",
                "int4",
                "--prompt-len",
                "8",
                "--decode-tokens",
                "4",
                "--batch",
                "1",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "machine:" in out and "lfmkit" in out and "int4" in out
    assert main(["bench", str(tiny), "--quant", "int3"]) == 2
    assert "int3" in capsys.readouterr().err


def test_random_checkpoint_is_what_both_engines_load(tmp_path):
    """The weights --compare writes for a preset load identically in lfmkit and transformers."""
    from transformers import AutoModelForCausalLM

    from lfmkit.bench import write_random_checkpoint

    config = LFM2Config.from_preset("lfm2-350m").copy(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        block_ff_dim=192,
        vocab_size=512,
        num_hidden_layers=4,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
    )
    path = write_random_checkpoint(config, tmp_path / "ckpt")
    ours = LFM2.from_pretrained(path, dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids)
    assert (a - b).abs().max() < 1e-4 * a.abs().max()


@pytest.mark.parametrize("amx", [True, False])
def test_llama_cpp_opens_without_extra_buffers_on_amx_cpus(monkeypatch, amx):
    """llama.cpp's AMX products segfault on LFM2 (llama.cpp#20824): on an AMX CPU the model loads
    with use_extra_bufts off, elsewhere with llama.cpp's defaults; the defaults come back after."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import llama_cpp.llama_cpp as raw

    from lfmkit import bench

    seen = []

    class Fake:
        def __init__(self, model_path, **kwargs):
            seen.append((model_path, kwargs, raw.llama_model_default_params().use_extra_bufts))

    monkeypatch.setattr(bench, "llama_cpp_amx", lambda: amx)
    monkeypatch.setattr(llama_cpp, "Llama", Fake)
    before = raw.llama_model_default_params
    bench.open_llama_cpp("m.gguf", n_ctx=8)
    assert seen == [("m.gguf", {"n_ctx": 8}, not amx)]
    assert raw.llama_model_default_params is before and raw.llama_model_default_params().use_extra_bufts
