"""Where a run lives on disk, and what its folder holds: ``<root>/<name>/<id>/``.

:class:`RunFolder` is the one owner of the layout; the CLI, the ablation runner and report, the
notebooks and the cluster launchers find a run's files through it::

    <root>/<name>/<id>/
        config.yaml            resolved config the fit started with (config.<subcommand>.yaml
                               for others); a resume keeps it and records what it changed in
        provenance.json        :mod:`~convrepro.runs.provenance`: each command that touched the
                               run, its code version, software, devices, data and times
        checkpoints/           best.ckpt, last.ckpt, interrupted.ckpt
        history.csv            one row per validation epoch
        metrics.csv            CSVLogger's log (when configured), added to by later commands
        summary.json           :class:`~convrepro.runs.summary.Summary`
        predictions.csv        written by ``predict``: class and probability, top 5, per image
        predictions.png        written by ``predict``: the first images with their predictions
        log.txt                the ablation runner's log of the commands it ran

Which run a command works on (ids, ``--ckpt_path last|best``) is :mod:`~convrepro.runs.identity`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from convrepro.errors import ConfigError, MissingFileError, UserError
from convrepro.files import write_atomic
from convrepro.runs.summary import Summary


def check_folder_name(value: str, setting: str) -> str:
    """``value`` if it is one folder name, else a :class:`ConfigError` naming ``setting``.

    Run names and ids become folders under ``run.root``: ``..`` or a ``/`` would put a run
    somewhere else.
    """
    if not re.fullmatch(r"[\w.-]+", value) or set(value) == {"."}:
        raise ConfigError(
            f"{setting}={value!r} must be one folder name: letters, digits, '.', '_' and '-', "
            "not '.' or '..'"
        )
    return value


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
        return cls(Path(root) / check_folder_name(name, "run.name") / run_id)

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
    def prediction_grid(self) -> Path:
        return self.path / "predictions.png"

    @property
    def log(self) -> Path:
        return self.path / "log.txt"

    @property
    def provenance_file(self) -> Path:
        return self.path / "provenance.json"

    @property
    def skipped_images(self) -> Path:
        """``skipped_images.csv``: every unreadable image file a command of the run left out."""
        return self.path / "skipped_images.csv"

    @property
    def metrics_log(self) -> Path:
        """CSVLogger's ``metrics.csv``."""
        return self.path / "metrics.csv"

    def check_writable(self) -> None:
        """Raise a :class:`ConfigError` (naming ``run.root``) if the folder cannot be made or
        written to, before anything tries: a run must not fail over it halfway."""
        existing = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(
                f"run.root={self.path.parents[1]}: {existing} is a file, not a folder. "
                "Choose another folder for the runs with --run.root."
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(
                f"run.root={self.path.parents[1]}: cannot write into {existing} (read-only). "
                "Choose a writable folder for the runs with --run.root."
            )

    def checkpoint_named(self, which: str) -> Path:
        """The file ``--ckpt_path last`` or ``--ckpt_path best`` means in this run, which must
        have a :meth:`resume_checkpoint`. A run without a best checkpoint is an error: its other
        checkpoints are not what "best" promises (``interrupted.ckpt`` holds mid-epoch weights).
        """
        newest = self.resume_checkpoint()
        assert newest is not None  # checked by the caller
        if which == "last":
            return newest
        best = self._best_file()
        if best is not None:
            return best
        raise MissingFileError(
            f"--ckpt_path best: {self.path} has no best checkpoint (written after a validation "
            f"that improved: none ran, or data.val_size=0); its newest is {newest.name}"
            f"{' (mid-epoch weights)' if newest == self.interrupt_checkpoint else ''}. To use "
            f"that one anyway, name it: --ckpt_path {newest}"
        )

    def _best_file(self) -> Path | None:
        best = self.read_summary().best_checkpoint  # a configured ModelCheckpoint's own file
        for candidate in (self.best_checkpoint, Path(best) if best else None):
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def evaluation_checkpoint(self) -> Path | None:
        """What ``test``, ``validate`` and ``predict`` use when given no checkpoint: the best
        checkpoint, else the newest one, else ``None`` (a run that never saved one)."""
        return self._best_file() or self.resume_checkpoint()

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint ``--ckpt_path last`` resumes from: the newer of ``last.ckpt``
        (periodic and end-of-epoch saves) and ``interrupted.ckpt`` (a stop signal), if any."""
        candidates = [p for p in (self.last_checkpoint, self.interrupt_checkpoint) if p.is_file()]
        return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None

    @contextlib.contextmanager
    def records_lock(self) -> Iterator[None]:
        """Held while a command reads, changes and writes back a record of this run
        (``summary.json``, ``provenance.json``): two commands on one run (a ``test`` while the
        ``fit`` runs) must each add to what the other wrote, not write back a stale copy."""
        self.path.mkdir(parents=True, exist_ok=True)  # as writing the record itself would
        with (self.path / ".records.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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

    def record_skipped_images(self, command: str, skipped: Mapping[str, str]) -> None:
        """Add ``skipped`` (file -> why it was unreadable) to ``skipped_images.csv``, under the
        command that skipped them; what earlier commands listed stays."""
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        with self.records_lock():
            if self.skipped_images.is_file():
                table.write(self.skipped_images.read_text())
            else:
                writer.writerow(("command", "file", "reason"))
            writer.writerows((command, file, reason) for file, reason in sorted(skipped.items()))
            write_atomic(self.skipped_images, table.getvalue())

    def append_history(self, row: Mapping[str, Any]) -> None:
        self.write_history([*self.read_history(), row])

    def write_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace ``history.csv`` by ``rows`` (a run copied or made up whole, not logged)."""
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
                # W&B's farewell would tell how to sync the folder about to be deleted.
                with contextlib.suppress(AttributeError, ValueError):
                    wandb.run._settings.silent = True
                wandb.finish(exit_code=exception.exit_code)  # it writes into the folder
            shutil.rmtree(self.run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):  # the experiment's folder, if this was its only run
                self.run_dir.parent.rmdir()
