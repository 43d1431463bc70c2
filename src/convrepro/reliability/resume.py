"""Exact resume: a run restarted from any checkpoint continues as if it had never stopped.

Lightning restores the weights, optimiser, schedulers and loop counters, but not where the data
loader was inside an epoch, nor the random number generators (dropout). :class:`ExactResume`
adds both:

* Data position. The checkpoint stores which epoch is running and how many of its samples the
  loop has consumed, counted from the loop's own progress (the loader prefetches ahead, so it
  cannot count itself). On restore, ``datamodule.train_sampler`` skips those samples before the
  first batch is drawn, and Lightning's counters continue the epoch from the same batch.
* Plateau schedulers. Lightning skips ``ReduceLROnPlateau`` at the end of the epoch a run
  resumes in, as it does not keep the metric; the checkpoint keeps it, and the step happens.
* Randomness. Instead of carrying the generator state from step to step (which would also
  depend on everything else that draws random numbers: data loader start-up, validation), each
  training step seeds torch's generator from ``(seed, epoch, batch, rank)``, as the datamodules
  seed augmentation from ``(seed, epoch, sample)``. Dropout then depends on nothing but the step.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from convrepro.data.contract import datamodule_of, resumable_sampler
from convrepro.data.sampling import TRAIN_STEP_STREAM, derive_seed, torch_seed


class ExactResume(Callback):
    """Stores the training data position in checkpoints and seeds every training step.

    Args:
        seed: Seed of the per-step random streams; ``None`` follows the run's seed
            (``seed_everything``, read from ``PL_GLOBAL_SEED``; 0 if unset).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self._trainer: Trainer | None = None
        self._restored_metrics: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer  # state_dict() is called without it
        if resumable_sampler(trainer) is not None:
            # Lightning cannot see that the sampler resumes mid-epoch (it is not the loader).
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended before the epoch"
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Resumed from a checkpoint saved at the end of an epoch (ModelCheckpoint's usual
        # moment): Lightning goes on with the next epoch and never steps the plateau schedulers
        # for the saved one.
        loop = trainer.fit_loop
        if loop.restarted_on_epoch_end or loop.resumed_on_epoch_end:
            self._step_plateau_schedulers(trainer, finished_epoch=trainer.current_epoch - 1)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # manual_seed only sets host-side generator state (no kernel, no device sync).
        torch.manual_seed(
            torch_seed(
                derive_seed(
                    self.seed,
                    TRAIN_STEP_STREAM,
                    trainer.current_epoch,
                    batch_idx,
                    trainer.global_rank,
                )
            )
        )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The epoch the run resumed in: Lightning skips the plateau schedulers at its end.
        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        if trainer.fit_loop.restarting and batches.ready >= trainer.num_training_batches:
            self._step_plateau_schedulers(trainer, finished_epoch=trainer.current_epoch)

    def _step_plateau_schedulers(self, trainer: Trainer, finished_epoch: int) -> None:
        for config in trainer.lr_scheduler_configs:
            if not config.reduce_on_plateau or config.interval != "epoch":
                continue
            if (finished_epoch + 1) % config.frequency:
                continue
            # Fresh if the epoch's validation ran in this process, else from the checkpoint.
            value = trainer.callback_metrics.get(config.monitor)
            if value is None and config.monitor in self._restored_metrics:
                value = torch.tensor(self._restored_metrics[config.monitor])
            if value is not None:
                trainer.lightning_module.lr_scheduler_step(config.scheduler, value)

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return {}
        monitors = [c.monitor for c in trainer.lr_scheduler_configs if c.reduce_on_plateau]
        state: dict[str, Any] = {
            "plateau_metrics": {
                key: float(trainer.callback_metrics[key])
                for key in monitors
                if key in trainer.callback_metrics
            }
        }
        if resumable_sampler(trainer) is not None:
            state["train_sampler"] = _sampler_position(trainer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_metrics = state_dict.get("plateau_metrics", {})
        # Lightning restores callbacks after datamodule.setup() and before the first loader
        # iterator exists (worker processes read the sampler when the iterator is created).
        sampler = resumable_sampler(self._trainer)
        if sampler is not None and "train_sampler" in state_dict:
            sampler.load_state_dict(state_dict["train_sampler"])


def _sampler_position(trainer: Trainer) -> dict[str, int]:
    """``{"epoch", "start_index"}`` of the first sample the resumed run must train on.

    ``start_index`` counts samples over all ranks: batches done in the epoch x global batch size.
    """
    datamodule = datamodule_of(trainer)
    assert datamodule is not None  # only called when the datamodule has a resumable sampler
    epochs = trainer.fit_loop.epoch_progress.current
    batches_done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    epoch_running = epochs.started > epochs.processed  # index of the running epoch: processed
    if epoch_running and batches_done < trainer.num_training_batches:
        return {
            "epoch": epochs.processed,
            "start_index": batches_done * datamodule.batch_size,
        }
    # Between epochs, or all batches of the running epoch done: the next epoch starts afresh.
    return {"epoch": epochs.processed + int(epoch_running), "start_index": 0}
