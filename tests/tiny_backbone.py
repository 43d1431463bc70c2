"""A tiny CNN backbone and a test hook, importable by ``class_path`` from CLI subprocesses.

Tests put this folder on ``PYTHONPATH`` so that ``tiny_backbone.TinyNet`` can stand in for a
real backbone in a config: it trains an epoch of a few batches in well under a second on a CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from convrepro.models.layers import ReLUWithLRN

#: Environment of :class:`HoldAtEpoch`: which run to hold, and the file that says it is held.
HOLD_RUN_ENV = "TINY_HOLD_RUN"
HOLD_MARKER_ENV = "TINY_HOLD_MARKER"


class TinyNet(nn.Module):
    """Two 3x3 convs (8 and 16 maps), the first followed by the paper's LRN when ``lrn``.

    torchvision layout (``features`` then ``classifier``), like the project's VGG and AlexNet.
    """

    def __init__(self, num_classes: int = 10, lrn: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            ReLUWithLRN() if lrn else nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(16, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class HoldAtEpoch(Callback):
    """Blocks one run at the start of ``epoch`` so that a test can kill the grid right there.

    The run is the one whose folder is named ``$TINY_HOLD_RUN``; on reaching the epoch it creates
    ``$TINY_HOLD_MARKER`` and sleeps. Without the variables (a resumed grid) it does nothing, so
    the config, and with it the run's settings, stays the same across invocations.
    """

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        held = os.environ.get(HOLD_RUN_ENV)
        if trainer.current_epoch == self.epoch and Path(trainer.default_root_dir).name == held:
            Path(os.environ[HOLD_MARKER_ENV]).touch()
            time.sleep(600)  # the test kills us long before
