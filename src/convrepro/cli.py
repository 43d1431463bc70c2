"""The command line: ``python main.py {fit,validate,test,predict} --config configs/X.yaml``.

A LightningCLI that adds what a reproduction needs on top of Lightning's: one folder per run
(``runs/<name>/<id>``), the class count linked from the data into the model, precision and W&B
mode chosen for the machine it runs on, and result files (history, summary, predictions).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from convrepro.callbacks import PredictionWriter, RunSummary, read_summary
from convrepro.classifier import ImageClassifier
from convrepro.data import BaseImageDataModule
from convrepro.runs import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    RunOptions,
    latest_resumable_run,
    run_dir_of_checkpoint,
    shared_run_id,
)
from convrepro.tracking import RunConfigSaver, wandb_offline_reason

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
DEFAULT_LOGGER = {"class_path": WANDB_LOGGER, "init_args": {"project": "convrepro"}}


def default_precision() -> str:
    """Mixed precision where the hardware has it, full precision on the CPU."""
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


class ConvReproCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` and the ``convrepro.data`` datamodules."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=ImageClassifier,
            datamodule_class=BaseImageDataModule,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            seed_everything_default=0,
            trainer_defaults={
                "logger": DEFAULT_LOGGER,
                # our datamodules shard the data: exact (unpadded) evaluation, resumable order
                "use_distributed_sampler": False,
            },
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.link_arguments(
            "data.num_classes", "model.backbone.init_args.num_classes", apply_on="instantiate"
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        name = config.run.name or _config_stem(config)
        run_dir = self._resolve_run_dir(config, name)
        config.run.name, config.run.id = name, run_dir.name
        trainer = config.trainer
        trainer.default_root_dir = str(run_dir)
        if trainer.precision is None:
            trainer.precision = default_precision()
        loggers = _configure_loggers(trainer, run_dir, config.run)
        callbacks = [RunSummary(run_dir)]
        if not _has_callback(trainer, "ModelCheckpoint"):
            callbacks.append(
                ModelCheckpoint(
                    dirpath=run_dir / CHECKPOINT_DIR,
                    filename="best",
                    monitor="val/acc",
                    mode="max",
                    save_last=True,
                )
            )
        if loggers and not _has_callback(trainer, "LearningRateMonitor"):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run_dir))
        self.trainer_defaults["callbacks"] = callbacks
        filename = "config.yaml" if self.subcommand == "fit" else f"config.{self.subcommand}.yaml"
        self.save_config_kwargs = {"run_dir": str(run_dir), "filename": filename}

    def _resolve_run_dir(self, config: Namespace, name: str) -> Path:
        root = Path(config.run.root)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in ("last", "best"):
            run_dir = (
                root / name / config.run.id if config.run.id else latest_resumable_run(root, name)
            )
            if run_dir is None or not (run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file():
                raise FileNotFoundError(
                    f"--ckpt_path {ckpt_path}: no checkpoint of experiment '{name}' under "
                    f"{run_dir or root / name / '*'}/{CHECKPOINT_DIR}/. Start a new run "
                    "without --ckpt_path, or pass --ckpt_path path/to/file.ckpt."
                )
            config.ckpt_path = str(self._checkpoint_in(run_dir, ckpt_path))
            config.run.id = run_dir.name
            rank_zero_info(f"Using checkpoint {config.ckpt_path}")
        elif ckpt_path and not config.run.id:
            if not Path(ckpt_path).is_file():
                raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such file")
            owner = run_dir_of_checkpoint(ckpt_path)
            if owner is not None and owner.parent.name == name:
                config.run.id = owner.name  # results of a saved run go next to it
        return root / name / shared_run_id(config.run.id)

    @staticmethod
    def _checkpoint_in(run_dir: Path, which: str) -> Path:
        if which == "best":
            best = read_summary(run_dir).get("best_checkpoint")
            if best and Path(best).is_file():
                return Path(best)
        return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def _config_stem(config: Namespace) -> str:
    paths = config.get("config") or []
    return Path(str(paths[0])).stem if paths else "default"


def _class_name(entry: Any) -> str:
    class_path = entry.get("class_path", "") if isinstance(entry, (dict, Namespace)) else ""
    return str(class_path).rsplit(".", 1)[-1] or type(entry).__name__


def _has_callback(trainer: Namespace, name: str) -> bool:
    callbacks = trainer.get("callbacks") or []
    return any(_class_name(c) == name for c in callbacks)


def _configure_loggers(trainer: Namespace, run_dir: Path, run: Namespace) -> list[Namespace]:
    """Point every configured logger at the run folder; W&B goes offline when it must."""
    loggers = trainer.logger
    if loggers in (None, False):
        return []
    if loggers is True:
        loggers = trainer.logger = Namespace(DEFAULT_LOGGER)
    entries = loggers if isinstance(loggers, list) else [loggers]
    for entry in entries:
        init_args = entry.init_args
        init_args.save_dir = str(run_dir)
        if _class_name(entry) == "WandbLogger":
            init_args.id = re.sub(r"[^\w-]", "-", f"{run.name}-{run.id}")
            init_args.name = init_args.get("name") or f"{run.name}/{run.id}"
            init_args.resume = "allow"
            init_args.group = init_args.get("group") or run.group
            init_args.tags = list(init_args.get("tags") or []) + list(run.tags)
            _choose_wandb_mode(init_args)
        elif "name" in init_args or "version" in init_args:
            init_args.name, init_args.version = "", ""  # CSV/TensorBoard: log_dir = run folder
    return entries


def _choose_wandb_mode(init_args: Namespace) -> None:
    if init_args.get("offline"):
        return
    reason = wandb_offline_reason()
    if reason is None:
        return
    init_args.offline = True
    if init_args.get("log_model"):
        init_args.log_model = False  # W&B cannot upload checkpoints offline
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0:
        rank_zero_info(
            f"W&B is logging offline ({reason}); sync later with `wandb sync <run folder>/wandb`."
        )


def main(args: list[str] | None = None) -> None:
    """Run the CLI (``main.py``'s entry point)."""
    ConvReproCLI(args=args)
