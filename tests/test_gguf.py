"""GGUF export and import: llama.cpp runs what we write, and we read it back.

llama.cpp (through llama-cpp-python) is the judge for the files: it must load them, produce
the same logits as lfmkit within float16 rounding, and the same greedy tokens. Quantised
files are checked block for block against the `gguf` package's reference quantiser, and end
to end against lfmkit running the same dequantised weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import make_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lfmkit.bench import open_llama_cpp
from lfmkit.config import ATTENTION
from lfmkit.errors import CheckpointError, ExportError
from lfmkit.export.gguf import write_gguf
from lfmkit.io import ggml as ggml_quant
from lfmkit.io.gguf import read_gguf_config
from lfmkit.loader import load_gguf_model
from lfmkit.model.lfm2 import LFM2

PROMPT = [1, 6, 300, 301, 302, 7, 400, 401, 402, 403, 50, 60, 70, 80]


def lfmkit_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float().numpy()


def lfmkit_greedy(model, ids, n):
    state = model.new_state(1, len(ids) + n + 1)
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([ids]), state=state)[:, -1]
        for _ in range(n):
            tok = int(logits.argmax(-1))
            out.append(tok)
            logits = model(torch.tensor([[tok]]), state=state)[:, -1]
    return out


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=["1.2b", "2.6b"])
def exported(request, tmp_path_factory):
    """A random-weight checkpoint (with tokenizer) in a real layout, loaded, and written in every type."""
    d, _ = make_checkpoint(
        tmp_path_factory.mktemp(f"ck{request.param}"), layout=request.param, seed=3, with_tokenizer=True
    )
    model = LFM2.from_pretrained(d, dtype="float32")
    files = {t: write_gguf(model, d / f"model-{t}.gguf", type=t) for t in ("f32", "f16", "bf16", "q8_0", "q4_0")}
    return d, model, files


def llama(path):
    pytest.importorskip("llama_cpp")
    return open_llama_cpp(path, logits_all=True, verbose=False, n_ctx=256, n_threads=1, n_threads_batch=1, seed=0)


def llama_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def llama_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


# ---- llama.cpp runs our files ----------------------------------------------------------------
def test_llama_cpp_f16_logits_and_greedy_tokens_match_lfmkit(exported):
    d, model, files = exported
    llm = llama(files["f16"])
    ref = lfmkit_logits(model, PROMPT)
    got = llama_logits(llm, PROMPT)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=3e-2, rtol=0)
    assert llama_greedy(llm, PROMPT, 24) == lfmkit_greedy(model, PROMPT, 24)


def test_llama_cpp_f32_is_exact_to_float_rounding(exported):
    d, model, files = exported
    got = llama_logits(llama(files["f32"]), PROMPT)
    np.testing.assert_allclose(got, lfmkit_logits(model, PROMPT), atol=5e-3, rtol=0)


def test_llama_cpp_quantized_files_load_and_stay_close(exported):
    d, model, files = exported
    f16 = llama_logits(llama(files["f16"]), PROMPT)
    errors = {}
    for t in ("bf16", "q8_0", "q4_0"):
        got = llama_logits(llama(files[t]), PROMPT)
        errors[t] = rel_err(got, f16)
        # llama.cpp and lfmkit read the same blocks the same way: lfmkit on the dequantised file
        # agrees with llama.cpp up to llama.cpp's own 8-bit activation rounding.
        same_weights = lfmkit_logits(load_gguf_model(files[t]), PROMPT)
        assert rel_err(got, same_weights) < 0.15, t
    # Random deep nets amplify weight noise: bf16 and q8_0 stay within a few percent of f16;
    # q4_0 (~12% noise per weight) stays bounded and is the noisiest.
    assert errors["bf16"] < 0.1 and errors["q8_0"] < 0.15, errors
    assert errors["q8_0"] < errors["q4_0"] < 1.0, errors


def test_llama_cpp_reads_tokenizer_and_chat_template(exported):
    from lfmkit.text.tokenizer import Tokenizer

    d, model, files = exported
    llm = llama(files["q8_0"])
    tok = Tokenizer.from_pretrained(d)
    text = "<|startoftext|><|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text)
    meta = llm.metadata
    assert meta["tokenizer.ggml.pre"] == "lfm2" and meta["tokenizer.ggml.model"] == "gpt2"
    assert (llm.token_bos(), llm.token_eos()) == (1, 7)
    assert meta["tokenizer.chat_template"] == tok.chat_template
    ids = tok.encode("Hello! How are you today?")
    assert llm.detokenize(ids).decode() == tok.decode(ids)


# ---- the file itself -------------------------------------------------------------------------
def test_gguf_keys_tensor_types_and_config_round_trip(exported):
    from gguf import GGUFReader

    d, model, files = exported
    cfg = model.config
    r = GGUFReader(str(files["q4_0"]))

    def field(key):
        v = r.fields[key].contents()
        return v.item() if hasattr(v, "item") else v

    assert field("general.architecture") == "lfm2"
    assert field("lfm2.block_count") == cfg.num_hidden_layers
    assert field("lfm2.embedding_length") == cfg.hidden_size
    assert field("lfm2.feed_forward_length") == cfg.ff_dim
    assert field("lfm2.attention.head_count") == cfg.num_attention_heads
    assert field("lfm2.attention.head_count_kv") == [
        cfg.num_key_value_heads if t == ATTENTION else 0 for t in cfg.layer_types
    ]
    assert field("lfm2.shortconv.l_cache") == 3
    assert field("lfm2.context_length") == cfg.max_position_embeddings
    assert field("lfm2.vocab_size") == cfg.vocab_size
    assert abs(field("lfm2.rope.freq_base") - cfg.rope_theta) < 1
    assert abs(field("lfm2.attention.layer_norm_rms_epsilon") - cfg.norm_eps) < 1e-9
    assert field("tokenizer.ggml.add_bos_token") is True
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == "Q8_0"
    assert types["token_embd_norm.weight"] == "F32"
    assert types["blk.0.shortconv.conv.weight"] == "F32"
    assert list(r.tensors[[t.name for t in r.tensors].index("blk.0.shortconv.conv.weight")].shape) == [3, 64]
    assert types["blk.0.shortconv.in_proj.weight"] == "Q4_0"
    assert types["blk.2.attn_q_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied head
    back = read_gguf_config(files["q4_0"])
    assert back.layer_types == cfg.layer_types and back.ff_dim == cfg.ff_dim
    assert back.num_parameters() == cfg.num_parameters()


def test_gguf_loads_back_into_lfmkit(exported):
    d, model, files = exported
    ref = lfmkit_logits(model, PROMPT)
    np.testing.assert_array_equal(lfmkit_logits(load_gguf_model(files["f32"]), PROMPT), ref)
    np.testing.assert_allclose(
        lfmkit_logits(LFM2.from_pretrained(str(files["f16"]), dtype="float32"), PROMPT), ref, atol=3e-2, rtol=0
    )
    bf16 = LFM2.from_pretrained(str(files["bf16"]))
    assert bf16.dtype == torch.bfloat16
    # Quantised files load as exactly the dequantised blocks.
    w = model.model.layers[0].feed_forward.w1.weight
    for t in ("q8_0", "q4_0"):
        back = load_gguf_model(files[t])
        expected = ggml_quant.dequantize(ggml_quant.quantize(w, t), t, tuple(w.shape))
        torch.testing.assert_close(back.model.layers[0].feed_forward.w1.weight, expected, rtol=0, atol=0)


def test_quantised_blocks_keep_their_codes(exported):
    from lfmkit.io.gguf import iter_gguf_weights

    d, model, files = exported
    w = model.model.layers[0].conv.in_proj.weight
    weights = {x.name: x for x in iter_gguf_weights(files["q4_0"])}
    codes, scales = weights["model.layers.0.conv.in_proj.weight"].blocks()
    assert codes.dtype == torch.int8 and int(codes.min()) >= -8 and int(codes.max()) <= 7
    deq = (codes.float().view(w.shape[0], -1, 32) * scales[..., None]).view(w.shape)
    torch.testing.assert_close(deq, weights["model.layers.0.conv.in_proj.weight"].to_tensor(), rtol=0, atol=0)


# ---- GGML blocks, byte for byte --------------------------------------------------------------
def _reference_bytes(x: np.ndarray, qtype: str) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    return quants.quantize(x, GGMLQuantizationType.Q8_0 if qtype == "q8_0" else GGMLQuantizationType.Q4_0)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_blocks_equal_reference_on_edge_cases(qtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 128, generator=g) * 0.05
    x[0, :32] = 0  # all-zero block: scale 0
    x[1, :32] = 0.5  # constant block
    x[2, 3], x[2, 9] = -3.0, 3.0  # +-max tie: the first one wins
    x[3] = torch.round(x[3] * 254) / 254  # exact halves after scaling
    got = ggml_quant.quantize(x, qtype).numpy()
    np.testing.assert_array_equal(got, _reference_bytes(x.numpy(), qtype))
    bf = x.to(torch.bfloat16)
    np.testing.assert_array_equal(ggml_quant.quantize(bf, qtype).numpy(), _reference_bytes(bf.float().numpy(), qtype))


@settings(max_examples=60, deadline=None)
@given(
    qtype=st.sampled_from(["q8_0", "q4_0"]),
    x=arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([32, 64])),
        elements=st.floats(-1000, 1000, width=32, allow_subnormal=False),
    ),
)
def test_blocks_equal_reference_property(qtype, x):
    from gguf import GGMLQuantizationType, quants

    got = ggml_quant.quantize(torch.from_numpy(x), qtype)
    np.testing.assert_array_equal(got.numpy(), _reference_bytes(x, qtype))
    gtype = GGMLQuantizationType.Q8_0 if qtype == "q8_0" else GGMLQuantizationType.Q4_0
    np.testing.assert_array_equal(
        ggml_quant.dequantize(got, qtype, x.shape).numpy(), quants.dequantize(got.numpy(), gtype)
    )


# ---- what we refuse --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d, _ = make_checkpoint(tmp_path_factory.mktemp("small"), layout="small", seed=1, with_tokenizer=True)
    return d, LFM2.from_pretrained(d, dtype="float32")


def test_refuses_what_gguf_cannot_express(small, tmp_path):
    d, model = small
    with pytest.raises(ExportError, match="unsupported GGUF type 'q5_k'"):
        write_gguf(model, tmp_path / "x.gguf", type="q5_k")
    with pytest.raises(ExportError, match="tokenizer"):
        write_gguf(model, tmp_path / "x.gguf", tokenizer_dir=tmp_path)
    model.source_path = None
    with pytest.raises(ExportError, match="tokenizer"):
        write_gguf(model, tmp_path / "x.gguf")
    bias = LFM2.from_config(model.config.copy(conv_bias=True))
    with pytest.raises(ExportError, match="conv_bias"):
        write_gguf(bias, tmp_path / "x.gguf", tokenizer_dir=d)
    dense = LFM2.from_config(model.config.copy(layer_types=[ATTENTION] * model.config.num_hidden_layers))
    with pytest.raises(ExportError, match="no short-convolution layers"):
        write_gguf(dense, tmp_path / "x.gguf", tokenizer_dir=d)
    odd = LFM2.from_config(model.config.copy(head_dim=16, num_attention_heads=4))
    with pytest.raises(ExportError, match="head_dim"):
        write_gguf(odd, tmp_path / "x.gguf", tokenizer_dir=d)
    assert not list(tmp_path.glob("*.gguf*"))


def test_rows_not_multiple_of_32_fall_back_to_f16(small, tmp_path):
    from gguf import GGUFReader

    d, model = small  # hidden 48
    path = write_gguf(model, tmp_path / "s.gguf", type="q8_0", tokenizer_dir=d)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.0.shortconv.in_proj.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 128
    np.testing.assert_allclose(
        lfmkit_logits(load_gguf_model(path), PROMPT[:6]), lfmkit_logits(model, PROMPT[:6]), atol=0.1
    )


def test_loading_rejects_bad_files(tmp_path):
    import gguf

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="junk.gguf"):
        load_gguf_model(junk)
    other = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(other), "llama")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture is 'llama'"):
        LFM2.from_pretrained(str(other))


def test_cli_export_gguf(small, tmp_path, capsys):
    from lfmkit.cli import main

    d, model = small
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", str(d), str(out), "--type", "q4_0"]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert read_gguf_config(out).hidden_size == 48
    assert main(["export", "gguf", str(tmp_path / "missing"), str(out)]) == 2
    assert "error" in capsys.readouterr().err


TEXTS = [
    "Hello world",
    "12345 and 3.14159, 2023-11-20",
    "What's the capital of France?\n\nIt's Paris!!!",
    "  leading spaces\tand\ttabs\r\n",
    "東京は日本の首都です。 北京是中国的首都。",
    "Emoji: 🙂 🚀 ✨ — “quotes”",
    "I'LL DO IT, you'd've, they're",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nhi<|im_end|>\n<think>x</think>",
    "a\n\n\nb   \n c",
    "x==y!=z;;;\n\n",
]


def test_tokenizer_read_back_from_gguf_tokenizes_like_llama_cpp(exported, tmp_path):
    from lfmkit.inference.generate import load_tokenizer_for
    from lfmkit.io.gguf import extract_tokenizer
    from lfmkit.text.tokenizer import Tokenizer

    d, model, files = exported
    llm = llama(files["q8_0"])
    back = Tokenizer.from_pretrained(extract_tokenizer(files["q8_0"], tmp_path / "tok"))
    for text in TEXTS:
        assert back.encode(text) == llm.tokenize(text.encode(), add_bos=False, special=True), text
    assert back.encode("hi", add_special_tokens=True)[0] == 1
    original = Tokenizer.from_pretrained(d)
    assert back.chat_template == original.chat_template
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (1, 7, 0)
    # LFM2.from_pretrained("x.gguf") finds that tokenizer, so `lfmkit run x.gguf` works.
    loaded = load_tokenizer_for(LFM2.from_pretrained(str(files["q4_0"])))
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert loaded.apply_chat_template(msgs, add_generation_prompt=True) == original.apply_chat_template(
        msgs, add_generation_prompt=True
    )


def test_cli_converts_a_gguf_file_to_another_type_and_to_onnx(exported, tmp_path, capsys):
    from lfmkit.cli import main

    d, model, files = exported
    out = tmp_path / "re.gguf"
    assert main(["export", "gguf", str(files["f16"]), str(out), "--type", "q8_0"]) == 0
    np.testing.assert_allclose(lfmkit_logits(load_gguf_model(out), PROMPT), lfmkit_logits(model, PROMPT), atol=0.5)
    assert load_gguf_model(out).config.layer_types == model.config.layer_types
    assert main(["export", "onnx", str(files["f16"]), str(tmp_path / "onnx"), "--quantize", "none"]) == 0
    assert {"model.onnx", "model.onnx_data", "tokenizer.json", "config.json"} <= {
        p.name for p in (tmp_path / "onnx").iterdir()
    }


def test_tokenizer_larger_than_the_model_vocab_is_refused(tmp_path):
    from lfmkit.testing import build_test_tokenizer

    d, _ = make_checkpoint(tmp_path / "ck", layout="1.2b", seed=1, vocab_size=320)
    build_test_tokenizer(d, vocab_size=512)
    with pytest.raises(ExportError, match="does not fit the model's vocab_size 320"):
        write_gguf(LFM2.from_pretrained(d), tmp_path / "x.gguf")


def test_q4_0_file_quantised_to_lfmkit_int4_keeps_the_files_codes(exported):
    """Q4_0 and lfmkit's int4 share the rule (group 32, f16 scale, largest weight -> -8): a q4_0
    GGUF loaded and quantised with lfmkit.quantize holds exactly the file's weights."""
    from lfmkit.fast import quantize
    from lfmkit.io.gguf import iter_gguf_weights
    from lfmkit.quant import QuantLinear

    d, model, files = exported
    m = quantize(load_gguf_model(files["q4_0"]), "int4")
    stored = {w.name: w for w in iter_gguf_weights(files["q4_0"])}
    checked = 0
    for name, mod in m.named_modules():
        if not isinstance(mod, QuantLinear) or name == "lm_head":
            continue
        parent, _, leaf = name.rpartition(".")
        parts = [leaf]  # every quantized layer keeps its Hugging Face name
        if leaf == "table":  # the tied embedding: q8_0 in the file, so int4 rounds it again
            continue
        expected = torch.cat([stored[f"{parent}.{p}.weight"].to_tensor() for p in parts])
        assert all(stored[f"{parent}.{p}.weight"].type == "q4_0" for p in parts)
        torch.testing.assert_close(mod.dequantize(torch.float32), expected, rtol=0, atol=0)
        checked += 1
    assert checked >= 3 * m.config.num_hidden_layers - 1
