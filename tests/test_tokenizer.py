"""Tokenizer: same ids and text as transformers, round trips, streaming decode, the test tokenizer."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfmkit import IncrementalDecoder, Tokenizer, TokenizerError
from lfmkit.testing import REASONING_TOKENS, SPECIAL_TOKENS, build_test_tokenizer

FIXTURE_SETTINGS = settings(max_examples=150, deadline=None,
                            suppress_health_check=[HealthCheck.function_scoped_fixture])


SAMPLES = [
    "",
    "Hello world!",
    "What is the capital of France?",
    "<|startoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|tool_call_start|>[get_weather(location=\"Paris\")]<|tool_call_end|>done",
    "<think>step 1</think>answer",
    "  leading and trailing spaces  \n\n\ttabs",
    "Ünïcödé: 東京 서울 مرحبا 🙂🚀 — “quotes”",
    "<|im_end|><|im_end|><|pad|>",
    "<|im_sta",  # not a special token: plain text
]


# ---- the test tokenizer ---------------------------------------------------------------------

def test_special_tokens_at_lfm2_ids(tok):
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(token) == i and tok.id_to_token(i) == token
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 7, 0)
    assert tok.special_token_ids == frozenset(range(14))
    assert tok.vocab_size == len(tok) == 512
    for token in REASONING_TOKENS:
        assert tok.encode(token) == [tok.token_to_id(token)]
        assert tok.token_to_id(token) not in tok.special_token_ids


def test_build_is_deterministic_and_sized(tmp_path):
    a = build_test_tokenizer(tmp_path / "a")
    b = build_test_tokenizer(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    small = Tokenizer.from_pretrained(build_test_tokenizer(tmp_path / "c", vocab_size=300))
    assert small.vocab_size == 300 and small.eos_token_id == 7
    with pytest.raises(ValueError, match="vocab_size"):
        build_test_tokenizer(tmp_path / "d", vocab_size=100)
    config = json.loads((a / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|startoftext|>" and config["eos_token"] == "<|im_end|>"
    assert "<|tool_list_start|>" in config["chat_template"]


def test_transformers_loads_it_with_the_same_special_tokens(hf):
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 7, 0)
    assert hf.convert_ids_to_tokens(list(range(14))) == list(SPECIAL_TOKENS)


# ---- equality with transformers -------------------------------------------------------------

@pytest.mark.parametrize("text", SAMPLES)
def test_encode_decode_match_transformers(tok, hf, text):
    ids = tok.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False)
    assert tok.encode(text, add_special_tokens=True) == hf.encode(text, add_special_tokens=True)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_encode_adds_bos_only_when_asked(tok):
    assert tok.encode("hi", add_special_tokens=True) == [1] + tok.encode("hi")
    assert tok.encode("<|im_start|>")[0] == 6


def test_decode_skips_special_tokens(tok):
    ids = tok.encode("<|im_start|>assistant\nHi<|im_end|><think>x</think>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\nHi<think>x</think>"


def test_ids_past_the_vocabulary_decode_to_nothing_like_transformers(tok, hf):
    ids = tok.encode("hi") + [512, 70000] + tok.encode(" there")
    assert tok.decode(ids) == hf.decode(ids) == "hi there"
    decoder = tok.incremental_decoder()
    assert decoder.extend(ids) + decoder.flush() == "hi there"
    with pytest.raises(TokenizerError, match="negative"):
        tok.decode([5, -1])
    with pytest.raises(TokenizerError, match="negative"):
        tok.incremental_decoder().push(-1)


@FIXTURE_SETTINGS
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_encode_decode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@FIXTURE_SETTINGS
@given(parts=st.lists(st.one_of(st.sampled_from(SPECIAL_TOKENS + REASONING_TOKENS),
                                st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)), max_size=8))
def test_round_trip_with_special_tokens(tok, parts):
    text = "".join(parts)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    for token in SPECIAL_TOKENS:  # a special token's text always becomes its single id
        if token in text:
            assert SPECIAL_TOKENS.index(token) in ids


# ---- streaming decode -----------------------------------------------------------------------

def stream(tok, ids, skip=False, chunks=None):
    decoder = tok.incremental_decoder(skip_special_tokens=skip)
    pieces = []
    if chunks is None:
        pieces = [decoder.push(i) for i in ids]
    else:
        start = 0
        for end in chunks + [len(ids)]:
            pieces.append(decoder.extend(ids[start:end]))
            start = end
    pieces.append(decoder.flush())
    return pieces


token_ids = st.lists(st.integers(0, 515), max_size=40)


@FIXTURE_SETTINGS
@given(ids=token_ids, skip=st.booleans(), cuts=st.lists(st.integers(0, 40), max_size=6))
def test_streaming_decode_of_any_ids_equals_whole_decode(tok, ids, skip, cuts):
    whole = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(stream(tok, ids, skip)) == whole
    chunks = sorted(c for c in cuts if c <= len(ids))
    assert "".join(stream(tok, ids, skip, chunks)) == whole


@FIXTURE_SETTINGS
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_streaming_never_emits_a_broken_character(tok, text):
    ids = tok.encode(text)
    pieces = stream(tok, ids)
    assert "".join(pieces) == text
    for piece in pieces:  # every piece is whole characters of the text: no replacement chars
        assert "\ufffd" not in piece or "\ufffd" in text


def test_multibyte_character_is_held_until_complete(tok):
    ids = tok.encode("🚀")
    assert len(ids) > 1  # a 4-byte character spread over several byte tokens
    decoder = tok.incremental_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🚀"
    assert decoder.flush() == ""


def test_unfinished_character_is_flushed_as_replacement(tok):
    ids = tok.encode("🚀")[:-1]
    decoder = tok.incremental_decoder()
    assert "".join(decoder.push(i) for i in ids) == ""
    assert decoder.flush() == tok.decode(ids) == "\ufffd"


def test_special_tokens_stream_whole(tok):
    ids = tok.encode("Hi<|tool_call_start|>[f()]<|tool_call_end|>")
    decoder = tok.incremental_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "<|tool_call_start|>" in pieces and "<|tool_call_end|>" in pieces
    skipping = tok.incremental_decoder(skip_special_tokens=True)
    assert "".join(skipping.push(i) for i in ids) == "Hi[f()]"
    assert isinstance(decoder, IncrementalDecoder)


# ---- loading errors -------------------------------------------------------------------------

def test_missing_and_broken_files_raise_tokenizer_error(tmp_path, tok_dir):
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(TokenizerError, match="eos_token"):
        Tokenizer.from_pretrained(tmp_path)


def test_special_ids_fall_back_to_config_json(tmp_path, tok_dir):
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [7, 2], "pad_token_id": 0}))
    t = Tokenizer.from_pretrained(tmp_path)
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 7, 0)
    assert Tokenizer.from_pretrained(tmp_path / "tokenizer.json").eos_token_id == 7


def test_loads_from_a_checkpoint_directory(tmp_path):
    from checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path / "ckpt", with_tokenizer=True)
    t = Tokenizer.from_pretrained(path)
    assert t.vocab_size == 512 and t.path == path


def test_build_script(tmp_path, capsys):
    from lfmkit.testing import main

    assert main([str(tmp_path / "out"), "--vocab-size", "320"]) == 0
    assert "320-id test tokenizer" in capsys.readouterr().out
    assert Tokenizer.from_pretrained(tmp_path / "out").vocab_size == 320
