"""Looking at a data set as a run sees it: its splits, class balance, images and augmentation.

The datamodule is built from an experiment config's ``data:`` section, so what is shown is what
trains. Figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot`` (no global
state); Jupyter shows them when they are the value of a cell, scripts call ``figure.savefig``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

if TYPE_CHECKING:  # the config names the datamodule class: import Lightning only when it does
    from convrepro.data.base import BaseImageDataModule, SplitView


def data_section(config: str | Path) -> tuple[type[BaseImageDataModule], dict[str, Any]]:
    """The datamodule class and ``init_args`` of an experiment config's ``data:`` section."""
    data = yaml.safe_load(Path(config).read_text()).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{config} has no `data: {{class_path: ..., init_args: ...}}` section")
    module_name, _, class_name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls, dict(data.get("init_args") or {})


def datamodule_from_config(
    config: str | Path, data_root: str | Path | None = None, **overrides: Any
) -> BaseImageDataModule:
    """The datamodule of an experiment config's ``data:`` section, with ``overrides`` applied.

    The same class and arguments the CLI builds, so what you look at is what trains. A relative
    ``data_dir`` (``data/cifar10`` in the shipped configs) is taken relative to ``data_root``
    (default: the working directory, as for the CLI); ``data_dir=...`` overrides it.
    """
    cls, init_args = data_section(config)
    if data_root is not None:
        default = inspect.signature(cls).parameters["data_dir"].default
        init_args["data_dir"] = str(Path(data_root, init_args.get("data_dir", default)))
    return cls(**{**init_args, **overrides})


def split_labels(view: SplitView) -> np.ndarray:
    """The labels of a split, in order, read from its source's label list (no image decoding).

    Knows torchvision's CIFAR-10 (``targets``), STL-10 (``labels``) and image files
    (``samples``); any other source is indexed image by image.
    """
    source = view.source
    if hasattr(source, "targets"):
        labels = np.asarray(source.targets)
    elif hasattr(source, "labels") and source.labels is not None:
        labels = np.asarray(source.labels)
    elif hasattr(source, "samples"):
        labels = np.asarray([label for _, label in source.samples])
    else:
        return np.asarray([int(source[i][1]) for i in view.indices], dtype=np.int64)
    return labels[np.asarray(view.indices, dtype=np.int64)]


def class_counts(datamodule: BaseImageDataModule) -> dict[str, np.ndarray]:
    """Images per class in every built split of ``datamodule`` (call ``setup()`` first)."""
    num_classes = datamodule.num_classes
    return {
        name: np.bincount(split_labels(view), minlength=num_classes)
        for name, view in datamodule.splits.items()
    }


def class_balance_figure(
    counts: Mapping[str, Sequence[int]], class_names: Sequence[str], title: str = ""
) -> Figure:
    """Grouped bars: images per class, one bar colour per split."""
    figure = Figure(figsize=(max(6.0, 0.55 * len(class_names) + 2), 3.6), layout="constrained")
    axes = figure.subplots()
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(counts))
    for i, (split, values) in enumerate(counts.items()):
        axes.bar(x + (i - (len(counts) - 1) / 2) * width, values, width, label=split)
    axes.set_xticks(x, class_names, rotation=45, ha="right")
    axes.set(ylabel="images", title=title)
    figure.legend(loc="outside right upper")
    axes.grid(alpha=0.3, axis="y")
    return figure


def find_normalize(transform: Any) -> v2.Normalize:
    """The ``Normalize`` step of a (possibly nested) ``v2.Compose`` pipeline."""
    if isinstance(transform, v2.Normalize):
        return transform
    for step in getattr(transform, "transforms", []):
        try:
            return find_normalize(step)
        except ValueError:
            continue
    raise ValueError(f"no v2.Normalize step in {transform!r}")


def denormalize(images: Tensor, transform: Any) -> Tensor:
    """Undo the input normalisation of ``transform``: images back to [0, 1] for display.

    ``images`` is (3, H, W) or (N, 3, H, W). The statistics come from the pipeline itself, so
    each data set is de-normalised with the mean and std it was normalised with, and a
    subtracted mean image (``normalization: mean-image``) is added back.
    """
    normalize = find_normalize(transform)
    shape = (3, 1, 1)
    mean = torch.tensor(normalize.mean, dtype=images.dtype).view(shape)
    std = torch.tensor(normalize.std, dtype=images.dtype).view(shape)
    # A pipeline exists, so its package is imported already: no Lightning import here.
    from convrepro.data.augment.views import SubtractMeanImage

    restored = images * std + mean
    for step in getattr(transform, "transforms", []):
        if isinstance(step, SubtractMeanImage):
            restored = restored + step.mean.to(images.dtype)
    return restored.clamp(0.0, 1.0)


def image_grid(
    images: Sequence[Tensor | Image.Image],
    titles: Sequence[str] | None = None,
    title: str = "",
    columns: int = 8,
    cell_inches: float = 1.5,
) -> Figure:
    """Images in a grid: (3, H, W) float tensors in [0, 1] (see :func:`denormalize`) or PIL.

    ``titles`` label the images, ``title`` the figure.
    """
    rows = max(1, math.ceil(len(images) / columns))
    columns = min(columns, max(1, len(images)))
    figure = Figure(
        figsize=(columns * cell_inches, rows * (cell_inches + 0.2)), layout="compressed"
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        image = images[i]
        if isinstance(image, Tensor):
            image = TF.to_pil_image(image.clamp(0.0, 1.0))
        ax.imshow(image)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def augmented_versions(view: SplitView, position: int, epochs: int) -> list[Tensor]:
    """Sample ``position`` of a training split as the loader gives it in epochs ``0..epochs-1``.

    The datamodules seed each sample's augmentation from ``(seed, epoch, sample)``, so these are
    exactly the crops and flips the DataLoader path trains on, not a fresh random draw (with
    ``device_resident`` the GPU path applies the same transforms with its own random draws).
    """
    return [view[(epoch, position)][0] for epoch in range(epochs)]
