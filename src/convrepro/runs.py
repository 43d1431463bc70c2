"""Where a run lives on disk: ``<root>/<name>/<id>/`` holds its config, checkpoints and results.

Every process of a distributed run must agree on the id before any of them can talk to the
others, so the id comes from the launcher's environment when there is one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from convrepro.errors import ConfigError, UserError

RUN_ID_ENV = "CONVREPRO_RUN_ID"
RUN_ID_OWNER_ENV = "CONVREPRO_RUN_ID_OWNER"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
INTERRUPT_CHECKPOINT = "interrupted.ckpt"  # written when a signal stops training


@dataclass
class RunOptions:
    """Run bookkeeping (the ``run:`` section of a config).

    Args:
        name: Experiment name; default: the stem of the first ``--config`` file.
        root: Folder that holds all runs.
        id: This run's folder name; default: a new time-stamped id (or the cluster job's id,
            so a requeued job continues in the same folder).
        group: W&B group (the ablation runner sets the ablation's name).
        tags: W&B tags (the ablation runner sets the arm).
        checkpoint_every_n_steps: Overwrite ``checkpoints/last.ckpt`` every this many training
            steps, so that a job killed without warning loses at most that much work (stop
            signals save a checkpoint of their own). ``None`` keeps only the end-of-epoch saves.
    """

    name: str | None = None
    root: str = "runs"
    id: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    checkpoint_every_n_steps: int | None = 1000


def new_run_id() -> str:
    """A sortable, collision-resistant id: ``20261125-170231-a3f9``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def shared_run_id(explicit: str | None) -> str:
    """The run id every process of this launch agrees on, exported for processes spawned later."""
    # An id this very process exported belongs to its previous run (a second CLI call in a
    # notebook or test); ids exported by a parent launcher or by the user are shared.
    inherited = (
        os.environ.get(RUN_ID_ENV) if os.environ.get(RUN_ID_OWNER_ENV) != str(os.getpid()) else None
    )
    candidates = (
        explicit,
        inherited,
        _slurm_job_id(),
        os.environ.get("TORCHELASTIC_RUN_ID") if _is_torchrun() else None,
    )
    run_id = next((c for c in candidates if c and c != "none"), None) or new_run_id()
    if not re.fullmatch(r"[\w.-]+", run_id):
        raise ConfigError(f"run id {run_id!r} may only hold letters, digits, '.', '_' and '-'")
    os.environ[RUN_ID_ENV] = run_id  # Lightning's DDP launcher starts ranks 1.. from this env
    os.environ[RUN_ID_OWNER_ENV] = str(os.getpid())
    return run_id


def _slurm_job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}-{task}" if job and task else (f"slurm-{job}" if job else None)


def _is_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``--ckpt_path last`` resumes a run from: the newer of ``last.ckpt``
    (periodic and end-of-epoch saves) and ``interrupted.ckpt`` (a stop signal), if any."""
    folder = Path(run_dir, CHECKPOINT_DIR)
    candidates = [
        p for p in (folder / LAST_CHECKPOINT, folder / INTERRUPT_CHECKPOINT) if p.is_file()
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def latest_resumable_run(root: str | Path, name: str) -> Path | None:
    """The run folder of experiment ``name`` with the newest :func:`resume_checkpoint`."""
    checkpoints = [c for run in Path(root, name).glob("*/") if (c := resume_checkpoint(run))]
    return max(checkpoints, key=lambda p: p.stat().st_mtime_ns).parents[1] if checkpoints else None


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint was written in, if it sits in one (``<run>/checkpoints/x``)."""
    path = Path(ckpt_path).resolve()
    return path.parents[1] if path.parent.name == CHECKPOINT_DIR else None


class DiscardUnstartedRun(Callback):
    """Deletes the run folder this command created if a user error stops it before training.

    A wrong setting or missing data then leaves no folder with a config and an empty W&B run
    behind; fix the input and run the same command again. A folder that already existed (a
    resumed run, ``test`` next to a training run) is never touched.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._created_here = not self.run_dir.exists()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        started = trainer.global_step > 0
        if started or not self._created_here or not isinstance(exception, UserError):
            return
        if trainer.is_global_zero:
            wandb = sys.modules.get("wandb")
            if wandb is not None and wandb.run is not None:
                wandb.finish(exit_code=exception.exit_code)  # it writes into the folder
            shutil.rmtree(self.run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # the experiment's folder, if this was its only run
                self.run_dir.parent.rmdir()
