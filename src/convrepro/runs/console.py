"""What a run prints: what a person needs to know, and none of the libraries' known noise.

A first ``python main.py fit`` used to print, around Lightning's progress bar: an advert for
LitLogger, two W&B warnings (its deprecated ``anonymous`` setting, which Lightning's WandbLogger
always passes, and "git root ... does not exist", W&B looking for a git repository in the run
folder), torch's deprecation warning about Lightning's own pytree code (twice), a hint to use
``srun`` on every machine with SLURM installed, and a model summary whose FLOPs column read 0;
``test`` and ``predict`` also an advert for litmodels and a notice about the fit's callbacks.

:func:`silence_known_noise` drops exactly those messages, each by its text (never a category or
a module wholesale: a new warning still shows). :class:`RunConsole` prints instead what a run is
and where it went: the run folder and W&B's mode (the CLI and
:class:`~convrepro.runs.tracking.RunConfigSaver` print those), the model's parameters and FLOPs
per image, the data, and at the end where the checkpoints or predictions are.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from lightning_utilities.core import rank_zero
from torch.utils.flop_counter import FlopCounterMode

import convrepro
from convrepro.runs.folder import RunFolder

# Warnings about the libraries' own code, which a user can do nothing about: (category, text).
KNOWN_WARNINGS = (
    (
        FutureWarning,
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) "
        "and treespec.is_leaf()` instead.",
    ),
    # The hint continues with this process's command line, so only its start is fixed.
    (PossibleUserWarning, "The `srun` command is available on your system but is not used."),
)
# Lightning's info messages recommending LitLogger (every Trainer start) and litmodels (every
# Trainer with a ModelCheckpoint, i.e. test and predict too).
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
LITMODELS_TIP = "💡 Tip: For seamless cloud uploads and versioning"
# Lightning's warning when a checkpoint holds the state of callbacks this Trainer lacks: test,
# validate and predict never run the fit's training callbacks (checkpointing, exact resume...).
EVALUATION_CALLBACKS_NOTICE = (
    "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be "
    "provided during `Trainer` instantiation."
)
_SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``starts``."""

    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def silence_known_noise() -> None:
    """Hide the known noise of a run's start (see the module's doc), nothing else. Idempotent."""
    for category, text in KNOWN_WARNINGS:
        # The message is matched from its start, so the exact text is all that is ignored.
        warnings.filterwarnings("ignore", message=re.escape(text), category=category)
    log = rank_zero.log  # the logger behind Lightning's rank_zero_info
    if not any(isinstance(f, _DropMessages) for f in log.filters):
        log.addFilter(_DropMessages(LITLOGGER_TIP, LITMODELS_TIP))


def silence_evaluation_noise() -> None:
    """For ``test``, ``validate`` and ``predict``: also hide Lightning's notice that the fit's
    callbacks are missing (they are meant to be; on a resume the notice would matter)."""
    warnings.filterwarnings("ignore", message=re.escape(EVALUATION_CALLBACKS_NOTICE))


def quiet_wandb(logger: WandbLogger) -> None:
    """Before its run starts (Lightning starts it before any callback's ``setup``): W&B without
    its two start-up warnings, and with the code's commit.

    Lightning always passes ``anonymous`` (``None`` unless asked for), which W&B has deprecated
    and warns about; W&B looks for a git repository around the run folder, where there is none,
    instead of around the code, whose commit a run should record.
    """
    init = logger._wandb_init  # what WandbLogger will pass to wandb.init
    if init.get("anonymous") is None:
        init.pop("anonymous", None)
    settings = init.get("settings")
    if settings is None or isinstance(settings, dict):
        settings = dict(settings or {})
        checkout = Path(convrepro.__file__).resolve().parents[2]
        if (checkout / ".git").exists():
            settings.setdefault("git_root", str(checkout))
        else:
            settings.setdefault("disable_git", True)  # an installed package: no commit to record
        init["settings"] = settings


def prepare_loggers(trainer: Trainer) -> None:
    """Call before the Trainer starts: each W&B logger quiet, and its mode said when online
    (the CLI says why when offline)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            quiet_wandb(logger)
            if not logger._offline:
                rank_zero_info(f"W&B is logging online to project {logger.name}.")


def _si(value: float, unit: str) -> str:
    """``15.5 GFLOPs``, ``138 M parameters``: three significant digits and an SI prefix, joined
    to a unit symbol, apart from a word."""
    prefix, scaled = next(((p, value / s) for s, p in _SI_PREFIXES if abs(value) >= s), ("", value))
    gap = " " if prefix and unit.islower() else ""
    return f"{scaled:.3g} {prefix}{gap}{unit}"


def forward_flops(module: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``module`` on one input of ``shape`` (no batch dimension).

    Runs the module's eager ``forward`` (a compiled module is not compiled for this shape) in
    eval mode without gradients, so no BatchNorm statistic or weight changes.
    """
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module.forward(torch.zeros(1, *shape, device=device))
    finally:
        module.train(was_training)
    return counter.get_total_flops()


class RunConsole(Callback):
    """Prints a run's essentials: model and data at the start, where its files went at the end.

    Args:
        run: The run's folder (checkpoints and predictions are found through it).
    """

    def __init__(self, run: RunFolder) -> None:
        self.run = run

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            rank_zero_info(self._model_line(trainer, pl_module))

    def _model_line(self, trainer: Trainer, pl_module: LightningModule) -> str:
        backbone = getattr(pl_module, "backbone", pl_module)
        parameters = sum(p.numel() for p in backbone.parameters())
        trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
        line = f"Model: {type(backbone).__name__}, {_si(parameters, 'parameters')}"
        if trainable != parameters:
            line += f" ({_si(trainable, 'trainable')})"
        shape = _input_shape(trainer.datamodule)
        if shape is not None:
            flops = forward_flops(backbone, shape)
            line += f", {_si(flops, 'FLOPs')} per {'x'.join(map(str, shape))} image (forward)"
        return f"{line}; {trainer.precision} precision on {trainer.strategy.root_device}."

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoints = sorted(path.name for path in self.run.checkpoints.glob("*.ckpt"))
        if not checkpoints:
            return
        saved = ", ".join(checkpoints)
        callback = trainer.checkpoint_callback
        score = getattr(callback, "best_model_score", None)
        if score is not None and getattr(callback, "monitor", None):
            saved += f"; best {callback.monitor} {float(score):.4f}"
        rank_zero_info(f"Checkpoints: {self.run.checkpoints}/ ({saved})")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        made = [path for path in (self.run.predictions, self.run.prediction_grid) if path.is_file()]
        if trainer.is_global_zero and made:
            rank_zero_info("Predictions: " + ", ".join(map(str, made)))


def _input_shape(datamodule: Any) -> tuple[int, ...] | None:
    """The shape of one training image as the model gets it, if the datamodule says."""
    shape_of = getattr(datamodule, "sample_shape", None)
    try:
        return shape_of("train") if shape_of is not None else None
    except (RuntimeError, IndexError):  # no training split built (or an empty one)
        return None
