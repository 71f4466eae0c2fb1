"""LFM2Config: presets, every config.json variant, and a config.json transformers reads back."""

import json

import pytest

from lfmkit import ConfigError, LFM2Config

EXACT = {"lfm2-350m": 354_483_968, "lfm2-700m": 742_489_344, "lfm2-1.2b": 1_170_340_608,
         "lfm2-2.6b": 2_569_272_320}


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
    "architectures": ["LFM2ForCausalLM"], "block_auto_adjust_ff_dim": True, "block_dim": 2048,
    "block_ff_dim": 12288, "block_ffn_dim_multiplier": 1.0, "block_mlp_init_scale": 1.0,
    "block_multiple_of": 256, "block_norm_eps": 1e-05, "block_out_init_scale": 1.0,
    "block_use_swiglu": True, "block_use_xavier_init": True, "bos_token_id": 1, "conv_L_cache": 3,
    "conv_bias": False, "conv_dim": 2048, "conv_dim_out": 2048, "conv_use_xavier_init": True,
    "eos_token_id": 7, "full_attn_idxs": [2, 5, 8, 10, 12, 14], "hidden_size": 2048,
    "initializer_range": 0.02, "max_position_embeddings": 128000, "model_type": "lfm2",
    "norm_eps": 1e-05, "num_attention_heads": 32, "num_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pad_token_id": 0, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
    "transformers_version": "4.54.0.dev0", "use_cache": True, "use_pos_enc": True, "vocab_size": 65536,
}


def test_reads_release_style_config():
    c = LFM2Config.from_dict(REAL_STYLE)
    assert c.num_parameters() == EXACT["lfm2-1.2b"]
    assert c.layer_types == LFM2Config.from_preset("lfm2-1.2b").layer_types


def test_reads_transformers_style_config():
    newer = {"model_type": "lfm2", "hidden_size": 1024, "intermediate_size": 6656, "num_hidden_layers": 16,
             "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True,
             "layer_types": ["full_attention" if i in (2, 5, 8, 10, 12, 14) else "conv" for i in range(16)],
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "dtype": "bfloat16"}
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


@pytest.mark.parametrize("change, field", [
    ({"model_type": "llama"}, "model_type"),
    ({"num_key_value_heads": 5}, "num_key_value_heads"),
    ({"hidden_size": -4}, "hidden_size"),
    ({"layer_types": ["conv", "mamba"] * 8}, "layer_types"),
    ({"layer_types": ["conv"] * 3}, "layer_types"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type"),
])
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
