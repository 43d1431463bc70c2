"""The command line: ``python main.py {fit,validate,test,predict} --config configs/X.yaml``.

A LightningCLI that adds what a reproduction needs on top of Lightning's: one folder per run
(``runs/<name>/<id>``), the class count linked from the data into the model, precision and W&B
mode chosen for the machine it runs on, result files (history, summary, predictions), and
training that survives being stopped (atomic and periodic checkpoints, a checkpoint on SIGTERM
or Ctrl+C, exact resume with ``--ckpt_path last``, a stop on a NaN loss).

Exit status of ``main.py``: 0 done; 2 a user error (one ``error:`` line on stderr naming the
setting and the fix; a command that fails before training leaves no run folder); 3 the loss
diverged; 4 another process of a multi-process run died or hung (one ``error:`` line; resume
with ``--ckpt_path last``); 130/143 stopped by Ctrl+C/SIGTERM after saving a checkpoint (resume
me); anything else, with a traceback, is a bug. ``tests/test_user_errors_table.py`` has a row
for each case (a lost process: ``tests/test_multinode.py``).
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
import yaml
from jsonargparse import Namespace, dict_to_namespace, get_loader, set_loader
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from convrepro.data import BaseImageDataModule
from convrepro.data.trained_inputs import apply_trained_inputs, restore_fitted_inputs
from convrepro.errors import DEBUG_ENV, ConfigError, UserError
from convrepro.reliability import (
    AtomicCheckpointIO,
    DivergenceGuard,
    ExactResume,
    PeriodicCheckpoint,
    PreemptionCheckpoint,
    RunCheckpoint,
)
from convrepro.reliability.checkpoint_io import CheckpointFile, read_checkpoint
from convrepro.reliability.distributed import announce_world_change, configure_processes, lost_peer
from convrepro.reliability.settings import StoreSettings, changed_settings, flat_settings
from convrepro.runs.console import (
    RunConsole,
    prepare_loggers,
    silence_evaluation_noise,
    silence_known_noise,
)
from convrepro.runs.files import DuplicateKeyError, check_unique_keys
from convrepro.runs.folder import DiscardUnstartedRun, RunFolder
from convrepro.runs.identity import RunOptions, resolve_run
from convrepro.runs.provenance import command_line, new_invocation, utc_now
from convrepro.runs.records import PredictionWriter, RunProvenance, RunSummary
from convrepro.runs.tracking import RunConfigSaver, RunCSVLogger, choose_wandb_mode
from convrepro.training import ImageClassifier, metrics
from convrepro.training.classifier import PAPER_LR, PAPER_MOMENTUM, PAPER_WEIGHT_DECAY

WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"
DEFAULT_LOGGER = {"class_path": WANDB_LOGGER, "init_args": {"project": "convrepro"}}
# ImageClassifier's defaults for `optimizer`/`lr_scheduler: null` (the papers' SGD, LR x0.1 when
# val/acc plateaus) spelt out as config entries: configs need not repeat them, one value can be
# changed (`--model.optimizer.init_args.lr=0.1`), and config.yaml records them.
DEFAULT_OPTIMIZER = {
    "class_path": "torch.optim.SGD",
    "init_args": {"lr": PAPER_LR, "momentum": PAPER_MOMENTUM, "weight_decay": PAPER_WEIGHT_DECAY},
}
#: The backbone's class count: linked from the data, so that fine-tuning to a new image folder
#: needs no setting, yet a parameter of the backbone that a config can also write.
BACKBONE_CLASSES = "model.backbone.init_args.num_classes"
DEFAULT_LR_SCHEDULER = {
    "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "init_args": {"mode": "max", "factor": 0.1},
}


def default_precision(accelerator: Any = "auto") -> str:
    """Mixed precision where the hardware has it, full precision on the CPU (also when the
    config asks for the CPU on a machine with a GPU)."""
    if accelerator == "cpu" or not torch.cuda.is_available():
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
    r"Does not validate against any of the Union subtypes|Subtypes: .*|Errors:"
    r"|Given value type: .*|Given value: NestedArg.*|- Expected a <class 'NoneType'>"
)
_KEY = re.compile(r'Parser key "([^"]+)":\s*')


def _one_line(message: str) -> str:
    """``Parser key "trainer.max_epochs": ... Expected a <class 'int'> ... Given value: abc``
    -> ``trainer.max_epochs: expected int; Given value: abc``."""
    keys = _KEY.findall(message)
    # The key goes in front once; what follows it on its line may be all there is to say
    # ('Parser key "config": File does not exist: ...').
    lines = (_KEY.sub("", line).strip() for line in message.splitlines())
    details = [
        re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", line.removeprefix("- "))
        for line in lines
        if line and not _PARSE_ERROR_NOISE.fullmatch(line)
    ]
    text = "; ".join(details).replace(":; ", ": ")
    return f"{'.'.join(keys)}: {text}" if keys else text


def _yaml_with_unique_keys(stream: str) -> Any:
    """jsonargparse's YAML loading (configs, command-line values), refusing a key written twice."""
    try:
        check_unique_keys(stream)
    except DuplicateKeyError as error:
        raise ConfigError(f"config: {error.problem}") from error
    return _JSONARGPARSE_YAML(stream)


_JSONARGPARSE_YAML = get_loader("yaml")
set_loader("yaml", _yaml_with_unique_keys, exceptions=(yaml.YAMLError,))


class ConvReproCLI(LightningCLI):
    """LightningCLI for :class:`ImageClassifier` and the ``convrepro.data`` datamodules."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        silence_known_noise()  # before the Trainer, which warns while it is built
        self._started, self._command = utc_now(), command_line(args)
        self._checkpoint: CheckpointFile | None = None
        self._changed: dict[str, list[Any]] = {}
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
                # RunConsole prints parameters and real FLOPs per image instead of its table
                "enable_model_summary": False,
            },
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.set_defaults(
            {"model.optimizer": DEFAULT_OPTIMIZER, "model.lr_scheduler": DEFAULT_LR_SCHEDULER}
        )
        parser.link_arguments("data.num_classes", BACKBONE_CLASSES, apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = args  # parsed again, without defaults, by _given
        super().parse_arguments(parser, args)

    def _given(self, key: str) -> Any:
        """The value of ``key`` that the configs and the command line give; ``None`` where they
        leave it to its default (the parsed config holds both alike)."""
        if isinstance(self._args, dict | Namespace):
            given = self.parser.parse_object(self._args, defaults=False)
        else:
            given = self.parser.parse_args(self._args, defaults=False)
        return given.get(f"{self.subcommand}.{key}" if self.subcommand else key)

    def _parse_ckpt_path(self) -> None:
        """Find the run and check ``--ckpt_path`` before Lightning reads the file (here, before
        any other hook) and re-applies the hyperparameters stored in it."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            name = config.run.name or _config_stem(config)
            self._run, config.ckpt_path = resolve_run(
                config.run, name, config.get("ckpt_path"), subcommand
            )
            config.run.root, config.run.name, config.run.id = (
                str(self._run.path.parents[1]),
                self._run.name,
                self._run.id,
            )
            # What this command asks for, before the checkpoint's hyperparameters overwrite it.
            dump = yaml.safe_load(self.parser.dump(self.config, skip_none=False))[subcommand]
            self._settings = flat_settings(dump)
            if config.ckpt_path:
                rank_zero_info(f"Using checkpoint {config.ckpt_path}")
                self._checkpoint = read_checkpoint(config.ckpt_path)
                if subcommand == "fit":
                    self._changed = changed_settings(self._checkpoint, self._settings)
                for key, (old, new) in self._changed.items():
                    rank_zero_info(f"Resuming with {key} changed from {old} to {new}")
        super()._parse_ckpt_path()
        if subcommand not in (None, "fit") and self._checkpoint is not None:
            data = self.config[subcommand].data
            apply_trained_inputs(_class_of(data), data.init_args, self._checkpoint.content)

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:  # run=False, a library call: the classes, and no run folder
            _prepare_trainer(self.config.trainer)
            self.save_config_callback = None
            loggers = self.config.trainer.logger
            for entry in loggers if isinstance(loggers, list) else [loggers]:
                if _is_a(entry, WandbLogger):
                    choose_wandb_mode(entry.init_args)
            return
        if self.subcommand != "fit":
            silence_evaluation_noise()
        config = self.config[self.subcommand]
        run = self._run
        trainer = config.trainer
        trainer.default_root_dir = str(run.path)
        _prepare_trainer(trainer)
        if config.get("weights_only") is None:
            config.weights_only = True  # our checkpoints hold only tensors and plain values
        loggers = _configure_loggers(trainer, run.path, config.run)
        resume = self.subcommand == "fit" and bool(config.ckpt_path)
        invocation = new_invocation(
            "resume" if resume else self.subcommand, self._command, self._started
        )
        step = self._checkpoint.global_step if self._checkpoint is not None else None
        invocation.checkpoint, invocation.checkpoint_step = config.ckpt_path, step
        invocation.changed_settings = self._changed
        callbacks = [DiscardUnstartedRun(run.path), RunSummary(run, step)]
        callbacks.append(RunProvenance(run, invocation))
        callbacks.append(RunConsole(run))
        if self.subcommand == "fit":
            callbacks += _training_safety_callbacks(trainer, run, config.run)
            callbacks.append(StoreSettings(self._settings))
        if loggers and not _has_callback(trainer, LearningRateMonitor):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if self.subcommand == "predict":
            callbacks.append(PredictionWriter(run))
        self.trainer_defaults["callbacks"] = callbacks
        self.save_config_kwargs = {
            "run_dir": str(run.path),
            "filename": run.config(self.subcommand).name,
            "keep_existing": resume,  # config.yaml says how the run began
            "linked_settings": (BACKBONE_CLASSES,),
        }

    def after_instantiate_classes(self) -> None:
        """The backbone was built for the data's class count (the link): say so where a config
        or the command gave another, and put the count used in the config that the run's
        records (config.yaml, W&B) hold."""
        # (a parse-only subclass, the ablation preflight's, builds no datamodule)
        used = getattr(getattr(self, "datamodule", None), "num_classes", None)
        config = self.config[self.subcommand] if self.subcommand else self.config
        backbone = config.model.backbone.get("init_args") if used is not None else None
        if backbone is None or backbone.get("num_classes") in (None, used):
            return
        given = self._given(BACKBONE_CLASSES)
        if given is not None and given != used:
            data = getattr(self.datamodule, "data_dir", "the data")
            rank_zero_info(
                f"{BACKBONE_CLASSES}={given} is not the data's class count: {data} has {used} "
                f"classes, so the model is built for {used} (the class count follows the data; "
                f"config.yaml records {used})"
            )
        backbone.num_classes = used

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:
            # All the Trainer is built from are settings, e.g. a GPU asked for on a CPU machine.
            raise ConfigError(
                f"trainer: {error} Check trainer.accelerator, trainer.devices, trainer.strategy "
                "and trainer.precision against this machine (trainer.accelerator=auto uses what "
                "it has)."
            ) from error
        config = self.config[self.subcommand] if self.subcommand else self.config
        configure_processes(trainer, config.run.process_group_timeout_s)
        prepare_loggers(trainer)  # before the Trainer starts their runs
        return trainer

    def before_fit(self) -> None:
        """Refuse a checkpoint of another architecture before anything starts; say what a
        resume on another number of processes changes."""
        if self._checkpoint is not None:
            self._checkpoint.check_fits(self.model.backbone)
            if self.subcommand == "fit":
                announce_world_change(self._checkpoint, self.trainer, self.datamodule, self.model)
            else:
                restore_fitted_inputs(self.datamodule, self._checkpoint.content)
            self._checkpoint = None  # its tensors are not needed any more
            # A resumed run writes into its own checkpoint folder; that is no surprise.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")

    before_validate = before_test = before_predict = before_fit


def _config_stem(config: Namespace) -> str:
    paths = config.get("config") or []
    return Path(str(paths[0])).stem if paths else "default"


def _class_of(entry: Any) -> type | None:
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


def _is_a(entry: Any, kind: type) -> bool:
    found = _class_of(entry)
    return found is not None and issubclass(found, kind)


def _has_callback(trainer: Namespace, kind: type) -> bool:
    return any(_is_a(entry, kind) for entry in trainer.get("callbacks") or [])


def _training_safety_callbacks(trainer: Namespace, run: RunFolder, options: Namespace) -> list[Any]:
    """Checkpoints (best, end-of-epoch, periodic, on a stop signal), exact resume, NaN guard."""
    callbacks: list[Any] = [
        ExactResume(),
        DivergenceGuard(),
        PreemptionCheckpoint(run.interrupt_checkpoint),
    ]
    if not _has_callback(trainer, ModelCheckpoint):
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


def _prepare_trainer(trainer: Namespace) -> None:
    """The machine's precision unless one is set; checkpoints written atomically."""
    if trainer.precision is None:
        trainer.precision = default_precision(trainer.accelerator)
    trainer.plugins = _with_atomic_checkpoint_io(trainer.plugins)


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """``trainer.plugins`` plus :class:`AtomicCheckpointIO`, unless one writes checkpoints."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(_is_a(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(Namespace(class_path=f"{AtomicCheckpointIO.__module__}.AtomicCheckpointIO"))
    return plugins


def _configure_loggers(trainer: Namespace, run_dir: Path, run: Namespace) -> list[Namespace]:
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
        if _is_a(entry, WandbLogger):
            init_args.id = re.sub(r"[^\w-]", "-", f"{run.name}-{run.id}")
            init_args.name = init_args.get("name") or f"{run.name}/{run.id}"
            init_args.resume = "allow"
            init_args.group = init_args.get("group") or run.group
            init_args.tags = list(init_args.get("tags") or []) + list(run.tags)
            choose_wandb_mode(init_args)
        elif "name" in init_args or "version" in init_args:
            init_args.name, init_args.version = "", ""  # CSV/TensorBoard: log_dir = run folder
        if _class_of(entry) is CSVLogger:
            entry.class_path = f"{RunCSVLogger.__module__}.{RunCSVLogger.__name__}"
    return entries


def main(args: list[str] | None = None) -> None:
    """Run the CLI (``main.py``'s entry point), reporting user errors in one line."""
    try:
        ConvReproCLI(args=args)
    except SIGTERMException as stop:
        # Lightning's own SIGTERM stop (before training started) exits 0 by default; a job
        # that did not finish must not look finished to its scheduler.
        sys.exit(stop.code if stop.code is not None else 128 + signal.SIGTERM)
    except Exception as error:
        user_error = _user_error_in(error) or lost_peer(error)
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
