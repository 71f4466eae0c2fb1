"""The tokenizer part of a GGUF file, read from a Hugging Face tokenizer folder.

llama.cpp rebuilds LFM2's byte-level BPE from: the token strings by id, a type per token
(normal, control for special tokens, user-defined for other added tokens, unused for ids the
tokenizer does not define), the merges, the pre-tokenizer name (`lfm2` selects LFM2's split
regex inside llama.cpp), the special ids, whether to prepend BOS, and the chat template.
We read tokenizer.json / tokenizer_config.json directly (no transformers at run time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ExportError

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GGUFVocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    extra: dict = field(default_factory=dict)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: cannot read tokenizer file ({exc})") from None


def _template_adds(post: dict | None, token: str | None) -> bool:
    """Whether a tokenizer.json post-processor inserts `token` around a single sequence."""
    if not post or not token:
        return False
    if post.get("type") == "Sequence":
        return any(_template_adds(p, token) for p in post.get("processors", []))
    if post.get("type") == "TemplateProcessing":
        for piece in post.get("single", []):
            special = piece.get("SpecialToken") if isinstance(piece, dict) else None
            if special and special.get("id") == token:
                return True
    return False


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_vocab(
    tokenizer_dir: str | Path,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> GGUFVocab:
    """Build the GGUF tokenizer metadata for a model with `vocab_size` embedding rows."""
    d = Path(tokenizer_dir)
    tj = d / "tokenizer.json"
    if not tj.is_file():
        raise ExportError(
            f"{d}: no tokenizer.json; GGUF files embed the tokenizer, so pass a folder that has one (--tokenizer DIR)"
        )
    data = _read_json(tj)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"{tj}: tokenizer model type {model.get('type')!r} is not supported; "
            f"llama.cpp's LFM2 vocabulary is byte-level BPE"
        )
    vocab: dict[str, int] = model.get("vocab") or {}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    added_types: dict[int, int] = {}
    for tok in data.get("added_tokens") or []:
        i, content = tok.get("id"), tok.get("content")
        if not isinstance(i, int) or not isinstance(content, str):
            continue
        by_id[i] = content
        added_types[i] = CONTROL if tok.get("special", False) else USER_DEFINED
    if by_id and max(by_id) >= vocab_size:
        raise ExportError(f"{tj}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(added_types.get(i, NORMAL))
    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            merges.append(f"{m[0]} {m[1]}")
        else:
            raise ExportError(f"{tj}: unreadable merge entry {m!r}")

    config = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    ids = {t: i for i, t in by_id.items()}

    def special_id(name: str, fallback: int | None) -> int | None:
        text = _token_text(config.get(name))
        if text is not None and text in ids:
            return ids[text]
        return fallback

    bos = special_id("bos_token", bos_token_id)
    eos = special_id("eos_token", eos_token_id)
    pad = special_id("pad_token", pad_token_id)
    bos_text = by_id.get(bos) if bos is not None else None
    eos_text = by_id.get(eos) if eos is not None else None
    # What encoding actually does decides: transformers and lfmkit follow tokenizer.json's
    # post-processor when there is one, whatever tokenizer_config.json's add_*_token say.
    post = data.get("post_processor")
    if post:
        add_bos, add_eos = _template_adds(post, bos_text), _template_adds(post, eos_text)
    else:
        add_bos, add_eos = config.get("add_bos_token", False), config.get("add_eos_token", False)

    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    jinja = d / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=merges,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        add_bos=bool(add_bos),
        add_eos=bool(add_eos),
        chat_template=template if isinstance(template, str) else None,
    )


# ---- the way back: a Hugging Face tokenizer folder from GGUF metadata ---------------------------
# LFM2's pre-tokenizer split (the regex llama.cpp selects for tokenizer.ggml.pre = "lfm2"): words
# with at most one leading non-letter, numbers in runs of up to three digits, punctuation runs,
# newlines, spaces.
LFM2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def write_tokenizer(vocab: GGUFVocab, directory: str | Path, model_max_length: int | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json that tokenize like llama.cpp does with `vocab`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    table = {t: i for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.token_types)) if kind != UNUSED}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tok = Tokenizer(models.BPE(vocab=table, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LFM2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(vocab.tokens, vocab.token_types)
        if kind == CONTROL
    ]
    users = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(vocab.tokens, vocab.token_types)
        if kind == USER_DEFINED
    ]
    tok.add_special_tokens(specials)
    tok.add_tokens(users)

    def text(i):
        return vocab.tokens[i] if i is not None and 0 <= i < len(vocab.tokens) else None

    bos, eos, pad = text(vocab.bos_token_id), text(vocab.eos_token_id), text(vocab.pad_token_id)
    if vocab.add_bos and bos is not None:
        single = f"{bos} $A" + (f" {eos}" if vocab.add_eos and eos else "")
        pair = f"{bos} $A {bos} $B" + (f" {eos}" if vocab.add_eos and eos else "")
        special = [(bos, vocab.bos_token_id)] + ([(eos, vocab.eos_token_id)] if vocab.add_eos and eos else [])
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    tok.save(str(d / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return d
