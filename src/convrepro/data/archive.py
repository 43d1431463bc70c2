"""Data sets that torchvision downloads as one archive (CIFAR-10, STL-10), and their fast path."""

from __future__ import annotations

import shutil
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from convrepro.data.base import BaseImageDataModule
from convrepro.data.device import DeviceBatches
from convrepro.data.pixel_stats import PixelStats, array_pixel_stats
from convrepro.data.samples import SourceName, SplitView
from convrepro.data.transforms import with_leading_steps
from convrepro.errors import MissingFileError


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
    image_size: ClassVar[int]  # side of the data set's square images
    normalizations = ("channel-std", "mean-rgb")

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
        (N,), on the CPU: views of its arrays, without copying or decoding image by image."""

    def predict_transform(self) -> v2.Compose:
        """Images of any size (``predict_path``): shorter side to the data set's image size,
        central square, then the test transform."""
        size = self.image_size
        return with_leading_steps(self.test_transform(), [v2.Resize(size), v2.CenterCrop(size)])

    def _view(
        self,
        source: Dataset,
        indices: Sequence[int],
        transform: Callable[[Any], Tensor],
        source_name: SourceName,
    ) -> SplitView:
        view = super()._view(source, indices, transform, source_name)
        if source_name != "predict":  # a torchvision data set, not image files
            view.pixels, view.labels = self._source_tensors(source)
        return view

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
        # contiguous: the batched steps gather from flattened NCHW images.
        images = images[index].contiguous().to(self.device)
        return DeviceBatches.from_loader(loader, images, labels[index].to(self.device))

    def prepare_data(self) -> None:
        """Download the archive if asked to (one archive holds every split). A download that
        fails takes back what it wrote: no empty or half-filled data folder is left behind.
        Predicting on one's own images (``predict_path``) needs no archive."""
        predicting = self.trainer is not None and self.trainer.state.fn == TrainerFn.PREDICTING
        if not self.download or (predicting and self.predict_path is not None):
            return
        data_dir = Path(self.data_dir)
        created = _outermost_missing(data_dir)
        existing = set() if created is not None else set(data_dir.iterdir())
        try:
            with self._explain_unavailable(downloading=True):
                self._torchvision_dataset("train", download=True)
        except MissingFileError:
            for path in [created] if created is not None else set(data_dir.iterdir()) - existing:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            raise

    def _training_images(self) -> np.ndarray:
        """The training split's images (validation held out), uint8 (N, H, W, 3)."""
        source = self._require_source("train")
        images, _ = self._source_tensors(source)
        train_indices, _ = self._hold_out(len(source))
        return images[train_indices].permute(0, 2, 3, 1).numpy()

    def _fit_pixel_stats(self) -> PixelStats:
        """Every pixel of the training split, cached in ``data_dir``."""
        return array_pixel_stats(self._training_images(), self.data_dir)

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


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet, if any."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing = path
    return missing
