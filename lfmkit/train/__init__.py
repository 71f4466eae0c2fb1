"""Training-side tools that produce new checkpoints: fine-tuning, preference optimization, merging."""
