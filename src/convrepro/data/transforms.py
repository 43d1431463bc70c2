"""Per-channel statistics and the shared shape of every image pipeline.

Each datamodule lists only its geometric steps; :func:`image_pipeline` wraps them between the
uint8 tensor conversion and the float normalization, so all pipelines end identically. The
``v2.Compose`` it returns is the recipe: :func:`pipeline_parts` takes it apart again for the two
fast paths that run it without torchvision's per-call machinery (per sample with explicitly
drawn parameters, :mod:`convrepro.data.samples`; batch-wise on the device,
:mod:`convrepro.data.device`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel mean and standard deviation of RGB images scaled to [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Training split, 50k images (the values in most CIFAR-10 code; std is per pixel, not per image).
CIFAR10_STATS = ChannelStats(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
# The 5k labelled training images: the values commonly published for STL-10.
STL10_STATS = ChannelStats(mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713))
# ImageNet-1k training set: what torchvision's pretrained VGG/AlexNet weights expect.
IMAGENET_STATS = ChannelStats(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def image_pipeline(
    steps: Sequence[Callable[[Tensor], Tensor]],
    stats: ChannelStats,
    colour_steps: Sequence[Callable[[Tensor], Tensor]] = (),
) -> v2.Compose:
    """PIL image -> uint8 tensor -> ``steps`` -> float32 in [0, 1] -> ``colour_steps`` ->
    normalized with ``stats``. Colour augmentation such as PCA lighting goes in ``colour_steps``:
    it acts on the [0, 1] RGB values it was fitted to."""
    return v2.Compose(
        [
            v2.ToImage(),
            *steps,
            v2.ToDtype(torch.float32, scale=True),
            *colour_steps,
            v2.Normalize(mean=list(stats.mean), std=list(stats.std)),
        ]
    )


def horizontal_flip(enabled: bool) -> list[v2.Transform]:
    """A random left-right flip (p = 0.5) if ``enabled``, else nothing."""
    return [v2.RandomHorizontalFlip()] if enabled else []


@dataclass(frozen=True)
class PipelineParts:
    """An :func:`image_pipeline` taken apart."""

    steps: list[Any]  # on uint8 images, between ToImage and ToDtype
    colour_steps: list[Any]  # on float images in [0, 1], before Normalize
    stats: ChannelStats


def pipeline_parts(transform: Any) -> PipelineParts | None:
    """The parts of a transform built by :func:`image_pipeline`; ``None`` for anything else."""
    transforms = list(getattr(transform, "transforms", []))
    to_float = next((i for i, t in enumerate(transforms) if _is_float_scaling(t)), None)
    if (
        to_float is None
        or not isinstance(transforms[0], v2.ToImage)
        or not isinstance(transforms[-1], v2.Normalize)
    ):
        return None
    normalize = transforms[-1]
    return PipelineParts(
        steps=transforms[1:to_float],
        colour_steps=transforms[to_float + 1 : -1],
        stats=ChannelStats(mean=tuple(normalize.mean), std=tuple(normalize.std)),
    )


def with_leading_steps(
    transform: v2.Compose, steps: Sequence[Callable[[Tensor], Tensor]]
) -> v2.Compose:
    """An :func:`image_pipeline` with ``steps`` run first (on the uint8 image)."""
    parts = pipeline_parts(transform)
    if parts is None:
        raise ValueError(f"not a transform built by image_pipeline: {transform}")
    return image_pipeline([*steps, *parts.steps], parts.stats, parts.colour_steps)


def _is_float_scaling(transform: Any) -> bool:
    return (
        isinstance(transform, v2.ToDtype)
        and transform.dtype == torch.float32
        and bool(transform.scale)
    )
