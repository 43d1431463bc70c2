"""CIFAR-10: 50k training and 10k test images, 32x32, 10 classes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from convrepro.data.archive import ArchiveDataModule
from convrepro.data.augment.views import TenCropViews, mean_image
from convrepro.data.images import IMG_EXTENSIONS, empty_class_folders
from convrepro.data.normalisation import Normalization
from convrepro.data.transforms import CIFAR10_STATS, horizontal_flip
from convrepro.errors import ConfigError, MissingFileError

Source = Literal["pickles", "folders"]
Preprocessing = Literal["standard", "cuda-convnet"]
#: cuda-convnet's crop: 32 - 2 * crop_border (4), its CIFAR layer files' input size.
CUDA_CONVNET_CROP = 24

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
    """CIFAR-10 from torchvision's python pickles in ``<data_dir>/cifar-10-batches-py/`` (the
    official download, the default) or from class folders.

    ``preprocessing: standard``: training images get the standard CIFAR augmentation, a random
    32x32 crop of the image zero-padded by ``crop_padding`` pixels and a random horizontal flip;
    evaluation images are only normalized (by default with CIFAR-10's channel statistics; the
    papers' 0-255 scales with ``normalization: mean-rgb`` or ``mean-image``, whose mean image
    is resized with the images).
    ``preprocessing: cuda-convnet``: the AlexNet paper's CIFAR-10 protocol
    (:mod:`convrepro.data.augment.views`): 0-255 pixels minus the training split's mean image,
    random 24x24 crops and flips for training, the centre 24x24 crop for validation, and for
    ``test`` each image as its 10 views (corners and centre, and their flips) for
    :class:`~convrepro.training.StackedViewsEvaluation`.

    Args:
        data_dir: Folder that holds (or will hold) ``cifar-10-batches-py/``; with
            ``source: folders``, the folder holding ``train/`` and ``test/``.
        source: ``pickles``: torchvision's CIFAR-10 files, downloaded if missing.
            ``folders``: ``<data_dir>/{train,test}/<class>/<image>``, any image format, every
            image 32x32 RGB, the ten CIFAR-10 class names as folder names (Kaggle's PNG
            folders, exports, JPEG re-encodings). They are decoded once into the same uint8
            arrays as the pickles, so the fast paths are the same; provenance records the
            sha256 of the files' contents.
        preprocessing: ``standard`` or ``cuda-convnet`` (above). With ``cuda-convnet``,
            ``crop_padding``, ``resize`` and ``pca_lighting`` do not apply, and the
            normalization is ``mean-image`` (its default).
        val_size: Training images held out for validation (default 45k/5k).
        crop_padding: Zero padding for the random crop; ``0`` disables cropping.
        resize: Resize every image (train and eval) to ``resize`` x ``resize`` after the crop
            and flip. ``227`` is the common way to run the ImageNet-sized AlexNet on CIFAR-10:
            the 32 px content is upsampled, not any more detailed, so results are not
            comparable with native-resolution CIFAR networks. ``None`` keeps 32 x 32.
        normalization: ``channel-std`` (default), ``mean-rgb`` (VGG's) or ``mean-image``
            (AlexNet's; the default with ``cuda-convnet``); see
            :mod:`convrepro.data.normalisation`.
        **kwargs: Everything else of :class:`~convrepro.data.archive.ArchiveDataModule` and
            :class:`~convrepro.data.base.BaseImageDataModule` (batch size, workers, seed, ...).
    """

    title = "CIFAR-10"
    folder = CIFAR10.base_folder
    url = CIFAR10.url
    image_size = 32
    input_protocol = (*ArchiveDataModule.input_protocol, "preprocessing", "resize")
    channel_stats = CIFAR10_STATS
    normalizations = ("channel-std", "mean-rgb", "mean-image")

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        val_size: int | float = 5000,
        source: Source = "pickles",
        preprocessing: Preprocessing = "standard",
        crop_padding: int = 4,
        resize: int | None = None,
        normalization: Normalization | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value, choices in (
            ("source", source, Source),
            ("preprocessing", preprocessing, Preprocessing),
        ):
            if value not in get_args(choices):
                valid = ", ".join(get_args(choices))
                raise ConfigError(f"data.{name}={value!r} is not valid; choose one of {valid}")
        if preprocessing == "cuda-convnet":
            if (
                resize is not None
                or kwargs.get("pca_lighting")
                or normalization
                not in (
                    None,
                    "mean-image",
                )
            ):
                raise ConfigError(
                    "data.preprocessing=cuda-convnet is cuda-convnet's own protocol (24x24 crops "
                    "of 32x32 images minus the mean image, no colour augmentation): leave "
                    "data.resize null, data.pca_lighting 0 and data.normalization null or "
                    "mean-image"
                )
            normalization = "mean-image"
        if crop_padding < 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {crop_padding}")
        if resize is not None and resize < 1:
            raise ConfigError(f"data.resize must be a positive size or null, got {resize}")
        if source == "folders":
            # Folders are read, never downloaded; the CLI passes download's default (true), so
            # a default here would not hold, and prepare_data would decode train/ as a check.
            kwargs["download"] = False
        super().__init__(
            data_dir=data_dir, val_size=val_size, normalization=normalization, **kwargs
        )
        self.source = source
        self.preprocessing = preprocessing
        self.crop_padding = crop_padding
        self.resize = resize

    @property
    def class_names(self) -> list[str]:
        """The ten CIFAR-10 classes, in label order."""
        return list(CIFAR10_CLASSES)

    def train_transform(self) -> v2.Compose:
        """Padded random crop, flip, optional resize, optional PCA lighting, normalize; or
        cuda-convnet's random 24x24 crop, flip, mean image subtracted."""
        if self.preprocessing == "cuda-convnet":
            return self._pipeline(
                [v2.RandomCrop(CUDA_CONVNET_CROP), *horizontal_flip(self.horizontal_flip)]
            )
        crop = [v2.RandomCrop(32, padding=self.crop_padding)] if self.crop_padding else []
        steps = [*crop, *horizontal_flip(self.horizontal_flip), *self._resize()]
        return self._pipeline(steps, augment=True)

    def eval_transform(self) -> v2.Compose:
        """Optional resize, normalize; or cuda-convnet's centre 24x24 crop minus the mean
        image."""
        if self.preprocessing == "cuda-convnet":
            return self._pipeline([v2.CenterCrop(CUDA_CONVNET_CROP)])
        return self._pipeline(self._resize())

    def test_transform(self) -> v2.Compose:
        """The evaluation transform; with cuda-convnet's protocol, its 10 views per image
        (``--multiview-test=1``), each minus the mean image."""
        if self.preprocessing == "cuda-convnet":
            return self._pipeline([TenCropViews(CUDA_CONVNET_CROP)])
        return self.eval_transform()

    def _mean_image(self) -> Tensor:
        """The training split's mean image at the network's input size: cuda-convnet's centre
        24x24 of it (subtracted from every crop, wherever it was cut), else resized as the
        images are."""
        if self.preprocessing == "cuda-convnet":
            return mean_image(self._training_images(), CUDA_CONVNET_CROP)
        mean = mean_image(self._training_images(), 32)
        return v2.functional.resize(mean, [self.resize, self.resize]) if self.resize else mean

    def _resize(self) -> list[v2.Transform]:
        return [v2.Resize((self.resize, self.resize))] if self.resize else []

    def _torchvision_dataset(self, split: Literal["train", "test"], download: bool) -> Dataset:
        if self.source == "folders":
            return CIFAR10Folders(self.data_dir, split)
        return CIFAR10(self.data_dir, train=split == "train", download=download)

    def _source_tensors(self, source: Dataset) -> tuple[Tensor, Tensor]:
        # torchvision keeps CIFAR-10 as one (N, 32, 32, 3) uint8 array and a list of labels.
        images = torch.from_numpy(source.data).permute(0, 3, 1, 2)
        return images, torch.as_tensor(source.targets, dtype=torch.long)


class CIFAR10Folders(Dataset):
    """CIFAR-10 stored as ``<root>/<split>/<class>/<image>``, decoded once into memory.

    Holds what torchvision's ``CIFAR10`` holds (``data``: uint8 (N, 32, 32, 3); ``targets``:
    labels in CIFAR-10's class order), plus ``files`` and ``content_sha256``, the sha256 of
    every file's relative path and bytes, in sorted order (the data fingerprint). Refuses, in one
    error, a folder that is not ten CIFAR-10 class folders of 32x32 RGB images.
    """

    def __init__(self, root: str | Path, split: Literal["train", "test"]) -> None:
        self.root, self.split = Path(root), split
        folder = self.root / split
        if not folder.is_dir():
            raise MissingFileError(
                f"no CIFAR-10 {split} folder at {folder}/: data.source=folders reads "
                f"{self.root}/train/<class>/ and {self.root}/test/<class>/ (class names: "
                f"{', '.join(CIFAR10_CLASSES)})"
            )
        classes = sorted(path.name for path in folder.iterdir() if path.is_dir())
        if classes != sorted(CIFAR10_CLASSES):
            raise ConfigError(
                f"{folder}/ must hold the ten CIFAR-10 class folders ({', '.join(CIFAR10_CLASSES)}"
                f"), found {classes or 'none'}"
            )
        self.files: list[Path] = []
        labels: list[int] = []
        empty: list[Path] = []
        for label, name in enumerate(CIFAR10_CLASSES):
            images = sorted(
                path
                for path in (folder / name).iterdir()
                if path.suffix.lower() in IMG_EXTENSIONS and path.is_file()
            )
            if not images:
                empty.append(folder / name)
            self.files += images
            labels += [label] * len(images)
        if empty:
            raise empty_class_folders(
                empty, "add the images: CIFAR-10 folders hold images of all ten classes"
            )
        self.data = np.empty((len(self.files), 32, 32, 3), dtype=np.uint8)
        digest = hashlib.sha256()
        for index, path in enumerate(self.files):
            content = path.read_bytes()
            digest.update(path.relative_to(self.root).as_posix().encode() + b"\0" + content)
            self.data[index] = _cifar_pixels(path, content)
        self.targets = labels
        self.content_sha256 = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index]), self.targets[index]


def _cifar_pixels(path: Path, content: bytes) -> np.ndarray:
    """One 32x32 RGB image file's ``content`` as uint8 (32, 32, 3); anything else is a
    ConfigError naming ``path``."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            mode, size = image.mode, image.size
            pixels = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ConfigError(
            f"{path} is not a readable image ({error}): remove or replace it"
        ) from error
    if mode != "RGB" or size != (32, 32):
        raise ConfigError(
            f"{path} is a {size[0]}x{size[1]} {mode} image; CIFAR-10 folders hold 32x32 RGB "
            "images only"
        )
    return pixels
