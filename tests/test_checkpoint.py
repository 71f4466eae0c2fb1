"""Checkpoints: load/save in the Hugging Face layout, shards, the Hub cache, errors, peak memory."""

import json
import os
import re
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from checkpoints import make_checkpoint
from safetensors.torch import load_file, save_file

from lfmkit import LFM2, CheckpointError, ConfigError, LFM2Config
from lfmkit.io.hub import resolve_model_path


@pytest.fixture()
def ckpt(tmp_path):
    path, ref = make_checkpoint(tmp_path / "m", layout="small", seed=2)
    return path, ref


IDS = torch.tensor([[1, 5, 9, 3, 2]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
        return out.logits if hasattr(out, "logits") else out


def test_save_pretrained_roundtrip_through_transformers(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    path, ref = ckpt
    ours = LFM2.from_pretrained(path)
    out = tmp_path / "saved"
    ours.save_pretrained(out)
    assert "lm_head.weight" not in load_file(out / "model.safetensors")  # tied: not written
    back = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(back), _logits(ref), rtol=0, atol=1e-5)
    assert torch.equal(_logits(LFM2.from_pretrained(out)), _logits(ours))


def test_sharded_checkpoint_loads(ckpt, tmp_path):
    path, ref = ckpt
    ours = LFM2.from_pretrained(path)
    ours.save_pretrained(tmp_path / "sharded", max_shard_bytes=40_000)
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    torch.testing.assert_close(_logits(LFM2.from_pretrained(tmp_path / "sharded")), _logits(ref), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16])
def test_dtype_cast_at_load(ckpt, dtype):
    path, _ = ckpt
    model = LFM2.from_pretrained(path, dtype=dtype)
    assert all(p.dtype == model.dtype for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_default_dtype_is_the_checkpoints(tmp_path):
    path, _ = make_checkpoint(tmp_path, layout="small", dtype=torch.bfloat16)
    assert LFM2.from_pretrained(path).dtype == torch.bfloat16


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope: no such file or directory"):
        LFM2.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="missing config.json"):
        LFM2.from_pretrained(tmp_path / "empty")


def test_no_weights_file(ckpt):
    path, _ = ckpt
    os.remove(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        LFM2.from_pretrained(path)


@pytest.mark.parametrize(
    "garbage", [b"", b"\x01\x02", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 5) + b"{oops"]
)
def test_corrupt_header_names_the_file(ckpt, garbage):
    path, _ = ckpt
    (path / "model.safetensors").write_bytes(garbage)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (not a safetensors|corrupt)"):
        LFM2.from_pretrained(path)


@pytest.mark.parametrize("garbage", [struct.pack("<Q", 2) + b"\xff\xfe", struct.pack("<Q", 20000) + b"[" * 20000])
def test_header_that_is_not_utf8_or_nests_too_deep_names_the_file(ckpt, garbage):
    path, _ = ckpt
    (path / "model.safetensors").write_bytes(garbage)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        LFM2.from_pretrained(path)


@pytest.mark.parametrize(
    "index, message",
    [
        (b"\xff{}", "not UTF-8 text"),
        (b'{"weight_map": ', "not valid JSON"),
        (b"[]", "expected a JSON object, got an array"),
        (b'{"weight_map": ["model.safetensors"]}', "not a valid safetensors index ('weight_map' must map tensor names"),
        (
            b'{"weight_map": {"model.norm.weight": 5}}',
            "not a valid safetensors index ('weight_map' must map tensor names",
        ),
    ],
)
def test_corrupt_shard_index_names_the_file(ckpt, index, message):
    path, _ = ckpt
    (path / "model.safetensors.index.json").write_bytes(index)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: " + re.escape(message)):
        LFM2.from_pretrained(path)


def test_truncated_data_names_tensor(ckpt):
    path, _ = ckpt
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*'"):
        LFM2.from_pretrained(path)


def _rewrite(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors")


def test_missing_tensor_is_named(ckpt):
    path, _ = ckpt
    _rewrite(path, lambda t: t.pop("model.layers.1.self_attn.q_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.self_attn\.q_proj\.weight"):
        LFM2.from_pretrained(path)


def test_unexpected_tensor_is_named(ckpt):
    path, _ = ckpt
    _rewrite(path, lambda t: t.update({"model.layers.9.mystery.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: model\.layers\.9\.mystery\.weight"):
        LFM2.from_pretrained(path)


def test_shape_mismatch_names_tensor_and_config(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 512
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.feed_forward\.w1\.weight' has shape"):
        LFM2.from_pretrained(path)


def test_unsupported_model_type(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported model type 'mamba'"):
        LFM2.from_pretrained(path)


def test_untied_checkpoint_requires_head(tmp_path):
    path, ref = make_checkpoint(tmp_path, layout="small", tie_word_embeddings=False)
    model = LFM2.from_pretrained(path)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=1e-5)


# ---- Hub ids through the Hugging Face cache --------------------------------------------------
def _fake_hub_cache(cache, repo, src):
    """Lay out `src` files the way huggingface_hub stores a downloaded snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return snap


def test_hub_id_resolves_through_local_cache(ckpt, tmp_path, monkeypatch):
    path, ref = ckpt
    cache = tmp_path / "hf-cache"
    snap = _fake_hub_cache(cache, "LiquidAI/LFM2-Tiny", path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("LiquidAI/LFM2-Tiny", cache_dir=cache) == snap
    model = LFM2.from_pretrained("LiquidAI/LFM2-Tiny", cache_dir=cache)
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=1e-5)


def test_hub_id_not_cached_offline_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="LiquidAI/LFM2-1.2B: not in the local Hugging Face cache"):
        resolve_model_path("LiquidAI/LFM2-1.2B", cache_dir=tmp_path)


def test_hub_id_downloads_when_online(ckpt, tmp_path, monkeypatch):
    """Online, an uncached id is fetched with huggingface_hub (its download call is faked here)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    path, _ = ckpt
    calls = []

    def fake_snapshot_download(
        repo_id, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False, **kw
    ):
        calls.append((repo_id, local_files_only, tuple(allow_patterns)))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        return str(_fake_hub_cache(tmp_path / "dl", repo_id, path))

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    got = resolve_model_path("LiquidAI/LFM2-350M", cache_dir=tmp_path / "dl")
    assert (got / "model.safetensors").is_file()
    assert [c[:2] for c in calls] == [("LiquidAI/LFM2-350M", True), ("LiquidAI/LFM2-350M", False)]
    assert "*.safetensors" in calls[1][2]


def test_plain_missing_path_is_not_treated_as_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_model_path(str(tmp_path / "a" / "b"))


# ---- memory --------------------------------------------------------------------------------
def write_random_checkpoint(config: LFM2Config, directory, dtype=torch.bfloat16):
    """A checkpoint at real size with random values, written without building a model."""
    from lfmkit.model.lfm2 import LFM2 as Model

    with torch.device("meta"):
        meta = Model(config)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, p in meta.named_parameters():
        tensors[name] = (torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.02).to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory / "model.safetensors"


def test_peak_memory_while_loading_stays_near_file_size(tmp_path):
    cfg = LFM2Config.from_preset("lfm2-350m")
    file = write_random_checkpoint(cfg, tmp_path / "m350")
    size = file.stat().st_size
    script = textwrap.dedent(f"""
        import torch
        import lfmkit
        def status_kb(field):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith(field))
        base = status_kb("VmRSS")
        m = lfmkit.LFM2.from_pretrained({str(tmp_path / "m350")!r})
        # VmHWM is this process's own peak; ru_maxrss would also count the parent's RSS at
        # fork time (Linux folds it in at exec), which is pytest's, not ours.
        print((status_kb("VmHWM") - base) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_delta = int(out.stdout.strip().splitlines()[-1])
    assert peak_delta < 1.3 * size, f"peak {peak_delta / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


def test_row_reads_convert_on_the_way_and_fall_back_to_plain_reads(ckpt, monkeypatch):
    from lfmkit.io import safetensors as st

    path, _ = ckpt
    f = st.SafetensorsFile(path / "model.safetensors")
    stored = load_file(path / "model.safetensors")
    name = "model.embed_tokens.weight"
    whole = stored[name]
    assert torch.equal(f.read_rows(name, 3, 9), whole[3:9])
    assert torch.equal(f.read_rows(name, 3, 9, torch.bfloat16), whole[3:9].to(torch.bfloat16))
    out = torch.empty(whole.shape[1], whole.shape[0]).t()  # not contiguous
    assert torch.equal(f.read(name, out), whole) and out.stride() != whole.stride()
    # a file system that cannot map files: the same bytes through plain reads
    monkeypatch.setattr(st.mmap, "mmap", lambda *a, **k: (_ for _ in ()).throw(OSError("no mmap")))
    assert torch.equal(f.read_rows(name, 3, 9, torch.bfloat16), whole[3:9].to(torch.bfloat16))
    assert torch.equal(f.read(name), whole)
    torch.testing.assert_close(_logits(LFM2.from_pretrained(path)), _logits(ckpt[1]), rtol=1e-4, atol=1e-4)


def test_a_file_cut_short_after_opening_is_an_error_not_a_crash(ckpt):
    from lfmkit.io import safetensors as st

    path, _ = ckpt
    file = path / "model.safetensors"
    f = st.SafetensorsFile(file)  # header read while the file was whole
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # a mapped read past the end would be SIGBUS
    last = max(f.entries, key=lambda n: f.entries[n][3])
    with pytest.raises(CheckpointError, match=f"tensor '{re.escape(last)}': file ended early"):
        f.read(last)
