"""A picture of predictions: the first images of a ``predict`` run, each titled with its class."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

GRID_IMAGES = 16
THUMBNAIL = 256  # pixels on the longer side: enough for a 2-inch panel, small files


def save_prediction_grid(
    images: Sequence[Image.Image], captions: Sequence[str], path: str | Path
) -> None:
    """A grid of ``images`` (at most four per row) with ``captions`` above them, as a PNG."""
    columns = min(4, len(images))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows), layout="constrained")
    for position, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.set_axis_off()
        if position >= len(images):
            continue
        thumbnail = images[position].convert("RGB")
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        axes.imshow(np.asarray(thumbnail))
        axes.set_title(captions[position], fontsize=9, wrap=True)
    figure.savefig(path, dpi=100)
