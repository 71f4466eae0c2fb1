"""Training-side tools that produce new checkpoints: LoRA adapters in PEFT's format (lora.py),
knowledge-distillation losses with a teacher top-k cache (distill.py), merging (merge.py)."""
