"""Made-up CIFAR-10 in the real on-disk format, for benchmarks and smoke runs without the data.

The files are read by torchvision's own code, so everything downstream (datamodules, loaders,
the device path) runs exactly as on the real data set. Only torchvision's md5 check has to be
told to accept them (:func:`accepting_made_up_files`): made-up files cannot match the sums of
the real archive.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torchvision.datasets.cifar

from convrepro.data.cifar import CIFAR10_CLASSES

CIFAR10_TRAIN_FILES = 5  # data_batch_1 .. data_batch_5


def write_cifar10(
    root: str | Path, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0
) -> Path:
    """Write random images with balanced labels as ``<root>/cifar-10-batches-py/``; returns root.

    Same files and keys as the python version of CIFAR-10 (``data_batch_1..5``, ``test_batch``,
    ``batches.meta``; ``data`` an N x 3072 uint8 array of channel planes, ``labels`` a list).
    """
    if n_train < CIFAR10_TRAIN_FILES or n_test < 1:
        raise ValueError(
            f"need at least {CIFAR10_TRAIN_FILES} training images and 1 test image, "
            f"got n_train={n_train}, n_test={n_test}"
        )
    folder = Path(root) / torchvision.datasets.CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_files = [f"data_batch_{i + 1}" for i in range(CIFAR10_TRAIN_FILES)]
    for files, count in ((train_files, n_train), (["test_batch"], n_test)):
        labels = rng.permutation(np.arange(count) % len(CIFAR10_CLASSES))
        images = rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8)
        for name, rows in zip(files, np.array_split(np.arange(count), len(files)), strict=True):
            _write_pickle(folder / name, {"data": images[rows], "labels": labels[rows].tolist()})
    _write_pickle(folder / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})
    return Path(root)


@contextmanager
def accepting_made_up_files() -> Iterator[None]:
    """Inside this block torchvision's CIFAR-10 only checks that its files exist, not their md5."""
    original = torchvision.datasets.cifar.check_integrity

    def file_exists(path: str | Path, md5: str | None = None) -> bool:
        return os.path.isfile(path)

    torchvision.datasets.cifar.check_integrity = file_exists
    try:
        yield
    finally:
        torchvision.datasets.cifar.check_integrity = original


def _write_pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file)
