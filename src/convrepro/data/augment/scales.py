"""The VGG paper's training scale S (sec. 3.1): isotropic rescaling before the 224 crop.

"Let S be the smallest side of an isotropically-rescaled training image, from which the ConvNet
input is cropped." S is either fixed (single-scale training, S = 256 or 384) or drawn per image
from [Smin, Smax] (scale jittering, [256, 512]).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from convrepro.errors import ConfigError


class TrainingScale(nn.Module):
    """Rescale an image isotropically so that its shorter side is the training scale S.

    Args:
        scale: ``S`` (fixed scale) or ``(Smin, Smax)``: S is drawn per image uniformly from the
            integers Smin..Smax (scale jittering). The draw uses torch's global RNG, which the
            datamodules seed per (seed, epoch, sample), so a sample's scale is reproducible.

    Follow it with a random crop of the network's input size (224 in the paper) and a flip.
    """

    def __init__(self, scale: int | tuple[int, int]) -> None:
        super().__init__()
        low, high = (scale, scale) if isinstance(scale, int) else tuple(scale)
        if not 0 < low <= high:
            raise ConfigError(
                f"data.train_scale must be a positive S or a range [Smin, Smax] with "
                f"0 < Smin <= Smax, got {scale!r}"
            )
        self.low, self.high = low, high

    def sample(self) -> int:
        """One draw of S (always S itself for a fixed scale)."""
        if self.low == self.high:
            return self.low
        return int(torch.randint(self.low, self.high + 1, ()))

    def forward(self, image: Tensor) -> Tensor:
        """``image`` (..., H, W) rescaled so that min(H, W) = S, keeping its aspect ratio."""
        return v2.functional.resize(image, [self.sample()], antialias=True)

    def extra_repr(self) -> str:
        return f"S={self.low}" if self.low == self.high else f"S~U[{self.low}, {self.high}]"
