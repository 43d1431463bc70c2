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

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor
from torchvision.transforms import v2

from convrepro.data.augment.lighting import PCALighting
from convrepro.data.augment.views import PIXEL_SCALE, SubtractMeanImage
from convrepro.data.pixel_stats import PixelStats
from convrepro.data.transforms import ChannelStats, image_pipeline
from convrepro.errors import ConfigError

Normalization = Literal["channel-std", "mean-rgb", "mean-image"]


class InputNormalisation:
    """How a datamodule's pipelines end, and what it fits to its training images for that:
    PCA lighting on training images, then the ``normalization`` above. Mixed into
    :class:`~convrepro.data.base.BaseImageDataModule`, which takes both settings.

    A data set provides its ``channel_stats``, lists the ``normalizations`` it supports and
    implements what they need: :meth:`_fit_pixel_stats` (``mean-rgb``, PCA lighting) and
    :meth:`_mean_image` (``mean-image``). What was fitted (:attr:`fitted_inputs`) is the
    datamodule's checkpoint state.
    """

    #: The data set's own channel statistics, for ``normalization: channel-std``.
    channel_stats: ClassVar[ChannelStats]
    #: The ``normalization`` settings the data set supports.
    normalizations: ClassVar[tuple[Normalization, ...]] = ("channel-std",)

    def _init_normalisation(self, normalization: Normalization | None, pca_lighting: float) -> None:
        normalization = normalization or "channel-std"
        if normalization not in self.normalizations:
            raise ConfigError(
                f"data.normalization={normalization!r} is not available for "
                f"{type(self).__name__}; choose one of {', '.join(self.normalizations)}"
            )
        if pca_lighting < 0:
            raise ConfigError(
                f"data.pca_lighting is a standard deviation, >= 0; got {pca_lighting}"
            )
        self.normalization: Normalization = normalization
        self.pca_lighting = pca_lighting
        #: What was fitted to the training images (pixel statistics, a mean image).
        self.fitted_inputs: dict[str, Any] = {}

    def _pipeline(
        self, steps: Sequence[Callable[[Tensor], Tensor]], *, augment: bool = False
    ) -> v2.Compose:
        """An :func:`~convrepro.data.transforms.image_pipeline` of ``steps`` (the geometric
        ones, on uint8 images), then PCA lighting if ``augment``, then the input
        normalisation."""
        colour: list[Any] = []
        if augment and self.pca_lighting:
            colour.append(PCALighting(self.training_pixels().pca, self.pca_lighting))
        stats = self.channel_stats
        if self.normalization == "mean-rgb":
            stats = ChannelStats(mean=self.training_pixels().mean, std=PIXEL_SCALE.std)
        elif self.normalization == "mean-image":
            stats = PIXEL_SCALE
            colour.append(SubtractMeanImage(self._fitted("mean_image", self._mean_image)))
        return image_pipeline(steps, stats, colour_steps=colour)

    def training_pixels(self) -> PixelStats:
        """Mean RGB value and RGB principal axes of the training split: from the checkpoint
        when a trained model is tested, else fitted (and cached next to the data)."""
        return PixelStats.from_dict(
            self._fitted("pixel_stats", lambda: self._fit_pixel_stats().as_dict())
        )

    def _fitted(self, key: str, fit: Callable[[], Any]) -> Any:
        if key not in self.fitted_inputs:
            self.fitted_inputs[key] = fit()
        return self.fitted_inputs[key]

    def _fit_pixel_stats(self) -> PixelStats:
        """:class:`PixelStats` of the training split's images (validation held out)."""
        raise NotImplementedError(f"{type(self).__name__} fits no pixel statistics")

    def _mean_image(self) -> Tensor:
        """The training split's mean image in [0, 1] at the network's input size, (3, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} has no mean image")

    def state_dict(self) -> dict[str, Any]:
        """What the transforms fitted to the training images, saved in every checkpoint: the
        model's input protocol, so that it tests and predicts without its training images
        (:mod:`convrepro.data.trained_inputs`)."""
        return dict(self.fitted_inputs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Use the checkpoint's fitted inputs. Load them before ``setup``: the transforms built
        there take what is fitted then, so a checkpoint's that differ from those (a resume on
        changed data, restored after setup as Lightning's own restore does) are refused rather
        than recorded over what trains."""
        differing = sorted(
            key
            for key, value in state_dict.items()
            if key in self.fitted_inputs and not _same(self.fitted_inputs[key], value)
        )
        if differing:
            raise ConfigError(
                f"data: the checkpoint's fitted inputs ({', '.join(differing)}: fitted to the "
                "images it trained on) differ from those fitted to the images at data.data_dir "
                "now, which the transforms already use. Resume on the images the run trained "
                "on, or load the checkpoint's datamodule state before setup() "
                "(convrepro.data.trained_inputs.restore_fitted_inputs, as main.py does)."
            )
        self.fitted_inputs.update(state_dict)


def _same(a: Any, b: Any) -> bool:
    """Equal fitted inputs: tensors element by element; pixel statistics (plain numbers in
    dicts, lists or tuples, as a cache file or a checkpoint gives them back) value by value."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)
