"""Weights & Biases: decide online/offline up front, and put the resolved config in the run."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
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
    (the second run in a folder then aborts); here every run has its own folder.
    """

    def __init__(self, *args, run_dir: str, filename: str, **kwargs) -> None:
        super().__init__(*args, save_to_log_dir=False, **kwargs)
        self.run_dir = Path(run_dir)
        self.filename = filename

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, self.run_dir / self.filename, skip_none=False, overwrite=True)
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(resolved, allow_val_change=True)
        rank_zero_info(f"Run folder: {self.run_dir}")
