"""The command line: ``python main.py {fit,validate,test,predict} --config configs/X.yaml``.

A LightningCLI that adds what a reproduction needs on top of Lightning's: one folder per run
(``runs/<name>/<id>``), the class count linked from the data into the model, precision and W&B
mode chosen for the machine it runs on, result files (history, summary, predictions), and
training that survives being stopped (atomic and periodic checkpoints, a checkpoint on SIGTERM
or Ctrl+C, exact resume with ``--ckpt_path last``, a stop on a NaN loss).

Exit status of ``main.py``: 0 done; 2 a user error (one ``error:`` line on stderr); 3 the loss
diverged; 130/143 stopped by Ctrl+C/SIGTERM after saving a checkpoint (resume me); anything
else, with a traceback, is a bug.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from convrepro.callbacks import PredictionWriter, RunSummary, read_summary
from convrepro.checkpointing import AtomicCheckpointIO, PeriodicCheckpoint
from convrepro.classifier import ImageClassifier
from convrepro.data import BaseImageDataModule
from convrepro.divergence import DivergenceGuard
from convrepro.errors import DEBUG_ENV, ConfigError, MissingFileError, UserError
from convrepro.models.weights import describe_mismatch, load_state_dict_file
from convrepro.preemption import PreemptionCheckpoint
from convrepro.resume import ExactResume
from convrepro.runs import (
    CHECKPOINT_DIR,
    INTERRUPT_CHECKPOINT,
    DiscardUnstartedRun,
    RunOptions,
    latest_resumable_run,
    resume_checkpoint,
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


class ArgumentParser(LightningArgumentParser):
    """Reports a bad command line or config in one line instead of the whole usage text."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {_one_line(message)}\n(all options: {prog} --help)\n")
        self.exit(2)


# jsonargparse's explanation of which type a value failed to be, line by line.
_PARSE_ERROR_NOISE = re.compile(
    r"Parser key .*|Does not validate against any of the Union subtypes|Subtypes: .*|Errors:"
    r"|Given value type: .*|Given value: NestedArg.*|- Expected a <class 'NoneType'>"
)


def _one_line(message: str) -> str:
    """``Parser key "trainer.max_epochs": ... Expected a <class 'int'> ... Given value: abc``
    -> ``trainer.max_epochs: expected int; Given value: abc``."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    details = [
        re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", line.strip().removeprefix("- "))
        for line in message.splitlines()
        if line.strip() and not _PARSE_ERROR_NOISE.fullmatch(line.strip())
    ]
    text = "; ".join(details).replace(":; ", ": ")
    return f"{'.'.join(keys)}: {text}" if keys else text


class ConvReproCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` and the ``convrepro.data`` datamodules."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=ImageClassifier,
            datamodule_class=BaseImageDataModule,
            subclass_mode_data=True,
            parser_class=ArgumentParser,
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
        trainer.plugins = _with_atomic_checkpoint_io(trainer.plugins)
        if config.get("weights_only") is None:
            config.weights_only = True  # our checkpoints hold only tensors and plain values
        loggers = _configure_loggers(trainer, run_dir, config.run)
        callbacks = [DiscardUnstartedRun(run_dir), RunSummary(run_dir)]
        if self.subcommand == "fit":
            callbacks += _training_safety_callbacks(trainer, run_dir, config.run)
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
            if run_dir is None or resume_checkpoint(run_dir) is None:
                raise MissingFileError(
                    f"--ckpt_path {ckpt_path}: no checkpoint of experiment '{name}' under "
                    f"{run_dir or root / name / '*'}/{CHECKPOINT_DIR}/. Start a new run "
                    "without --ckpt_path, or pass --ckpt_path path/to/file.ckpt."
                )
            config.ckpt_path = str(self._checkpoint_in(run_dir, ckpt_path))
            config.run.id = run_dir.name
            rank_zero_info(f"Using checkpoint {config.ckpt_path}")
        elif ckpt_path and not config.run.id:
            if not Path(ckpt_path).is_file():
                raise MissingFileError(f"--ckpt_path {ckpt_path}: no such file")
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
        checkpoint = resume_checkpoint(run_dir)
        assert checkpoint is not None  # checked by the caller
        return checkpoint

    def before_fit(self) -> None:
        """Refuse a checkpoint of another architecture before anything starts."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path:
            _check_checkpoint_fits(self.model, ckpt_path)
            # A resumed run writes into its own checkpoint folder; that is no surprise.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")

    before_validate = before_test = before_predict = before_fit


def _config_stem(config: Namespace) -> str:
    paths = config.get("config") or []
    return Path(str(paths[0])).stem if paths else "default"


def _class_name(entry: Any) -> str:
    class_path = entry.get("class_path", "") if isinstance(entry, (dict, Namespace)) else ""
    return str(class_path).rsplit(".", 1)[-1] or type(entry).__name__


def _has_callback(trainer: Namespace, name: str) -> bool:
    callbacks = trainer.get("callbacks") or []
    return any(_class_name(c) == name for c in callbacks)


def _training_safety_callbacks(trainer: Namespace, run_dir: Path, run: Namespace) -> list[Any]:
    """Checkpoints (best, end-of-epoch, periodic, on a stop signal), exact resume, NaN guard."""
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    callbacks: list[Any] = [
        ExactResume(),
        DivergenceGuard(),
        PreemptionCheckpoint(checkpoint_dir / INTERRUPT_CHECKPOINT),
    ]
    if not _has_callback(trainer, "ModelCheckpoint"):
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                filename="best",
                monitor="val/acc",
                mode="max",
                save_last=True,
                enable_version_counter=False,  # last.ckpt is shared with PeriodicCheckpoint
            )
        )
    if run.checkpoint_every_n_steps is not None:
        if run.checkpoint_every_n_steps < 1:
            raise ConfigError(
                f"run.checkpoint_every_n_steps must be a positive number of steps or null, "
                f"got {run.checkpoint_every_n_steps}"
            )
        callbacks.append(PeriodicCheckpoint(checkpoint_dir, run.checkpoint_every_n_steps))
    return callbacks


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """``trainer.plugins`` plus :class:`AtomicCheckpointIO`, unless one writes checkpoints."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(_is_checkpoint_io(plugin) for plugin in plugins):
        plugins.append(Namespace(class_path=f"{AtomicCheckpointIO.__module__}.AtomicCheckpointIO"))
    return plugins


def _is_checkpoint_io(plugin: Any) -> bool:
    if isinstance(plugin, CheckpointIO):
        return True
    class_path = plugin.get("class_path") if isinstance(plugin, (dict, Namespace)) else None
    if not class_path:
        return False  # a precision name such as "bf16-mixed"
    module, _, name = str(class_path).rpartition(".")
    plugin_class = getattr(importlib.import_module(module), name)
    return isinstance(plugin_class, type) and issubclass(plugin_class, CheckpointIO)


def _check_checkpoint_fits(model: ImageClassifier, ckpt_path: str) -> None:
    """Raise a :class:`ConfigError` if the checkpoint holds another architecture's weights."""
    problems = describe_mismatch(model.backbone.state_dict(), load_state_dict_file(ckpt_path))
    if problems:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} was saved from another model than the config builds "
            f"({type(model.backbone).__name__}). {problems} Use the config the checkpoint was "
            "trained with (its run folder holds config.yaml)."
        )


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
    """Run the CLI (``main.py``'s entry point), reporting user errors in one line."""
    try:
        ConvReproCLI(args=args)
    except SIGTERMException as stop:
        # Lightning's own SIGTERM stop (before training started) exits 0 by default; a job
        # that did not finish must not look finished to its scheduler.
        sys.exit(stop.code if stop.code is not None else 128 + signal.SIGTERM)
    except Exception as error:
        user_error = _user_error_in(error)
        if user_error is None or os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"error: {user_error}\n")
        sys.exit(user_error.exit_code)


def _user_error_in(error: BaseException | None) -> UserError | None:
    """``error`` or the exception it was raised from, if a :class:`UserError`.

    jsonargparse re-raises what a class raises while it is being built as its own error.
    """
    while error is not None and not isinstance(error, UserError):
        error = error.__cause__
    return error
