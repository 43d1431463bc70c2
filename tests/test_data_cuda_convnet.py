"""cuda-convnet's CIFAR-10 input protocol and CIFAR-10 read from class folders."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convrepro.data import CIFAR10DataModule
from convrepro.data.augment.views import CENTER_VIEW, TenCropViews
from convrepro.data.cifar import CIFAR10_CLASSES
from convrepro.errors import ConfigError, MissingFileError
from convrepro.runs.provenance import data_fingerprint
from convrepro.testing import make_cifar10, make_cifar10_folders, skip_md5_checks
from convrepro.training import StackedViewsEvaluation


@pytest.fixture
def pickles(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return str(make_cifar10(tmp_path / "pickles", n_train=60, n_test=20))


@pytest.fixture
def folders(tmp_path):
    return str(make_cifar10_folders(tmp_path / "folders", n_train=60, n_test=20))


def datamodule(data_dir: str, **kwargs) -> CIFAR10DataModule:
    defaults = {"val_size": 20, "batch_size": 10, "num_workers": 0, "download": False}
    defaults["preprocessing"] = "cuda-convnet"
    return CIFAR10DataModule(data_dir=data_dir, **defaults | kwargs)


def test_folders_decode_to_the_pickles_pixels(pickles, folders):
    from_pickles = datamodule(pickles)._require_source("train")
    from_folders = datamodule(folders, source="folders")._require_source("train")
    order = np.argsort(from_pickles.targets, kind="stable")  # folders are grouped by class
    np.testing.assert_array_equal(from_folders.data, from_pickles.data[order])
    assert from_folders.targets == [from_pickles.targets[i] for i in order]
    # Same fast path: the split hands the model the same uint8 arrays.
    dm = datamodule(folders, source="folders")
    dm.setup("fit")
    assert dm.splits["train"].pixels.shape == (60, 3, 32, 32)


def test_folder_fingerprint_is_of_the_contents(folders):
    dm = datamodule(folders, source="folders")
    dm.setup("fit")
    first = data_fingerprint(dm)
    assert first["files"]["train/"] == dm.splits["train"].source.content_sha256
    assert first["published"] is False
    image = next((dm.splits["train"].source.root / "train" / "cat").iterdir())
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image, "PNG")  # same name, other pixels
    again = datamodule(folders, source="folders")
    again.setup("fit")
    assert data_fingerprint(again)["fingerprint"] != first["fingerprint"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("grayscale", "32x32 RGB images only"),
        ("large", "is a 40x32 RGB image"),
        ("nine_classes", "must hold the ten CIFAR-10 class folders"),
        ("empty_class", "no image files .* in .*/train/cat/: add the images"),
        ("no_test", "no CIFAR-10 test folder"),
        ("not_an_image", "is not a readable image"),
    ],
)
def test_folders_that_are_not_cifar10_are_refused(folders, damage, message):
    root = datamodule(folders, source="folders").data_dir
    cat = sorted((Path(root) / "train" / "cat").iterdir())[0]
    if damage == "grayscale":
        Image.new("L", (32, 32)).save(cat, "PNG")
    elif damage == "large":
        Image.new("RGB", (40, 32)).save(cat, "PNG")
    elif damage == "nine_classes":
        for file in cat.parent.iterdir():
            file.unlink()
        cat.parent.rmdir()
    elif damage == "empty_class":  # once trained silently as a 9-class set
        for file in cat.parent.iterdir():
            file.unlink()
    elif damage == "no_test":
        shutil.rmtree(cat.parents[2] / "test")
    else:
        cat.write_bytes(b"not an image")
    split = "test" if damage == "no_test" else "fit"
    with pytest.raises((ConfigError, MissingFileError), match=message):
        datamodule(folders, source="folders").setup(split)


def test_training_crops_are_raw_pixels_minus_the_centre_mean(pickles):
    dm = datamodule(pickles)
    dm.setup("fit")
    train = dm.splits["train"]
    raw = train.pixels[train.indices].double()  # (N, 3, 32, 32), 0-255
    centre_mean = raw.mean(0)[:, 4:28, 4:28]  # the training split's mean image, its centre
    image, _ = train[(3, 5)]
    assert image.shape == (3, 24, 24)
    source = raw[5]
    # The crop is one of the 9 x 9 positions, maybe flipped; every one gets the centre mean.
    candidates = [
        crop
        for top in range(9)
        for left in range(9)
        for crop in (source[:, top : top + 24, left : left + 24],)
        for crop in (crop, crop.flip(-1))
    ]
    errors = [(image.double() - (crop - centre_mean)).abs().max().item() for crop in candidates]
    assert min(errors) < 1e-3
    val_image, _ = dm.splits["val"][0]
    val_source = dm.splits["val"].pixels[dm.splits["val"].indices[0]].double()
    torch.testing.assert_close(
        val_image.double(), val_source[:, 4:28, 4:28] - centre_mean, atol=1e-3, rtol=0
    )


def test_test_images_are_cuda_convnets_ten_views(pickles):
    """convdata.py: crops at (0,0), (0,8), (4,4), (8,0), (8,8) and each flipped."""
    dm = datamodule(pickles)
    dm.setup("fit")
    dm.setup("test")
    views, _ = dm.splits["test"][0]
    assert views.shape == (10, 3, 24, 24)
    source = dm.splits["test"].pixels[0].double()
    centre_mean = dm.fitted_inputs["mean_image"].double() * 255
    expected = [
        source[:, top : top + 24, left : left + 24] - centre_mean
        for top, left in ((0, 0), (0, 8), (4, 4), (8, 0), (8, 8))
    ]
    expected += [
        (source[:, top : top + 24, left : left + 24]).flip(-1) - centre_mean
        for top, left in ((0, 0), (0, 8), (4, 4), (8, 0), (8, 8))
    ]
    for view in views.double():
        assert min((view - e).abs().max().item() for e in expected) < 1e-3
    torch.testing.assert_close(views[CENTER_VIEW].double(), expected[2], atol=1e-3, rtol=0)


class ViewScorer(nn.Module):
    """Logits that say which view it is: class = the view's top-left pixel value."""

    def forward(self, images):
        return torch.nn.functional.one_hot(images[:, 0, 0, 0].long(), 10).float() * 20


def test_multiview_averages_posteriors_and_scores_the_centre_alone():
    images = torch.zeros(2, 10, 3, 24, 24)
    # Image 0: 6 of 10 views say class 3, the centre says class 7.
    images[0, :, 0, 0, 0] = torch.tensor([3, 3, 3, 3, 7, 3, 3, 1, 1, 1]).float()
    # Image 1: every view says class 5.
    images[1, :, 0, 0, 0] = 5
    scores, centre = StackedViewsEvaluation().evaluate(ViewScorer(), images)
    posteriors = scores.exp()
    assert posteriors.argmax(1).tolist() == [3, 5]
    torch.testing.assert_close(posteriors[0, 3], torch.tensor(0.6), atol=1e-6, rtol=0)
    torch.testing.assert_close(posteriors[0, 1], torch.tensor(0.3), atol=1e-6, rtol=0)
    assert centre.argmax(1).tolist() == [7, 5]
    # One view per image (predicting on a single crop): just the network.
    single, centre_single = StackedViewsEvaluation().evaluate(ViewScorer(), images[:, 4])
    assert single.exp().argmax(1).tolist() == [7, 5] == centre_single.argmax(1).tolist()


def test_ten_crop_views_stack():
    image = torch.arange(3 * 32 * 32).view(3, 32, 32)
    views = TenCropViews(24)(image)
    assert views.shape == (10, 3, 24, 24)
    assert torch.equal(views[CENTER_VIEW], image[:, 4:28, 4:28])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"resize": 227}, "leave data.resize null"),
        ({"pca_lighting": 0.1}, "data.pca_lighting 0"),
        ({"source": "lmdb"}, "data.source='lmdb' is not valid"),
        ({"preprocessing": "zca"}, "data.preprocessing='zca' is not valid"),
    ],
)
def test_bad_settings_are_one_clear_error(pickles, setting, message):
    with pytest.raises(ConfigError, match=message):
        datamodule(pickles, **setting)


def test_class_names_are_cifars(folders):
    assert datamodule(folders, source="folders").class_names == list(CIFAR10_CLASSES)


def test_device_resident_batches_equal_the_per_sample_path(pickles):
    """Validation and test batches have no randomness: both paths give the same tensors."""
    for split in ("val", "test"):
        per_sample = datamodule(pickles)
        on_device = datamodule(pickles, device_resident=True)
        for dm in (per_sample, on_device):
            dm.setup("fit")
            dm.setup("test")
        loader = per_sample.val_dataloader if split == "val" else per_sample.test_dataloader
        device_loader = on_device.val_dataloader if split == "val" else on_device.test_dataloader
        expected, labels = next(iter(loader()))
        batch, device_labels = next(iter(device_loader()))
        assert batch.shape == expected.shape
        torch.testing.assert_close(batch, expected, atol=1e-3, rtol=0)
        assert torch.equal(labels, device_labels)
    train_images, _ = next(iter(on_device.train_dataloader()))
    assert train_images.shape == (10, 3, 24, 24)


def test_folders_are_never_downloaded_nor_read_before_setup(folders, monkeypatch):
    """The CLI passes ``download: true`` (the signature's default); with folders, prepare_data
    must neither try to download nor decode every training image as a check."""
    dm = datamodule(folders, source="folders", download=True, preprocessing="standard")
    assert dm.download is False
    shutil.rmtree(Path(folders) / "train")
    dm.prepare_data()  # nothing to fetch, nothing to read
    dm.setup("test")
    assert len(dm.splits["test"]) == 20
