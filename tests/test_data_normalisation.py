"""The network's input scale (issue 21, item 1): the papers' 0-255 pixels minus the training
split's mean RGB value (VGG) or mean image (AlexNet), next to today's channel statistics."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from convrepro.data import CIFAR10DataModule, ImageFolderDataModule, STL10DataModule
from convrepro.data.augment import PCALighting
from convrepro.data.pixel_stats import RGBMoments, folder_pixel_stats, pixel_stats
from convrepro.errors import ConfigError
from convrepro.testing import make_cifar10, make_image_folder, skip_md5_checks


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return make_cifar10(tmp_path / "cifar", n_train=60, n_test=10, photo_like=True)


def _cifar(root, **kwargs) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(
        str(root), batch_size=4, num_workers=0, download=False, val_size=12, **kwargs
    )
    dm.setup("fit")
    return dm


def _train_pixels(dm: CIFAR10DataModule) -> np.ndarray:
    view = dm.splits["train"]
    return view.source.data[view.indices]


def test_mean_rgb_is_0_255_pixels_minus_the_training_splits_mean(cifar):
    dm = _cifar(cifar, normalization="mean-rgb")
    image = dm.splits["val"].source.data[dm.splits["val"].indices[0]]
    expected = torch.from_numpy(image).permute(2, 0, 1).double()
    expected -= torch.from_numpy(_train_pixels(dm).reshape(-1, 3).mean(axis=0))[:, None, None]
    got = dm.eval_transform()(Image.fromarray(image))
    torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=0)
    # held-out validation images are not part of the mean
    assert dm.training_pixels().images == 60 - 12
    assert dm.state_dict()["pixel_stats"] == pixel_stats(_train_pixels(dm)).as_dict()


def test_mean_image_is_resized_with_the_images(cifar):
    dm = _cifar(cifar, normalization="mean-image", resize=40)
    image = dm.splits["val"].source.data[dm.splits["val"].indices[0]]
    mean = torch.from_numpy(_train_pixels(dm).mean(axis=0)).permute(2, 0, 1).float()
    resized = TF.resize(torch.from_numpy(image).permute(2, 0, 1), [40, 40]).float()
    expected = resized - TF.resize(mean / 255, [40, 40]) * 255
    got = dm.eval_transform()(Image.fromarray(image))
    assert got.shape == (3, 40, 40)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
    assert dm.state_dict()["mean_image"].shape == (3, 40, 40)


@pytest.mark.parametrize(
    ("normalization", "key"), [("mean-image", "mean_image"), ("mean-rgb", "pixel_stats")]
)
def test_a_checkpoints_fitted_inputs_are_used_before_setup_and_refused_after_if_other(
    cifar, tmp_path, normalization, key
):
    """A resume on changed data: loaded before setup, the checkpoint's fitted inputs are what
    the transforms use; loaded after (Lightning's own restore), ones that differ from what the
    transforms took are refused, not recorded over it. The same ones are fine either way."""
    trained = _cifar(cifar, normalization=normalization).state_dict()
    _cifar(cifar, normalization=normalization).load_state_dict(trained)
    changed = make_cifar10(tmp_path / "changed", n_train=60, n_test=10, seed=3)
    with pytest.raises(ConfigError, match=rf"the checkpoint's fitted inputs \({key}: fitted"):
        _cifar(changed, normalization=normalization).load_state_dict(trained)
    early = CIFAR10DataModule(
        str(changed),
        batch_size=4,
        num_workers=0,
        download=False,
        val_size=12,
        normalization=normalization,
    )
    early.load_state_dict(trained)
    early.setup("fit")
    torch.testing.assert_close(early.state_dict()[key], trained[key], rtol=0, atol=0)


def test_cuda_convnet_is_always_the_mean_image(cifar):
    assert _cifar(cifar, preprocessing="cuda-convnet").normalization == "mean-image"
    with pytest.raises(ConfigError, match="normalization null or mean-image"):
        CIFAR10DataModule(str(cifar), preprocessing="cuda-convnet", normalization="mean-rgb")


def test_the_default_is_todays_channel_statistics_and_fits_nothing(cifar):
    dm = _cifar(cifar)
    assert dm.normalization == "channel-std"
    dm.eval_transform()
    assert dm.state_dict() == {}  # nothing fitted: nothing for the checkpoint


def test_a_mean_image_needs_images_of_one_size(tmp_path, monkeypatch):
    folders = make_image_folder(tmp_path / "pets", n_per_class=2)
    with pytest.raises(ConfigError, match="choose one of channel-std, mean-rgb"):
        ImageFolderDataModule(str(folders), normalization="mean-image")
    with pytest.raises(ConfigError, match="not available for STL10DataModule"):
        STL10DataModule(str(tmp_path), normalization="mean-image")
    with pytest.raises(ConfigError, match="pca_lighting is a standard deviation"):
        ImageFolderDataModule(str(folders), pca_lighting=-0.1)


def test_image_folders_fit_the_mean_and_colour_axes_to_their_training_images(tmp_path):
    data = make_image_folder(
        tmp_path / "pets", n_per_class=6, splits=("train", "val", "test"), photo_like=True
    )
    dm = ImageFolderDataModule(
        str(data),
        image_size=32,
        normalization="mean-rgb",
        pca_lighting=0.1,
        num_workers=0,
        batch_size=4,
    )
    dm.setup("fit")
    files = [path for path, _ in dm.splits["train"].source.samples]
    moments = pixel_stats_of_files(files)
    stats = dm.training_pixels()
    np.testing.assert_allclose(stats.mean, moments.mean, rtol=1e-12)
    assert stats.images == len(files)  # train/ only: val/ is a folder of its own
    assert len(list(data.glob("pixel_stats_*.json"))) == 1  # cached next to the data
    train_steps = dm.train_transform().transforms
    assert any(isinstance(step, PCALighting) for step in train_steps)
    assert not any(isinstance(step, PCALighting) for step in dm.eval_transform().transforms)
    image = Image.open(files[0]).convert("RGB")
    normalize = dm.eval_transform().transforms[-1]
    np.testing.assert_allclose(normalize.mean, stats.mean)
    assert normalize.std == [1 / 255] * 3  # 0-255 units
    assert dm.eval_transform()(image).abs().max() > 20  # pixels, not standard deviations


def pixel_stats_of_files(files):
    moments = RGBMoments()
    for file in files:
        moments.add(np.asarray(Image.open(file).convert("RGB")))
    return moments.stats()


def test_large_folders_use_a_seeded_sample(tmp_path):
    data = make_image_folder(tmp_path / "pets", n_per_class=10, splits=("train",))
    files = sorted(str(path) for path in (data / "train").rglob("*") if path.is_file())
    first = folder_pixel_stats(files, seed=0, cache_dir=tmp_path / "a", limit=4)
    assert first.images == 4
    assert folder_pixel_stats(files, seed=0, cache_dir=tmp_path / "b", limit=4) == first
    assert folder_pixel_stats(files, seed=1, cache_dir=tmp_path / "c", limit=4) != first
    cached = json.loads(next((tmp_path / "a").glob("pixel_stats_*.json")).read_text())
    assert cached["images"] == 4
