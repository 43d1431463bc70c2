"""AlexNet's PCA colour augmentation: the pixel statistics, their cache, the shift's
distribution, CIFAR-10."""

import numpy as np
import pytest
import torch

from convrepro.data import CIFAR10DataModule
from convrepro.data import pixel_stats as pixel_stats_module
from convrepro.data.augment import PCALighting
from convrepro.data.pixel_stats import RGBPCA, array_pixel_stats, pixel_stats
from convrepro.data.transforms import CIFAR10_STATS
from convrepro.testing import make_cifar10, skip_md5_checks


def _correlated_images(count: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (N, 8, 8, 3) images whose RGB values are strongly correlated, like photos."""
    rng = np.random.default_rng(seed)
    mixing = np.array([[50.0, 45.0, 40.0], [10.0, -5.0, -8.0], [0.0, 4.0, -3.0]])
    pixels = 120.0 + rng.standard_normal((count * 64, 3)) @ mixing
    return np.clip(pixels, 0, 255).round().astype(np.uint8).reshape(count, 8, 8, 3)


def _covariance(pca: RGBPCA) -> np.ndarray:
    vectors = np.array(pca.eigenvectors)  # rows
    return vectors.T @ np.diag(pca.eigenvalues) @ vectors


def rgb_pca(images: np.ndarray) -> RGBPCA:
    return pixel_stats(images).pca


def test_pixel_stats_are_the_mean_and_eigendecomposition_of_the_pixel_covariance(monkeypatch):
    images = _correlated_images()
    monkeypatch.setattr(pixel_stats_module, "PIXELS_PER_CHUNK", 1000)  # the chunked sums
    stats = pixel_stats(images)
    pca = stats.pca
    np.testing.assert_allclose(stats.mean, images.reshape(-1, 3).mean(axis=0) / 255.0)
    assert stats.images == len(images)
    expected = np.cov(images.reshape(-1, 3).T / 255.0)
    np.testing.assert_allclose(_covariance(pca), expected, atol=1e-9)
    assert list(pca.eigenvalues) == sorted(pca.eigenvalues, reverse=True)
    np.testing.assert_allclose(
        np.array(pca.eigenvectors) @ np.array(pca.eigenvectors).T, np.eye(3), atol=1e-9
    )
    with pytest.raises(ValueError, match=r"uint8 RGB pixels shaped \(\.\.\., H, W, 3\)"):
        rgb_pca(images.transpose(0, 3, 1, 2))


def test_the_shift_has_covariance_std_squared_times_the_pixel_covariance():
    # shift = sum_i alpha_i sqrt(lambda_i) p_i with alpha ~ N(0, std^2 I), so
    # Cov(shift) = sum_i std^2 lambda_i p_i p_i^T = std^2 C, and its mean is 0.
    pca = rgb_pca(_correlated_images())
    torch.manual_seed(0)
    shifted = PCALighting(pca, std=0.1)(torch.zeros(40_000, 3, 1, 1))
    shifts = shifted.reshape(-1, 3).double().numpy()
    expected = 0.01 * _covariance(pca)
    largest = 0.01 * pca.eigenvalues[0]
    np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.03 * largest)
    np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=0.03 * np.sqrt(largest))


def test_lighting_adds_one_colour_per_image_and_keeps_shape_and_dtype():
    lighting_ = PCALighting(rgb_pca(_correlated_images()), std=0.1)
    image = torch.rand(3, 5, 7)
    out = lighting_(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    shift = out - image
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))
    batch = torch.rand(4, 3, 5, 7)
    shifts = (lighting_(batch) - batch)[:, :, 0, 0]
    assert len({tuple(row.tolist()) for row in shifts}) == 4  # one draw per image
    torch.testing.assert_close(PCALighting(lighting_.pca, std=0.0)(image), image)
    with pytest.raises(ValueError, match=">= 0"):
        PCALighting(lighting_.pca, std=-0.1)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        lighting_(torch.rand(5, 7, 3))


def test_the_stats_are_computed_once_and_cached_per_set_of_images(tmp_path, monkeypatch):
    images = _correlated_images()
    stats = array_pixel_stats(images, tmp_path)
    files = list(tmp_path.glob("pixel_stats_*.json"))
    assert len(files) == 1

    def fail(images):
        raise AssertionError("recomputed instead of read from the cache")

    with monkeypatch.context() as patch:
        patch.setattr(pixel_stats_module, "pixel_stats", fail)
        assert array_pixel_stats(images.copy(), tmp_path) == stats
    array_pixel_stats(images[:32], tmp_path)  # other images: another file
    assert len(list(tmp_path.glob("pixel_stats_*.json"))) == 2


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch):
    def refuse(path, content):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(pixel_stats_module, "write_atomic", refuse)
    with pytest.warns(UserWarning, match="could not cache the pixel statistics"):
        stats = array_pixel_stats(_correlated_images(), tmp_path)
    assert stats == pixel_stats(_correlated_images())


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return make_cifar10(tmp_path / "cifar", n_train=40, n_test=10)


def _cifar(root, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(str(root), batch_size=2, num_workers=0, download=False, **kwargs)
    dm.setup("fit")
    return dm


def test_cifar_pca_lighting_shifts_each_training_image_by_one_colour(cifar):
    plain = _cifar(cifar, val_size=8).splits["train"]
    lit = _cifar(cifar, val_size=8, pca_lighting=0.1).splits["train"]
    image, shifted = plain[(0, 3)][0], lit[(0, 3)][0]
    assert shifted.shape == image.shape == (3, 32, 32) and shifted.dtype == torch.float32
    # same seeded crop and flip; the colour shift, in normalized units, is constant per channel
    shift = (shifted - image) * torch.tensor(CIFAR10_STATS.std)[:, None, None]
    torch.testing.assert_close(shift, shift[:, :1, :1].expand_as(shift))
    assert shift.abs().max() > 0


def test_cifar_pca_is_fitted_to_the_training_split_and_cached_next_to_the_data(cifar):
    dm = _cifar(cifar, val_size=8, pca_lighting=0.1)
    train_pixels = dm.splits["train"].source.data[dm.splits["train"].indices]
    lighting_ = dm.splits["train"].transform.transforms[-2]
    assert isinstance(lighting_, PCALighting)
    assert lighting_.pca == rgb_pca(train_pixels)  # the held-out images are not part of it
    cached = list(cifar.glob("pixel_stats_*.json"))
    assert len(cached) == 1
    modified = cached[0].stat().st_mtime_ns
    _cifar(cifar, val_size=8, pca_lighting=0.1)
    assert cached[0].stat().st_mtime_ns == modified  # read, not rewritten
    _cifar(cifar, val_size=4, pca_lighting=0.1)
    assert len(list(cifar.glob("pixel_stats_*.json"))) == 2  # another training split
    with pytest.raises(ValueError, match="pca_lighting is a standard deviation"):
        CIFAR10DataModule(str(cifar), pca_lighting=-1.0)
