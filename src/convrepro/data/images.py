"""Image files of any format and mode, read as RGB: for image folders and for predicting on a
user's own images."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from convrepro.errors import ConfigError

MAX_LISTED_BAD_FILES = 10
UNLABELLED = -1  # the label of an image predicted on, which has none


def load_rgb(path: str, reduced: bool = False) -> Image.Image:
    """Any readable image file as 8-bit RGB, upright according to its EXIF orientation.

    Grayscale, palette, alpha (dropped), CMYK and 16-bit images are converted; 16-bit values are
    scaled down rather than clipped, which would turn most pixels white. ``reduced`` lets JPEG
    decode at 1/8 scale: every byte is still read, so damage is still found, but faster.
    """
    # Opened from our own file object, the decoded image outlives the file; PIL's own
    # `with Image.open(path)` would discard it, forcing a copy of every image.
    with open(path, "rb") as file:
        image = Image.open(file)
        if reduced:
            image.draft("RGB", (1, 1))
        image.load()
    # exif_transpose copies even an upright image: only turn the images that need it.
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        high_bits = np.clip(np.asarray(image), 0, 65535).astype(np.uint16) >> 8
        image = Image.fromarray(high_bits.astype(np.uint8))
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # palette transparency would warn in convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def find_unreadable(paths: Sequence[str]) -> dict[str, str]:
    """Files that :func:`load_rgb` cannot decode, with the reason (empty, truncated, not an
    image...). Decodes every file once, in threads (PIL releases the GIL while decoding)."""

    def problem(path: str) -> str | None:
        try:
            load_rgb(path, reduced=True)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... per codec
            return f"{type(error).__name__}: {error}"
        return None

    with ThreadPoolExecutor() as pool:
        problems = list(pool.map(problem, paths))
    return {path: reason for path, reason in zip(paths, problems, strict=True) if reason}


def describe_unreadable(where: str | Path, bad: dict[str, str]) -> str:
    """``N unreadable image files in <where>:`` and the first of them with their reasons."""
    listed = [f"  {path}: {reason}" for path, reason in list(bad.items())[:MAX_LISTED_BAD_FILES]]
    if len(bad) > MAX_LISTED_BAD_FILES:
        listed.append(f"  ... and {len(bad) - MAX_LISTED_BAD_FILES} more")
    return f"{len(bad)} unreadable image files in {where}:\n" + "\n".join(listed)


def empty_class_folders(folders: Sequence[Path], fix: str) -> ConfigError:
    """The error for class folders that hold no image file, naming them, and ``fix``: a class
    without images would silently drop out of training and scoring."""
    named = ", ".join(f"{folder}/" for folder in folders)
    return ConfigError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in {named}: {fix}")


def image_files_under(path: str | Path) -> list[str]:
    """``path`` itself if it is a file, else the image files (torchvision's extensions, any
    case) anywhere below it, sorted."""
    path = Path(path)
    if path.is_file():
        return [str(path)]
    return sorted(
        str(file)
        for file in path.rglob("*")
        if file.suffix.lower() in IMG_EXTENSIONS and file.is_file()
    )


class ImageFiles(Dataset):
    """``(path, class index)`` pairs, read as RGB PIL images."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return load_rgb(path), label
