"""Moments in training when reading a device value on the host costs nothing extra."""

from __future__ import annotations

from lightning.pytorch import Trainer


def at_logging_step(trainer: Trainer, batch_idx: int) -> bool:
    """Whether this batch is one whose metrics the logger reads (every ``log_every_n_steps``).

    The host waits for the device there anyway; checks that need a device value, or agreement
    between processes, happen there instead of forcing a sync after every step.
    """
    return (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0
