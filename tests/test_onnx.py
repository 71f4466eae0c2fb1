"""ONNX export: the ONNX Runtime loop from the LFM2 model cards runs on our folder unchanged.

`seed_loop` is the loop of seeds/002 line for line, with two changes only: the folder is local
(no Hub download) and `generated_tokens` starts with one row per batch row (the card's
`np.array([[]])` only concatenates for batch 1). Its greedy tokens must equal lfmkit's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import make_checkpoint

from lfmkit.errors import ExportError
from lfmkit.export.onnx import export_onnx, io_names
from lfmkit.model.lfm2 import LFM2

onnxruntime = pytest.importorskip("onnxruntime")


def _quantizer() -> str:
    try:
        import onnx_ir  # noqa: F401  (needed by ONNX Runtime's MatMulNBits quantiser)

        return "q4"
    except ImportError:
        return "int8"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d, _ = make_checkpoint(tmp_path_factory.mktemp("ck26"), layout="2.6b", seed=5, with_tokenizer=True)
    model = LFM2.from_pretrained(d, dtype="float32")
    out = tmp_path_factory.mktemp("onnx")
    files = export_onnx(model, out, quantize=_quantizer(), tokenizer_dir=d)
    return out, model, files


def session(folder, filename="model.onnx"):
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(folder / filename), opts)


def seed_loop(folder, messages_batch, max_new_tokens=16, filename="model.onnx"):
    """seeds/002's ONNX Runtime loop, with the local folder in place of the Hub download."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    sess = session(folder, filename)

    num_key_value_heads = config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    num_hidden_layers = config.num_hidden_layers
    eos_token_id = config.eos_token_id
    hidden_size = config.hidden_size
    conv_L_cache = config.conv_L_cache
    layer_types = config.layer_types

    messages = messages_batch if len(messages_batch) > 1 else messages_batch[0]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="np", padding=True
    )
    input_ids = inputs["input_ids"]
    attention_mask = inputs["attention_mask"]
    prompts = [row[mask.astype(bool)].tolist() for row, mask in zip(input_ids, attention_mask)]
    batch_size = input_ids.shape[0]
    position_ids = np.tile(np.arange(0, input_ids.shape[-1]), (batch_size, 1))
    past_cache_values = {}
    for i in range(num_hidden_layers):
        if layer_types[i] == "full_attention":
            for kv in ("key", "value"):
                past_cache_values[f"past_key_values.{i}.{kv}"] = np.zeros(
                    [batch_size, num_key_value_heads, 0, head_dim], dtype=np.float32
                )
        elif layer_types[i] == "conv":
            past_cache_values[f"past_conv.{i}"] = np.zeros([batch_size, hidden_size, conv_L_cache], dtype=np.float32)
        else:
            raise ValueError(f"Unsupported layer type: {layer_types[i]}")

    generated_tokens = np.zeros((batch_size, 0), dtype=np.int64)
    first_logits = None
    for i in range(max_new_tokens):  # noqa: B007 - the seed's loop, as users run it
        logits, *present_cache_values = sess.run(
            None,
            dict(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **past_cache_values,
            ),
        )
        if first_logits is None:
            first_logits = logits[:, -1]
        input_ids = logits[:, -1].argmax(-1, keepdims=True)
        attention_mask = np.concatenate([attention_mask, np.ones_like(input_ids, dtype=np.int64)], axis=-1)
        position_ids = position_ids[:, -1:] + 1
        for j, key in enumerate(past_cache_values):
            past_cache_values[key] = present_cache_values[j]
        generated_tokens = np.concatenate([generated_tokens, input_ids], axis=-1)
        if (input_ids == eos_token_id).all():
            break
    return prompts, generated_tokens, first_logits


def lfmkit_greedy(model, ids, n):
    state = model.new_state(1, len(ids) + n + 1)
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([ids]), state=state)[:, -1]
        first = logits[0].numpy()
        for _ in range(n):
            tok = int(logits.argmax(-1))
            out.append(tok)
            logits = model(torch.tensor([[tok]]), state=state)[:, -1]
    return out, first


def until_eos(tokens, eos=7):
    tokens = list(tokens)
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


CONVERSATIONS = [
    [{"role": "user", "content": "What is C. elegans?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France? Tell me a story about a robot."},
    ],
]


def test_seed_loop_batch_1_matches_lfmkit(exported):
    out, model, _ = exported
    prompts, generated, first = seed_loop(out, CONVERSATIONS[:1])
    ref, ref_first = lfmkit_greedy(model, prompts[0], generated.shape[1])
    assert until_eos(generated[0].tolist()) == until_eos(ref)
    np.testing.assert_allclose(first[0], ref_first, atol=1e-4, rtol=0)


def test_seed_loop_batch_2_left_padded_matches_each_prompt_alone(exported):
    out, model, _ = exported
    prompts, generated, first = seed_loop(out, CONVERSATIONS)
    assert len(prompts[0]) < len(prompts[1])  # row 0 is left-padded
    for row, prompt in enumerate(prompts):
        ref, ref_first = lfmkit_greedy(model, prompt, generated.shape[1])
        assert until_eos(generated[row].tolist()) == until_eos(ref), row
        np.testing.assert_allclose(first[row], ref_first, atol=1e-4, rtol=0)


def test_graph_interface_is_the_model_card_one(exported):
    out, model, files = exported
    sess = session(out)
    inputs, outputs = io_names(model.config)
    assert [i.name for i in sess.get_inputs()] == inputs
    assert [o.name for o in sess.get_outputs()] == outputs
    by_name = {i.name: i for i in sess.get_inputs()}
    assert by_name["input_ids"].type == "tensor(int64)" and by_name["position_ids"].type == "tensor(int64)"
    assert by_name["past_conv.0"].shape[1:] == [64, 3] and isinstance(by_name["past_conv.0"].shape[0], str)
    kv = by_name["past_key_values.2.key"].shape
    assert kv[1] == 1 and kv[3] == 16 and isinstance(kv[0], str) and isinstance(kv[2], str)
    names = {f.name for f in files}
    assert {"model.onnx", "model.onnx_data", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names


def test_chunked_prefill_equals_one_prefill(exported):
    """Past state + several new tokens at once (the mask and conv window across chunks)."""
    out, model, _ = exported
    sess = session(out)
    cfg = model.config
    ids = np.array([[1, 6, 300, 301, 302, 7, 400, 401, 402]], dtype=np.int64)
    inputs, _ = io_names(cfg)
    past = {}
    for name in inputs[3:]:
        if name.startswith("past_conv"):
            past[name] = np.zeros((1, cfg.hidden_size, cfg.conv_L_cache), np.float32)
        else:
            past[name] = np.zeros((1, cfg.num_key_value_heads, 0, cfg.head_size), np.float32)

    def run(chunk, start, state):
        n = start + chunk.shape[1]
        res = sess.run(
            None,
            dict(
                input_ids=chunk,
                attention_mask=np.ones((1, n), np.int64),
                position_ids=np.arange(start, n)[None],
                **state,
            ),
        )
        return res[0], dict(zip(state, res[1:]))

    whole, _ = run(ids, 0, past)
    a, state = run(ids[:, :4], 0, past)
    b, _ = run(ids[:, 4:], 4, state)
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), whole, atol=1e-4, rtol=0)
    with torch.no_grad():
        np.testing.assert_allclose(whole[0], model(torch.from_numpy(ids))[0].numpy(), atol=1e-4, rtol=0)


def test_weight_quantised_variant(exported):
    import onnx

    out, model, files = exported
    qfile = next(f for f in files if f.name in ("model_q4.onnx", "model_int8.onnx"))
    ops = {n.op_type for n in onnx.load(str(qfile), load_external_data=False).graph.node}
    assert (
        ("MatMulNBits" in ops)
        if qfile.name == "model_q4.onnx"
        else ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)
    )
    assert qfile.with_name(qfile.name + "_data").stat().st_size < (out / "model.onnx_data").stat().st_size / 2
    prompts, generated, first = seed_loop(out, CONVERSATIONS[:1], max_new_tokens=2, filename=qfile.name)
    _, ref_first = lfmkit_greedy(model, prompts[0], 1)
    # Random deep nets amplify weight rounding; the quantised logits stay correlated with float's.
    assert np.corrcoef(first[0], ref_first)[0, 1] > 0.5


def test_int8_variant_and_cli(tmp_path, capsys):
    from lfmkit.cli import main

    d, _ = make_checkpoint(tmp_path / "ck", layout="small", seed=2, with_tokenizer=True)
    assert main(["export", "onnx", str(d), str(tmp_path / "out"), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx" in printed and "model_int8.onnx" in printed
    model = LFM2.from_pretrained(d, dtype="float32")
    prompts, generated, _ = seed_loop(tmp_path / "out", CONVERSATIONS[:1], max_new_tokens=8)
    ref, _ = lfmkit_greedy(model, prompts[0], generated.shape[1])
    assert until_eos(generated[0].tolist()) == until_eos(ref)
    logits_q = seed_loop(tmp_path / "out", CONVERSATIONS[:1], max_new_tokens=1, filename="model_int8.onnx")[2]
    assert np.isfinite(logits_q).all()


def test_refusals(tmp_path):
    d, _ = make_checkpoint(tmp_path / "ck", layout="small", seed=2, with_tokenizer=False)
    model = LFM2.from_pretrained(d, dtype="float32")
    with pytest.raises(ExportError, match="tokenizer"):
        export_onnx(model, tmp_path / "o1", quantize=None)
    with pytest.raises(ExportError, match="unsupported ONNX quantisation 'q3'"):
        export_onnx(model, tmp_path / "o2", quantize="q3", tokenizer_dir=d)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_onnx(model, tmp_path / "file", quantize=None, tokenizer_dir=tmp_path)


def test_conv_bias_model_exports_and_left_padding_is_exact(tmp_path):
    """ONNX can express conv biases (GGUF cannot): padding stays out of the conv window."""
    d, _ = make_checkpoint(tmp_path / "ck", layout="small", seed=4, with_tokenizer=True, conv_bias=True)
    model = LFM2.from_pretrained(d, dtype="float32")
    export_onnx(model, tmp_path / "out", quantize=None)
    sess = session(tmp_path / "out")
    cfg = model.config
    feeds = dict(
        input_ids=np.array([[0, 0, 1, 6, 300, 301]]),
        attention_mask=np.array([[0, 0, 1, 1, 1, 1]]),
        position_ids=np.array([[0, 0, 0, 1, 2, 3]]),
    )
    for name in io_names(cfg)[0][3:]:
        feeds[name] = (
            np.zeros((1, cfg.hidden_size, cfg.conv_L_cache), np.float32)
            if name.startswith("past_conv")
            else np.zeros((1, cfg.num_key_value_heads, 0, cfg.head_size), np.float32)
        )
    logits = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = model(torch.tensor([[1, 6, 300, 301]]))[0].numpy()
    np.testing.assert_allclose(logits[0, 2:], ref, atol=1e-4, rtol=0)
