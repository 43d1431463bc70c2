"""Checkpoints that survive being killed: atomic writes, a periodic ``last.ckpt``, and a check
that a file given as ``--ckpt_path`` is a checkpoint before anything reads it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

from convrepro.errors import ConfigError, UserError
from convrepro.files import write_atomic
from convrepro.models.weights import describe_mismatch, load_state_dict_file, network_state_dict

PREDECESSOR_SUFFIX = ".previous"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes every checkpoint with :func:`~convrepro.files.write_atomic`.

    A process killed while saving leaves the previous checkpoint intact (and a hidden temporary
    file, removed by the next save next to it), never a truncated one that would block the
    resume. Lightning's own writer opens the target file directly. Remote paths (``s3://`` and
    the like) are left to Lightning: object stores replace whole objects anyway.

    With ``keep_predecessors`` (switched on by the
    :class:`~convrepro.reliability.divergence.DivergenceGuard`), a file that a save replaces is
    kept as a hidden hard link until :meth:`confirm` says the new weights are good, so that
    :meth:`roll_back` can put it back: weights are only known good once a loss computed from
    them was seen finite, one step after they were saved.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keep_predecessors = False
        self._unconfirmed: dict[Path, Path | None] = {}  # saved path -> what it replaced

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        if self.keep_predecessors and path not in self._unconfirmed:
            self._unconfirmed[path] = _link_predecessor(path)
        write_atomic(path, lambda handle: torch.save(checkpoint, handle))

    def confirm(self) -> None:
        """The checkpoints saved so far hold good weights: drop what they replaced."""
        for predecessor in self._unconfirmed.values():
            if predecessor is not None:
                predecessor.unlink(missing_ok=True)
        self._unconfirmed.clear()

    def roll_back(self) -> None:
        """Undo the saves since the last :meth:`confirm`: put back the files they replaced and
        delete the ones they created."""
        for path, predecessor in self._unconfirmed.items():
            if predecessor is not None and predecessor.exists():
                os.replace(predecessor, path)
            else:
                path.unlink(missing_ok=True)
        self._unconfirmed.clear()


def _link_predecessor(path: Path) -> Path | None:
    """A second name for the file at ``path`` (a hard link: no copy), or ``None`` if none."""
    predecessor = path.with_name(f".{path.name}{PREDECESSOR_SUFFIX}")
    predecessor.unlink(missing_ok=True)  # left by a process that was killed
    try:
        os.link(path, predecessor)
    except OSError:  # nothing there yet; or a file system without hard links (no roll-back)
        return None
    return predecessor


@dataclass(frozen=True)
class CheckpointFile:
    """A Lightning checkpoint, read and checked before Lightning reads it (:func:`read_checkpoint`).

    Attributes:
        path: The file.
        content: The checkpoint's entries (tensors memory-mapped, not read).
        weights: Its state dict, as ``weights=`` files are read
            (:func:`~convrepro.models.weights.load_state_dict_file`).
    """

    path: Path
    content: dict[str, Any]
    weights: dict[str, Tensor]

    @property
    def global_step(self) -> int:
        return int(self.content.get("global_step", 0))

    def check_fits(self, network: nn.Module) -> None:
        """Raise a :class:`ConfigError` if the checkpoint holds another architecture's weights
        than ``network`` (the backbone the config builds)."""
        expected = network.state_dict()
        problems = describe_mismatch(expected, network_state_dict(self.weights, expected))
        if problems:
            raise ConfigError(
                f"--ckpt_path {self.path} was saved from another model than the config builds "
                f"({type(network).__name__}). {problems} Use the config the checkpoint was "
                "trained with (its run folder holds config.yaml)."
            )


def read_checkpoint(path: str | Path, setting: str = "--ckpt_path") -> CheckpointFile:
    """Read the checkpoint ``setting`` names, refusing anything that is not one.

    The file goes through the same reader as ``weights=`` files
    (:func:`~convrepro.models.weights.load_state_dict_file`: tensors and plain values only,
    never executing pickled code), so text, empty, truncated or malicious files get the same
    one-line :class:`~convrepro.errors.ConfigError`. A bare state dict is refused too: resuming,
    testing and predicting need the training state Lightning saves around the weights.
    """
    try:
        weights = load_state_dict_file(path)
    except UserError as error:
        raise type(error)(f"{setting}: {error}") from error
    # mmap: the tensors were just read in full; this second look only parses the small index.
    content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(content, Mapping) or "pytorch-lightning_version" not in content:
        raise ConfigError(
            f"{setting} {path} holds network weights only, not a checkpoint of a training run. "
            "To start a run from these weights, pass them as model.backbone.init_args.weights "
            f"and leave out {setting}."
        )
    return CheckpointFile(Path(path), dict(content), weights)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that saves nothing in a ``fast_dev_run``, as Lightning documents, and
    writes ``last.ckpt`` at the end of every epoch.

    Lightning 2.6's ``on_train_end`` writes ``last.ckpt`` without asking whether saving is
    switched off: a one-step smoke test of a VGG-16 config wrote 1 GB, twice. And it writes
    ``last.ckpt`` at a validation only if a top-k checkpoint was saved there too: after an epoch
    that did not improve the monitored metric, ``last.ckpt`` kept an older step (the periodic
    save's), so a finished run's ``last.ckpt`` missed its last epoch, and a resume redid it.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_missed(trainer, at_epoch_end=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_missed(trainer, at_epoch_end=False)

    def _save_last_if_missed(self, trainer: Trainer, at_epoch_end: bool) -> None:
        # Where Lightning would have saved (the end of the epoch, or of a validation within it).
        if (
            self.save_last is True
            and self._should_save_on_train_epoch_end(trainer) == at_epoch_end
            and not self._should_skip_saving_checkpoint(trainer)  # saved at this step already
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class PeriodicCheckpoint(RunCheckpoint):
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

    def _save_last_if_missed(self, trainer: Trainer, at_epoch_end: bool) -> None:
        pass  # the run's RunCheckpoint writes the epoch-end last.ckpt; a second write is waste
