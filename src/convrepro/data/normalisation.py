"""The network's input scale: the papers' 0-255 pixels minus a mean, or today's unit scale.

Both papers fed their networks raw 0-255 pixel values minus a mean: VGG the training set's mean
RGB value (sec. 2.1), AlexNet the mean image ("subtracting the mean activity over the training
set from each pixel", sec. 2; cuda-convnet's ``data_mean``). Their local response
normalisation constants (``k = 2, alpha = 1e-4, n = 5``; cuda-convnet's ``1 + 0.001/9``) were
chosen for activations of that size. Dividing by 255 and by the channel standard deviation (the
modern default, ``channel-std``) makes first-layer activations about 60 times smaller and
``alpha * sum(a^2)`` about 3600 times smaller next to ``k``, so LRN is then nearly a constant
factor; configurations that ablate LRN as a paper did use the papers' scale.

============== =========================================== =============================
``channel-std`` ``(x / 255 - mean_c) / std_c``              the data set's channel stats
``mean-rgb``    ``x - 255 * mean_rgb(training split)``      VGG
``mean-image``  ``x - 255 * mean_image(training split)``    AlexNet, cuda-convnet
============== =========================================== =============================

``x`` are 0-255 pixel values. The fitted means travel in checkpoints
(:mod:`convrepro.data.trained_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor

from convrepro.data.augment.views import PIXEL_SCALE, SubtractMeanImage
from convrepro.data.pixel_stats import PixelStats
from convrepro.data.transforms import ChannelStats

Normalization = Literal["channel-std", "mean-rgb", "mean-image"]


def input_normalisation(
    normalization: Normalization,
    channel_stats: ChannelStats,
    training_pixels: Callable[[], PixelStats],
    mean_image: Callable[[], Tensor],
) -> tuple[ChannelStats, list[SubtractMeanImage]]:
    """The pipeline's final ``Normalize`` statistics and the colour steps before it for
    ``normalization``; ``training_pixels`` and ``mean_image`` are only called when needed (they
    read the training images, or a checkpoint)."""
    if normalization == "channel-std":
        return channel_stats, []
    if normalization == "mean-rgb":
        return ChannelStats(mean=training_pixels().mean, std=PIXEL_SCALE.std), []
    return PIXEL_SCALE, [SubtractMeanImage(mean_image())]
