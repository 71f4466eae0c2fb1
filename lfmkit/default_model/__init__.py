"""The model that ships with lfmkit: used when a command or `lfmkit.load()` names none.

Two small LFM2 checkpoints, trained end to end by lfmkit's own recipe (recipes/default/run.sh)
on generated data for four narrow tasks (tool calling, JSON extraction, arithmetic with a
`<think>` trace, instructions with checkable constraints); MODEL_CARD.md in this folder says
what they can and cannot do and how they were measured:

- `teacher/`: the larger model, trained from random weights with `lfmkit train sft`;
- `student/`: a smaller one distilled from it, then SFT, DPO on semi-online pairs, a merge and
  GRPO; it is also the draft model for speculative decoding of the teacher.

Each folder is a Hugging Face LFM2 checkpoint (config.json, bfloat16 model.safetensors,
tokenizer, chat template, generation_config.json), so transformers loads it too.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
NAMES = ("teacher", "student")
DEFAULT = "teacher"  # the better of the two on the held-out sets (MODEL_CARD.md)


def default_model_path(name: str = DEFAULT) -> Path:
    """The folder of the shipped `name` ("teacher" or "student")."""
    if name not in NAMES:
        raise ValueError(f"the default model is 'teacher' or 'student', got {name!r}")
    return HERE / name


def names_a_model(text: str) -> bool:
    """Whether `lfmkit run TEXT` means TEXT as a model (an existing path, a Hub id `org/name`, a
    .gguf file) rather than as the prompt to give the default model."""
    return Path(text).exists() or text.endswith(".gguf") or re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None


def resolve_model(model, stream=None):
    """`model` itself when one is named; else the shipped default model's folder, saying so in
    one line on `stream` (stderr by default)."""
    if model is not None:
        return model
    path = default_model_path()
    print(
        f"lfmkit: no model named; using the default model that ships with lfmkit ({path}; see its MODEL_CARD.md)",
        file=stream or sys.stderr,
    )
    return str(path)


__all__ = ["DEFAULT", "NAMES", "default_model_path", "names_a_model", "resolve_model"]
