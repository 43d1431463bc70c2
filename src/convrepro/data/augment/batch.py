"""Batched versions of the augmentations of :mod:`convrepro.data.transforms`' pipelines.

Each step takes a whole batch of images (N, C, H, W) on any device and draws one set of random
parameters per image from the generator it is given, with the same distribution as its
torchvision (or :mod:`convrepro.data.augment`) counterpart of the same name draws per image. Steps
before normalization work on uint8 images with torchvision's uint8 arithmetic, so the pixel
values match too. :class:`~convrepro.data.device.DevicePipeline` chains them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from convrepro.errors import ConfigError

# ITU-R 601 luma weights, as torchvision's grayscale conversion uses them.
_LUMA = (0.2989, 0.587, 0.114)
MAX_UINT8 = 255.0


class BatchStep(Protocol):
    """A batched augmentation: images (N, C, H, W) -> images of the same dtype and device,
    drawing its random parameters from ``generator`` (on that device)."""

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor: ...


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.empty(n, device=generator.device).uniform_(low, high, generator=generator)


@dataclass(frozen=True)
class Deterministic:
    """A transform that draws nothing, called as it is: a batch step here, and a per-sample
    step in :mod:`convrepro.data.augment.sample` (its second argument is ignored in both)."""

    transform: Callable[[Tensor], Tensor]

    def __call__(self, images: Tensor, randomness: object) -> Tensor:
        return self.transform(images)


@dataclass(frozen=True)
class RandomCrop:
    """``v2.RandomCrop``: pad with ``fill``, then a uniformly placed ``size`` crop per image.

    With ``flip > 0`` each crop is also mirrored with probability ``flip``: a following
    :class:`HorizontalFlip` folded into the same gather (one pass over the batch, not two), with
    the same draws as the two steps run one after the other.
    """

    size: tuple[int, int]
    padding: tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)
    fill: float = 0
    flip: float = 0.0

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        padded = F.pad(images, self.padding, value=self.fill)
        n, channels, padded_height, padded_width = padded.shape
        height, width = self.size
        if padded_height < height or padded_width < width:
            raise ConfigError(
                f"crop size {self.size} is larger than the padded image "
                f"({padded_height}, {padded_width})"
            )
        # One gather over the flattened pixels (far faster than 4-tensor advanced indexing).
        device = images.device
        shape = (n, 1, 1)
        tops = torch.randint(padded_height - height + 1, shape, generator=generator, device=device)
        lefts = torch.randint(padded_width - width + 1, shape, generator=generator, device=device)
        columns = torch.arange(width, device=device).view(1, 1, width)
        if self.flip:
            mirrored = _uniform(n, 0.0, 1.0, generator).view(shape) < self.flip
            columns = torch.where(mirrored, width - 1 - columns, columns)
        rows = tops + torch.arange(height, device=device).view(1, height, 1)
        pixels = (rows * padded_width + lefts + columns).view(n, 1, -1).expand(n, channels, -1)
        return padded.flatten(2).gather(2, pixels).view(n, channels, height, width)


@dataclass(frozen=True)
class HorizontalFlip:
    """``v2.RandomHorizontalFlip``: each image mirrored with probability ``p``."""

    p: float = 0.5

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, channels, height, width = images.shape
        flip = _uniform(n, 0.0, 1.0, generator).view(n, 1) < self.p
        # One gather of per-image column orders reads the batch once (flip + where reads twice).
        columns = torch.arange(width, device=images.device)
        columns = torch.where(flip, width - 1 - columns, columns)
        return images.gather(3, columns.view(n, 1, 1, width).expand(n, channels, height, width))


@dataclass(frozen=True)
class Resize:
    """``v2.Resize`` (deterministic), through torchvision's own kernel, which takes batches."""

    size: tuple[int, ...]
    antialias: bool = True

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return v2.functional.resize(images, list(self.size), antialias=self.antialias)


@dataclass(frozen=True)
class RandomResizedCrop:
    """``v2.RandomResizedCrop`` (bilinear): torchvision's parameter sampling, vectorised.

    Like torchvision, each image tries up to 10 (area, log aspect ratio) draws and takes the first
    that fits, else a central crop. The crop is then resized with bilinear sampling whose source
    coordinates are clamped to the crop, which is what resizing the cropped image does.
    """

    size: tuple[int, int]
    scale: tuple[float, float]
    ratio: tuple[float, float]

    ATTEMPTS = 10

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.size[0] < images.shape[-2] or self.size[1] < images.shape[-1]:
            # Shrinking crops would need torchvision's antialiasing to match its distribution.
            raise ConfigError(
                f"data.device_resident: RandomResizedCrop to {self.size} would shrink "
                f"{tuple(images.shape[-2:])} images; only crops to at least the image size run "
                "on the device. Set data.device_resident: false"
            )
        top, left, height, width = self.sample_boxes(images.shape, generator)
        return resized_crop(images, top, left, height, width, self.size)

    def sample_boxes(
        self, shape: torch.Size, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(top, left, height, width) of one crop per image, as long tensors."""
        n, _, image_height, image_width = shape
        draws = n * self.ATTEMPTS
        area = image_height * image_width * _uniform(draws, *self.scale, generator)
        log_ratio = _uniform(draws, math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        aspect = torch.exp(log_ratio)
        widths = torch.sqrt(area * aspect).round().view(n, self.ATTEMPTS)
        heights = torch.sqrt(area / aspect).round().view(n, self.ATTEMPTS)
        fits = (widths > 0) & (widths <= image_width) & (heights > 0) & (heights <= image_height)
        first = fits.int().argmax(dim=1, keepdim=True)  # 0 where nothing fits: replaced below
        found = fits.any(dim=1)
        fallback_height, fallback_width = central_crop(image_height, image_width, self.ratio)
        height = torch.where(found, heights.gather(1, first).squeeze(1), fallback_height).long()
        width = torch.where(found, widths.gather(1, first).squeeze(1), fallback_width).long()
        top = (_uniform(n, 0.0, 1.0, generator) * (image_height - height + 1)).long()
        left = (_uniform(n, 0.0, 1.0, generator) * (image_width - width + 1)).long()
        top = torch.where(found, top, (image_height - height) // 2)
        left = torch.where(found, left, (image_width - width) // 2)
        return top, left, height, width


def central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """(height, width) of ``RandomResizedCrop``'s fallback when no draw fits: the whole image,
    narrowed to the nearest aspect ratio in ``ratio``."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def resized_crop(
    images: Tensor, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: Sequence[int]
) -> Tensor:
    """Crop box ``i`` of image ``i`` and resize it to ``size``, bilinear. uint8 in, uint8 out.

    Equal (up to rounding) to torchvision's antialiased resize of the crop when no box is larger
    than ``size``: antialiasing only changes shrinking.
    """
    out_height, out_width = size

    def grid_axis(start: Tensor, extent: Tensor, out_size: int, in_size: int) -> Tensor:
        # Source pixel of each output pixel (align_corners=False), clamped to the crop, in
        # grid_sample's [-1, 1] coordinates.
        start, extent = start[:, None].float(), extent[:, None].float()
        steps = torch.arange(out_size, device=images.device) + 0.5
        source = start + steps * extent / out_size - 0.5
        source = torch.minimum(torch.maximum(source, start), start + extent - 1)
        return (source + 0.5) * 2 / in_size - 1

    xs = grid_axis(left, width, out_width, images.shape[-1])
    ys = grid_axis(top, height, out_height, images.shape[-2])
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    resized = F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
    return resized.round().clamp(0, MAX_UINT8).to(torch.uint8)


@dataclass(frozen=True)
class ColorJitter:
    """``v2.ColorJitter`` without hue: per-image brightness, contrast and saturation factors,
    applied in a random order per image, with torchvision's uint8 arithmetic (truncation)."""

    brightness: tuple[float, float] | None
    contrast: tuple[float, float] | None
    saturation: tuple[float, float] | None

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n = len(images)
        adjustments = [
            (adjust, _uniform(n, *bounds, generator).view(n, 1, 1, 1))
            for adjust, bounds in (
                (adjust_brightness, self.brightness),
                (adjust_contrast, self.contrast),
                (adjust_saturation, self.saturation),
            )
            if bounds is not None
        ]
        # A uniformly random order per image: the ranks of random keys.
        order = _uniform(n * len(adjustments), 0.0, 1.0, generator).view(n, -1).argsort(dim=1)
        return jitter_in_order(images, adjustments, order)


class ColorAdjustment(Protocol):
    """Float images holding uint8 values, per-image factors (N, 1, 1, 1) -> adjusted values."""

    def __call__(self, values: Tensor, factor: Tensor) -> Tensor: ...


def jitter_in_order(
    images: Tensor, adjustments: Sequence[tuple[ColorAdjustment, Tensor]], order: Tensor
) -> Tensor:
    """Apply ``adjustments[order[i, 0]]``, then ``adjustments[order[i, 1]]``, ... to image ``i``.

    Each adjustment runs on the whole batch once per position and is kept where it is due: the
    cost is a few cheap elementwise passes, with no per-image Python.
    """
    values = images.float()
    for position in range(order.shape[1]):
        for index, (adjust, factor) in enumerate(adjustments):
            due = (order[:, position] == index).view(-1, 1, 1, 1)
            values = torch.where(due, adjust(values, factor), values)
    return values.to(torch.uint8)


def _grayscale(values: Tensor) -> Tensor:
    red, green, blue = values.unbind(dim=-3)
    luma = red * _LUMA[0] + green * _LUMA[1] + blue * _LUMA[2]
    return luma.floor().unsqueeze(-3)


def _blend(values: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    # Clamped and truncated, as torchvision's uint8 kernels store their float result.
    return (values * factor + other * (1 - factor)).clamp_(0, MAX_UINT8).floor_()


def adjust_brightness(values: Tensor, factor: Tensor) -> Tensor:
    """``F.adjust_brightness`` per image."""
    return _blend(values, torch.zeros_like(values), factor)


def adjust_contrast(values: Tensor, factor: Tensor) -> Tensor:
    """``F.adjust_contrast`` per image: blend with the image's mean gray level."""
    mean = _grayscale(values).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(values, mean, factor)


def adjust_saturation(values: Tensor, factor: Tensor) -> Tensor:
    """``F.adjust_saturation`` per image: blend with the image's gray version."""
    return _blend(values, _grayscale(values), factor)
