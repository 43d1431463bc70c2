"""Checkpoints that survive being killed: atomic writes and a periodic ``last.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from convrepro.runs.files import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint with :func:`~convrepro.runs.files.write_atomic`.

    A process killed while saving leaves the previous checkpoint intact (and a hidden temporary
    file, removed by the next save next to it), never a truncated one that would block the
    resume. Lightning's own writer opens the target file directly. Remote paths (``s3://`` and
    the like) are left to Lightning: object stores replace whole objects anyway.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomic(path, lambda handle: torch.save(checkpoint, handle))


class PeriodicCheckpoint(ModelCheckpoint):
    """Overwrites ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` training steps.

    A job killed without warning (``kill -9``, a node failure) then loses at most that many
    steps. Saving is skipped on an epoch's last batch: the epoch-end ``last.ckpt`` written after
    validation covers it, and Lightning cannot resume exactly from between the two.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int) -> None:
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
        )

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
