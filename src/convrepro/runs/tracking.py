"""Loggers of a run: W&B online or offline decided up front, the resolved config in the run
folder and W&B run, and a CSVLogger that adds to a run's ``metrics.csv`` rather than replace it."""

from __future__ import annotations

import csv
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info

DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_offline_reason(timeout_s: float = 3.0) -> str | None:
    """Why W&B cannot log online from here, or ``None`` if it can.

    Without this check ``wandb.init`` waits for its own (long) timeout on a compute node
    without internet and then fails the run.
    """
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in {"offline", "disabled", "dryrun"}:
        return f"WANDB_MODE={mode}"
    base_url = os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)
    host = urlparse(base_url).hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY") and not _netrc_has(host):
        return "no W&B API key (run `wandb login` or set WANDB_API_KEY to log online)"
    port = urlparse(base_url).port or (443 if base_url.startswith("https") else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
        return f"cannot reach {host}:{port}"
    return None


def _netrc_has(host: str) -> bool:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config into the run folder and into every W&B run's config.

    Lightning's default writes into ``trainer.log_dir``, which WandbLogger shares between runs
    (the second run in a folder then aborts); here every run has its own folder. With
    ``keep_existing`` (a resume) a config already there stays: it describes how the run began,
    and the run's provenance records what the resume changed.

    ``linked_settings`` are values linked from elsewhere (the backbone's class count, from the
    data) that a config may also write: a dump leaves every link target out, these are kept,
    with the value the config holds when the run starts (the one used).
    """

    def __init__(
        self,
        *args,
        run_dir: str,
        filename: str,
        keep_existing: bool = False,
        linked_settings: tuple[str, ...] = (),
        **kwargs,
    ) -> None:
        super().__init__(*args, save_to_log_dir=False, **kwargs)
        self.run_dir = Path(run_dir)
        self.filename = filename
        self.keep_existing = keep_existing
        self.linked_settings = linked_settings

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / self.filename
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for key in self.linked_settings:
            _put(resolved, key, self.config.get(key))
        if not (self.keep_existing and path.is_file()):
            # jsonargparse's own YAML layout (parser.save), with the linked values put back
            path.write_text(
                yaml.safe_dump(
                    resolved, default_flow_style=False, allow_unicode=True, sort_keys=False
                )
            )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(resolved, allow_val_change=True)
        rank_zero_info(f"Run folder: {self.run_dir}")


def _put(config: dict, key: str, value: object) -> None:
    """``config[a][b][c] = value`` for ``key`` "a.b.c", where the sections are there and
    ``value`` is not ``None`` (a backbone without the parameter, say)."""
    *sections, name = key.split(".")
    for section in sections:
        config = config.get(section) if isinstance(config, dict) else None
    if isinstance(config, dict) and value is not None:
        config[name] = value


class RunCSVLogger(CSVLogger):
    """CSVLogger that adds to the ``metrics.csv`` in its folder.

    Lightning's deletes the file when its folder holds anything, so a run's ``test``,
    ``predict`` or resumed ``fit`` would erase the training log; the CLI runs every configured
    CSVLogger as this one.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Instead of deleting an existing metrics.csv: start from its columns, so that rows
        # with new metrics rewrite it with the union of both (as Lightning does within a run).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = next(csv.reader(handle), [])


def choose_wandb_mode(init_args: Namespace) -> None:
    """W&B offline, saying why once, when it cannot reach its server (``init_args``: the
    WandbLogger entry of a config)."""
    if init_args.get("offline"):
        return
    reason = wandb_offline_reason()
    if reason is None:
        return
    init_args.offline = True
    if init_args.get("log_model"):
        init_args.log_model = False  # W&B cannot upload checkpoints offline
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0:
        # W&B itself says how to sync a run that is kept, when it finishes.
        rank_zero_info(f"W&B is logging offline ({reason}).")
