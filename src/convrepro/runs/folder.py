"""Where a run lives on disk, and what its folder holds: ``<root>/<name>/<id>/``.

:class:`RunFolder` is the one owner of the layout; the CLI, the ablation runner and report, the
notebooks and the cluster launchers find a run's files through it::

    <root>/<name>/<id>/
        config.yaml            resolved config of the fit (config.<subcommand>.yaml for others)
        checkpoints/           best.ckpt, last.ckpt, interrupted.ckpt
        history.csv            one row per validation epoch
        summary.json           :class:`~convrepro.runs.summary.Summary`
        predictions.csv        written by ``predict``
        log.txt                the ablation runner's log of the commands it ran

Every process of a distributed run must agree on the id before any of them can talk to the
others, so the id comes from the launcher's environment when there is one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from convrepro.errors import ConfigError, UserError
from convrepro.runs.files import write_atomic
from convrepro.runs.summary import Summary

RUN_ID_ENV = "CONVREPRO_RUN_ID"
RUN_ID_OWNER_ENV = "CONVREPRO_RUN_ID_OWNER"


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


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run and the paths of everything in it."""

    path: Path

    CHECKPOINT_DIR = "checkpoints"
    BEST_CHECKPOINT = "best.ckpt"
    LAST_CHECKPOINT = "last.ckpt"
    INTERRUPT_CHECKPOINT = "interrupted.ckpt"  # written when a signal stops training

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def at(cls, root: str | Path, name: str, run_id: str) -> RunFolder:
        return cls(Path(root) / name / run_id)

    @classmethod
    def containing(cls, ckpt_path: str | Path) -> RunFolder | None:
        """The run folder a checkpoint sits in (``<run>/checkpoints/x.ckpt``), if any."""
        path = Path(ckpt_path).resolve()
        return cls(path.parents[1]) if path.parent.name == cls.CHECKPOINT_DIR else None

    @classmethod
    def latest_resumable(cls, root: str | Path, name: str) -> RunFolder | None:
        """The run of experiment ``name`` with the newest :meth:`resume_checkpoint`."""
        runs = [
            (c, run)
            for path in Path(root, name).glob("*/")
            if (c := (run := cls(path)).resume_checkpoint())
        ]
        return max(runs, key=lambda item: item[0].stat().st_mtime_ns)[1] if runs else None

    @property
    def name(self) -> str:
        return self.path.parent.name

    @property
    def id(self) -> str:
        return self.path.name

    def config(self, subcommand: str = "fit") -> Path:
        """The resolved config a subcommand saved: ``config.yaml`` for ``fit``."""
        return self.path / ("config.yaml" if subcommand == "fit" else f"config.{subcommand}.yaml")

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINT_DIR

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / self.BEST_CHECKPOINT

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / self.LAST_CHECKPOINT

    @property
    def interrupt_checkpoint(self) -> Path:
        return self.checkpoints / self.INTERRUPT_CHECKPOINT

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint ``--ckpt_path last`` resumes from: the newer of ``last.ckpt``
        (periodic and end-of-epoch saves) and ``interrupted.ckpt`` (a stop signal), if any."""
        candidates = [p for p in (self.last_checkpoint, self.interrupt_checkpoint) if p.is_file()]
        return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None

    def read_summary(self) -> Summary:
        """The run's summary; empty (nothing happened yet) if it has none."""
        path = self.summary_file
        return Summary.from_json(path.read_text()) if path.is_file() else Summary()

    def write_summary(self, summary: Summary) -> None:
        write_atomic(self.summary_file, summary.to_json())

    def read_history(self) -> list[dict[str, str]]:
        """The rows of ``history.csv`` (one per validation epoch), as written."""
        if not self.history.is_file():
            return []
        with self.history.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def append_history(self, row: Mapping[str, Any]) -> None:
        rows: list[Mapping[str, Any]] = [*self.read_history(), row]
        # Columns of earlier rows first: a resumed run may log its metrics in another order.
        columns = list(dict.fromkeys(key for r in rows for key in r))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.history, table.getvalue())


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
