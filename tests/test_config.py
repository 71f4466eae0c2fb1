"""LFM2Config: presets, every config.json variant, and a config.json transformers reads back."""

import copy
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfmkit import ConfigError, LFM2Config

EXACT = {"lfm2-350m": 354_483_968, "lfm2-700m": 742_489_344, "lfm2-1.2b": 1_170_340_608, "lfm2-2.6b": 2_569_272_320}


@pytest.mark.parametrize("name", list(EXACT))
def test_preset_parameter_counts_are_exact(name):
    assert LFM2Config.from_preset(name).num_parameters() == EXACT[name]


@pytest.mark.parametrize("name", list(EXACT))
def test_preset_counts_equal_the_reference_model(name):
    """Counted by transformers on the meta device (no memory), with our config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = LFM2Config.from_preset(name)
    hf_cfg = AutoConfig.for_model(**cfg.to_dict())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    assert sum(p.numel() for p in model.parameters()) == EXACT[name]


def test_preset_facts():
    c = LFM2Config.from_preset("lfm2-1.2b")
    assert c.ff_dim == 8192 and c.head_size == 64 and c.attention_layers == [2, 5, 8, 10, 12, 14]
    big = LFM2Config.from_preset("lfm2-2.6b")
    assert big.ff_dim == 10752 and len(big.conv_layers) == 22 and big.attention_layers == [2, 5, 9, 13, 17, 21, 24, 27]
    dense = LFM2Config.from_preset("qwen3-0.6b-shape")
    assert dense.head_size == 128 and not dense.is_hybrid
    with pytest.raises(ConfigError, match="unknown preset 'lfm9'"):
        LFM2Config.from_preset("lfm9")


REAL_STYLE = {  # the original LFM2 release config.json spelling
    "architectures": ["LFM2ForCausalLM"],
    "block_auto_adjust_ff_dim": True,
    "block_dim": 2048,
    "block_ff_dim": 12288,
    "block_ffn_dim_multiplier": 1.0,
    "block_mlp_init_scale": 1.0,
    "block_multiple_of": 256,
    "block_norm_eps": 1e-05,
    "block_out_init_scale": 1.0,
    "block_use_swiglu": True,
    "block_use_xavier_init": True,
    "bos_token_id": 1,
    "conv_L_cache": 3,
    "conv_bias": False,
    "conv_dim": 2048,
    "conv_dim_out": 2048,
    "conv_use_xavier_init": True,
    "eos_token_id": 7,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14],
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "max_position_embeddings": 128000,
    "model_type": "lfm2",
    "norm_eps": 1e-05,
    "num_attention_heads": 32,
    "num_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pad_token_id": 0,
    "rope_theta": 1000000.0,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0.dev0",
    "use_cache": True,
    "use_pos_enc": True,
    "vocab_size": 65536,
}


def test_reads_release_style_config():
    c = LFM2Config.from_dict(REAL_STYLE)
    assert c.num_parameters() == EXACT["lfm2-1.2b"]
    assert c.layer_types == LFM2Config.from_preset("lfm2-1.2b").layer_types


def test_reads_transformers_style_config():
    newer = {
        "model_type": "lfm2",
        "hidden_size": 1024,
        "intermediate_size": 6656,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
        "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "dtype": "bfloat16",
    }
    c = LFM2Config.from_dict(newer)
    assert c.num_parameters() == EXACT["lfm2-350m"] and c.rope_theta == 1e6 and c.torch_dtype == "bfloat16"


def test_aliases_tie_embedding_and_untied_count():
    d = dict(REAL_STYLE, tie_embedding=False)
    c = LFM2Config.from_dict(d)
    assert not c.tie_word_embeddings
    assert c.num_parameters() == EXACT["lfm2-1.2b"] + 65536 * 2048


def test_written_config_loads_in_transformers_as_same_model(tmp_path):
    from transformers import AutoConfig

    c = LFM2Config.from_preset("lfm2-2.6b")
    c.save_pretrained(tmp_path)
    hf = AutoConfig.from_pretrained(tmp_path)
    assert hf.layer_types == c.layer_types
    assert hf.intermediate_size == 10752 and hf.block_auto_adjust_ff_dim is False
    assert hf.rope_parameters["rope_theta"] == 1e6 and hf.tie_word_embeddings
    assert LFM2Config.from_pretrained(tmp_path).to_dict() == c.to_dict()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "llama"}, "model_type"),
        ({"num_key_value_heads": 5}, "num_key_value_heads"),
        ({"hidden_size": -4}, "hidden_size"),
        ({"layer_types": ["conv", "mamba"] * 8}, "layer_types"),
        ({"layer_types": ["conv"] * 3}, "layer_types"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
    ],
)
def test_bad_fields_are_named(change, field):
    d = dict(REAL_STYLE)
    d.pop("full_attn_idxs") if "layer_types" in change else None
    d.update(change)
    with pytest.raises(ConfigError, match=field):
        LFM2Config.from_dict(d, source="x/config.json")


def test_missing_required_field_and_bad_json(tmp_path):
    d = dict(REAL_STYLE)
    del d["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"config.json: missing field 'hidden_size'"):
        LFM2Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LFM2Config.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        LFM2Config.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="missing config.json"):
        LFM2Config.from_pretrained(tmp_path / "empty")


def test_state_sizes_show_the_hybrid_advantage():
    hybrid = LFM2Config.from_preset("lfm2-1.2b")
    # 6 attention layers * K and V * 8 kv heads * 64 dims * 2 bytes
    assert hybrid.state_bytes_per_token(2) == 6 * 2 * 8 * 64 * 2
    assert hybrid.state_fixed_bytes(2) == 10 * 2048 * 3 * 2
    dense = LFM2Config.from_preset("qwen3-1.7b-shape")
    assert dense.state_bytes_per_token(2) / hybrid.state_bytes_per_token(2) > 9


# ---- corrupt config.json files: one ConfigError line, never a traceback -------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"layer_types": 5}, "field 'layer_types': expected a non-empty array of 'conv' / 'full_attention', got 5"),
        (
            {"layer_types": ["conv"] * 15 + [7]},
            "field 'layer_types': entry 15 is 7; expected 'conv' or 'full_attention'",
        ),
        ({"rope_theta": "x"}, "field 'rope_theta': expected a positive finite number, got 'x'"),
        ({"block_multiple_of": 0}, "field 'block_multiple_of': expected an integer from 1 to 1,048,576, got 0"),
        ({"hidden_size": 10**12}, "field 'hidden_size': expected an integer from 1 to 65,536, got 1000000000000"),
        ({"num_hidden_layers": True}, "field 'num_hidden_layers': expected an integer from 1 to 1,024, got true"),
        ({"vocab_size": 0}, "field 'vocab_size': expected an integer from 1"),
        ({"conv_L_cache": 0}, "field 'conv_L_cache': expected an integer from 1"),
        ({"head_dim": 0}, "field 'head_dim': expected an integer from 2"),
        ({"head_dim": 63}, "field 'head_dim': must be even for RoPE, got 63"),
        ({"hidden_size": 2047}, "field 'num_attention_heads': 32 does not divide hidden_size=2047"),
        ({"num_key_value_heads": 64}, "field 'num_key_value_heads': 64 does not divide num_attention_heads=32"),
        ({"norm_eps": float("nan")}, "field 'norm_eps': expected a positive finite number, got NaN"),
        ({"norm_eps": 0}, "field 'norm_eps': expected a positive finite number, got 0"),
        ({"conv_bias": "false"}, "field 'conv_bias': expected true or false, got 'false'"),
        ({"torch_dtype": 16}, "field 'torch_dtype': expected one of bfloat16"),
        (
            {"eos_token_id": 65536},
            "field 'eos_token_id': expected a token id from 0 to 65535 (vocab_size - 1), got 65536",
        ),
        ({"eos_token_id": [7, -1]}, "field 'eos_token_id': entry 1 is -1; expected a token id from 0 to 65535"),
        ({"eos_token_id": []}, "field 'eos_token_id': expected a token id or a non-empty array of them, got []"),
        (
            {"full_attn_idxs": [2, 16]},
            "field 'full_attn_idxs': entry 16 is not a layer index from 0 to num_hidden_layers-1=15",
        ),
        ({"full_attn_idxs": {"2": True}}, "field 'full_attn_idxs': expected an array of layer indices"),
        ({"rope_parameters": [1]}, "field 'rope_parameters': expected an object, got [1]"),
        (
            {"rope_parameters": {"rope_theta": 10000.0}},
            "fields 'rope_theta' (1000000.0) and 'rope_parameters.rope_theta' (10000.0) disagree",
        ),
        ({"block_ffn_dim_multiplier": 1e-9}, "field 'block_ff_dim': 12288 gives an FFN width of 0"),
        ({"block_ffn_dim_multiplier": float("inf")}, "field 'block_ffn_dim_multiplier': expected a positive finite"),
        ({"block_ff_dim": None, "intermediate_size": -1}, "field 'intermediate_size': expected an integer from 1"),
        ({"num_heads": 16}, "fields 'num_attention_heads' (32) and 'num_heads' (16) disagree"),
        ({"tie_word_embeddings": False}, "fields 'tie_word_embeddings' (false) and 'tie_embedding' (true) disagree"),
        ({"layer_types": ["conv"] * 16}, "field 'full_attn_idxs': [2, 5, 8, 10, 12, 14] disagrees with layer_types"),
    ],
)
def test_each_bad_field_is_one_line_naming_the_field_and_what_was_expected(tmp_path, change, message):
    data = dict(REAL_STYLE, tie_embedding=True, **change)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    with pytest.raises(ConfigError) as err:
        LFM2Config.from_pretrained(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'config.json'}: {message}")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text (byte 0 is 0xff)"),
        (b"[1, 2]", "expected a JSON object, got an array"),
        (b"null", "expected a JSON object, got null"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"hidden_size": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_a_file_that_is_not_a_json_object_is_named(tmp_path, raw, message):
    (tmp_path / "config.json").write_bytes(raw)
    with pytest.raises(ConfigError, match=re.escape(f"config.json: {message}")):
        LFM2Config.from_pretrained(tmp_path)


def test_a_byte_order_mark_is_accepted(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(REAL_STYLE).encode())
    assert LFM2Config.from_pretrained(tmp_path).num_parameters() == EXACT["lfm2-1.2b"]


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match="config field 'hidden_size': expected an integer"):
        LFM2Config(hidden_size=64.0)
    with pytest.raises(ConfigError, match="config field 'num_hidden_layers'"):
        LFM2Config(num_hidden_layers="16")
    with pytest.raises(ConfigError, match="config field 'conv_bias'"):
        LFM2Config.from_preset("lfm2-350m", conv_bias=1)


def _small_valid_configs() -> list[dict]:
    """Two small valid config.json dicts: the release spelling and the one transformers writes."""
    from checkpoints import reference_config

    release = dict(
        REAL_STYLE,
        hidden_size=64,
        block_dim=64,
        conv_dim=64,
        conv_dim_out=64,
        block_ff_dim=128,
        num_attention_heads=4,
        num_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=4,
        full_attn_idxs=[1, 3],
        vocab_size=512,
        block_multiple_of=32,
    )
    return [release, json.loads(reference_config("small", head_dim=16).to_json_string(use_diff=False))]


VALID_CONFIGS = _small_valid_configs()
FIELDS = sorted({key for config in VALID_CONFIGS for key in config} | {"head_dim", "rope_scaling", "rope_theta"})
EDGE_VALUES = st.sampled_from(
    [
        0,
        -1,
        1,
        2,
        3,
        7,
        4096,
        10**12,
        2**64,
        -0.5,
        0.5,
        1e-320,
        1e308,
        float("nan"),
        float("inf"),
        "",
        "x",
        "16",
        [],
        [1],
        [None],
        {},
        {"rope_type": "yarn"},
        None,
        True,
        False,
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
BAD_VALUES = EDGE_VALUES | JSON_VALUES


@st.composite
def corrupt_config_json(draw) -> bytes:
    """A valid config.json with one thing broken: a field set to a bad value of a random JSON
    type, a field deleted, a list entry replaced, a rope_parameters key, or the bytes cut."""
    data = copy.deepcopy(draw(st.sampled_from(VALID_CONFIGS)))
    how = draw(st.sampled_from(["set", "delete", "entry", "rope", "bytes"]))
    if how == "set":
        data[draw(st.sampled_from(FIELDS))] = draw(BAD_VALUES)
    elif how == "delete":
        data.pop(draw(st.sampled_from(sorted(data))))
    elif how == "entry":
        key = draw(st.sampled_from(["layer_types", "full_attn_idxs", "eos_token_id"]))
        entries = data[key] if isinstance(data.get(key), list) else []
        at = draw(st.integers(0, len(entries)))
        entries[at : at + 1] = draw(st.lists(BAD_VALUES, max_size=2))
        data[key] = entries
    elif how == "rope":
        rope = data.setdefault("rope_parameters", {}) if isinstance(data.get("rope_parameters"), dict) else {}
        rope[draw(st.sampled_from(["rope_theta", "rope_type", "type"]))] = draw(BAD_VALUES)
        data["rope_parameters"] = rope
    raw = json.dumps(data).encode()
    if how == "bytes":
        raw = raw[: draw(st.integers(0, len(raw)))] + draw(st.binary(max_size=3))
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=corrupt_config_json())
def test_a_corrupt_config_loads_a_model_that_builds_or_raises_one_config_error_line(tmp_path, raw):
    import torch

    from lfmkit import LFM2

    file = tmp_path / "config.json"
    file.write_bytes(raw)
    try:
        config = LFM2Config.from_pretrained(tmp_path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{file}: ") and "\n" not in str(exc)
        return
    with torch.device("meta"):
        model = LFM2(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()
    assert LFM2Config.from_dict(config.to_dict()) == config
