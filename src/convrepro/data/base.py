"""What every datamodule shares: splits, samplers, seeded augmentation, loaders, device layout.

A data set subclass only says where its images come from (:meth:`_load_source`), what its
classes are, and which transforms it uses. Everything that decides *which* sample is seen *when*
and *how it is augmented* lives here, so it is identical across data sets:

* The validation split is held out from the training images with a fixed seed; the test images
  are read by ``test_dataloader``/``predict_dataloader`` only.
* ``batch_size`` is the global batch size; each of the ``W`` devices gets ``batch_size / W``.
* Order and augmentation are pure functions of ``(seed, epoch, sample)``, independent of the
  number of workers and devices, so reruns and mid-epoch resumes see the same images.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from lightning.fabric.utilities import suggested_max_num_workers
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from convrepro.data.device import DeviceBatches
from convrepro.data.sampling import (
    AUGMENT_STREAM,
    SPLIT_STREAM,
    ShardedEvalBatchSampler,
    ShuffledShardSampler,
    derive_seed,
)
from convrepro.errors import ConfigError, MissingFileError

SourceName = Literal["train", "val", "test"]
SplitName = Literal["train", "val", "test", "predict"]

# Splits that setup(stage) builds; "predict" is the test split.
_SPLITS_OF_STAGE: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}
MAX_DEFAULT_WORKERS = 8


class SplitView(Dataset):
    """One split of a source data set: some of its samples, with a seeded transform.

    Keys are sample positions, or ``(epoch, position)`` pairs from
    :class:`~convrepro.data.sampling.ShuffledShardSampler`. The transform runs under a CPU RNG
    seeded from ``(seed, epoch, source index)``, so a sample's augmentation does not depend on
    which worker or process loads it, or on what was loaded before. The global RNG is restored
    afterwards (dropout in the main process must not be reseeded).

    ``source`` keeps the raw data (torchvision's CIFAR-10/STL-10 keep it as a uint8 array in
    ``.data``) and ``indices`` says which of its samples belong to this split.
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

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        epoch, position = key if isinstance(key, tuple) else (0, key)
        index = self.indices[position]
        image, label = self.source[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(
                derive_seed(self.seed, AUGMENT_STREAM, epoch, index)
            )
            return self.transform(image), int(label)


class BaseImageDataModule(LightningDataModule, ABC):
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

    Training batches are shuffled per epoch and the last incomplete batch is dropped: a tiny
    last batch gives noisy BatchNorm statistics and an odd-sized step, and as the permutation
    changes every epoch no image is systematically left out. Evaluation loaders never drop and
    count every image exactly once over all devices (see
    :class:`~convrepro.data.sampling.ShardedEvalBatchSampler`), so the Trainer must run with
    ``use_distributed_sampler=False`` (the CLI's default).

    After :meth:`setup`, ``splits[name]`` is the :class:`SplitView` of each built split and
    ``train_sampler`` the (resumable) training sampler.
    """

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
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 or null, got {num_workers}")
        _check_val_size(val_size)
        self.save_hyperparameters(logger=False)
        self.data_dir = data_dir
        self.val_size = val_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.horizontal_flip = horizontal_flip
        self.splits: dict[str, SplitView] = {}
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
        for name in _SPLITS_OF_STAGE[stage]:
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
        """The test images, in order (Lightning records the sample index of each prediction)."""
        return self._eval_loader(self._split("test"))

    def sample_names(self, split: SplitName) -> list[str]:
        """Ids of the samples of a built split, in dataset order (file paths for image folders,
        ``"train/00042"``-style source ids otherwise); ``"predict"`` means the test split."""
        view = self._split(split)
        return [self._sample_name(view.source_name, index) for index in view.indices]

    # Internals.

    def _split(self, name: str) -> SplitView:
        key = "test" if name == "predict" else name
        if key not in self.splits:
            raise RuntimeError(f"the {name!r} split is not built yet: call setup() first")
        return self.splits[key]

    def _source(self, name: SourceName) -> Dataset | None:
        if name not in self._sources:
            self._sources[name] = self._load_source(name)
        return self._sources[name]

    def _build_split(self, name: str) -> SplitView:
        transform = self.train_transform() if name == "train" else self.eval_transform()
        if name == "test" or self._source("val") is not None:
            source = self._require_source(name)
            return self._view(source, range(len(source)), transform, name)
        train = self._require_source("train")
        train_indices, val_indices = self._hold_out(len(train))
        indices = train_indices if name == "train" else val_indices
        return self._view(train, indices, transform, "train")

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
        generator = torch.Generator().manual_seed(derive_seed(self.seed, SPLIT_STREAM))
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


class ArchiveDataModule(BaseImageDataModule):
    """A torchvision data set that comes as one downloadable archive (CIFAR-10, STL-10).

    Args:
        download: Download the archive into ``data_dir`` if it is not there yet (in
            ``prepare_data``, once per node). With ``False``, missing files are an error that
            says where to put them.
        device_resident: The fast path: hold the images as one uint8 tensor on the training
            device and augment whole batches there (:mod:`convrepro.data.device`), with no
            workers and no per-image PIL work. Same splits, order, shards and augmentation
            distribution as the DataLoader path; the random draws differ (see there).
            Training, validation and test batches come from the device; ``predict`` keeps the
            DataLoader, through which Lightning records which sample each prediction is.
    """

    title: ClassVar[str]  # human-readable name, e.g. "CIFAR-10"
    folder: ClassVar[str]  # what the archive extracts to inside data_dir
    url: ClassVar[str]

    def __init__(
        self, *, download: bool = True, device_resident: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.download = download
        self.device_resident = device_resident

    @abstractmethod
    def _torchvision_dataset(self, split: Literal["train", "test"], download: bool) -> Dataset:
        """torchvision's data set for ``split``, without transforms."""

    @abstractmethod
    def _source_tensors(self, source: Dataset) -> tuple[Tensor, Tensor]:
        """All images of a torchvision data set as uint8 (N, 3, H, W) and its labels as int64
        (N,), on the CPU, without decoding image by image."""

    @property
    def device(self) -> torch.device:
        """Where ``device_resident`` batches are made: the Trainer's device, else the CPU."""
        return (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        """Shuffled by :attr:`train_sampler`, full batches only; from the device if
        ``device_resident``."""
        return self._on_device(super().train_dataloader())

    def val_dataloader(self) -> DataLoader | DeviceBatches | list:
        """The held-out validation images, in order; from the device if ``device_resident``."""
        loader = super().val_dataloader()
        return self._on_device(loader) if loader else loader

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        """The test images, in order; from the device if ``device_resident``."""
        return self._on_device(super().test_dataloader())

    def _on_device(self, loader: DataLoader) -> DataLoader | DeviceBatches:
        """``loader`` itself, or with ``device_resident`` the same batches made on the device."""
        if not self.device_resident:
            return loader
        split = loader.dataset
        images, labels = self._source_tensors(split.source)
        index = torch.as_tensor(split.indices, dtype=torch.long)
        return DeviceBatches.from_loader(
            loader, images[index].to(self.device), labels[index].to(self.device)
        )

    def prepare_data(self) -> None:
        """Download the archive if asked to (one archive holds every split)."""
        if self.download:
            with self._explain_unavailable(downloading=True):
                self._torchvision_dataset("train", download=True)

    def _load_source(self, name: SourceName) -> Dataset | None:
        if name == "val":
            return None
        with self._explain_unavailable(downloading=False):
            return self._torchvision_dataset(name, download=False)

    @contextmanager
    def _explain_unavailable(self, downloading: bool) -> Iterator[None]:
        """Turn torchvision's terse 'not found' and network errors into what to do about them."""
        folder = Path(self.data_dir).resolve() / self.folder
        by_hand = (
            f"download {self.url} on a machine with internet and extract it into "
            f"{folder.parent}/ (it creates {self.folder}/), or copy the {self.folder}/ folder "
            "from another machine"
        )
        try:
            yield
        except OSError as error:
            if not downloading:
                raise
            # URLError, timeouts, refused connections, DNS failures (all OSError)
            raise MissingFileError(
                f"could not download {self.title} ({error}). Either {by_hand}."
            ) from error
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            automatic = (
                "call prepare_data() first (the Trainer does), which downloads it"
                if self.download
                else "set data.download=true on a machine with internet"
            )
            raise MissingFileError(
                f"{self.title} is missing or incomplete in {folder}/. Either {automatic}, "
                f"or {by_hand}."
            ) from error


def _check_val_size(val_size: int | float) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, int | float):
        raise TypeError(f"data.val_size must be a count or a fraction, got {val_size!r}")
    if isinstance(val_size, float) and not 0.0 <= val_size < 1.0:
        raise ConfigError(
            f"data.val_size={val_size} as a fraction must be in [0, 1); "
            "give a whole number for a count of images"
        )
    if isinstance(val_size, int) and val_size < 0:
        raise ConfigError(f"data.val_size must not be negative, got {val_size}")
