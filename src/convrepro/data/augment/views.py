"""cuda-convnet's input protocol for CIFAR-10 (``convdata.py``, ``CroppedCIFARDataProvider``).

* Pixels stay 0-255 and the training set's mean *image* (per pixel and channel, not per
  channel) is subtracted; for 24x24 crops the mean image's own centre 24x24 is subtracted from
  every crop, wherever the crop was cut (``self.data_mean = batch_meta['data_mean'].reshape(...)
  [:, border:border + inner, border:border + inner]``, then ``cropped -= self.data_mean``).
* Training: a uniformly placed 24x24 crop of the 32x32 image, flipped with probability 0.5.
* Test: the centre crop, or (``--multiview-test=1``) the four corner crops and the centre crop,
  each also flipped: 10 views whose soft-max outputs are averaged.

:class:`SubtractMeanImage` is a colour step (it acts on float images in [0, 1]; the pipeline's
``Normalize(0, 1/255)`` then gives 0-255 units) and :class:`TenCropViews` a geometric one that
turns one image into a stack of views, which batches as (N, 10, C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from convrepro.data.transforms import ChannelStats

#: Normalisation to cuda-convnet's 0-255 scale: ``Normalize`` computes (x - 0) / (1 / 255).
PIXEL_SCALE = ChannelStats(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
#: Where the centre view sits in :class:`TenCropViews`' stack (torchvision's TenCrop order:
#: top-left, top-right, bottom-left, bottom-right, centre, then the same five flipped).
CENTER_VIEW = 4


def mean_image(images: np.ndarray, crop: int) -> Tensor:
    """The per-pixel mean of uint8 images (N, H, W, 3), in [0, 1], as (3, crop, crop): its
    centre ``crop`` x ``crop``, as cuda-convnet subtracts it from every crop."""
    mean = torch.from_numpy(images.mean(axis=0, dtype=np.float64)).permute(2, 0, 1) / 255.0
    return TF.center_crop(mean, [crop, crop]).float()


class SubtractMeanImage(nn.Module):
    """Subtract a fixed (3, H, W) image from float images (..., 3, H, W) of that size."""

    def __init__(self, mean: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float(), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-3:]) != tuple(self.mean.shape):
            raise ValueError(
                f"the mean image is {tuple(self.mean.shape)}, the images "
                f"{tuple(images.shape[-3:])}: crop them to its size first"
            )
        return images - self.mean.to(images.device, images.dtype)

    def extra_repr(self) -> str:
        return f"mean image {tuple(self.mean.shape)}"


class TenCropViews(nn.Module):
    """The four corner crops and the centre crop of an image (C, H, W), then their horizontal
    flips, stacked as (10, C, size, size) in torchvision's ``TenCrop`` order; a batch
    (N, C, H, W) gives (N, 10, C, size, size)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: Tensor) -> Tensor:
        return torch.stack(TF.ten_crop(image, [self.size, self.size]), dim=-4)

    def extra_repr(self) -> str:
        return f"size={self.size}"
