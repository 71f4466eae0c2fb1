"""Fine-tuning: LoRA adapters in PEFT's format (lora.py) and knowledge-distillation losses with a
teacher top-k cache (distill.py)."""
