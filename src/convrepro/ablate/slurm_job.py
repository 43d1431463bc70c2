"""What each task of a grid's SLURM job array runs, unpickled on the compute node by submitit.

Only the standard library and submitit: every task starts by unpickling :class:`GridPointJob`,
and that should not wait for torch (the grid point's own process imports it).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from typing import Any

from submitit import JobEnvironment
from submitit.helpers import Checkpointable, DelayedSubmission

#: The signal SLURM sends ``signal_delay`` seconds before the time limit (submitit's, USR2).
PRE_TIMEOUT_SIGNAL = signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


class GridPointFailed(RuntimeError):
    """The grid point's command exited non-zero; its run folder's log says why."""


class GridPointJob(Checkpointable):
    """Runs one grid point's command (``python -m convrepro.ablate one ...``) as a subprocess.

    Stops and requeues:

    * Time limit: SLURM sends :data:`PRE_TIMEOUT_SIGNAL` to every process of the job. The
      point's processes ignore it; submitit's handler, in this process, calls
      :meth:`checkpoint`, which sends the point SIGTERM (it saves ``interrupted.ckpt`` and
      exits), waits for it, and has submitit requeue the job, which then resumes the point.
    * Preemption and ``scontrol requeue``: SLURM sends SIGTERM to every process of the job
      (submitit ignores it here, the point saves and exits) and requeues the job itself.

    A requeued job keeps its id; the point resumes from its checkpoint because ``one`` always
    does. This object holds no state worth pickling: submitit pickles it at submission and again
    at each requeue.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._stopped = False

    def __call__(self, command: list[str]) -> None:
        process = self._process = subprocess.Popen(command, preexec_fn=_ignore_pre_timeout_signal)
        returncode = process.wait()
        if returncode != 0:
            raise GridPointFailed(f"{shlex.join(command)} exited with {returncode}")

    def checkpoint(self, command: list[str]) -> DelayedSubmission:
        # The signal may come twice, the second call running inside the first: each waits for
        # the point to exit, so that the job is requeued only once it has saved.
        process = self._process
        if process is not None and not self._stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            # Not process.wait(): this runs in a signal handler that may have interrupted
            # __call__'s wait, which holds the Popen's lock.
            with contextlib.suppress(ChildProcessError):  # reaped by the other call
                os.waitpid(process.pid, 0)
            self._stopped = True
        return super().checkpoint(command)

    def __getstate__(self) -> dict[str, Any]:
        return {}  # the subprocess belongs to this attempt only

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._process, self._stopped = None, False


def _ignore_pre_timeout_signal() -> None:
    signal.signal(PRE_TIMEOUT_SIGNAL, signal.SIG_IGN)  # inherited by everything the point starts
