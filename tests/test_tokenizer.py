"""Tokenizer: same ids and text as transformers, round trips, streaming decode, the test tokenizer."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfmkit import IncrementalDecoder, Tokenizer, TokenizerError
from lfmkit.testing import REASONING_TOKENS, SPECIAL_TOKENS, build_test_tokenizer

FIXTURE_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


SAMPLES = [
    "",
    "Hello world!",
    "What is the capital of France?",
    "<|startoftext|><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    '<|tool_call_start|>[get_weather(location="Paris")]<|tool_call_end|>done',
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
@given(
    parts=st.lists(
        st.one_of(
            st.sampled_from(SPECIAL_TOKENS + REASONING_TOKENS),
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
        ),
        max_size=8,
    )
)
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


def test_unparsable_files_are_named_with_the_parse_error(tmp_path, tok_dir):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((tok_dir / name).read_bytes())
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {')
    with pytest.raises(
        TokenizerError,
        match=r"tokenizer.json: not a usable tokenizer.json: EOF while parsing .* "
        r"at line 1 column \d+",
    ):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": 5}')
    with pytest.raises(TokenizerError, match="tokenizer.json: not a usable tokenizer.json: data did not match"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>",')
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: not valid JSON \(Expecting property name"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": 7}))
    with pytest.raises(TokenizerError, match="tokenizer_config.json: eos_token must be a string or an object"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% if messages %}hi"}))
    with pytest.raises(
        TokenizerError,
        match=r"tokenizer_config.json: chat template does not compile: "
        r"Unexpected end of template.* \(line 1\)",
    ):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }\n")
    with pytest.raises(
        TokenizerError,
        match=r"chat_template.jinja: chat template does not compile: "
        r"unexpected '}'",
    ):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    named = [{"name": "default", "template": "ok"}, {"name": "tool_use", "template": "{%"}]
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": named}))
    with pytest.raises(TokenizerError, match="chat_template.json: template 'tool_use': chat template does not compile"):
        Tokenizer.from_pretrained(tmp_path)


def test_a_loaded_checkpoint_with_a_broken_tokenizer_says_so(tmp_path):
    from checkpoints import make_checkpoint

    from lfmkit import LFM2
    from lfmkit.inference.generate import load_tokenizer_for

    path, _ = make_checkpoint(tmp_path / "ckpt", with_tokenizer=True)
    model = LFM2.from_pretrained(path)
    assert load_tokenizer_for(model).vocab_size == 512
    (path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=f"{path / 'tokenizer.json'}: not a usable tokenizer.json"):
        load_tokenizer_for(model)
    (path / "tokenizer.json").unlink()
    assert load_tokenizer_for(model) is None  # no tokenizer at all: not an error


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
JINJA_PIECES = st.lists(
    st.sampled_from(
        [
            "{%",
            "%}",
            "{{",
            "}}",
            "{#",
            "#}",
            " if ",
            " for m in messages ",
            " endif ",
            " endfor ",
            "messages",
            "[0]",
            "|",
            "tojson",
            "(",
            ")",
            "'",
            "x",
            "\n",
        ]
    ),
    max_size=12,
).map("".join)


def _corrupt(data, draw):
    """`data` (parsed JSON) with one entry at a random depth replaced by a random JSON value, or deleted."""
    while isinstance(data, (dict, list)) and data and draw(st.booleans()):
        keys = sorted(data) if isinstance(data, dict) else range(len(data))
        key = draw(st.sampled_from(list(keys)))
        if not isinstance(data[key], (dict, list)) or not data[key]:
            break
        data = data[key]
    if isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data)))
    elif isinstance(data, list) and data:
        key = draw(st.integers(0, len(data) - 1))
    else:
        return
    if draw(st.booleans()):
        del data[key]
    else:
        data[key] = draw(JSON_VALUES)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupt_tokenizer_files_load_or_raise_one_tokenizer_error_line(tmp_path_factory, tok_dir, data):
    directory = tmp_path_factory.mktemp("corrupt")
    for name in TOKENIZER_FILES:
        (directory / name).write_bytes((tok_dir / name).read_bytes())
    name = data.draw(st.sampled_from(TOKENIZER_FILES + ("chat_template.jinja",)), label="file")
    raw = (tok_dir / name).read_bytes() if name != "chat_template.jinja" else b"{{ messages }}"
    how = data.draw(st.sampled_from(["truncate", "garbage", "json", "structure", "template"]), label="how")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "garbage":
        raw = data.draw(st.binary(max_size=40))
    elif how == "json":
        raw = json.dumps(data.draw(JSON_VALUES)).encode()
    elif how == "structure" and name != "chat_template.jinja":
        parsed = json.loads(raw)
        _corrupt(parsed, data.draw)
        raw = json.dumps(parsed).encode()
    else:  # a chat template of jinja-ish pieces, in its own file or in tokenizer_config.json & co.
        raw = data.draw(JINJA_PIECES).encode()
        if name != "chat_template.jinja":
            raw = json.dumps(dict(json.loads((tok_dir / name).read_bytes()), chat_template=raw.decode())).encode()
    (directory / name).write_bytes(raw)
    try:
        t = Tokenizer.from_pretrained(directory)
    except TokenizerError as exc:
        assert str(exc).startswith(f"{directory}/") and "\n" not in str(exc)
        return
    text = "Hello <|im_start|> world"
    assert isinstance(t.decode(t.encode(text)), str)
