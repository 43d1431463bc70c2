"""CIFAR10DataModule on made-up files in the real CIFAR-10 python format."""

import pickle
from urllib.error import URLError

import numpy as np
import pytest
import torch

from convrepro.data import CIFAR10DataModule
from convrepro.data.cifar import CIFAR10_CLASSES
from convrepro.data.transforms import CIFAR10_STATS
from convrepro.testing import make_cifar10, skip_md5_checks

MEAN = torch.tensor(CIFAR10_STATS.mean).view(3, 1, 1)
STD = torch.tensor(CIFAR10_STATS.std).view(3, 1, 1)


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return str(make_cifar10(tmp_path, n_train=200, n_test=50))


def datamodule(data_dir: str, **kwargs) -> CIFAR10DataModule:
    kwargs = {"val_size": 40, "batch_size": 20, "num_workers": 0, "download": False, **kwargs}
    return CIFAR10DataModule(data_dir=data_dir, **kwargs)


def raw_images(data_dir: str, split: str) -> torch.Tensor:
    """N x 3 x 32 x 32 uint8, read straight from the pickles (not through torchvision)."""
    files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    arrays = []
    for name in files:
        with open(f"{data_dir}/cifar-10-batches-py/{name}", "rb") as file:
            arrays.append(pickle.load(file, encoding="bytes")[b"data"])
    return torch.from_numpy(np.concatenate(arrays)).view(-1, 3, 32, 32)


def unnormalize(images: torch.Tensor) -> torch.Tensor:
    return (images * STD + MEAN) * 255


def test_classes_are_known_without_data_and_match_the_files(cifar_dir, tmp_path):
    assert datamodule(str(tmp_path / "nowhere")).num_classes == 10
    dm = datamodule(cifar_dir)
    dm.setup("test")
    assert dm.class_names == list(CIFAR10_CLASSES) == dm.splits["test"].source.classes


def test_eval_images_are_the_normalized_file_pixels(cifar_dir):
    dm = datamodule(cifar_dir)
    dm.setup()
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    torch.testing.assert_close(
        unnormalize(images), raw_images(cifar_dir, "test")[:20].float(), atol=1e-3, rtol=0
    )
    all_train = torch.cat([images for images, _ in dm.val_dataloader()])
    assert abs(all_train.mean()) < 1.0  # roughly centred by the CIFAR statistics


def test_split_sizes_disjointness_and_untouched_test_set(cifar_dir, monkeypatch):
    dm = datamodule(cifar_dir)
    opened = []
    original = dm._torchvision_dataset
    monkeypatch.setattr(
        dm,
        "_torchvision_dataset",
        lambda split, download: opened.append(split) or original(split, download),
    )
    dm.setup("fit")
    train, val = dm.splits["train"].indices, dm.splits["val"].indices
    assert (len(train), len(val)) == (160, 40)
    assert not set(train) & set(val)
    assert opened == ["train"]
    assert dm.sample_names("val")[0].startswith("train/")


def test_padded_crop_moves_content_and_flip_rate_is_about_half(cifar_dir):
    raw = raw_images(cifar_dir, "train").float()

    def train_images(**kwargs) -> torch.Tensor:
        dm = datamodule(cifar_dir, val_size=0, **kwargs)
        dm.setup("fit")
        view = dm.splits["train"]
        return unnormalize(torch.stack([view[(0, i)][0] for i in range(len(view))]))

    unchanged = train_images(crop_padding=0, horizontal_flip=False)
    torch.testing.assert_close(unchanged, raw, atol=1e-3, rtol=0)

    flipped = train_images(crop_padding=0)
    is_flipped = [
        torch.allclose(a, b.flip(-1), atol=1e-3) for a, b in zip(flipped, raw, strict=True)
    ]
    assert 0.35 < np.mean(is_flipped) < 0.65

    cropped = train_images(horizontal_flip=False)
    in_place = [torch.allclose(a, b, atol=1e-3) for a, b in zip(cropped, raw, strict=True)]
    assert np.mean(in_place) < 0.1  # 1 of 81 offsets keeps the image in place
    # a crop of the zero-padded image: some border row or column is padding (pixel value 0)
    borders = torch.stack(
        [cropped[..., 0, :], cropped[..., -1, :], cropped[..., :, 0], cropped[..., :, -1]], dim=1
    )
    has_padding = (borders.abs() < 1e-2).all(dim=(2, 3)).any(dim=1)
    assert has_padding.float().mean() > 0.8


def test_resize_applies_to_train_and_eval(cifar_dir):
    dm = datamodule(cifar_dir, resize=64)
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].shape == (20, 3, 64, 64)
    assert next(iter(dm.test_dataloader()))[0].shape == (20, 3, 64, 64)


def test_predict_loader_is_the_test_set_in_order_with_names(cifar_dir):
    dm = datamodule(cifar_dir)
    dm.setup("predict")
    labels = torch.cat([labels for _, labels in dm.predict_dataloader()])
    assert labels.tolist() == dm.splits["test"].source.targets
    assert dm.sample_names("predict") == [f"test/{i:05d}" for i in range(50)]


def test_missing_data_says_where_and_how_to_get_it(tmp_path):
    dm = datamodule(str(tmp_path))
    dm.prepare_data()  # download=False: nothing to do
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "data.download=true" in message and "copy" in message


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    dm = datamodule(str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="could not download CIFAR-10") as error:
        dm.prepare_data()
    assert "cifar-10-python.tar.gz" in str(error.value)
    assert "name resolution" in str(error.value)
