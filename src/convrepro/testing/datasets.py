"""Small made-up data sets written in the real on-disk formats.

CIFAR-10 python pickles, STL-10 binaries and image folders (every image kind the loaders meet,
bad files on request), read back by the same code that reads the real data sets: for tests,
notebooks and the benchmark when the real data is not on disk.

With ``learnable=True`` an image's class is visible in it (a class colour and a class stripe
direction, plus noise and brightness changes), so a tiny network beats chance within an epoch
or two. With ``photo_like=True`` the images have no class content but the pixel statistics of
photographs (see :func:`make_images`), for measuring what a network does at initialisation on
realistic inputs. Everything is a pure function of the arguments (``seed`` included).

torchvision checks the md5 sums of CIFAR-10/STL-10 files, which made-up files cannot match:
see :mod:`convrepro.testing.integrity` for the one way to skip that check.
"""

from __future__ import annotations

import colorsys
import pickle
import struct
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convrepro.data.cifar import CIFAR10_CLASSES
from convrepro.data.stl10 import STL10_CLASSES

CIFAR_TRAIN_BATCHES = 5
STL10_FOLDS = 10

# What make_image_folder(..., with_bad_files=True) adds to train/<first class>/.
BAD_FILES = ("truncated.jpg", "empty.jpg", "notes.jpg")
# The image kinds make_image_folder cycles through: (file suffix, description).
IMAGE_KINDS = (
    ("jpg", "RGB JPEG"),
    ("png", "RGB PNG"),
    ("png", "grayscale PNG"),
    ("png", "RGBA PNG"),
    ("png", "palette PNG with transparency"),
    ("jpg", "CMYK JPEG"),
    ("png", "16-bit grayscale PNG"),
    ("bmp", "odd-size 195x33 BMP"),
    ("webp", "RGB WebP"),
    ("tiff", "LA TIFF"),
)


def make_images(
    labels: Sequence[int],
    num_classes: int,
    size: tuple[int, int],
    *,
    learnable: bool = True,
    photo_like: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """``len(labels)`` RGB images as an N x H x W x 3 uint8 array.

    Learnable images: the class colour (hue ``label / num_classes``) modulated by stripes at
    angle ``label * pi / num_classes``, with random brightness and pixel noise. Photo-like
    images (``photo_like``, unrelated to the labels): a random colour cast, smooth shading of
    4x4 random values (mostly shared by the channels, as in photographs) and fine noise, with
    pixel values spread like CIFAR-10's and ImageNet's (mean about 120, standard deviation
    about 60 over all pixels). Otherwise uniform noise, unrelated to the labels.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    count = len(labels)
    if photo_like:
        return _photo_like(rng, count, height, width)
    if not learnable:
        return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
    images = np.empty((count, height, width, 3), dtype=np.float64)
    for i, label in enumerate(labels):
        colour = np.array(colorsys.hsv_to_rgb(label / num_classes, 0.8, 0.9))
        angle = label * np.pi / num_classes
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * 4 * (rows * np.sin(angle) + cols * np.cos(angle)) + phase)
        brightness = rng.uniform(0.7, 1.1)
        images[i] = brightness * colour * (0.7 + 0.3 * stripes)[..., None]
    images += rng.normal(0.0, 0.08, images.shape)
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def _photo_like(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    cast = 120.0 + rng.normal(0.0, 30.0, (count, 1, 1, 1)) + rng.normal(0.0, 10.0, (count, 1, 1, 3))
    shading = 56.0 * rng.standard_normal((count, 1, 4, 4)) + 12.0 * rng.standard_normal(
        (count, 3, 4, 4)
    )
    smooth = F.interpolate(
        torch.from_numpy(shading), size=(height, width), mode="bicubic", align_corners=False
    )
    images = (
        cast + smooth.permute(0, 2, 3, 1).numpy() + rng.normal(0.0, 8.0, (count, height, width, 3))
    )
    return np.clip(images, 0, 255).round().astype(np.uint8)


def balanced_labels(count: int, num_classes: int, seed: int) -> np.ndarray:
    """Every class equally often (up to one), in a seeded random order."""
    return np.random.default_rng(seed).permutation(np.arange(count) % num_classes)


def make_cifar10(
    root: str | Path,
    n_train: int = 500,
    n_test: int = 100,
    *,
    learnable: bool = True,
    photo_like: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``<root>/cifar-10-batches-py/`` like the real CIFAR-10 python version; returns root.

    Same files (``data_batch_1..5``, ``test_batch``, ``batches.meta``) and same pickles as the
    originals, which were written by Python 2: dict keys are Python 2 ``str`` (read back as
    ``str`` with ``encoding="latin1"``, as torchvision does, and as ``bytes`` with
    ``encoding="bytes"``), ``data`` is an N x 3072 uint8 array (channel planes, row-major),
    ``labels`` a list of ints. The training images are spread over the five batches.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = len(CIFAR10_CLASSES)
    for name, count, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        labels = balanced_labels(count, num_classes, split_seed)
        images = make_images(
            labels,
            num_classes,
            (32, 32),
            learnable=learnable,
            photo_like=photo_like,
            seed=split_seed,
        )
        planes = images.transpose(0, 3, 1, 2).reshape(count, 3072)
        if name == "train":
            batches = np.array_split(np.arange(count), CIFAR_TRAIN_BATCHES)
            files = [f"data_batch_{b + 1}" for b in range(CIFAR_TRAIN_BATCHES)]
        else:
            batches, files = [np.arange(count)], ["test_batch"]
        for filename, rows in zip(files, batches, strict=True):
            _write_py2_pickle(
                folder / filename,
                {
                    b"batch_label": f"{filename} (made up)".encode(),
                    b"labels": [int(label) for label in labels[rows]],
                    b"data": planes[rows],
                    b"filenames": [f"image_{row:05d}.png".encode() for row in rows],
                },
            )
    _write_py2_pickle(
        folder / "batches.meta",
        {
            b"num_cases_per_batch": -(-n_train // CIFAR_TRAIN_BATCHES),
            b"label_names": [name.encode() for name in CIFAR10_CLASSES],
            b"num_vis": 3072,
        },
    )
    return Path(root)


def make_cifar10_folders(
    root: str | Path,
    n_train: int = 500,
    n_test: int = 100,
    *,
    image_format: str = "PNG",
    seed: int = 0,
) -> Path:
    """Write ``<root>/{train,test}/<class>/<n>.<ext>``: CIFAR-10 as class folders (Kaggle's PNG
    layout; JPEG like the re-encoded copies). The images are those :func:`make_cifar10` writes
    with the same ``seed`` and counts, so lossless folders decode to the pickles' pixels, in the
    pickles' order within each class. Returns root."""
    suffix = {"PNG": "png", "JPEG": "jpg"}[image_format]
    for name, count, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        labels = balanced_labels(count, len(CIFAR10_CLASSES), split_seed)
        images = make_images(labels, len(CIFAR10_CLASSES), (32, 32), seed=split_seed)
        for class_name in CIFAR10_CLASSES:
            (Path(root) / name / class_name).mkdir(parents=True, exist_ok=True)
        for row, (label, image) in enumerate(zip(labels, images, strict=True)):
            path = Path(root) / name / CIFAR10_CLASSES[label] / f"{row:05d}.{suffix}"
            path.write_bytes(_encode(image, image_format))
    return Path(root)


def make_stl10(
    root: str | Path,
    n_train: int = 100,
    n_test: int = 50,
    n_unlabeled: int = 0,
    *,
    learnable: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``<root>/stl10_binary/`` like the real STL-10 binary version; returns root.

    ``*_X.bin``: raw uint8, per image 3 channel planes of 96 x 96 stored column-major (the
    original MATLAB order, which torchvision transposes back); ``*_y.bin``: uint8 labels 1-10;
    ``class_names.txt``; ``fold_indices.txt``: ten lines of space-separated 0-based training
    indices (here each fold has ``n_train // 5`` random images, as 1000 of 5000 in the original).
    """
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = len(STL10_CLASSES)
    for name, count, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        labels = balanced_labels(count, num_classes, split_seed)
        images = make_images(labels, num_classes, (96, 96), learnable=learnable, seed=split_seed)
        (folder / f"{name}_X.bin").write_bytes(_stl10_bytes(images))
        (folder / f"{name}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    unlabeled = make_images([0] * n_unlabeled, 1, (96, 96), learnable=False, seed=seed + 2)
    (folder / "unlabeled_X.bin").write_bytes(_stl10_bytes(unlabeled))
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    rng = np.random.default_rng(seed + 3)
    folds = [np.sort(rng.permutation(n_train)[: n_train // 5]) for _ in range(STL10_FOLDS)]
    (folder / "fold_indices.txt").write_text(
        "".join(" ".join(str(i) for i in fold) + " \n" for fold in folds)
    )
    return Path(root)


def make_image_folder(
    root: str | Path,
    classes: Sequence[str] = ("cat", "dog"),
    n_per_class: int = 10,
    *,
    splits: Sequence[str] = ("train", "test"),
    size: tuple[int, int] = (40, 48),
    learnable: bool = True,
    photo_like: bool = False,
    with_bad_files: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``<root>/<split>/<class>/*`` image folders; returns root.

    Each split has ``n_per_class`` images per class, cycling through :data:`IMAGE_KINDS`
    (JPEG, PNG, grayscale, RGBA, palette, CMYK, 16-bit, an odd 195 x 33 size, BMP, WebP, TIFF)
    so every loader path is exercised; ``size`` is (height, width) of the others. With
    ``with_bad_files``, ``train/<first class>/`` also gets the :data:`BAD_FILES`: a truncated
    JPEG, a 0-byte ``.jpg`` and a text file named ``.jpg``.
    """
    root = Path(root)
    for split_number, split in enumerate(splits):
        split_seed = seed + 100 * split_number
        labels = np.repeat(np.arange(len(classes)), n_per_class)
        images = make_images(
            labels, len(classes), size, learnable=learnable, photo_like=photo_like, seed=split_seed
        )
        for position, (label, image) in enumerate(zip(labels, images, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            kind = position % n_per_class % len(IMAGE_KINDS)
            suffix, _ = IMAGE_KINDS[kind]
            _save_kind(image, kind, folder / f"{classes[label]}_{position:04d}.{suffix}")
    if with_bad_files:
        folder = root / "train" / classes[0]
        good = _encode(make_images([0], len(classes), size, seed=seed)[0], "JPEG")
        (folder / BAD_FILES[0]).write_bytes(good[: len(good) // 2])
        (folder / BAD_FILES[1]).write_bytes(b"")
        (folder / BAD_FILES[2]).write_text("not an image\n")
    return root


def _save_kind(image: np.ndarray, kind: int, path: Path) -> None:
    rgb = Image.fromarray(image)
    if kind == 0:
        rgb.save(path, "JPEG", quality=95)
    elif kind == 1:
        rgb.save(path, "PNG")
    elif kind == 2:
        rgb.convert("L").save(path, "PNG")
    elif kind == 3:
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, "PNG")
    elif kind == 4:
        palette = rgb.quantize(colors=16)
        palette.info["transparency"] = 0
        palette.save(path, "PNG", transparency=0)
    elif kind == 5:
        rgb.convert("CMYK").save(path, "JPEG", quality=95)
    elif kind == 6:
        gray16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray16).save(path, "PNG")
    elif kind == 7:
        rgb.resize((195, 33)).save(path, "BMP")
    elif kind == 8:
        rgb.save(path, "WEBP", lossless=True)
    else:
        rgb.convert("LA").save(path, "TIFF")


def _encode(image: np.ndarray, image_format: str) -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, image_format)
    return buffer.getvalue()


def _stl10_bytes(images: np.ndarray) -> bytes:
    """N x H x W x 3 images -> STL-10's N x 3 x W x H (column-major planes) bytes."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` objects, as Python 2 pickled the CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def _write_py2_pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as file:
        _Python2Pickler(file, protocol=2).dump(obj)
