"""The fast data path: a whole split as one uint8 tensor on the training device, augmented there.

CIFAR-10 (150 MB) and STL-10 (140 MB) fit in any GPU's memory. Holding them there removes the
per-image PIL work, the worker processes and the host-to-device copy of every batch: a batch is
one gather from device memory and a few batched tensor operations (the approach of Keller
Jordan's airbench).

:class:`DeviceBatches` delivers the same batches as the :class:`~torch.utils.data.DataLoader` it
is built from (:meth:`DeviceBatches.from_loader`): same split, same batch sampler (so the same
per-epoch order, DDP shards, dropped last batch, exact evaluation and resumable sampler state),
and the same augmentation *distribution*, because :class:`DevicePipeline` is translated from the
very ``v2.Compose`` the DataLoader path runs. What differs is the random stream: the DataLoader
path seeds each sample from ``(seed, epoch, sample)``; here a batch draws all of its parameters
from one generator on the device seeded from ``(seed, epoch, the batch's first sample)``. Each
image's augmentation is therefore different from the DataLoader path's, equally distributed, still
reproducible (also across a mid-epoch resume) and, unlike there, dependent on the batch it lands
in (so on batch size and device count).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from convrepro.data.augment import batch as batched
from convrepro.data.augment.batch import MAX_UINT8, BatchStep
from convrepro.data.augment.lighting import PCALighting
from convrepro.data.augment.views import SubtractMeanImage, TenCropViews
from convrepro.data.sampling import AUGMENT_STREAM, derive_seed, sample_key, torch_seed
from convrepro.data.transforms import pipeline_parts
from convrepro.errors import ConfigError


class DevicePipeline:
    """A datamodule's ``image_pipeline`` (``v2.Compose``) run batch-wise on uint8 device tensors.

    Args:
        steps: Geometric and colour steps on uint8 images, in order.
        float_steps: Steps on float images in [0, 1] (PCA lighting), after ``steps``.
        mean: Per-channel mean of the final normalization (images scaled to [0, 1]).
        std: Per-channel standard deviation of the final normalization.
        device: Where the batches are; every constant the pipeline needs is put there once
            (a copy from host memory per batch would make the host wait for the device).
    """

    def __init__(
        self,
        steps: Sequence[BatchStep],
        float_steps: Sequence[BatchStep],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
    ) -> None:
        self.steps = list(steps)
        self.float_steps = list(float_steps)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        # Without float steps, scaling to [0, 1] and normalizing are one multiply-subtract.
        self.scale = 1.0 / (MAX_UINT8 * self.std)
        self.shift = self.mean / self.std

    @classmethod
    def from_transform(
        cls, transform: v2.Compose, device: torch.device | str = "cpu"
    ) -> DevicePipeline:
        """The batched equivalent of an ``image_pipeline``, for batches on ``device``:
        ``[ToImage, *steps, ToDtype(float32, scale=True), *colour_steps, Normalize]``."""
        device = torch.device(device)
        parts = pipeline_parts(transform)
        if parts is None:
            raise ConfigError(
                "data.device_resident needs a transform built by convrepro.data.transforms."
                "image_pipeline (ToImage, ..., ToDtype(float32, scale=True), ..., Normalize), "
                f"got {transform}"
            )
        return cls(
            _fused([_batch_step(t, device) for t in parts.steps]),
            [_batch_step(t, device) for t in parts.colour_steps],
            parts.stats.mean,
            parts.stats.std,
            device,
        )

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (N, C, H, W) -> augmented, normalized float32 (N, C, H', W')."""
        for step in self.steps:
            images = step(images, generator)
        if not self.float_steps:
            return images.float().mul_(self.scale).sub_(self.shift)
        images = images.float().div_(MAX_UINT8)
        for step in self.float_steps:
            images = step(images, generator)
        return images.sub_(self.mean).div_(self.std)


def _fused(steps: list[BatchStep]) -> list[BatchStep]:
    """``steps`` with each crop that is followed by a flip done as one crop-and-flip: one pass
    over the batch instead of two, with the same random draws in the same order."""
    fused: list[BatchStep] = []
    for step in steps:
        previous = fused[-1] if fused else None
        if (
            isinstance(step, batched.HorizontalFlip)
            and isinstance(previous, batched.RandomCrop)
            and not previous.flip
        ):
            fused[-1] = dataclasses.replace(previous, flip=step.p)
        else:
            fused.append(step)
    return fused


def _batch_step(transform: v2.Transform, device: torch.device) -> BatchStep:
    """The batched step of one torchvision v2 transform on ``device``; an error for any other
    transform."""
    # torchvision stores the mode as an enum or as its string value, depending on the version.
    interpolation = InterpolationMode(getattr(transform, "interpolation", "bilinear"))
    bilinear = interpolation == InterpolationMode.BILINEAR
    match transform:
        case v2.RandomCrop(padding_mode="constant", pad_if_needed=False, fill=int() | float()):
            # v2.RandomCrop keeps any padding form as [left, right, top, bottom]: F.pad's order.
            padding = tuple(transform.padding or (0, 0, 0, 0))
            return batched.RandomCrop(tuple(transform.size), padding, transform.fill)
        case v2.RandomHorizontalFlip():
            return batched.HorizontalFlip(transform.p)
        case v2.Resize(max_size=None) if bilinear:
            return batched.Resize(tuple(transform.size), bool(transform.antialias))
        case v2.RandomResizedCrop() if bilinear:
            return batched.RandomResizedCrop(
                tuple(transform.size), tuple(transform.scale), tuple(transform.ratio)
            )
        case v2.ColorJitter(hue=None):
            return batched.ColorJitter(
                transform.brightness, transform.contrast, transform.saturation
            )
        case PCALighting():
            return copy.deepcopy(transform).to(device)  # a BatchStep of its own
        case v2.CenterCrop():
            return batched.Deterministic(partial(TF.center_crop, output_size=list(transform.size)))
        case TenCropViews():
            return batched.Deterministic(transform)
        case SubtractMeanImage():
            return batched.Deterministic(copy.deepcopy(transform).to(device))
    raise ConfigError(
        f"data.device_resident cannot run {transform} on the device (supported: RandomCrop with "
        "constant padding, RandomHorizontalFlip, bilinear Resize and RandomResizedCrop, "
        "ColorJitter without hue, PCALighting, CenterCrop and cuda-convnet's crops and mean "
        "image); set data.device_resident: false"
    )


class DeviceBatches:
    """An iterable of ``(images, labels)`` batches held and augmented on one device.

    Lightning treats it like a DataLoader where it matters: ``len()`` is the number of batches,
    ``set_epoch`` reaches the sampler through ``batch_sampler.sampler``, and batches already on
    the device pass through the Trainer's batch transfer untouched. It has no workers and pins
    nothing.

    Args:
        images: uint8 (N, C, H, W): the split's images, in the split's sample order.
        labels: int64 (N,) class indices, on the same device.
        pipeline: The augmentation and normalization applied to each batch.
        batch_sampler: Yields lists of sample keys: positions ``i`` or ``(epoch, i)`` pairs
            (:class:`~convrepro.data.sampling.ShuffledShardSampler`'s keys).
        seed: Seed of the augmentation streams.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        pipeline: DevicePipeline,
        batch_sampler: Iterable[list[int | tuple[int, int]]],
        *,
        seed: int,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = labels
        self.pipeline = pipeline
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.stream_seed = derive_seed(seed, AUGMENT_STREAM)
        self.generator = torch.Generator(device=images.device)

    @classmethod
    def from_loader(cls, loader: DataLoader, images: Tensor, labels: Tensor) -> DeviceBatches:
        """The batches ``loader`` would deliver, from ``images``/``labels`` of its split (already
        on the device) and with its split's transform run on the device."""
        split = loader.dataset
        return cls(
            images,
            labels,
            DevicePipeline.from_transform(split.transform, images.device),
            loader.batch_sampler,
            seed=split.seed,
        )

    @property
    def device(self) -> torch.device:
        """Where the images live and the batches are made."""
        return self.images.device

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # The whole epoch's positions go to the device in one copy: a copy per batch would make
        # the host wait for the device at every step.
        batches = [[_epoch_and_position(key) for key in batch] for batch in self.batch_sampler]
        if not batches:
            return
        positions = torch.tensor([position for batch in batches for _, position in batch])
        positions = positions.to(self.device).split([len(batch) for batch in batches])
        for batch, index in zip(batches, positions, strict=True):
            epoch, first = batch[0]
            self.generator.manual_seed(torch_seed(sample_key(self.stream_seed, epoch, first)))
            images = self.images.index_select(0, index)
            yield self.pipeline(images, self.generator), self.labels.index_select(0, index)


def _epoch_and_position(key: int | tuple[int, int]) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (0, key)
