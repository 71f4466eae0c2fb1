"""`lfmkit merge`: merged tensors equal mergekit's (the oracle, run on the same YAML), tensor by
tensor and bit for bit; DARE equals mergekit's method with torch seeded by the documented rule;
the result loads in transformers with the logits lfmkit computes; merging streams (one tensor
per input alive at a time); a bad config is one line naming the field."""

import json
import shutil
import weakref
import zlib

import pytest
import torch
import yaml
from checkpoints import make_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from lfmkit.cli import main
from lfmkit.io.checkpoint import StoredTensor
from lfmkit.train.merge import merge
from lfmkit.train.merge_config import evaluate_setting
from lfmkit.train.merge_methods import Param


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three tiny checkpoints with the same architecture and tokenizer: a 'base' and two others."""
    root = tmp_path_factory.mktemp("merge-in")
    return [make_checkpoint(root / f"m{i}", seed=i, with_tokenizer=True)[0] for i in range(3)]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A checkpoint like them but for a bigger vocabulary (embedding [640, 48])."""
    return make_checkpoint(tmp_path_factory.mktemp("merge-wide"), vocab_size=640)[0]


@pytest.fixture(scope="module")
def mergekit_merge():
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    def run(config: dict, out):
        run_merge(
            MergeConfiguration.model_validate(config),
            str(out),
            options=MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False),
        )
        return out

    return run


def tensors(directory):
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def write_yaml(path, config):
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Configs in mergekit's format; M0, M1, M2 stand for the three checkpoints' folders.
CONFIGS = {
    "linear": {
        "merge_method": "linear",
        "models": [
            {"model": "M0", "parameters": {"weight": 0.2}},
            {"model": "M1", "parameters": {"weight": 0.5}},
            {"model": "M2", "parameters": {"weight": 0.3}},
        ],
    },
    "linear_unnormalized_bf16": {
        "merge_method": "linear",
        "models": [
            {"model": "M0", "parameters": {"weight": 0.7}},
            {"model": "M1", "parameters": {"weight": [0.1, 0.9]}},
        ],
        "parameters": {"normalize": False},
        "dtype": "bfloat16",
    },
    # mergekit ignores a parameter of another method, and a model's own value of a shared one
    "linear_with_ignored_settings": {
        "merge_method": "linear",
        "models": [
            {"model": "M0", "parameters": {"weight": 0.4, "density": 0.5}},
            {"model": "M1", "parameters": {"weight": 0.6, "normalize": False}},
        ],
        "chat_template": "auto",
    },
    "slerp": {
        "merge_method": "slerp",
        "base_model": "M0",
        "models": [{"model": "M0"}, {"model": "M1"}],
        "parameters": {"t": 0.3},
    },
    # mergekit's README SLERP example: the slices form, t a gradient per filter
    "slerp_slices_gradients": {
        "slices": [{"sources": [{"model": "M0", "layer_range": [0, 4]}, {"model": "M1", "layer_range": [0, 4]}]}],
        "merge_method": "slerp",
        "base_model": "M0",
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "feed_forward", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "bfloat16",
    },
    "slerp_two_slices": {
        "slices": [
            {
                "sources": [{"model": "M0", "layer_range": [0, 2]}, {"model": "M1", "layer_range": [0, 2]}],
                "parameters": {"t": [0.2, 0.8]},
            },
            {
                "sources": [{"model": "M0", "layer_range": [2, 4]}, {"model": "M1", "layer_range": [2, 4]}],
                "parameters": {"t": 0.6},
            },
        ],
        "merge_method": "slerp",
        "base_model": "M0",
    },
    "task_arithmetic": {
        "merge_method": "task_arithmetic",
        "base_model": "M0",
        "models": [
            {"model": "M0"},
            {"model": "M1", "parameters": {"weight": 0.6}},
            {"model": "M2", "parameters": {"weight": [0.1, 0.4, 0.2]}},
        ],
        "parameters": {"lambda": 0.8},
        "out_dtype": "bfloat16",
    },
    "ties": {
        "merge_method": "ties",
        "base_model": "M0",
        "models": [
            {"model": "M1", "parameters": {"weight": 0.6, "density": [0.2, 0.9]}},
            {
                "model": "M2",
                "parameters": {
                    "weight": [{"filter": "self_attn", "value": [0.1, 0.5, 0.3]}, {"value": 0.4}],
                    "density": 0.7,
                },
            },
        ],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32",
        "tokenizer_source": "base",
    },
    "ties_bf16_defaults": {
        "merge_method": "ties",
        "base_model": "M0",
        "dtype": "bfloat16",
        "parameters": {"density": 0.5, "weight": 0.5},
        "models": [{"model": "M1"}, {"model": "M2"}],
    },
    "model_stock": {"merge_method": "model_stock", "base_model": "M0", "models": [{"model": "M1"}, {"model": "M2"}]},
}


def with_paths(config, models):
    """The config with M0/M1/M2 replaced by the checkpoints' folders."""
    text = json.dumps(config)
    for i, path in enumerate(models):
        text = text.replace(f'"M{i}"', json.dumps(str(path)))
    return json.loads(text)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_merge_equals_mergekit_tensor_by_tensor(name, models, mergekit_merge, tmp_path, capsys):
    config = with_paths(CONFIGS[name], models)
    theirs = tensors(mergekit_merge(config, tmp_path / "mergekit"))
    assert main(["merge", str(write_yaml(tmp_path / "merge.yaml", config)), str(tmp_path / "ours")]) == 0
    out, err = capsys.readouterr()
    assert f"with {config['merge_method']} into" in out
    if name == "linear_with_ignored_settings":
        assert "merge.yaml: models[0].parameters.density: ignored: not a parameter of linear" in err
        assert "merge.yaml: models[1].parameters.normalize: ignored: 'normalize' applies to the whole merge" in err
    ours = tensors(tmp_path / "ours")
    assert ours.keys() == theirs.keys() and len(ours) == 40
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key
    base = load_file(models[0] / "model.safetensors")
    assert not torch.equal(
        ours["model.layers.1.self_attn.q_proj.weight"].float(), base["model.layers.1.self_attn.q_proj.weight"]
    )


def documented_seed(seed, name):
    """docs/merging.md: tensor NAME's DARE masks are drawn from a generator seeded (seed + crc32(NAME)) % 2**63."""
    return (seed + zlib.crc32(name.encode())) % 2**63


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_equals_mergekit_with_the_documented_seed(method, models, tmp_path):
    pytest.importorskip("mergekit")
    from mergekit.config import evaluate_setting as mergekit_evaluate
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorGroup

    config = with_paths(
        {
            "merge_method": method,
            "base_model": "M0",
            "models": [
                {"model": "M1", "parameters": {"weight": 0.7, "density": 0.4}},
                {"model": "M2", "parameters": {"weight": 0.5, "density": [0.3, 0.8]}},
            ],
        },
        models,
    )
    merge(config, tmp_path / "a", seed=7)
    ours = tensors(tmp_path / "a")
    inputs = [load_file(m / "model.safetensors") for m in models]
    n_layers = 4
    for name, merged in ours.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else 0
        density2 = mergekit_evaluate(name, [0.3, 0.8], layer / (n_layers - 1), validate=float)
        group = TensorGroup.from_tensors([x[name] for x in inputs], base_index=0)
        torch.manual_seed(documented_seed(7, name))
        (expected,) = registry.get(method)((group,), parameters={"weight": [0.7, 0.5], "density": [0.4, density2]})
        assert torch.equal(merged, expected), name
    merge(config, tmp_path / "b", seed=7)
    merge(config, tmp_path / "c", seed=8)
    again, other = tensors(tmp_path / "b"), tensors(tmp_path / "c")
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    assert not torch.equal(ours["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_merged_checkpoint_loads_in_transformers_with_lfmkits_logits(models, tmp_path):
    from transformers import AutoTokenizer, Lfm2ForCausalLM

    from lfmkit.model import LFM2
    from lfmkit.text.tokenizer import Tokenizer

    config = with_paths(CONFIGS["ties"], models)
    out = merge(config, tmp_path / "merged", max_shard_bytes=100_000)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    ids = torch.tensor([[1, 5, 9, 200, 33, 7, 100, 42]])
    theirs = Lfm2ForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        expected = theirs(ids).logits
        got = LFM2.from_pretrained(out)(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    text = "hello merged world"
    assert AutoTokenizer.from_pretrained(out).encode(text) == AutoTokenizer.from_pretrained(models[0]).encode(text)
    assert Tokenizer.from_pretrained(out).encode(text) == Tokenizer.from_pretrained(models[0]).encode(text)
    assert (out / "mergekit_config.yml").is_file() and yaml.safe_load((out / "mergekit_config.yml").read_text())

    # the same merge unsharded, over the sharded one: the same tensors, no stale shard left
    sharded = tensors(out)
    merge(config, out, overwrite=True)
    assert sorted(p.name for p in out.glob("*.safetensors*")) == ["model.safetensors"]
    unsharded = tensors(out)
    assert sharded.keys() == unsharded.keys() == theirs.state_dict().keys() - {"lm_head.weight"}
    assert all(torch.equal(sharded[k], unsharded[k]) for k in sharded)


def test_merge_streams_one_tensor_per_input_at_a_time(models, tmp_path, monkeypatch):
    """Memory: while merging, at most one tensor read from each input model is alive."""
    live, peak = weakref.WeakSet(), [0]
    read = StoredTensor.read

    def tracking_read(self, *args, **kwargs):
        t = read(self, *args, **kwargs)
        live.add(t)
        peak[0] = max(peak[0], len(live))
        return t

    monkeypatch.setattr(StoredTensor, "read", tracking_read)
    merge(with_paths(CONFIGS["ties"], models), tmp_path / "out", max_shard_bytes=50_000)
    assert peak[0] == 3


@pytest.mark.parametrize(
    "change, field, message",
    [
        (lambda c: c.update(merge_method="frankenmerge"), "merge_method", "unknown method 'frankenmerge'"),
        (lambda c: c.pop("merge_method"), "merge_method", "missing"),
        (lambda c: c["models"][1].update(model="/no/such/model"), "models[1].model", "no such file or directory"),
        (lambda c: c["models"][1].update(model="WIDE"), "models[1]", "has shape [640, 48], but base_model"),
        (lambda c: c["models"][0]["parameters"].pop("weight"), "models[0]", "ties needs 'weight'"),
        (
            lambda c: c["models"][0]["parameters"].update(densty=0.5),
            "models[0].parameters.densty",
            "not a parameter of any merge method (ties takes int8_mask, normalize, rescale, lambda, weight, density)",
        ),
        (
            lambda c: c["models"][1]["parameters"].update(density="lots"),
            "models[1].parameters.density",
            "expected a float",
        ),
        (lambda c: c["models"][1]["parameters"].update(density=1.5), "models[1].parameters.density", "between 0 and 1"),
        (lambda c: c.update(chat_template="chatml"), "chat_template", "only `auto` is accepted"),
        (lambda c: c.update(paramters={}), "paramters", "unknown field"),
        (lambda c: c.pop("base_model") and c.pop("tokenizer_source"), "base_model", "ties needs a base_model"),
        (lambda c: c.pop("base_model"), "tokenizer_source", "'base' needs a base_model"),
        (
            lambda c: c.update(
                merge_method="slerp", parameters={"t": 0.5}, models=[{"model": m["model"]} for m in c["models"]]
            ),
            "models",
            "slerp merges exactly 2 models",
        ),
        (lambda c: c.update(dtype="int4"), "dtype", "unsupported dtype"),
        (lambda c: c.update(tokenizer_source="/no/tok"), "tokenizer_source", "no such file or directory"),
        (lambda c: c.update(slices=c.pop("models")[:0]), "slices", "non-empty list"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(change, field, message, models, wide, tmp_path, capsys):
    config = with_paths(CONFIGS["ties"], models)
    config["models"][0]["parameters"] = {"weight": 0.6, "density": 0.5}
    change(config)
    config = json.loads(json.dumps(config).replace('"WIDE"', json.dumps(str(wide))))
    path = write_yaml(tmp_path / "bad.yaml", config)
    capsys.readouterr()
    assert main(["merge", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"bad.yaml: {field}" in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_bad_slices_yaml_and_output_are_one_line(models, tmp_path, capsys):
    stacked = {
        "merge_method": "slerp",
        "base_model": "M0",
        "parameters": {"t": 0.5},
        "slices": [
            {"sources": [{"model": "M0", "layer_range": [0, 2]}, {"model": "M1", "layer_range": [0, 2]}]},
            {"sources": [{"model": "M0", "layer_range": [0, 2]}, {"model": "M1", "layer_range": [0, 2]}]},
        ],
    }
    cases = [
        (
            write_yaml(tmp_path / "stack.yaml", with_paths(stacked, models)),
            tmp_path / "o1",
            "stack.yaml: slices[1].sources[0].layer_range: lfmkit merges layer i with layer i",
        ),
        (tmp_path / "broken.yaml", tmp_path / "o2", "broken.yaml: not valid YAML at line 3: expected ','"),
        (
            write_yaml(tmp_path / "self.yaml", with_paths(CONFIGS["model_stock"], models)),
            models[1],
            "is the input model",
        ),
    ]
    (tmp_path / "broken.yaml").write_text("merge_method: ties\nmodels: [a, b\n")
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(models[2], other_vocab)
    tok = json.loads((other_vocab / "tokenizer.json").read_text())
    (a, i), (b, j) = list(tok["model"]["vocab"].items())[300:302]
    tok["model"]["vocab"].update({a: j, b: i})
    (other_vocab / "tokenizer.json").write_text(json.dumps(tok))
    union = with_paths(CONFIGS["ties"], [models[0], models[1], other_vocab])
    union["tokenizer_source"] = "union"
    cases.append(
        (
            write_yaml(tmp_path / "union.yaml", union),
            tmp_path / "o3",
            "union.yaml: tokenizer_source: " + str(other_vocab) + " has a different vocabulary",
        )
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    cases.append((tmp_path / "self.yaml", tmp_path / "full", "exists and is not empty; pass --overwrite"))
    capsys.readouterr()
    for config, out, message in cases:
        assert main(["merge", str(config), str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in models[1].iterdir()) == sorted(p.name for p in models[2].iterdir())


scalars = st.floats(-2, 2, allow_nan=False, width=32) | st.integers(-3, 3)
gradients = st.lists(scalars, min_size=1, max_size=6)
conditions = st.lists(
    st.fixed_dictionaries(
        {"value": scalars | gradients}, optional={"filter": st.sampled_from(["self_attn", "conv", "w1", "*"])}
    ),
    min_size=1,
    max_size=3,
)
NAMES = [
    "model.layers.3.self_attn.q_proj.weight",
    "model.layers.0.conv.in_proj.weight",
    "model.layers.1.feed_forward.w1.weight",
    "model.embed_tokens.weight",
]


@settings(max_examples=200, deadline=None)
@given(setting=scalars | gradients | conditions, name=st.sampled_from(NAMES), t=st.floats(0, 1))
def test_parameter_settings_resolve_as_in_mergekit(setting, name, t):
    pytest.importorskip("mergekit")
    from mergekit.config import ConditionalParameter
    from mergekit.config import evaluate_setting as mergekit_evaluate

    theirs_setting = (
        [ConditionalParameter(**c) for c in setting]
        if isinstance(setting, list) and setting and isinstance(setting[0], dict)
        else setting
    )
    expected = mergekit_evaluate(name, theirs_setting, t, validate=float)
    assert evaluate_setting(setting, name, t, Param("weight", float, "non_base")) == expected
