"""Stopping cleanly when asked to: SIGTERM (preemption, time limits, ``scancel``) or Ctrl+C.

The signal handlers only note the signal. The run stops at the next step boundary, where the
state is consistent, saves ``checkpoints/interrupted.ckpt`` and exits with status 128 + signal
(143 for SIGTERM, 130 for Ctrl+C): not 0, so a scheduler or job script can tell "interrupted,
resume me" from "finished". ``--ckpt_path last`` then resumes from the newest checkpoint.

Lightning's own SIGTERM handling saves nothing and, under DDP, makes each rank decide on its own
(and talks to the other ranks from inside the signal handler); this callback replaces it for the
whole ``fit``.
"""

from __future__ import annotations

import os
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

    The handlers are in place from the start of ``fit`` (its ``setup``), so a signal that comes
    while the run is still being set up, or during the sanity check, is not lost: training then
    stops before its first step with a checkpoint of the state it starts from (the restored one
    on a resume), and ``--ckpt_path last`` finds a checkpoint either way.

    A second Ctrl+C stops at once, without a checkpoint; one that comes while the checkpoint is
    being written leaves no broken file (the write is atomic) and says "stopped without saving".

    Args:
        checkpoint_path: Where the checkpoint goes; a successful ``fit`` deletes it.
    """

    def __init__(self, checkpoint_path: str | Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self._received: int | None = None  # signal noted by this process
        self._stop_signal: int | None = None  # signal all processes agreed to stop for
        self._previous_handlers: dict[int, Any] = {}
        self._armed = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._received, self._stop_signal = None, None
            self._previous_handlers = {}
            self._arm(STOP_SIGNALS)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its own SIGTERM handler (which stops without saving) just before.
        self._arm((signal.SIGTERM,))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._arm((signal.SIGTERM,))
        self._stop_signal = self._agreed_signal(trainer, pl_module)
        if self._stop_signal is not None:  # asked to stop while the run was being set up
            self._stop(trainer, self._stop_signal)

    def _arm(self, signums: tuple[int, ...]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for signum in signums:
            previous = signal.signal(signum, self._note_signal)
            if previous != self._note_signal:
                self._previous_handlers.setdefault(signum, previous)
        self._armed = True

    def _note_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._armed:
            # Lightning puts back the handlers it found when training began, this one among
            # them; once training is over, a signal does what it did before.
            self._pass_on(signum, frame)
            return
        if self._received is None:
            self._received = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl+C aborts

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        handler = self._previous_handlers.get(signum, signal.SIG_DFL)
        signal.signal(signum, handler)
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # the default action, now that it is in place again

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
        try:
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        except KeyboardInterrupt:
            rank_zero_info(
                f"SIGINT again while saving {self.checkpoint_path}: stopped without saving "
                "(checkpoints already there are intact; --ckpt_path last resumes from the "
                "newest, if there is one)"
            )
            raise StopRequested(signal.SIGINT) from None
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
        if not self._armed:
            return
        self._armed = False
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
