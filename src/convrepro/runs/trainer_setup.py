"""What every Trainer the CLI builds gets: the machine's precision, checkpoints written
atomically, the safety callbacks (checkpoints, exact resume, a stop on a NaN loss) and its
loggers pointed at the run folder (W&B offline where it must be)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace, dict_to_namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO

from convrepro.errors import ConfigError
from convrepro.reliability import (
    AtomicCheckpointIO,
    DivergenceGuard,
    ExactResume,
    PeriodicCheckpoint,
    PreemptionCheckpoint,
    RunCheckpoint,
)
from convrepro.runs.folder import RunFolder
from convrepro.runs.tracking import RunCSVLogger, choose_wandb_mode
from convrepro.training import metrics

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
DEFAULT_LOGGER = {"class_path": WANDB_LOGGER, "init_args": {"project": "convrepro"}}


def default_precision(accelerator: Any = "auto") -> str:
    """Mixed precision where the hardware has it, full precision on the CPU (also when the
    config asks for the CPU on a machine with a GPU)."""
    if accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def class_of(entry: Any) -> type | None:
    """The class a ``trainer.callbacks``/``trainer.plugins`` entry builds: an instance's type, or
    the class a ``class_path`` names; ``None`` for anything else (a precision name, say)."""
    if not isinstance(entry, (dict, Namespace)):
        return type(entry) if not isinstance(entry, str) else None
    class_path = entry.get("class_path")
    if not class_path:
        return None
    module, _, name = str(class_path).rpartition(".")
    found = getattr(importlib.import_module(module), name, None)
    return found if isinstance(found, type) else None


def is_a(entry: Any, kind: type) -> bool:
    found = class_of(entry)
    return found is not None and issubclass(found, kind)


def has_callback(trainer: Namespace, kind: type) -> bool:
    return any(is_a(entry, kind) for entry in trainer.get("callbacks") or [])


def safety_callbacks(trainer: Namespace, run: RunFolder, options: Namespace) -> list[Any]:
    """Checkpoints (best, end-of-epoch, periodic, on a stop signal), exact resume, NaN guard."""
    callbacks: list[Any] = [
        ExactResume(),
        DivergenceGuard(),
        PreemptionCheckpoint(run.interrupt_checkpoint),
    ]
    if not has_callback(trainer, ModelCheckpoint):
        callbacks.append(
            RunCheckpoint(
                dirpath=run.checkpoints,
                filename=Path(RunFolder.BEST_CHECKPOINT).stem,
                monitor=metrics.VAL_ACC,
                mode="max",
                save_last=True,
                enable_version_counter=False,  # last.ckpt is shared with PeriodicCheckpoint
            )
        )
    if options.checkpoint_every_n_steps is not None:
        if options.checkpoint_every_n_steps < 1:
            raise ConfigError(
                f"run.checkpoint_every_n_steps must be a positive number of steps or null, "
                f"got {options.checkpoint_every_n_steps}"
            )
        callbacks.append(PeriodicCheckpoint(run.checkpoints, options.checkpoint_every_n_steps))
    return callbacks


def prepare_trainer(trainer: Namespace) -> None:
    """The machine's precision unless one is set; checkpoints written atomically."""
    if trainer.precision is None:
        trainer.precision = default_precision(trainer.accelerator)
    trainer.plugins = _with_atomic_checkpoint_io(trainer.plugins)


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """``trainer.plugins`` plus :class:`AtomicCheckpointIO`, unless one writes checkpoints."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(is_a(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(Namespace(class_path=f"{AtomicCheckpointIO.__module__}.AtomicCheckpointIO"))
    return plugins


def configure_loggers(trainer: Namespace, run_dir: Path, run: Namespace) -> list[Namespace]:
    """Point every configured logger at the run folder; W&B goes offline when it must."""
    loggers = trainer.logger
    if loggers in (None, False):
        return []
    if loggers is True:
        loggers = trainer.logger = dict_to_namespace(DEFAULT_LOGGER)
    entries = loggers if isinstance(loggers, list) else [loggers]
    for entry in entries:
        init_args = entry.init_args
        init_args.save_dir = str(run_dir)
        if is_a(entry, WandbLogger):
            init_args.id = re.sub(r"[^\w-]", "-", f"{run.name}-{run.id}")
            init_args.name = init_args.get("name") or f"{run.name}/{run.id}"
            init_args.resume = "allow"
            init_args.group = init_args.get("group") or run.group
            init_args.tags = list(init_args.get("tags") or []) + list(run.tags)
            choose_wandb_mode(init_args)
        elif "name" in init_args or "version" in init_args:
            init_args.name, init_args.version = "", ""  # CSV/TensorBoard: log_dir = run folder
        if class_of(entry) is CSVLogger:
            entry.class_path = f"{RunCSVLogger.__module__}.{RunCSVLogger.__name__}"
    return entries
