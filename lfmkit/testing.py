"""Test fixtures that need no downloads: a small LFM2-style tokenizer built on the spot.

`build_test_tokenizer(directory)` trains a byte-level BPE (the same kind of model as LFM2's
real tokenizer) on a small embedded corpus and writes the files a checkpoint ships:
tokenizer.json, tokenizer_config.json (bos / eos / pad and the LFM2 chat template) and
special_tokens_map.json. LFM2's special tokens sit at their real ids (DESIGN §2), so prompts
rendered and tokenized with it have the same structure as with the real tokenizer, and
`<think>` / `</think>` are added (non-special) tokens as in the 2.6B model. Both
`lfmkit.Tokenizer` and transformers' `AutoTokenizer` load the result. Training is
deterministic: the same arguments always write the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from .text.chat_template import LFM2_CHAT_TEMPLATE

# LFM2's special tokens, in id order 0..13 (ids 2..5 are the text / fill-in-the-middle tokens).
SPECIAL_TOKENS = (
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|fim_pre|>",
    "<|fim_mid|>",
    "<|fim_suf|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|tool_list_start|>",
    "<|tool_list_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|tool_response_start|>",
    "<|tool_response_end|>",
)
REASONING_TOKENS = ("<think>", "</think>")
BOS, EOS, PAD = "<|startoftext|>", "<|im_end|>", "<|pad|>"

# A little of everything the tests and demos talk about: chat, tools, JSON, code, numbers and
# a few other scripts, so common words get merges and no byte is unusual.
CORPUS = """\
The quick brown fox jumps over the lazy dog. What is the capital of France? The capital of France is Paris.
You are a helpful assistant trained by Liquid AI. What is C. elegans? It's a tiny nematode that lives in
temperate soil environments. Hello! How are you today? I am fine, thank you. Tell me a story about a robot.
Once upon a time, there was a small robot who wanted to learn how to paint the sea and the sky.
What is the weather like in Paris? It is sunny and 21 degrees. Let me check the weather for you.
What is the current status of candidate ID 12345? The candidate is in the "Interview Scheduled" stage.
List of tools: [{"name": "get_weather", "description": "Get the current weather for a location",
"parameters": {"type": "object", "properties": {"location": {"type": "string", "description": "The city"}},
"required": ["location"]}}] [get_weather(location="Paris", unit="celsius"), get_time(tz="CET")]
{"temperature": 21, "unit": "celsius", "ok": true, "items": [1, 2, 3], "note": null}
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)
import json; data = json.loads('{"a": 1}')  # numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 2023-11-20
Let me think step by step. First, 2 + 2 = 4. Then 4 * 3 = 12. So the answer is 12.
Le renard brun saute par-dessus le chien paresseux. ¿Dónde está la biblioteca? Übermäßig schön.
東京は日本の首都です。 北京是中国的首都。 서울은 한국의 수도입니다. مرحبا بالعالم
Emoji: 🙂 🚀 ✨ — “quotes” and ‘apostrophes’ … tabs\tand\nnewlines.
"""


def _train(vocab_size: int, lines=None):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(REASONING_TOKENS),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    lines = CORPUS.splitlines(keepends=True) if lines is None else lines
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def build_test_tokenizer(directory, vocab_size: int = 512, corpus=None) -> Path:
    """Write a small LFM2-style tokenizer into `directory` (created if needed); return the directory.

    `corpus` (an iterable of strings) replaces the embedded corpus as the BPE's training text,
    e.g. the default model's generated data (recipes/default)."""
    min_size = len(SPECIAL_TOKENS) + 256 + len(REASONING_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (special tokens + 256 bytes), got {vocab_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train(vocab_size, corpus)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, (token, tokenizer.token_to_id(token))
    tokenizer.save(str(directory / "tokenizer.json"))

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 32768,
        "chat_template": LFM2_CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return directory


def main(argv=None) -> int:
    """`python -m lfmkit.testing DIR [--vocab-size N]`: write the test tokenizer into DIR."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lfmkit.testing", description="Build the small LFM2-style test tokenizer (no downloads)."
    )
    parser.add_argument(
        "directory",
        help="folder to write tokenizer.json, tokenizer_config.json, special_tokens_map.json into (created if needed)",
    )
    parser.add_argument("--vocab-size", type=int, default=512, help="total ids, added tokens included (default 512)")
    args = parser.parse_args(argv)
    path = build_test_tokenizer(args.directory, vocab_size=args.vocab_size)
    print(f"wrote a {args.vocab_size}-id test tokenizer to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
