"""Stop a run whose loss became NaN or infinite before the bad weights reach a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from convrepro.errors import TrainingDiverged
from convrepro.reliability.checkpoint_io import AtomicCheckpointIO
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

    Weights saved at step ``s`` are only known good once the loss computed from them, at step
    ``s + 1``, was seen finite: finite weights can give NaN logits. With
    :class:`~convrepro.reliability.checkpoint_io.AtomicCheckpointIO` the files a save replaced
    are kept until then, and a divergence puts them back; the message names the newest
    checkpoint whose weights are known good.
    """

    def __init__(self) -> None:
        self._first_bad_step: Tensor | None = None
        self._unconfirmed_save: int | None = None  # step of the newest save not yet known good

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._first_bad_step = torch.full((), _NONE, device=pl_module.device)
        self._unconfirmed_save = None
        io = _rollback_io(trainer)
        if io is not None:
            io.keep_predecessors = True

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
        self._unconfirmed_save = trainer.global_step

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, TrainingDiverged):
            self._confirm(trainer)  # stopped or crashed: nothing says the saved weights are bad

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._confirm(trainer)  # the run ended well: its last checkpoints stand

    def _check(self, trainer: Trainer) -> None:
        if self._first_bad_step is None:
            return
        # Every rank reaches the same checks, so the min-reduction keeps them in step.
        first_bad = int(trainer.strategy.reduce(self._first_bad_step.clone(), reduce_op="min"))
        if first_bad == _NONE:
            # Losses up to this step are finite, so are the weights saved before it.
            if self._unconfirmed_save is not None and self._unconfirmed_save < trainer.global_step:
                self._confirm(trainer)
            return
        self._first_bad_step = None  # report once, also if a save is attempted while unwinding
        io = _rollback_io(trainer)
        if io is not None:
            io.roll_back()
        trainer.strategy.barrier()  # rank 0 rolled back the files every rank now looks at
        # The loss at step k comes from the weights after step k - 1.
        good = _newest_checkpoint_before(trainer, first_bad - 1)
        kept = (
            f"the last good checkpoint is {good[0]} (step {good[1]})"
            if good
            else "no checkpoint holds weights from before it"
        )
        raise TrainingDiverged(
            f"training diverged: the loss became NaN or infinite at step {first_bad} "
            f"(noticed at step {trainer.global_step}, epoch {trainer.current_epoch}); {kept}. "
            "Lower the learning rate, add warm-up or gradient clipping "
            "(trainer.gradient_clip_val), or train in 32-true precision."
        )

    def _confirm(self, trainer: Trainer) -> None:
        self._unconfirmed_save = None
        io = _rollback_io(trainer)
        if io is not None:
            io.confirm()


def _rollback_io(trainer: Trainer) -> AtomicCheckpointIO | None:
    io = trainer.strategy.checkpoint_io
    return io if isinstance(io, AtomicCheckpointIO) else None


def _newest_checkpoint_before(trainer: Trainer, step: int) -> tuple[Path, int] | None:
    """The checkpoint, among those of this fit, with the most training steps below ``step``."""
    paths = {
        Path(path)
        for callback in trainer.checkpoint_callbacks
        for path in (
            getattr(callback, "last_model_path", ""),
            getattr(callback, "best_model_path", ""),
        )
        if path
    } | ({Path(trainer.ckpt_path)} if trainer.ckpt_path else set())
    steps = {path: _saved_step(path) for path in paths if path.is_file()}
    good = [(path, saved) for path, saved in steps.items() if saved < step]
    return max(good, key=lambda item: item[1]) if good else None


def _saved_step(path: Path) -> int:
    # mmap: only the checkpoint's index is read, not its tensors
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
