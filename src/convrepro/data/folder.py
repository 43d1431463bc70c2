"""Image folders (e.g. the pets data): ``<data_dir>/{train,val,test}/<class>/<image files>``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset
from torchvision.transforms import v2

from convrepro.data.augment.scales import TrainingScale
from convrepro.data.base import BaseImageDataModule, SourceName, SplitView
from convrepro.data.images import (
    ImageFiles,
    describe_unreadable,
    empty_class_folders,
    find_unreadable,
)
from convrepro.data.pixel_stats import PixelStats, folder_pixel_stats
from convrepro.data.transforms import IMAGENET_STATS, horizontal_flip
from convrepro.errors import ConfigError, MissingFileError

# Eval resizes to image_size / 0.875 before the center crop: torchvision's 256 -> 224.
CENTER_CROP_FRACTION = 0.875


class ImageFolderDataModule(BaseImageDataModule):
    """Image classification from class folders, e.g. the pets data::

        <data_dir>/train/<class>/<image files>
        <data_dir>/test/<class>/<image files>
        <data_dir>/val/<class>/<image files>     (optional)

    Classes are the sorted folder names of ``train/`` (or ``class_names``); ``test/`` and
    ``val/`` must have the same ones. Without ``val/``, ``val_size`` of the training images are
    held out. ImageNet-style data (``train/`` and ``val/`` only, the test labels being private)
    is read with ``test_split="val"``: ``val/`` is then the test split, as in the papers'
    tables, and validation is held out from ``train/``. Files with torchvision's image
    extensions (jpg, jpeg, png, ppm, bmp, pgm, tif, tiff, webp) of any mode and size are read
    as RGB.

    Before a split is used, every file is decoded once to find unreadable ones (empty,
    truncated, not really an image), so training never crashes mid-epoch on a bad file.

    Training: ``RandomResizedCrop(image_size, scale=crop_scale)`` and a flip, or with
    ``train_scale`` the VGG paper's isotropic rescaling to a training scale S and a random
    ``image_size`` crop; evaluation: ``Resize(resize_size)`` of the shorter side and
    ``CenterCrop(image_size)``; all normalize with ImageNet statistics (what pretrained
    VGG/AlexNet weights expect), or with ``normalization: mean-rgb`` as the VGG paper did: 0-255
    pixels minus the training images' mean RGB value. ``pca_lighting`` adds the AlexNet/VGG
    random colour shift to training images. Both fit to a seeded sample of up to 10,000
    training images (:mod:`convrepro.data.pixel_stats`), cached in ``data_dir``.

    Test protocols (``model.test_protocol``: dense, multi-crop, multi-scale, ten-crop) need the
    test images larger than the network input; ``test_scale`` hands them over at shorter side Q.
    By default they are then center-cropped to Q x Q, a deviation from the papers (which
    evaluate the whole image) that lets images of any aspect ratio share a batch; it drops the
    sides of non-square images (1/4 of a 4:3 image). ``test_whole_image`` is the papers' exact
    protocol, at one test image per device.

    Args:
        data_dir: Folder with ``train/``, ``test/`` and optionally ``val/``.
        test_split: The folder that is the test split (``"val"`` for ImageNet).
        val_size: Training images held out for validation when there is no ``val/`` folder.
        image_size: Side of the square network input (224; e.g. 32 for tiny images).
        resize_size: Shorter side before the evaluation center crop; ``None`` means
            ``image_size / 0.875`` (256 for 224).
        crop_scale: Range of the training crop area as a fraction of the image (unused with
            ``train_scale``).
        train_scale: The VGG paper's training scale (sec. 3.1): ``S`` rescales every training
            image to shorter side S (single-scale training, the paper's 256 or 384),
            ``[Smin, Smax]`` to an S drawn per image (scale jittering, the paper's [256, 512]);
            a random ``image_size`` crop follows. ``None``: ``RandomResizedCrop``.
        test_scale: Shorter side Q of the test images for a test protocol, its largest Q; the
            protocol rescales to smaller Q on the device. ``None``: the evaluation center crop.
        test_whole_image: Hand over the whole rescaled test image rather than its central
            Q x Q square. Images of different aspect ratios cannot share a batch, so this needs
            one image per device: ``data.batch_size`` = number of devices when testing.
        on_bad_image: ``"skip"`` leaves unreadable files out with one warning listing them;
            ``"error"`` stops with one error listing them.
        class_names: The classes in label order; ``None``: the class folders of ``train/``.
            A trained model's ``test`` and ``predict`` take them from its checkpoint
            (:mod:`convrepro.data.trained_inputs`), so they need no ``train/`` folder; where
            ``train/`` exists it must hold exactly these classes.
        **kwargs: Everything else of :class:`~convrepro.data.base.BaseImageDataModule`
            (batch size, workers, seed, ...).
    """

    input_protocol = (*BaseImageDataModule.input_protocol, "image_size", "resize_size")
    channel_stats = IMAGENET_STATS
    normalizations = ("channel-std", "mean-rgb")

    def __init__(
        self,
        data_dir: str = "data/pets",
        val_size: int | float = 0.1,
        test_split: str = "test",
        image_size: int = 224,
        resize_size: int | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        train_scale: int | tuple[int, int] | None = None,
        test_scale: int | None = None,
        test_whole_image: bool = False,
        on_bad_image: Literal["skip", "error"] = "skip",
        class_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if image_size < 1:
            raise ConfigError(f"data.image_size must be positive, got {image_size}")
        if resize_size is not None and resize_size < image_size:
            raise ConfigError(
                f"data.resize_size={resize_size} is smaller than data.image_size={image_size}: "
                "the center crop would not fit"
            )
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ConfigError(
                f"data.crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}"
            )
        training_scale = TrainingScale(train_scale) if train_scale is not None else None
        if training_scale is not None and training_scale.low < image_size:
            raise ConfigError(
                f"data.train_scale={train_scale} is smaller than data.image_size={image_size}: "
                "the training crop would not fit"
            )
        if test_scale is not None and test_scale < 1:
            raise ConfigError(f"data.test_scale must be positive, got {test_scale}")
        if test_whole_image and test_scale is None:
            raise ConfigError("data.test_whole_image needs data.test_scale (the shorter side Q)")
        if test_split == "train":
            raise ConfigError("data.test_split cannot be the training folder")
        if on_bad_image not in ("skip", "error"):
            raise ConfigError(f"data.on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        super().__init__(data_dir=data_dir, val_size=val_size, **kwargs)
        self.image_size = image_size
        self.resize_size = resize_size or round(image_size / CENTER_CROP_FRACTION)
        self.crop_scale = tuple(crop_scale)
        self.training_scale = training_scale
        self.test_scale = test_scale
        self.test_whole_image = test_whole_image
        self.on_bad_image = on_bad_image
        self.test_split = test_split
        self._classes_given = class_names is not None
        self._class_names = self._discover_classes(class_names)

    @property
    def class_names(self) -> list[str]:
        """The classes in label order: the sorted class folder names of ``train/``."""
        return list(self._class_names)

    def train_transform(self) -> v2.Compose:
        """Random resized crop (or training scale S and random crop), flip, optional PCA
        lighting, normalize."""
        if self.training_scale is None:
            crop = [v2.RandomResizedCrop(self.image_size, scale=self.crop_scale)]
        else:
            crop = [self.training_scale, v2.RandomCrop(self.image_size)]
        return self._pipeline([*crop, *horizontal_flip(self.horizontal_flip)], augment=True)

    def eval_transform(self) -> v2.Compose:
        """Resize the shorter side, center crop, normalize."""
        steps = [v2.Resize(self.resize_size), v2.CenterCrop(self.image_size)]
        return self._pipeline(steps)

    def test_transform(self) -> v2.Compose:
        """Shorter side ``test_scale``, central square unless ``test_whole_image``, normalize;
        the evaluation transform if there is no ``test_scale``."""
        if self.test_scale is None:
            return self.eval_transform()
        square = [] if self.test_whole_image else [v2.CenterCrop(self.test_scale)]
        return self._pipeline([v2.Resize(self.test_scale), *square])

    def _fit_pixel_stats(self) -> PixelStats:
        """A seeded sample of the training images (validation held out), cached in
        ``data_dir``."""
        source = self._require_source("train")
        assert isinstance(source, ImageFiles)
        held_out = self._source("val") is None
        indices = self._hold_out(len(source))[0] if held_out else range(len(source))
        files = [source.samples[index][0] for index in indices]
        return folder_pixel_stats(files, seed=self.seed, cache_dir=self.data_dir)

    def _build_split(self, name: str) -> SplitView:
        split = super()._build_split(name)
        if name not in ("test", "predict"):  # one's own images are tested like the test split
            return split
        if self.test_whole_image and self.per_device_batch_size != 1:
            raise ConfigError(
                "data.test_whole_image hands over test images of different shapes, one per "
                f"device: set data.batch_size to {self.world_size} (the number of devices), "
                f"not {self.batch_size}"
            )
        return split

    def _sample_name(self, source_name: SourceName, index: int) -> str:
        source = self._source(source_name)
        assert isinstance(source, ImageFiles)
        return Path(os.path.relpath(source.samples[index][0], self.data_dir)).as_posix()

    def _discover_classes(self, given: list[str] | None) -> list[str]:
        root = Path(self.data_dir)
        train = root / "train"
        if given is not None:
            # A trained model's own classes: test and predict need no train/ (fit checks it).
            if len(set(given)) != len(given) or len(given) < 2:
                raise ConfigError(f"data.class_names must name two or more classes once: {given}")
            classes = list(given)
        elif not train.is_dir():
            missing = f"{root}/" if not root.is_dir() else f"{train}/"
            raise MissingFileError(f"no image folder at {missing}. {self._layout()}")
        else:
            classes = _class_folders(train)
            if len(classes) < 2:
                found = f"only one, {classes[0]}/" if classes else "none"
                raise ConfigError(
                    f"{train} needs a folder per class, at least two ({found}): put each "
                    f"class's images in a folder of its own, {train}/<class>/<images>."
                )
        for folder in (self._folder("val"), self._folder("test")):
            if folder is not None and folder.is_dir():
                self._check_classes(folder, classes, given is not None)
        return classes

    def _check_classes(self, folder: Path, classes: list[str], given: bool) -> None:
        """Refuse a split folder whose class folders are not ``classes``."""
        ours = "data.class_names" if given else "train"
        reference = (
            "the model's classes" if given else f"the class folders of {folder.parent}/train"
        )
        found = _class_folders(folder)
        only_ours = sorted(set(classes) - set(found))
        only_other = sorted(set(found) - set(classes))
        if only_ours or only_other:
            raise ConfigError(
                f"{reference} and the class folders of {folder} differ: only in {ours}: "
                f"{only_ours or 'none'}; only in {folder.name}: {only_other or 'none'}. "
                "Give both the same classes."
            )

    def _folder(self, name: SourceName) -> Path | None:
        """Where source ``name`` lives; no separate validation folder if it is the test split."""
        if name == "val" and self.test_split == "val":
            return None
        return Path(self.data_dir) / (self.test_split if name == "test" else name)

    def _layout(self) -> str:
        lines = [
            "Expected layout:",
            f"  {self.data_dir}/train/<class>/<image files>",
            f"  {self.data_dir}/{self.test_split}/<class>/<image files>   (data.test_split)",
        ]
        if self._folder("val") is not None:
            lines.append(
                f"  {self.data_dir}/val/<class>/<image files>   (optional; else data.val_size "
                "of train is held out)"
            )
        return "\n".join(lines)

    def _load_source(self, name: SourceName) -> Dataset | None:
        folder = self._folder(name)
        if folder is None or (name == "val" and not folder.is_dir()):
            return None
        if not folder.is_dir():
            raise MissingFileError(f"no {folder.name}/ folder in {self.data_dir}. {self._layout()}")
        if name == "train" and self._classes_given:
            self._check_classes(folder, self._class_names, given=True)
        class_to_idx = {class_name: i for i, class_name in enumerate(self._class_names)}
        samples = make_dataset(
            str(folder), class_to_idx, is_valid_file=_visible_image(folder), allow_empty=True
        )
        empty = sorted(set(class_to_idx) - {self._class_names[label] for _, label in samples})
        if empty:
            raise empty_class_folders(
                [folder / name for name in empty],
                "add images, or remove the class from every split",
            )
        bad = find_unreadable([path for path, _ in samples])
        if bad:
            self._report_bad_files(folder, bad)
        return ImageFiles([sample for sample in samples if sample[0] not in bad])

    def _report_bad_files(self, folder: Path, bad: dict[str, str]) -> None:
        summary = describe_unreadable(folder, bad)
        if self.on_bad_image == "error":
            raise ConfigError(
                f"{summary}\nFix or delete them, or set data.on_bad_image=skip to leave them out."
            )
        self._skip_unreadable(folder, bad)


def _is_hidden(name: str) -> bool:
    """Hidden and system entries (``.git``, ``.ipynb_checkpoints``, ``__MACOSX``, ``._x.jpg``)."""
    return name.startswith((".", "__"))


def _class_folders(split: Path) -> list[str]:
    """The class folder names of a split folder, sorted; hidden and system folders are none."""
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not _is_hidden(e.name))


def _visible_image(split: Path) -> Callable[[str], bool]:
    """Whether a file under ``split`` is an image to read: an image file name, and nothing on
    its path hidden (a notebook's ``.ipynb_checkpoints/`` copy of a class's images)."""

    def visible(path: str) -> bool:
        parts = Path(path).relative_to(split).parts
        return has_file_allowed_extension(path, IMG_EXTENSIONS) and not any(
            _is_hidden(part) for part in parts
        )

    return visible
