"""AlexNet's PCA colour augmentation ("fancy PCA", Krizhevsky et al. 2012, sec. 4.1), which VGG
reuses (Simonyan & Zisserman, sec. 3.1).

Every training image gets one random colour shift, added to all of its pixels, along the
principal axes of the RGB values of the whole training set: the shift is
``sum_i alpha_i * sqrt(lambda_i) * p_i`` with ``alpha_i ~ N(0, std^2)``, ``lambda_i`` and ``p_i``
the eigenvalues and unit eigenvectors of the 3x3 RGB covariance ``C``
(:class:`~convrepro.data.pixel_stats.RGBPCA`).

The paper prints ``alpha_i * lambda_i``, which is not invariant to the pixel scale (with 0-255
values ``lambda_1`` is in the thousands and the shifts would be hundreds of grey levels).
Krizhevsky's own cuda-convnet2 (``convdata.py``, ``ColorNoiseMakerThread``) draws
``randn(N, 3) * pca_stdevs`` times the eigenvectors, i.e. scales by the standard deviations
``sqrt(lambda_i)``, then multiplies by ``color_noise`` (the std here), as done here. The shift
then has covariance ``std^2 * C``: with the paper's ``std = 0.1`` it is a tenth of the data's
own colour spread along each principal axis. cuda-convnet2 then also multiplies the
mean-subtracted training inputs by ``1 / (1 + color_noise)`` ("so that the overall scale of the
training data doesn't become too different from the test data"); neither paper describes that
step, and it is not done here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from convrepro.data.pixel_stats import RGBPCA
from convrepro.errors import ConfigError


class PCALighting(nn.Module):
    """Add one random colour shift along the training set's RGB principal axes to each image.

    Args:
        pca: The training split's :class:`RGBPCA`.
        std: Standard deviation of the ``alpha_i`` (the paper's 0.1); 0 switches it off.

    Works on float RGB images in [0, 1], before normalisation: one image (3, H, W) or a batch
    (..., 3, H, W) on any device, one draw per image. Pixels are not clipped, as in the paper.
    The PIL path applies it per image; the device path per batch, as a
    :class:`~convrepro.data.augment.batch.BatchStep`.
    """

    def __init__(self, pca: RGBPCA, std: float = 0.1) -> None:
        super().__init__()
        if std < 0:
            raise ConfigError(f"data.pca_lighting (the PCA lighting std) must be >= 0, got {std}")
        self.pca = pca
        self.std = std
        # Row i is the shift of alpha_i = 1: sqrt(lambda_i) * p_i.
        axes = torch.tensor(pca.eigenvectors) * torch.tensor(pca.eigenvalues).sqrt()[:, None]
        self.register_buffer("axes", axes.float(), persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Shift ``images``; draws from ``generator`` if given (the device path's per-batch
        generator), else from torch's RNG of the images' device."""
        if images.ndim < 3 or images.shape[-3] != 3:
            raise ValueError(
                f"PCALighting needs RGB images shaped (..., 3, H, W), got {tuple(images.shape)}"
            )
        alphas = torch.randn(*images.shape[:-3], 3, generator=generator, device=images.device)
        shift = (alphas * self.std) @ self.axes.to(images.device)
        return images + shift.to(images.dtype)[..., None, None]

    def extra_repr(self) -> str:
        return f"std={self.std}"
