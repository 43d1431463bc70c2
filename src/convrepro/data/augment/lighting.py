"""AlexNet's PCA colour augmentation ("fancy PCA", Krizhevsky et al. 2012, sec. 4.1).

Every training image gets one random colour shift, added to all of its pixels, along the
principal axes of the RGB values of the whole training set: the shift is
``sum_i alpha_i * sqrt(lambda_i) * p_i`` with ``alpha_i ~ N(0, std^2)``, ``lambda_i`` and ``p_i``
the eigenvalues and unit eigenvectors of the 3x3 RGB covariance ``C``.

The paper prints ``alpha_i * lambda_i``, which is not invariant to the pixel scale (with 0-255
values ``lambda_1`` is in the thousands and the shifts would be hundreds of grey levels);
Krizhevsky's own cuda-convnet2 scales the noise by the standard deviations ``sqrt(lambda_i)``,
as done here. The shift then has covariance ``std^2 * C``: with the paper's ``std = 0.1`` it is a
tenth of the data's own colour spread along each principal axis.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from convrepro.errors import ConfigError
from convrepro.runs.files import write_atomic

# Pixels per chunk of the covariance pass: bounds the float64 copy to ~25 MB.
PIXELS_PER_CHUNK = 1 << 20


@dataclass(frozen=True)
class RGBPCA:
    """Principal axes of RGB pixel values scaled to [0, 1].

    ``eigenvalues`` are the variances along the axes, largest first; ``eigenvectors[i]`` is the
    unit RGB direction of ``eigenvalues[i]``.
    """

    eigenvalues: tuple[float, float, float]
    eigenvectors: tuple[tuple[float, float, float], ...]


def rgb_pca(images: np.ndarray) -> RGBPCA:
    """PCA of the RGB values of every pixel of ``images``, uint8 shaped (N, H, W, 3)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"rgb_pca needs uint8 RGB images shaped (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    pixels = images.reshape(-1, 3)
    if len(pixels) < 2:
        raise ValueError("rgb_pca needs at least two pixels")
    total, outer = np.zeros(3), np.zeros((3, 3))
    for start in range(0, len(pixels), PIXELS_PER_CHUNK):
        chunk = pixels[start : start + PIXELS_PER_CHUNK].astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        outer += chunk.T @ chunk
    mean = total / len(pixels)
    covariance = (outer - len(pixels) * np.outer(mean, mean)) / (len(pixels) - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending, vectors in columns
    order = eigenvalues.argsort()[::-1]
    return RGBPCA(
        eigenvalues=tuple(float(value) for value in eigenvalues[order].clip(min=0.0)),
        eigenvectors=tuple(tuple(float(x) for x in eigenvectors[:, i]) for i in order),
    )


def cached_rgb_pca(images: np.ndarray, cache_dir: str | Path) -> RGBPCA:
    """:func:`rgb_pca` of ``images``, kept in ``<cache_dir>/pca_rgb_<hash>.json``.

    The hash is of the pixels themselves, so each training split (another ``val_size`` or seed
    holds out other images) has its own file, and changed data is never read from a stale one.
    A read-only ``cache_dir`` only costs recomputing it next time.
    """
    digest = hashlib.blake2b(str(images.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(images).data)
    path = Path(cache_dir) / f"pca_rgb_{digest.hexdigest()}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        return RGBPCA(
            eigenvalues=tuple(stored["eigenvalues"]),
            eigenvectors=tuple(tuple(vector) for vector in stored["eigenvectors"]),
        )
    pca = rgb_pca(images)
    try:
        write_atomic(path, json.dumps(asdict(pca), indent=2) + "\n")
    except OSError as error:
        warnings.warn(f"could not cache the RGB PCA in {path} ({error})", stacklevel=2)
    return pca


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
