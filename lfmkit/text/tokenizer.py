"""The tokenizer: `tokenizer.json` through the `tokenizers` library, plus chat templates.

`Tokenizer.from_pretrained(dir)` reads the files a checkpoint ships (tokenizer.json,
tokenizer_config.json, special_tokens_map.json, chat_template.jinja / chat_template.json) and
gives encode / decode with the same ids and text as transformers' fast tokenizer, and
`apply_chat_template` rendering the checkpoint's own template exactly as transformers does
(see chat_template.py), or LFM2's built-in template when the checkpoint has none.

Streaming: `tokenizer.incremental_decoder()` returns an `IncrementalDecoder`; `push(id)` gives
the new text for one token and `flush()` the rest at the end. It holds back bytes that do not
yet form a whole UTF-8 character, special tokens are single ids so they are never split, and
the pieces concatenate to exactly `decode(all ids)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..checks import is_int, json_type, read_json_object, shown
from ..errors import TokenizerError
from .chat_template import LFM2_CHAT_TEMPLATE, compile_template, render_chat_template

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_JSON_FILE = "chat_template.json"
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
REPLACEMENT = "\ufffd"
# Every file a checkpoint folder may carry for its tokenizer and chat template (copied along by
# the exporters, the trainer, `lfmkit merge` and `lfmkit merge-lora`).
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    CONFIG_FILE,
    SPECIAL_MAP_FILE,
    TEMPLATE_FILE,
    TEMPLATE_JSON_FILE,
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


def copy_tokenizer_files(source: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Copy the TOKENIZER_FILES present in `source` into `target`; the paths written."""
    import shutil

    src_dir, out_dir = Path(source), Path(target)
    written = []
    for name in TOKENIZER_FILES:
        src = src_dir / name
        if src.is_file() and src.resolve() != (out_dir / name).resolve():
            shutil.copyfile(src, out_dir / name)
            written.append(out_dir / name)
    return written


def vocabulary_table(directory: str | os.PathLike) -> tuple:
    """A checkpoint's token -> id table from its tokenizer.json, special tokens included (what
    fixes the embedding rows): two models with equal tables read token ids alike."""
    data = read_json_object(Path(directory) / TOKENIZER_FILE, TokenizerError)
    model = data.get("model")
    vocab = model.get("vocab") if isinstance(model, dict) else None
    added = sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens") or [] if isinstance(t, dict))
    return (sorted(vocab.items()) if isinstance(vocab, dict) else vocab, added)


def _read_json(path: Path) -> dict:
    return read_json_object(path, TokenizerError)


def _token_text(value, file: Path, name: str) -> str | None:
    """A named token as written in the configs: a string, an AddedToken dict, or null."""
    text = value.get("content") if isinstance(value, dict) else value
    if text is not None and not isinstance(text, str):
        raise TokenizerError(
            f"{file}: {name} must be a string or an object with a string 'content', got {shown(value)}"
        )
    return text


def _special_tokens(directory: Path, backend, config: dict) -> dict[str, str]:
    """The named tokens (bos_token, eos_token, ...): tokenizer_config.json, else
    special_tokens_map.json, else the bos/eos/pad ids of config.json (checkpoints without either)."""
    sources = [(directory / CONFIG_FILE, config)]
    if (directory / SPECIAL_MAP_FILE).is_file():
        sources.append((directory / SPECIAL_MAP_FILE, _read_json(directory / SPECIAL_MAP_FILE)))
    special = {}
    for name in NAMED_TOKENS:
        for file, data in sources:
            text = _token_text(data.get(name), file, name)
            if text:
                if backend.token_to_id(text) is None:
                    raise TokenizerError(f"{file}: {name} {text!r} is not in the vocabulary")
                special[name] = text
                break
    model_config = directory / "config.json"
    if model_config.is_file() and not all(k in special for k in ("bos_token", "eos_token", "pad_token")):
        cfg = _read_json(model_config)
        for name in ("bos_token", "eos_token", "pad_token"):
            token_id = cfg.get(f"{name}_id")
            if isinstance(token_id, list):
                token_id = token_id[0] if token_id else None
            if name not in special and is_int(token_id) and token_id >= 0:
                text = backend.id_to_token(token_id)
                if text is not None:
                    special[name] = text
    return special


def _template_source(directory: Path, config: dict) -> tuple[Path, object]:
    """Where the checkpoint's chat template is written, and what is written there:
    chat_template.jinja > chat_template.json > tokenizer_config.json."""
    jinja_file = directory / TEMPLATE_FILE
    if jinja_file.is_file():
        try:
            return jinja_file, jinja_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerError(f"{jinja_file}: cannot read it: {exc}") from None
    json_file = directory / TEMPLATE_JSON_FILE
    if json_file.is_file():
        template = _read_json(json_file).get("chat_template")
        if template is not None:
            return json_file, template
    return directory / CONFIG_FILE, config.get("chat_template")


def _chat_templates(directory: Path, config: dict) -> str | dict[str, str] | None:
    """The checkpoint's chat template(s), each compiled here so that a broken one is reported
    at load, naming its file, rather than at the first chat request."""
    file, template = _template_source(directory, config)
    if template is None:
        return None
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {}
        for entry in template:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("name"), str)
                and isinstance(entry.get("template"), str)
            ):
                raise TokenizerError(
                    f"{file}: chat_template entries need a 'name' and a 'template', got {shown(entry)}"
                )
            named[entry["name"]] = entry["template"]
        sources = {f"template '{name}': ": text for name, text in named.items()}
    elif isinstance(template, str):
        sources = {"": template}
    else:
        raise TokenizerError(
            f"{file}: chat_template must be a string or a list of named templates, got {json_type(template)}"
        )
    for which, text in sources.items():
        try:
            compile_template(text)
        except TokenizerError as exc:  # "chat template does not compile: <jinja's message> (line N)"
            raise TokenizerError(f"{file}: {which}{exc}") from None
    return named if isinstance(template, list) else template


def _read_backend(file: Path):
    """tokenizer.json through the `tokenizers` library; its parse error, with line and column, names the file."""
    from tokenizers import Tokenizer as Backend

    try:
        return Backend.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        raise TokenizerError(f"{file}: not a usable tokenizer.json: {exc}") from None


class Tokenizer:
    """An LFM2 tokenizer: encode/decode over `tokenizers`, chat templates, streaming decode."""

    def __init__(
        self,
        backend,
        special_tokens: dict[str, str] | None = None,
        chat_template: str | dict[str, str] | None = None,
        path: Path | None = None,
    ):
        self._backend = backend
        self.path = path
        self._templates = chat_template
        self.has_chat_template = chat_template is not None
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        added = backend.get_added_tokens_decoder()
        self.special_token_ids = frozenset(i for i, tok in added.items() if tok.special)
        self.added_token_ids = frozenset(added)
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.pad_token = self.special_tokens.get("pad_token")
        self.bos_token_id = self._id_or_none(self.bos_token)
        self.eos_token_id = self._id_or_none(self.eos_token)
        self.pad_token_id = self._id_or_none(self.pad_token)

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, revision: str | None = None) -> "Tokenizer":
        """Load from a checkpoint directory, a tokenizer.json file, or a Hub id (via checkpoint.py).

        Every file that is missing, does not parse or holds the wrong structure is a
        TokenizerError naming the file (and the parser's complaint)."""
        directory = Path(os.path.expanduser(str(path)))
        if not directory.exists():
            from ..io.hub import resolve_model_path  # Hub ids only; keeps torch out of the common path

            directory = resolve_model_path(path, revision=revision)
        tokenizer_file = directory if directory.is_file() else directory / TOKENIZER_FILE
        directory = tokenizer_file.parent
        if not tokenizer_file.is_file():
            raise TokenizerError(f"{tokenizer_file}: no such file (the checkpoint ships no tokenizer)")
        backend = _read_backend(tokenizer_file)
        config = _read_json(directory / CONFIG_FILE) if (directory / CONFIG_FILE).is_file() else {}
        special = _special_tokens(directory, backend, config)
        return cls(backend, special, _chat_templates(directory, config), path=directory)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike) -> "Tokenizer | None":
        """The tokenizer a checkpoint directory ships, or None when it has no tokenizer.json.

        Unlike "absent", a tokenizer file that is there but broken is an error (naming the file),
        not a silent None: a user who ships a tokenizer wants to hear that it does not load."""
        if not (Path(directory) / TOKENIZER_FILE).exists():
            return None
        return cls.from_pretrained(directory)

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    # ---- vocabulary ----------------------------------------------------------------------

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (what the model's embedding must cover)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    # ---- text <-> ids --------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids for `text`; special-token text (e.g. "<|im_start|>") maps to its id.

        `add_special_tokens=True` applies the tokenizer's post-processor (LFM2: a leading bos).
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode: text must be a str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(
        self, text: str, add_special_tokens: bool = False
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids for `text` and each token's (start, end) character span in it (an added bos spans (0, 0))."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode: text must be a str, got {type(text).__name__}")
        encoding = self._backend.encode(text, add_special_tokens=add_special_tokens)
        return encoding.ids, encoding.offsets

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text for `ids`; bytes that do not form valid UTF-8 become U+FFFD.

        Ids past the vocabulary (a model's padded embedding rows) decode to nothing, as in
        transformers; negative ids are an error.
        """
        ids = [int(i) for i in ids]
        if ids and min(ids) < 0:
            raise TokenizerError(f"decode: token id {min(ids)} is negative")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def incremental_decoder(self, skip_special_tokens: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------------------

    @property
    def chat_template(self) -> str:
        """The template `apply_chat_template` uses by default (the checkpoint's, else LFM2's)."""
        return self._template_for(None, None)

    def _template_for(self, chat_template: str | None, tools) -> str:
        templates = self._templates
        if isinstance(templates, dict):
            if chat_template is not None and chat_template in templates:
                return templates[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in templates:
                    return templates["tool_use"]
                if "default" in templates:
                    return templates["default"]
                raise TokenizerError(
                    f"{self.path}: several chat templates ({sorted(templates)}) and no "
                    f"'default'; pass chat_template=<name>"
                )
        if chat_template is not None:
            return chat_template
        return templates if isinstance(templates, str) else LFM2_CHAT_TEMPLATE

    def apply_chat_template(
        self,
        messages,
        tools=None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        *,
        continue_final_message: bool | str = False,
        chat_template: str | None = None,
        documents=None,
        parse_tool_arguments: bool = True,
        generation_spans: list | None = None,
        **kwargs,
    ) -> str | list[int]:
        """Render `messages` (OpenAI-style dicts) to the prompt text, or its ids with `tokenize=True`.

        Same result as transformers' `apply_chat_template` with the same template; `kwargs`
        become template variables (e.g. `keep_past_thinking=True`). JSON-string tool-call
        arguments are parsed into dicts first unless `parse_tool_arguments=False`. A list given
        as `generation_spans` receives the character spans of the template's `{% generation %}`
        blocks in the rendered text (see `render_chat_template`).
        """
        template = self._template_for(chat_template, tools)
        text = render_chat_template(
            template,
            messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            special_tokens=self.special_tokens,
            parse_tool_arguments=parse_tool_arguments,
            generation_spans=generation_spans,
            **kwargs,
        )
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return (
            f"Tokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
            f"eos={self.eos_token_id}, pad={self.pad_token_id})"
        )


class IncrementalDecoder:
    """Turns token ids into text one at a time for streaming.

    `push(id)` returns the text that id completes (often "" while a multi-byte character is
    still arriving); `flush()` returns whatever is held back at the end (an unfinished
    character decodes to U+FFFD there, as in a full decode). Every piece is whole characters,
    and the concatenation of all pieces equals `tokenizer.decode(ids)`. Cost per token is a
    decode of the few ids since the last complete character, so it is O(1) per token.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._start = 0  # ids[_start:] are not yet fully emitted; ids before it decode to a whole text
        self._sent = 0  # characters of the pending window's text already emitted

    @property
    def token_ids(self) -> list[int]:
        return list(self._ids)

    def _window_text(self) -> str:
        """Text of ids[_start:], decoded with one token of left context (for decoders that
        treat a sequence's first token specially); for byte-level BPE the context changes nothing."""
        decode = self._tokenizer.decode
        skip = self.skip_special_tokens
        context = max(0, self._start - 1)
        if context == self._start:
            return decode(self._ids[self._start :], skip)
        prefix = decode(self._ids[context : self._start], skip)
        text = decode(self._ids[context:], skip)
        if text.startswith(prefix):
            return text[len(prefix) :]
        return decode(self._ids[self._start :], skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text."""
        token_id = int(token_id)
        if token_id < 0:
            raise TokenizerError(f"token id {token_id} is negative")
        self._ids.append(token_id)
        text = self._window_text()
        complete = not text.endswith(REPLACEMENT)
        # An unfinished UTF-8 sequence shows as one trailing U+FFFD; everything before it is final.
        stable = text if complete else text[:-1]
        piece = stable[self._sent :] if len(stable) > self._sent else ""
        if complete:
            self._start, self._sent = len(self._ids), 0
        else:
            self._sent = max(self._sent, len(stable))
        return piece

    def extend(self, token_ids: Iterable[int]) -> str:
        """Add several tokens; return their completed text."""
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """Return the held-back tail (at the end of a stream)."""
        if self._start >= len(self._ids):
            return ""
        text = self._window_text()
        piece = text[self._sent :]
        self._start, self._sent = len(self._ids), 0
        return piece
