"""STL-10: 5k labelled training and 8k test images, 96x96, 10 classes."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import STL10
from torchvision.transforms import v2

from convrepro.data.archive import ArchiveDataModule
from convrepro.data.transforms import STL10_STATS, horizontal_flip
from convrepro.errors import ConfigError

STL10_CLASSES = (
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
)
NUM_FOLDS = 10


class STL10DataModule(ArchiveDataModule):
    """STL-10 from torchvision's binaries in ``<data_dir>/stl10_binary/`` (labelled part only).

    Training images get a random resized crop back to 96 x 96 and a horizontal flip, optionally
    colour jitter. The default crop scale follows the VGG paper's scale jittering: it trains on
    224 px crops of images whose shorter side S is drawn from [256, 512], so a crop covers
    (224/512)^2 = 0.19 to (224/256)^2 = 0.77 of the image area; the upper bound is raised to the
    whole image because evaluation sees the whole 96 x 96 image (no train/test size mismatch).
    Evaluation images are only normalized (by default with STL-10's channel statistics).

    Args:
        data_dir: Folder that holds (or will hold) ``stl10_binary/``.
        val_size: Training images held out for validation (default 10%).
        fold: Train on one of STL-10's ten predefined 1000-image folds (0-9), the data set's
            standard protocol; ``None`` uses all 5000 training images. ``val_size`` is held out
            from the chosen images.
        crop_scale: Range of the crop area as a fraction of the image
            (``RandomResizedCrop(scale=...)``, aspect ratio 3/4 to 4/3).
        color_jitter: Strength of random brightness, contrast and saturation changes
            (``ColorJitter(b, c, s)``); ``0`` disables it.
        **kwargs: Everything else of :class:`~convrepro.data.archive.ArchiveDataModule` and
            :class:`~convrepro.data.base.BaseImageDataModule` (batch size, workers, seed, ...).
    """

    title = "STL-10"
    folder = STL10.base_folder
    url = STL10.url
    image_size = 96
    channel_stats = STL10_STATS

    def __init__(
        self,
        data_dir: str = "data/stl10",
        val_size: int | float = 0.1,
        fold: int | None = None,
        crop_scale: tuple[float, float] = (0.19, 1.0),
        color_jitter: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if fold is not None and fold not in range(NUM_FOLDS):
            raise ConfigError(f"data.fold must be 0-{NUM_FOLDS - 1} or null, got {fold}")
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ConfigError(
                f"data.crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}"
            )
        if color_jitter < 0:
            raise ConfigError(f"data.color_jitter must be >= 0, got {color_jitter}")
        super().__init__(data_dir=data_dir, val_size=val_size, **kwargs)
        self.fold = fold
        self.crop_scale = tuple(crop_scale)
        self.color_jitter = color_jitter

    @property
    def class_names(self) -> list[str]:
        """The ten STL-10 classes, in label order."""
        return list(STL10_CLASSES)

    def train_transform(self) -> v2.Compose:
        """Random resized crop, flip, optional colour jitter, optional PCA lighting,
        normalize."""
        strength = self.color_jitter
        jitter = [v2.ColorJitter(strength, strength, strength)] if strength else []
        steps = [
            v2.RandomResizedCrop(96, scale=self.crop_scale),
            *horizontal_flip(self.horizontal_flip),
            *jitter,
        ]
        return self._pipeline(steps, augment=True)

    def eval_transform(self) -> v2.Compose:
        """Normalize only."""
        return self._pipeline([])

    def _torchvision_dataset(self, split: Literal["train", "test"], download: bool) -> Dataset:
        folds = self.fold if split == "train" else None
        return STL10(self.data_dir, split=split, folds=folds, download=download)

    def _source_tensors(self, source: Dataset) -> tuple[Tensor, Tensor]:
        # torchvision keeps STL-10 as one (N, 3, 96, 96) uint8 array and an array of labels.
        return torch.from_numpy(source.data), torch.as_tensor(source.labels, dtype=torch.long)
