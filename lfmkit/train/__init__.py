"""Fine-tuning LFM2: data and packing, losses, the trainer, and the SFT recipe.

    from lfmkit.train import sft, distill_run, dpo
    sft({"model": "./LFM2-350M", "data": ["chats.jsonl"], "output": "run1", "max_steps": 100})
    distill_run({"model": "./LFM2-350M", "teacher": "./LFM2-1.2B", "data": ["chats.jsonl"], "output": "run2"})
    dpo({"model": "run1", "data": ["pairs.jsonl"], "output": "run3", "loss": "sigmoid_norm"})

Modules: `data` (formats, chat rendering, loss masks), `batching` (best-fit-decreasing
packing, the step plan, collation), `losses` (chunked cross-entropy; the loss protocol),
`trainer` (the loop), `checkpoints`, `metrics`, `config` (`SFTConfig`, `DistillConfig`), `sft`
(the recipe). LoRA (`lora`) and distillation (`distill`: the losses and the teacher top-k cache;
`distill_recipe`: `distill_run` and `distill_cache`) plug into the same trainer, and so does
preference optimization (`dpo_config`, `preference_data`, `preference`, `dpo`; the semi-online
pairs builder `prefs` with its judges `judges`); GRPO (`grpo.grpo`, with
`grpo_loss`, `rollouts` and `rewards`) too; `merge` merges checkpoints (mergekit's methods).
"""

from importlib import import_module

# Resolved on first use, so that `lfmkit.train.config` (which the CLI imports to build its
# parser) does not pull in torch and the model.
_LAZY = {
    "SFTConfig": "config",
    "DistillConfig": "config",
    "sft": "sft",
    "Trainer": "trainer",
    "TrainResult": "trainer",
    "distill_run": "distill_recipe",
    "distill_cache": "distill_recipe",
    "DPOConfig": "dpo_config",
    "dpo": "dpo",
    "build_pairs": "prefs",
    "PrefsConfig": "prefs",
    "grpo": "grpo",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lfmkit.train' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
