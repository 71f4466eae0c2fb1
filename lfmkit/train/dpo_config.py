"""The preference-optimization configuration: `SFTConfig`'s settings plus the loss and its options.

Everything the fine-tuning trainer reads (length, optimizer, batching, packing, LoRA,
checkpoints, resume) means what it means for SFT; the defaults that differ are TRL's
`DPOConfig` defaults (learning rate 1e-6, beta 0.1). `max_length` caps each prompt + completion
sequence, as in TRL; a pair's two sequences are packed together in one row (so a packed row
holds up to 2 x max_length tokens). Kept free of torch so the CLI can build its parser cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .config import SFTConfig

LOSSES = ("sigmoid", "sigmoid_norm", "ipo", "simpo")
REFERENCE_FREE = frozenset({"simpo"})


@dataclass
class DPOConfig(SFTConfig):
    """Direct preference optimization of an LFM2 checkpoint on chosen / rejected pairs."""

    learning_rate: float = 1e-6  # TRL DPOConfig
    ref_model: str | None = None  # default: the starting model (LoRA: adapters off)
    loss: str = "sigmoid"
    beta: float = 0.1  # TRL DPOConfig; IPO's tau; SimPO's beta
    simpo_gamma: float = 0.5  # SimPO's target reward margin (TRL CPOConfig)

    def validate(self, where: str = "config") -> None:
        super().validate(where)
        if self.loss not in LOSSES:
            raise ConfigError(f"{where}: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"{where}: beta must be a positive number, got {self.beta}")
        if not math.isfinite(self.simpo_gamma):
            raise ConfigError(f"{where}: simpo_gamma must be a finite number, got {self.simpo_gamma}")
        if self.ref_model and self.loss in REFERENCE_FREE:
            raise ConfigError(f"{where}: ref_model: the {self.loss} loss is reference-free; drop ref_model")
        for name in ("assistant_only_loss", "completion_only_loss"):
            if not getattr(self, name):
                raise ConfigError(
                    f"{where}: {name} does not apply to preference pairs (the loss always covers "
                    f"each completion, as in TRL)"
                )

    @property
    def needs_reference(self) -> bool:
        return self.loss not in REFERENCE_FREE


__all__ = ["DPOConfig", "LOSSES", "REFERENCE_FREE"]
