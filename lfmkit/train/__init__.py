"""Fine-tuning LFM2: data and packing, losses, the trainer, and the SFT recipe.

    from lfmkit.train import sft
    sft({"model": "./LFM2-350M", "data": ["chats.jsonl"], "output": "run1", "max_steps": 100})

Modules: `data` (formats, chat rendering, loss masks), `batching` (best-fit-decreasing
packing, the step plan, collation), `losses` (chunked cross-entropy; the loss protocol),
`trainer` (the loop), `checkpoints`, `metrics`, `config` (`SFTConfig`), `sft` (the recipe).
LoRA (`lora`) and distillation losses (`distill`) plug into the same trainer, as does GRPO
(`grpo.grpo`, with `grpo_loss`, `rollouts` and `rewards`); `merge` merges checkpoints
(mergekit's methods).
"""

from importlib import import_module

# Resolved on first use, so that `lfmkit.train.config` (which the CLI imports to build its
# parser) does not pull in torch and the model.
_LAZY = {"SFTConfig": "config", "sft": "sft", "Trainer": "trainer", "TrainResult": "trainer"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lfmkit.train' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
