"""Stopping cleanly when asked to: SIGTERM (preemption, time limits, ``scancel``) or Ctrl+C.

The signal handlers only note the signal. The run stops at the next step boundary, where the
state is consistent, saves ``checkpoints/interrupted.ckpt`` and exits with status 128 + signal
(143 for SIGTERM, 130 for Ctrl+C): not 0, so a scheduler or job script can tell "interrupted,
resume me" from "finished". ``--ckpt_path last`` then resumes from the newest checkpoint.

Lightning's own SIGTERM handling saves nothing and, under DDP, makes each rank decide on its own
(and talks to the other ranks from inside the signal handler); this callback replaces it while
training runs.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convrepro.reliability.sync_points import at_logging_step

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(SIGTERMException):
    """Raised at a step boundary after a stop signal; exits with status ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class PreemptionCheckpoint(Callback):
    """On SIGTERM or Ctrl+C during training: finish the step, save a checkpoint, exit.

    One process checks for a signal after every step (a Python flag, free). Several processes
    must stop at the same step, so they agree with one all-reduce, and do that only at logging
    steps (every ``trainer.log_every_n_steps``), where the logger syncs with the device anyway:
    a stop then takes up to that many steps. Lightning cannot resume exactly between an epoch's
    last batch and the validation after it, so a stop due there waits for the next batch.

    A second Ctrl+C stops at once, without a checkpoint.

    Args:
        checkpoint_path: Where the checkpoint goes; a successful ``fit`` deletes it.
    """

    def __init__(self, checkpoint_path: str | Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self._received: int | None = None  # signal noted by this process
        self._stop_signal: int | None = None  # signal all processes agreed to stop for
        self._previous_handlers: dict[int, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._received, self._stop_signal = None, None
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        # Lightning installs its SIGTERM handler just before training; this one replaces it.
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._note_signal)

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._received is None:
            self._received = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl+C aborts

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        at_check = trainer.world_size == 1 or at_logging_step(trainer, batch_idx)
        if self._stop_signal is None and at_check:
            self._stop_signal = self._agreed_signal(trainer, pl_module)
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if self._stop_signal is not None and (not last_batch or trainer.num_training_batches == 1):
            self._stop(trainer, self._stop_signal)

    def _agreed_signal(self, trainer: Trainer, pl_module: LightningModule) -> int | None:
        """The stop signal any rank received (the same answer on every rank), else ``None``."""
        if trainer.world_size == 1:
            return self._received
        noted = torch.tensor(self._received or 0, device=pl_module.device)
        return int(trainer.strategy.reduce(noted, reduce_op="max")) or None

    def _stop(self, trainer: Trainer, signum: int) -> None:
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        rank_zero_info(
            f"{signal.Signals(signum).name}: stopped at step {trainer.global_step} and saved "
            f"{self.checkpoint_path}; resume with the same command plus --ckpt_path last"
        )
        raise StopRequested(signum)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handlers()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Only reached when fit completes: the run no longer needs its interrupt checkpoint.
        if stage == "fit":
            trainer.strategy.remove_checkpoint(self.checkpoint_path)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}
