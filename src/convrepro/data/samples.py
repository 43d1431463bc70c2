"""One split's samples, each augmented as a pure function of ``(seed, epoch, sample)``.

Exact resume and results that do not depend on the number of loader workers or devices need a
sample's augmentation to depend on nothing but the seed, the epoch and the sample. Profiled, the
first way of doing that (torch's global RNG saved, seeded and restored around torchvision's
``v2.Compose`` per sample) spent most of its time around the augmentation rather than in it:
in ``v2.Transform``'s per-call machinery, in seeding, and in a PIL image made of every CIFAR-10
array. Here each sample draws its parameters from its own counter-based stream
(:class:`~convrepro.data.sampling.SampleRandom`, keyed by
:func:`~convrepro.data.sampling.sample_key`), :class:`SamplePipeline` applies them with
torchvision's image kernels directly, and archive data sets hand over their uint8 arrays: nothing
global is read or written. Any other transform still works, run under torch's global RNG seeded
per sample and restored afterwards, at the old cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from convrepro.data.augment.batch import MAX_UINT8
from convrepro.data.augment.sample import SampleStep, sample_step
from convrepro.data.sampling import (
    AUGMENT_STREAM,
    SampleRandom,
    derive_seed,
    sample_key,
    torch_seed,
)
from convrepro.data.transforms import pipeline_parts

SourceName = Literal["train", "val", "test", "predict"]


class SamplePipeline:
    """An ``image_pipeline`` (``v2.Compose``) run on one image with explicitly drawn parameters.

    Same steps, same parameter distributions and same kernels as the ``v2.Compose`` it is built
    from (:meth:`from_transform`); the random numbers come from the sample's own
    :class:`SampleRandom` instead of torch's global RNG.
    """

    def __init__(
        self,
        steps: Sequence[SampleStep],
        float_steps: Sequence[SampleStep],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.steps = list(steps)
        self.float_steps = list(float_steps)
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        # Without float steps, scaling to [0, 1] and normalizing are one multiply-subtract.
        self.scale = 1.0 / (MAX_UINT8 * self.std)
        self.shift = self.mean / self.std

    @classmethod
    def from_transform(cls, transform: Any) -> SamplePipeline | None:
        """The per-sample equivalent of an ``image_pipeline``; ``None`` for other transforms or
        for pipelines with a step that has no per-sample version."""
        parts = pipeline_parts(transform)
        if parts is None:
            return None
        steps = [sample_step(step) for step in parts.steps]
        float_steps = [sample_step(step) for step in parts.colour_steps]
        if None in steps or None in float_steps:
            return None
        return cls(steps, float_steps, parts.stats.mean, parts.stats.std)

    def __call__(self, image: Image.Image | np.ndarray | Tensor, random: SampleRandom) -> Tensor:
        """A PIL image, HWC array or CHW uint8 tensor -> augmented, normalized float32 CHW."""
        values = _as_uint8_chw(image)
        for step in self.steps:
            values = step(values, random)
        # contiguous_format: the kernels keep the HWC layout of decoded images; batches are NCHW.
        values = values.to(torch.float32, memory_format=torch.contiguous_format)
        if not self.float_steps:
            return values.mul_(self.scale).sub_(self.shift)
        values = values.div_(MAX_UINT8)
        for step in self.float_steps:
            values = step(values, random)
        return values.sub_(self.mean).div_(self.std)


def _as_uint8_chw(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """What ``v2.ToImage`` makes of its input: a (C, H, W) tensor, here a view of HWC pixels
    (the layout torchvision's uint8 resize kernels are fastest on)."""
    if isinstance(image, Tensor):
        return image
    # np.array copies: a tensor of PIL's read-only buffer would warn on every call.
    pixels = torch.from_numpy(np.array(image))
    return pixels.unsqueeze(-1).permute(2, 0, 1) if pixels.ndim == 2 else pixels.permute(2, 0, 1)


class SplitView(Dataset):
    """One split of a source data set: some of its samples, with a seeded transform.

    Keys are sample positions, or ``(epoch, position)`` pairs from
    :class:`~convrepro.data.sampling.ShuffledShardSampler`. A sample's augmentation is a pure
    function of ``(seed, epoch, source index)``: it does not depend on which worker or process
    loads it, or on what was loaded before, and leaves torch's global RNG alone (dropout in the
    main process must not be reseeded).

    ``source`` keeps the raw data (torchvision's CIFAR-10/STL-10 keep it as a uint8 array in
    ``.data``) and ``indices`` says which of its samples belong to this split. ``pixels`` and
    ``labels``, when set, are all of the source's images as one uint8 (N, C, H, W) tensor and
    its labels: the per-sample pipeline then reads them directly instead of a PIL image per
    sample (which costs more than the augmentation of a CIFAR-10 image).
    """

    def __init__(
        self,
        source: Dataset,
        indices: Sequence[int],
        transform: Callable[[Any], Tensor],
        *,
        seed: int,
        source_name: SourceName,
    ) -> None:
        self.source = source
        self.indices = list(indices)
        self.transform = transform
        self.seed = seed
        self.source_name = source_name
        self.pixels: Tensor | None = None
        self.labels: Tensor | None = None
        self._stream_seed = derive_seed(seed, AUGMENT_STREAM)

    @property
    def transform(self) -> Callable[[Any], Tensor]:
        """Image -> tensor; any callable, run per sample as described above."""
        return self._transform

    @transform.setter
    def transform(self, transform: Callable[[Any], Tensor]) -> None:
        self._transform = transform
        self._pipeline = SamplePipeline.from_transform(transform)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, position = key if isinstance(key, tuple) else (0, key)
        index = self.indices[position]
        random = SampleRandom(sample_key(self._stream_seed, epoch, index))
        if self._pipeline is not None and self.pixels is not None and self.labels is not None:
            return self._pipeline(self.pixels[index], random), int(self.labels[index])
        image, label = self.source[index]
        if self._pipeline is not None:
            return self._pipeline(image, random), int(label)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(torch_seed(random.bits()))
            return self.transform(image), int(label)
