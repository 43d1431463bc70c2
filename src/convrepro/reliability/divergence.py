"""Stop a run whose loss became NaN or infinite before the bad weights reach a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from convrepro.errors import TrainingDiverged
from convrepro.reliability.sync_points import at_logging_step

# "No bad step yet": larger than any step, so that the smallest bad step wins a min-reduction.
_NONE = torch.iinfo(torch.int64).max


class DivergenceGuard(Callback):
    """Raises :class:`~convrepro.errors.TrainingDiverged` after the first non-finite loss.

    Every step, the device notes the first step whose loss is NaN or infinite (a few tiny
    kernels, no host sync). The host reads that note only where it waits for the device anyway:
    at logging steps (every ``trainer.log_every_n_steps``), before validation and before every
    checkpoint is written. So a diverged run stops within ``log_every_n_steps`` steps, the
    message names the first bad step, and no checkpoint holds weights from after it.
    """

    def __init__(self) -> None:
        self._first_bad_step: Tensor | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._first_bad_step = torch.full((), _NONE, device=pl_module.device)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, Tensor) or self._first_bad_step is None:
            return
        step = torch.full_like(self._first_bad_step, trainer.global_step)
        bad = ~torch.isfinite(loss.detach())
        self._first_bad_step = torch.where(
            bad, self._first_bad_step.minimum(step), self._first_bad_step
        )
        if at_logging_step(trainer, batch_idx):
            self._check(trainer)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if self._first_bad_step is None:
            return
        # Every rank reaches the same checks, so the min-reduction keeps them in step.
        first_bad = int(trainer.strategy.reduce(self._first_bad_step.clone(), reduce_op="min"))
        if first_bad == _NONE:
            return
        self._first_bad_step = None  # report once, also if a save is attempted while unwinding
        last = _newest_last_checkpoint(trainer)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        raise TrainingDiverged(
            f"training diverged: the loss became NaN or infinite at step {first_bad} "
            f"(noticed at step {trainer.global_step}, epoch {trainer.current_epoch}); {kept}. "
            "Lower the learning rate, add warm-up or gradient clipping "
            "(trainer.gradient_clip_val), or train in 32-true precision."
        )


def _newest_last_checkpoint(trainer: Trainer) -> Path | None:
    saved = {
        Path(path)
        for callback in trainer.checkpoint_callbacks
        if (path := getattr(callback, "last_model_path", "")) and Path(path).is_file()
    }
    return max(saved, key=lambda p: p.stat().st_mtime_ns) if saved else None
