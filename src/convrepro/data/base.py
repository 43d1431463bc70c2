"""What every datamodule shares: splits, samplers, seeded augmentation, loaders, device layout.

A data set subclass only says where its images come from (:meth:`_load_source`), what its
classes are, and which transforms it uses. Everything that decides *which* sample is seen *when*
and *how it is augmented* lives here, so it is identical across data sets:

* The validation split is held out from the training images with a fixed seed; the test images
  are read by ``test_dataloader``/``predict_dataloader`` only.
* ``predict_path`` points ``predict`` at one's own image files instead of the test split.
* ``batch_size`` is the global batch size; each of the ``W`` devices gets ``batch_size / W``.
* Order and augmentation are pure functions of ``(seed, epoch, sample)``, independent of the
  number of workers and devices, so reruns and mid-epoch resumes see the same images
  (:mod:`convrepro.data.samples`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.fabric.utilities import suggested_max_num_workers
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from convrepro.data.images import (
    UNLABELLED,
    ImageFiles,
    describe_unreadable,
    find_unreadable,
    image_files_under,
)
from convrepro.data.normalisation import InputNormalisation, Normalization
from convrepro.data.samples import SourceName, SplitView
from convrepro.data.sampling import (
    SPLIT_STREAM,
    ShardedEvalBatchSampler,
    ShuffledShardSampler,
    check_val_size,
    derive_seed,
    torch_seed,
)
from convrepro.errors import ConfigError, MissingFileError

SplitName = Literal["train", "val", "test", "predict"]

# Splits that setup(stage) builds; "predict" is the test split unless predict_path is given.
_SPLITS_OF_STAGE: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("predict",),
    None: ("train", "val", "test"),
}
MAX_DEFAULT_WORKERS = 8


class BaseImageDataModule(InputNormalisation, LightningDataModule, ABC):
    """Base of the image-classification datamodules (train / val / test / predict).

    Args:
        data_dir: Folder holding the data set (created by downloads where there are any).
        val_size: Validation images held out from the training images: a count (``5000``) or
            a fraction (``0.1``) of them, chosen by ``seed``. ``0`` trains on all training
            images and skips validation (for final runs). The test split is never used for it.
        batch_size: Global batch size, summed over all devices (the papers' 256 stays 256 on
            any number of GPUs). Each device gets ``batch_size / world_size``
            (:attr:`per_device_batch_size`); it must divide evenly.
        num_workers: Loader processes per device; ``None`` picks from the CPUs available to
            this process and the devices per node (at most 8).
        pin_memory: Pin host memory for faster copies (only takes effect when CUDA exists).
        persistent_workers: Keep workers alive between epochs (when ``num_workers > 0``).
        seed: Seed of the validation split, the shuffling and the augmentation. ``None``
            follows the run's seed (``seed_everything``, read from ``PL_GLOBAL_SEED``; 0 if
            unset), so repeating an experiment with another seed also varies the data.
        horizontal_flip: Random left-right flips (p = 0.5) during training.
        predict_path: ``predict`` on one's own images instead of the test split: an image file
            or a folder, searched recursively, of unlabelled images in any format the image
            folders read. Each gets :meth:`predict_transform` (the test transform, sized for
            the network). Unreadable files are listed and skipped.
        normalization: The input scale (:mod:`convrepro.data.normalisation`): ``channel-std``
            (today's unit scale), ``mean-rgb`` (VGG's 0-255 minus the mean RGB value) or
            ``mean-image`` (AlexNet's 0-255 minus the mean image); ``None``: the data set's
            default. Fitted on the training split, carried in checkpoints.
        pca_lighting: Std of AlexNet's PCA colour shift on training images
            (:class:`~convrepro.data.augment.PCALighting`; the papers' 0.1); ``0``: off.

    Training batches are shuffled per epoch and the last incomplete batch is dropped: a tiny
    last batch gives noisy BatchNorm statistics and an odd-sized step, and as the permutation
    changes every epoch no image is systematically left out. Evaluation loaders never drop and
    count every image exactly once over all devices (see
    :class:`~convrepro.data.sampling.ShardedEvalBatchSampler`), so the Trainer must run with
    ``use_distributed_sampler=False`` (the CLI's default).

    After :meth:`setup`, ``splits[name]`` is the :class:`SplitView` of each built split and
    ``train_sampler`` the (resumable) training sampler.
    """

    #: The ``__init__`` settings that decide what the network's input looks like (size, crop,
    #: preprocessing): ``test`` and ``predict`` of a trained model take them from its checkpoint.
    input_protocol: ClassVar[tuple[str, ...]] = ("normalization",)

    def __init__(
        self,
        data_dir: str,
        val_size: int | float,
        batch_size: int = 256,
        num_workers: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int | None = None,
        horizontal_flip: bool = True,
        predict_path: str | None = None,
        normalization: Normalization | None = None,
        pca_lighting: float = 0.0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 or null, got {num_workers}")
        check_val_size(val_size)
        self._init_normalisation(normalization, pca_lighting)
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self.val_size = val_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.horizontal_flip = horizontal_flip
        self.predict_path = predict_path
        self.splits: dict[str, SplitView] = {}
        #: Unreadable image files left out so far, with the reason: the run folder lists them.
        self.skipped_files: dict[str, str] = {}
        self.train_sampler: ShuffledShardSampler | None = None
        self._sources: dict[str, Dataset | None] = {}

    # What a data set provides.

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Class names, in label order; known right after ``__init__``."""

    @property
    def num_classes(self) -> int:
        """Number of classes; known right after ``__init__`` (the CLI links it to the model)."""
        return len(self.class_names)

    @abstractmethod
    def train_transform(self) -> Callable[[Any], Tensor]:
        """Image -> normalized float tensor, with augmentation."""

    @abstractmethod
    def eval_transform(self) -> Callable[[Any], Tensor]:
        """Image -> normalized float tensor, deterministic."""

    def test_transform(self) -> Callable[[Any], Tensor]:
        """Test image -> what the test step takes; by default the evaluation transform."""
        return self.eval_transform()

    def predict_transform(self) -> Callable[[Any], Tensor]:
        """Image file of any size (``predict_path``) -> what the network takes; by default the
        test transform."""
        return self.test_transform()

    @abstractmethod
    def _load_source(self, name: SourceName) -> Dataset | None:
        """The untransformed ``(image, label)`` data set ``name``; ``None`` for ``"val"`` when
        the data set has no separate validation images (it is then held out from train)."""

    def _sample_name(self, source_name: SourceName, index: int) -> str:
        """A readable id of sample ``index`` of a source, for prediction files."""
        return f"{source_name}/{index:05d}"

    # Device layout.

    @property
    def world_size(self) -> int:
        """Number of processes sharing the data: the attached Trainer's, else 1."""
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        """This process's global rank: the attached Trainer's, else 0."""
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def per_device_batch_size(self) -> int:
        """``batch_size`` divided over the devices."""
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is the global batch size and must divide "
                f"evenly over the {self.world_size} devices: use a multiple of {self.world_size}"
            )
        return self.batch_size // self.world_size

    @property
    def resolved_num_workers(self) -> int:
        """``num_workers``, or the default picked from the CPUs and devices per node."""
        if self.num_workers is not None:
            return self.num_workers
        devices_per_node = self.trainer.num_devices if self.trainer is not None else 1
        return min(MAX_DEFAULT_WORKERS, suggested_max_num_workers(devices_per_node))

    # Lightning hooks.

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (once) and the training sampler."""
        self._check_trainer_sampling()
        per_device = self.per_device_batch_size  # fails before any loading if it does not divide
        for name in map(self._split_key, _SPLITS_OF_STAGE[stage]):
            if name not in self.splits:
                self.splits[name] = self._build_split(name)
        if "train" in _SPLITS_OF_STAGE[stage]:
            train_size = len(self.splits["train"])
            self._check_batch_fits(train_size, per_device)
            self.train_sampler = ShuffledShardSampler(
                train_size, seed=self.seed, num_replicas=self.world_size, rank=self.rank
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by :attr:`train_sampler`, full batches only."""
        if self.train_sampler is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        return self._loader(
            self._split("train"),
            sampler=self.train_sampler,
            batch_size=self.per_device_batch_size,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The held-out (or separate) validation images, in order; ``[]`` if ``val_size=0``."""
        split = self._split("val")
        return self._eval_loader(split) if len(split) else []

    def test_dataloader(self) -> DataLoader:
        """The test images, in order."""
        return self._eval_loader(self._split("test"))

    def predict_dataloader(self) -> DataLoader:
        """The ``predict_path`` images, else the test images, in order (Lightning records the
        sample index of each prediction)."""
        return self._eval_loader(self._split("predict"))

    def sample_names(self, split: SplitName) -> list[str]:
        """Ids of the samples of a built split, in dataset order (file paths for image folders
        and ``predict_path``, ``"train/00042"``-style source ids otherwise); ``"predict"`` is
        the test split without a ``predict_path``."""
        view = self._split(split)
        if view.source_name == "predict":
            return [view.source.samples[index][0] for index in view.indices]
        return [self._sample_name(view.source_name, index) for index in view.indices]

    def sample_shape(self, split: SplitName) -> tuple[int, ...]:
        """The shape of one image of a built split as the model gets it, e.g. ``(3, 32, 32)``."""
        return tuple(self._split(split)[0][0].shape)

    def sample_images(self, split: SplitName, count: int) -> list[Any]:
        """The first ``count`` images of a built split as stored (PIL images here), before any
        transform: what a person looks at next to the predictions."""
        view = self._split(split)
        return [view.source[index][0] for index in view.indices[:count]]

    # Internals.

    def _split_key(self, name: str) -> str:
        return "test" if name == "predict" and self.predict_path is None else name

    def _split(self, name: str) -> SplitView:
        key = self._split_key(name)
        if key not in self.splits:
            raise RuntimeError(f"the {name!r} split is not built yet: call setup() first")
        return self.splits[key]

    def _source(self, name: SourceName) -> Dataset | None:
        if name not in self._sources:
            self._sources[name] = self._load_source(name)
        return self._sources[name]

    def _build_split(self, name: str) -> SplitView:
        if name == "predict":
            files = self._predict_files()
            return self._view(files, range(len(files)), self.predict_transform(), "predict")
        transform = {"train": self.train_transform, "test": self.test_transform}.get(
            name, self.eval_transform
        )()
        if name == "test" or self._source("val") is not None:
            source = self._require_source(name)
            return self._view(source, range(len(source)), transform, name)
        train = self._require_source("train")
        train_indices, val_indices = self._hold_out(len(train))
        indices = train_indices if name == "train" else val_indices
        return self._view(train, indices, transform, "train")

    def _predict_files(self) -> ImageFiles:
        """The readable image files of ``predict_path``, unlabelled."""
        path = Path(str(self.predict_path))
        if not path.exists():
            raise MissingFileError(f"data.predict_path={path}: no such file or folder")
        files = image_files_under(path)
        bad = find_unreadable(files)
        if bad:
            self._skip_unreadable(path, bad)
        readable = [file for file in files if file not in bad]
        if not readable:
            found = (
                f"none of its {len(files)} image files is readable"
                if files
                else ("no image files in it or any folder below it")
            )
            raise MissingFileError(f"data.predict_path={path}: {found}")
        return ImageFiles([(file, UNLABELLED) for file in readable])

    def _skip_unreadable(self, where: str | Path, bad: dict[str, str]) -> None:
        """Leave ``bad`` files out, saying so on the console (not as a Python warning, which
        cluster scripts often filter away); the run folder's ``skipped_images.csv`` lists them."""
        self.skipped_files.update(bad)
        rank_zero_info(f"Skipping {describe_unreadable(where, bad)}")

    def _require_source(self, name: SourceName) -> Dataset:
        source = self._source(name)
        if source is None:
            raise RuntimeError(f"{type(self).__name__} has no {name!r} data")
        return source

    def _view(
        self,
        source: Dataset,
        indices: Sequence[int],
        transform: Callable[[Any], Tensor],
        source_name: SourceName,
    ) -> SplitView:
        return SplitView(source, indices, transform, seed=self.seed, source_name=source_name)

    def _hold_out(self, num_images: int) -> tuple[list[int], list[int]]:
        """(train, val) indices into the training images, both sorted."""
        if isinstance(self.val_size, float):
            val_count = round(self.val_size * num_images)
        else:
            val_count = self.val_size
        if val_count >= num_images:
            raise ConfigError(
                f"data.val_size={self.val_size} leaves no training images out of "
                f"{num_images}: lower it"
            )
        generator = torch.Generator().manual_seed(torch_seed(derive_seed(self.seed, SPLIT_STREAM)))
        order = torch.randperm(num_images, generator=generator)
        return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())

    def _eval_loader(self, split: SplitView) -> DataLoader:
        batches = ShardedEvalBatchSampler(
            SequentialSampler(split),
            self.per_device_batch_size,
            num_replicas=self.world_size,
            rank=self.rank,
        )
        return self._loader(split, batch_sampler=batches)

    def _loader(self, split: SplitView, **sampling: Any) -> DataLoader:
        num_workers = self.resolved_num_workers
        return DataLoader(
            split,
            num_workers=num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and num_workers > 0,
            **sampling,
        )

    def _check_batch_fits(self, train_size: int, per_device: int) -> None:
        # With drop_last, a batch larger than a device's shard would train on nothing.
        shard_size = train_size // self.world_size
        if per_device <= shard_size:
            return
        detail = f" ({per_device} per device, {shard_size} images per device)"
        raise ConfigError(
            f"batch size {self.batch_size} is larger than the {train_size}-image training "
            f"split{detail if self.world_size > 1 else ''}: lower data.batch_size"
        )

    def _check_trainer_sampling(self) -> None:
        # Lightning would wrap our samplers in a DistributedSampler and shard everything twice.
        connector = getattr(self.trainer, "_accelerator_connector", None)
        if connector is not None and connector.use_distributed_sampler and connector.is_distributed:
            raise ConfigError(
                f"{type(self).__name__} shards the data over devices itself: run the Trainer "
                "with use_distributed_sampler=False (trainer.use_distributed_sampler: false)"
            )
