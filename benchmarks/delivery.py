"""Data delivery alone: each path's training loader, without a model, in images/s per CPU core.

Five loaders, in one process with one thread and no workers (so CPU time is the loader's own):

* CIFAR-10 crop + flip: (a) the seed scripts' torchvision ``CIFAR10`` with classic PIL
  transforms, (b) our DataLoader path (``CIFAR10DataModule``: per-sample seeded augmentation for
  exact resumes), (c) our device-resident path (batches made on the training device).
* An image folder, random resized crop to 224 + flip: (a) torchvision ``ImageFolder`` with
  classic PIL transforms, (b) ``ImageFolderDataModule``. Made-up JPEGs of a photo's size and
  file size (500 x 375 and 375 x 500, ~70 KB) unless ``--folder`` names a real one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from common import Spec, device, synchronize
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import CIFAR10, ImageFolder

from convrepro.data import CIFAR10DataModule, ImageFolderDataModule
from convrepro.data.transforms import CIFAR10_STATS, IMAGENET_STATS
from convrepro.testing import make_images

CIFAR_LOADERS = ("plain", "lightning", "fast")
FOLDER_LOADERS = ("folder_plain", "folder_lightning")
LOADERS = CIFAR_LOADERS + FOLDER_LOADERS
TITLES = {
    "plain": "(a) plain PyTorch loop",
    "lightning": "(b) Lightning, same settings",
    "fast": "(c) Lightning, fast path",
    "folder_plain": "(a) plain loader, image folder",
    "folder_lightning": "(b) ImageFolderDataModule",
}
# What each loader is compared with in the ratios.
BASELINES = {"lightning": "plain", "fast": "plain", "folder_lightning": "folder_plain"}
FOLDER_IMAGE_SIZE = 224  # the network input of ImageNet-style models
FOLDER_BATCH_SIZE = 32  # per-image cost does not depend on it; a smaller batch times sooner
PHOTO_SIZES = ((375, 500), (500, 375))  # (height, width): the pets photos' usual sizes
PHOTO_QUALITY = 85


def seed_script_transform(spec: Spec) -> transforms.Compose:
    """(a)'s CIFAR-10 augmentation: the config's recipe written with classic PIL transforms."""
    data = CIFAR10DataModule(**spec.data_args)
    if data.preprocessing == "cuda-convnet":
        # cuda-convnet's convdata.py by hand: 24x24 crop, flip, 0-255 minus the mean image.
        pixels = CIFAR10(spec.data_dir, train=True).data
        centre_mean = torch.from_numpy(pixels.mean(axis=0)).permute(2, 0, 1)[:, 4:28, 4:28]
        to_raw = transforms.Normalize((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
        minus_mean = transforms.Normalize(centre_mean.float(), torch.ones(3, 24, 24))
        flip = [transforms.RandomHorizontalFlip()] if data.horizontal_flip else []
        crop = transforms.RandomCrop(24)
        return transforms.Compose([crop, *flip, transforms.ToTensor(), to_raw, minus_mean])
    steps: list[Any] = []
    if data.crop_padding:
        steps.append(transforms.RandomCrop(32, padding=data.crop_padding))
    if data.horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    if data.resize:
        steps.append(transforms.Resize((data.resize, data.resize)))
    normalize = transforms.Normalize(CIFAR10_STATS.mean, CIFAR10_STATS.std)
    return transforms.Compose([*steps, transforms.ToTensor(), normalize])


def plain_loader(spec: Spec, num_workers: int) -> DataLoader:
    """(a): CIFAR-10 as the seed scripts load it."""
    dataset = CIFAR10(spec.data_dir, train=True, transform=seed_script_transform(spec))
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def plain_folder_loader(spec: Spec) -> DataLoader:
    """(a) for image folders: torchvision's ImageFolder with the classic ImageNet recipe."""
    recipe = transforms.Compose(
        [
            transforms.RandomResizedCrop(FOLDER_IMAGE_SIZE),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_STATS.mean, IMAGENET_STATS.std),
        ]
    )
    dataset = ImageFolder(str(Path(spec.folder_dir) / "train"), transform=recipe)
    batch_size = min(FOLDER_BATCH_SIZE, len(dataset))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def write_photo_folder(root: str | Path, count: int) -> Path:
    """``<root>/train/{cat,dog}/*.jpg``: ``count`` made-up JPEGs of a photo's size; returns root."""
    classes = ("cat", "dog")
    for index in range(count):
        label = index % len(classes)
        size = PHOTO_SIZES[index // len(classes) % len(PHOTO_SIZES)]
        folder = Path(root) / "train" / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = make_images([label], len(classes), size, seed=index)[0]
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=PHOTO_QUALITY)
    return Path(root)


def run_delivery(spec: Spec) -> dict[str, Any]:
    """Images/s of each loader alone, per CPU core (one thread, no workers)."""
    torch.set_num_threads(1)
    on = device()
    # The device path makes its batches on the Trainer's device.
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False)
    loaders: dict[str, Any] = {"plain": plain_loader(spec, num_workers=0)}
    for path, fast in (("lightning", False), ("fast", True)):
        datamodule = CIFAR10DataModule(**{**spec.data_args, "num_workers": 0}, device_resident=fast)
        loaders[path] = _training_loader(datamodule, trainer)
    loaders["folder_plain"] = plain_folder_loader(spec)
    folder = ImageFolderDataModule(
        spec.folder_dir,
        val_size=0,
        image_size=FOLDER_IMAGE_SIZE,
        batch_size=loaders["folder_plain"].batch_size,
        num_workers=0,
    )
    loaders["folder_lightning"] = _training_loader(folder, trainer)
    results = {}
    for path, loader in loaders.items():
        delivered = _endless(loader)
        for _ in range(spec.warmup if path in CIFAR_LOADERS else 1):
            next(delivered)
        # At least delivery_seconds: the device path delivers a window's batches in
        # milliseconds, too short to time on a shared machine.
        synchronize(on)
        wall, cpu, images = time.perf_counter(), time.process_time(), 0
        while images == 0 or time.perf_counter() - wall < spec.delivery_seconds:
            images += len(next(delivered)[1])
        synchronize(on)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[path] = {"images_per_s": images / wall, "images_per_cpu_s": images / cpu}
    return results


def delivery_ratios(delivery: dict[str, Any]) -> dict[str, float]:
    """Per-core rate of each of our loaders over its plain counterpart's."""
    return {
        f"delivery:{path}/{baseline}": delivery[path]["images_per_cpu_s"]
        / delivery[baseline]["images_per_cpu_s"]
        for path, baseline in BASELINES.items()
    }


def _training_loader(datamodule: pl.LightningDataModule, trainer: pl.Trainer) -> Any:
    datamodule.trainer = trainer
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def _endless(loader: Any) -> Iterator[Any]:
    """Batches from ``loader``, epoch after epoch."""
    while True:
        yield from loader
