"""Fine-tuning LFM2: data and packing, losses, the trainer, and the SFT recipe.

    from lfmkit.train import sft
    sft({"model": "./LFM2-350M", "data": ["chats.jsonl"], "output": "run1", "max_steps": 100})

Modules: `data` (formats, chat rendering, loss masks), `batching` (best-fit-decreasing
packing, the step plan, collation), `losses` (chunked cross-entropy; the loss protocol),
`trainer` (the loop), `checkpoints`, `metrics`, `config` (`SFTConfig`), `sft` (the recipe).
LoRA (`lora`) and distillation losses (`distill`) plug into the same trainer.
"""

from .config import SFTConfig
from .sft import sft

__all__ = ["SFTConfig", "sft"]
