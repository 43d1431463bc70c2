"""Learning-rate schedules that torch does not ship in one piece."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from convrepro.errors import ConfigError


class WarmupCosineLR(LambdaLR):
    """Linear warm-up to the base LR, then cosine decay to ``min_factor`` x the base LR.

    Stepped once per optimiser step. The total number of steps is only known once the trainer
    has seen the data, so ``ImageClassifier`` calls :meth:`set_total_steps` right after building it.

    Args:
        optimizer: The wrapped optimiser.
        warmup_fraction: Share of all steps spent warming up (e.g. 0.05 = the first 5%).
        warmup_start_factor: LR multiplier at step 0.
        min_factor: LR multiplier reached at the last step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_fraction: float = 0.05,
        warmup_start_factor: float = 0.1,
        min_factor: float = 0.0,
    ) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.warmup_fraction = warmup_fraction
        self.warmup_start_factor = warmup_start_factor
        self.min_factor = min_factor
        self.total_steps: int | None = None
        super().__init__(optimizer, self._factor)

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the schedule's length (number of optimiser steps in the whole run)."""
        if total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps

    def _factor(self, step: int) -> float:
        if self.total_steps is None:  # LambdaLR evaluates step 0 before set_total_steps
            return self.warmup_start_factor if self.warmup_fraction > 0 else 1.0
        warmup_steps = round(self.warmup_fraction * self.total_steps)
        if step < warmup_steps:
            progress = step / warmup_steps
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        decay_steps = max(1, self.total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )
