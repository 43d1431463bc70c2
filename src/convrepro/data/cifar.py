"""CIFAR-10: 50k training and 10k test images, 32x32, 10 classes."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from convrepro.data.archive import ArchiveDataModule
from convrepro.data.augment.lighting import RGBPCA, PCALighting, cached_rgb_pca
from convrepro.data.transforms import CIFAR10_STATS, horizontal_flip, image_pipeline
from convrepro.errors import ConfigError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class CIFAR10DataModule(ArchiveDataModule):
    """CIFAR-10 from torchvision's python pickles in ``<data_dir>/cifar-10-batches-py/``.

    Training images get the standard CIFAR augmentation: a random 32x32 crop of the image
    zero-padded by ``crop_padding`` pixels, and a random horizontal flip. Evaluation images are
    only normalized (CIFAR-10 training-set channel statistics).

    Args:
        data_dir: Folder that holds (or will hold) ``cifar-10-batches-py/``.
        val_size: Training images held out for validation (default 45k/5k).
        crop_padding: Zero padding for the random crop; ``0`` disables cropping.
        resize: Resize every image (train and eval) to ``resize`` x ``resize`` after the crop
            and flip. ``227`` is the common way to run the ImageNet-sized AlexNet on CIFAR-10:
            the 32 px content is upsampled, not any more detailed, so results are not
            comparable with native-resolution CIFAR networks. ``None`` keeps 32 x 32.
        pca_lighting: Standard deviation of AlexNet's PCA colour augmentation
            (:class:`~convrepro.data.augment.PCALighting`; the paper's 0.1), fitted to the pixels
            of the training split (held-out validation images excluded) and cached in
            ``data_dir``. ``0`` switches it off.
        **kwargs: Everything else of :class:`~convrepro.data.archive.ArchiveDataModule` and
            :class:`~convrepro.data.base.BaseImageDataModule` (batch size, workers, seed, ...).
    """

    title = "CIFAR-10"
    folder = CIFAR10.base_folder
    url = CIFAR10.url
    image_size = 32

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        val_size: int | float = 5000,
        crop_padding: int = 4,
        resize: int | None = None,
        pca_lighting: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if crop_padding < 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {crop_padding}")
        if resize is not None and resize < 1:
            raise ConfigError(f"data.resize must be a positive size or null, got {resize}")
        if pca_lighting < 0:
            raise ConfigError(
                f"data.pca_lighting is a standard deviation, >= 0; got {pca_lighting}"
            )
        super().__init__(data_dir=data_dir, val_size=val_size, **kwargs)
        self.crop_padding = crop_padding
        self.resize = resize
        self.pca_lighting = pca_lighting

    @property
    def class_names(self) -> list[str]:
        """The ten CIFAR-10 classes, in label order."""
        return list(CIFAR10_CLASSES)

    def train_transform(self) -> v2.Compose:
        """Padded random crop, flip, optional resize, optional PCA lighting, normalize."""
        crop = [v2.RandomCrop(32, padding=self.crop_padding)] if self.crop_padding else []
        steps = [*crop, *horizontal_flip(self.horizontal_flip), *self._resize()]
        lighting = (
            [PCALighting(self._training_pca(), self.pca_lighting)] if self.pca_lighting else []
        )
        return image_pipeline(steps, CIFAR10_STATS, colour_steps=lighting)

    def _training_pca(self) -> RGBPCA:
        """RGB principal axes of the training split's pixels (the paper's "training set")."""
        source = self._require_source("train")
        train_indices, _ = self._hold_out(len(source))
        return cached_rgb_pca(source.data[train_indices], self.data_dir)

    def eval_transform(self) -> v2.Compose:
        """Optional resize, normalize."""
        return image_pipeline(self._resize(), CIFAR10_STATS)

    def _resize(self) -> list[v2.Transform]:
        return [v2.Resize((self.resize, self.resize))] if self.resize else []

    def _torchvision_dataset(self, split: Literal["train", "test"], download: bool) -> Dataset:
        return CIFAR10(self.data_dir, train=split == "train", download=download)

    def _source_tensors(self, source: Dataset) -> tuple[Tensor, Tensor]:
        # torchvision keeps CIFAR-10 as one (N, 32, 32, 3) uint8 array and a list of labels.
        images = torch.from_numpy(source.data).permute(0, 3, 1, 2)
        return images, torch.as_tensor(source.targets, dtype=torch.long)
