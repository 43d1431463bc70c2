"""What the papers fit to a training split's pixels: their mean RGB value and RGB principal axes.

* The VGG paper's input normalisation subtracts "the mean RGB value, computed on the training
  set, from each pixel" (sec. 2.1), on 0-255 pixels.
* AlexNet's PCA colour augmentation (:class:`~convrepro.data.augment.PCALighting`) shifts colours
  along the principal axes of the training set's RGB values; VGG reuses it (sec. 3.1).

Both come from one pass over the pixels (:class:`RGBMoments`). Array data sets (CIFAR-10,
STL-10) use every pixel of the training split; image folders a fixed, seeded sample of their
training images (:data:`FOLDER_SAMPLE_IMAGES`), since decoding all of ImageNet for three means
would take longer than an epoch. The result is cached next to the data in
``pixel_stats_<hash>.json`` (this module owns that format), keyed by what it was fitted to, and
travels in the datamodule's checkpoint state so that ``test`` and ``predict`` need no training
images.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from convrepro.files import write_atomic

# Pixels per chunk of the covariance pass: bounds the float64 copy to ~25 MB.
PIXELS_PER_CHUNK = 1 << 20
#: Training images an image folder's statistics are fitted to, drawn by seed; the mean and the
#: 3x3 covariance of ~1e9 pixels of 10,000 images differ from the whole set's in the third digit.
FOLDER_SAMPLE_IMAGES = 10_000


@dataclass(frozen=True)
class RGBPCA:
    """Principal axes of RGB pixel values scaled to [0, 1].

    ``eigenvalues`` are the variances along the axes, largest first; ``eigenvectors[i]`` is the
    unit RGB direction of ``eigenvalues[i]``.
    """

    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class PixelStats:
    """Mean RGB value (in [0, 1]) and RGB principal axes of a training split's pixels, and how
    many images they were fitted to."""

    mean: tuple[float, float, float]
    pca: RGBPCA
    images: int

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint or the cache file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> PixelStats:
        """The inverse of :meth:`as_dict`."""
        pca = stored["pca"]
        return cls(
            mean=tuple(stored["mean"]),
            pca=RGBPCA(
                eigenvalues=tuple(pca["eigenvalues"]),
                eigenvectors=tuple(tuple(vector) for vector in pca["eigenvectors"]),
            ),
            images=int(stored["images"]),
        )


class RGBMoments:
    """Running sums of RGB pixel values for their mean and covariance, in float64."""

    def __init__(self) -> None:
        self.pixels, self.images = 0, 0
        self.total, self.outer = np.zeros(3), np.zeros((3, 3))

    def add(self, images: np.ndarray) -> None:
        """Add uint8 RGB pixels shaped (..., 3): one image (H, W, 3) or many (N, H, W, 3)."""
        if images.dtype != np.uint8 or images.shape[-1:] != (3,):
            raise ValueError(
                f"pixel statistics need uint8 RGB pixels shaped (..., H, W, 3), got "
                f"{images.dtype} {images.shape}"
            )
        self.images += 1 if images.ndim == 3 else int(np.prod(images.shape[:-3]))
        pixels = images.reshape(-1, 3)
        for start in range(0, len(pixels), PIXELS_PER_CHUNK):
            chunk = pixels[start : start + PIXELS_PER_CHUNK].astype(np.float64) / 255.0
            self.total += chunk.sum(axis=0)
            self.outer += chunk.T @ chunk
        self.pixels += len(pixels)

    def stats(self) -> PixelStats:
        """The mean and principal axes of everything added."""
        if self.pixels < 2:
            raise ValueError("pixel statistics need at least two pixels")
        mean = self.total / self.pixels
        covariance = (self.outer - self.pixels * np.outer(mean, mean)) / (self.pixels - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending, vectors in columns
        order = eigenvalues.argsort()[::-1]
        pca = RGBPCA(
            eigenvalues=tuple(float(value) for value in eigenvalues[order].clip(min=0.0)),
            eigenvectors=tuple(tuple(float(x) for x in eigenvectors[:, i]) for i in order),
        )
        return PixelStats(mean=tuple(float(x) for x in mean), pca=pca, images=self.images)


def pixel_stats(images: np.ndarray) -> PixelStats:
    """:class:`PixelStats` of uint8 images shaped (N, H, W, 3)."""
    if images.ndim != 4:
        raise ValueError(f"pixel_stats needs images shaped (N, H, W, 3), got {images.shape}")
    moments = RGBMoments()
    moments.add(images)
    return moments.stats()


def array_pixel_stats(images: np.ndarray, cache_dir: str | Path) -> PixelStats:
    """:func:`pixel_stats` of every pixel of ``images``, cached under a hash of the pixels
    themselves: each training split (another ``val_size`` or seed holds out other images) has its
    own file, and changed data is never read from a stale one."""
    digest = hashlib.blake2b(str(images.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(images).data)
    return _cached(digest.hexdigest(), lambda: pixel_stats(images), cache_dir)


def folder_pixel_stats(
    files: Sequence[str], seed: int, cache_dir: str | Path, limit: int = FOLDER_SAMPLE_IMAGES
) -> PixelStats:
    """:class:`PixelStats` of ``limit`` image files drawn from ``files`` by ``seed`` (all of
    them if there are fewer), each decoded as RGB at its stored size; cached under a hash of the
    drawn files' paths, sizes and modification times."""
    chosen = sorted(files)
    if len(chosen) > limit:
        order = torch.randperm(len(chosen), generator=torch.Generator().manual_seed(seed))
        chosen = sorted(chosen[i] for i in order[:limit].tolist())
    digest = hashlib.blake2b(f"{len(files)}:{limit}".encode(), digest_size=8)
    for file in chosen:
        stat = os.stat(file)
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())

    def compute() -> PixelStats:
        moments = RGBMoments()
        for file in chosen:
            with Image.open(file) as image:
                moments.add(np.asarray(image.convert("RGB")))
        return moments.stats()

    return _cached(digest.hexdigest(), compute, cache_dir)


def _cached(key: str, compute: Callable[[], PixelStats], cache_dir: str | Path) -> PixelStats:
    """``compute()``, kept in ``<cache_dir>/pixel_stats_<key>.json``; a read-only ``cache_dir``
    only costs recomputing it next time."""
    path = Path(cache_dir) / f"pixel_stats_{key}.json"
    if path.is_file():
        return PixelStats.from_dict(json.loads(path.read_text()))
    stats = compute()
    try:
        write_atomic(path, json.dumps(stats.as_dict(), indent=2) + "\n")
    except OSError as error:
        warnings.warn(f"could not cache the pixel statistics in {path} ({error})", stacklevel=2)
    return stats
