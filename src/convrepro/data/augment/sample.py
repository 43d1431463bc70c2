"""Per-sample versions of the augmentations of :mod:`convrepro.data.transforms`' pipelines.

Each step takes one uint8 image (C, H, W) and the sample's
:class:`~convrepro.data.sampling.SampleRandom`, draws its parameters from it with the same
distribution as its torchvision (or :mod:`convrepro.data.augment`) counterpart draws them from
torch's global RNG, and applies them with torchvision's own image kernels, so pixel values are
torchvision's too. Calling the kernels directly skips ``v2.Transform``'s per-call machinery
(input flattening, type dispatch, tv_tensor wrapping), which costs more than the kernels on small
images; drawing from the sample's own stream skips saving, seeding and restoring torch's RNG.
:class:`~convrepro.data.samples.SamplePipeline` chains them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from convrepro.data.augment.batch import Deterministic, central_crop
from convrepro.data.augment.lighting import PCALighting
from convrepro.data.augment.scales import TrainingScale
from convrepro.data.augment.views import SubtractMeanImage, TenCropViews
from convrepro.data.sampling import SampleRandom
from convrepro.errors import ConfigError


class SampleStep(Protocol):
    """One image (C, H, W) -> the augmented image, parameters drawn from ``random``."""

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor: ...


@dataclass(frozen=True)
class RandomCrop:
    """``v2.RandomCrop`` with constant padding: a uniformly placed ``size`` crop of the padded
    image."""

    size: tuple[int, int]
    padding: tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)
    fill: float

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        if any(self.padding):
            image = F.pad(image, self.padding, value=self.fill)
        height, width = self.size
        padded_height, padded_width = image.shape[-2:]
        if padded_height < height or padded_width < width:
            raise ConfigError(
                f"crop size {self.size} is larger than the padded image "
                f"({padded_height}, {padded_width})"
            )
        top = random.below(padded_height - height + 1)
        left = random.below(padded_width - width + 1)
        return image[..., top : top + height, left : left + width]


@dataclass(frozen=True)
class HorizontalFlip:
    """``v2.RandomHorizontalFlip``: mirrored with probability ``p``."""

    p: float

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        return image.flip(-1) if random.uniform() < self.p else image


@dataclass(frozen=True)
class Resize:
    """``v2.Resize`` (deterministic)."""

    size: list[int]
    interpolation: InterpolationMode
    max_size: int | None
    antialias: bool

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        return TF.resize_image(
            image, self.size, self.interpolation, self.max_size, antialias=self.antialias
        )


@dataclass(frozen=True)
class CenterCrop:
    """``v2.CenterCrop`` (deterministic)."""

    size: list[int]

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        return TF.center_crop_image(image, self.size)


@dataclass(frozen=True)
class RandomResizedCrop:
    """``v2.RandomResizedCrop``: torchvision's box sampling (up to 10 draws of area and log
    aspect ratio, the first that fits, else a central crop), then its resize of the box."""

    size: list[int]
    scale: tuple[float, float]
    ratio: tuple[float, float]
    interpolation: InterpolationMode
    antialias: bool

    ATTEMPTS = 10

    def box(self, height: int, width: int, random: SampleRandom) -> tuple[int, int, int, int]:
        """(top, left, box height, box width) of one crop of a ``height`` x ``width`` image."""
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.ATTEMPTS):
            area = height * width * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(log_low, log_high))
            box_width = round(math.sqrt(area * aspect))
            box_height = round(math.sqrt(area / aspect))
            if 0 < box_width <= width and 0 < box_height <= height:
                top = random.below(height - box_height + 1)
                left = random.below(width - box_width + 1)
                return top, left, box_height, box_width
        box_height, box_width = central_crop(height, width, self.ratio)
        return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        top, left, height, width = self.box(*image.shape[-2:], random)
        return TF.resized_crop_image(
            image, top, left, height, width, self.size, self.interpolation, self.antialias
        )


@dataclass(frozen=True)
class ShorterSide:
    """:class:`~convrepro.data.augment.TrainingScale`: shorter side to S, S drawn uniformly from
    the integers ``low..high`` (always ``low`` for a fixed scale)."""

    low: int
    high: int

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        scale = self.low + random.below(self.high - self.low + 1)
        return TF.resize_image(image, [scale], antialias=True)


@dataclass(frozen=True)
class ColorJitter:
    """``v2.ColorJitter``: brightness, contrast, saturation and hue factors drawn per image and
    applied in a random order, as torchvision orders and draws them."""

    brightness: tuple[float, float] | None
    contrast: tuple[float, float] | None
    saturation: tuple[float, float] | None
    hue: tuple[float, float] | None

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        adjustments = (
            (TF.adjust_brightness_image, self.brightness),
            (TF.adjust_contrast_image, self.contrast),
            (TF.adjust_saturation_image, self.saturation),
            (TF.adjust_hue_image, self.hue),
        )
        for index in random.permutation(len(adjustments)):
            adjust, bounds = adjustments[index]
            if bounds is not None:
                image = adjust(image, random.uniform(*bounds))
        return image


@dataclass(frozen=True)
class Lighting:
    """:class:`~convrepro.data.augment.PCALighting` on one float image in [0, 1]: the shift
    ``sum_i alpha_i * sqrt(lambda_i) * p_i`` with ``alpha_i ~ N(0, std^2)``."""

    axes: Tensor  # row i: sqrt(lambda_i) * p_i
    std: float

    def __call__(self, image: Tensor, random: SampleRandom) -> Tensor:
        alphas = torch.tensor([random.normal() * self.std for _ in range(len(self.axes))])
        return image + (alphas @ self.axes).to(image.dtype)[:, None, None]


def sample_step(transform: Any) -> SampleStep | None:
    """The per-sample step of one pipeline transform; ``None`` if it has none here (the
    pipeline then runs as torchvision's transform under a seeded global RNG)."""
    match transform:
        case v2.RandomCrop(padding_mode="constant", pad_if_needed=False, fill=int() | float()):
            # v2.RandomCrop keeps any padding form as [left, right, top, bottom]: F.pad's order.
            padding = tuple(transform.padding or (0, 0, 0, 0))
            return RandomCrop(tuple(transform.size), padding, transform.fill)
        case v2.RandomHorizontalFlip():
            return HorizontalFlip(transform.p)
        case v2.Resize():
            return Resize(
                list(transform.size),
                InterpolationMode(transform.interpolation),
                transform.max_size,
                bool(transform.antialias),
            )
        case v2.CenterCrop():
            return CenterCrop(list(transform.size))
        case v2.RandomResizedCrop():
            return RandomResizedCrop(
                list(transform.size),
                tuple(transform.scale),
                tuple(transform.ratio),
                InterpolationMode(transform.interpolation),
                bool(transform.antialias),
            )
        case TrainingScale():
            return ShorterSide(transform.low, transform.high)
        case v2.ColorJitter():
            return ColorJitter(
                transform.brightness, transform.contrast, transform.saturation, transform.hue
            )
        case PCALighting():
            return Lighting(transform.axes.cpu(), transform.std)
        case SubtractMeanImage() | TenCropViews():
            return Deterministic(transform)
    return None
