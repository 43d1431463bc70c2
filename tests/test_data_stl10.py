"""STL10DataModule on made-up files in the real STL-10 binary format."""

from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from convrepro.data import STL10DataModule
from convrepro.data.stl10 import STL10_CLASSES
from convrepro.data.transforms import STL10_STATS
from convrepro.testing import make_images, make_stl10, skip_md5_checks

N_TRAIN, N_TEST = 100, 30


@pytest.fixture
def stl_dir(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return str(make_stl10(tmp_path, n_train=N_TRAIN, n_test=N_TEST))


def datamodule(data_dir: str, **kwargs) -> STL10DataModule:
    kwargs = {"batch_size": 10, "num_workers": 0, "download": False, **kwargs}
    return STL10DataModule(data_dir=data_dir, **kwargs)


def test_classes_match_class_names_txt(stl_dir, tmp_path):
    assert datamodule(str(tmp_path / "nowhere")).class_names == list(STL10_CLASSES)
    dm = datamodule(stl_dir)
    dm.setup("test")
    assert dm.class_names == dm.splits["test"].source.classes


def test_eval_images_are_the_normalized_file_pixels(stl_dir):
    dm = datamodule(stl_dir)
    dm.setup("test")
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (10, 3, 96, 96) and images.dtype == torch.float32
    mean = torch.tensor(STL10_STATS.mean).view(3, 1, 1)
    std = torch.tensor(STL10_STATS.std).view(3, 1, 1)
    source = dm.splits["test"].source
    expected = torch.from_numpy(np.stack([np.asarray(source[i][0]) for i in range(10)]))
    torch.testing.assert_close(
        (images * std + mean) * 255, expected.permute(0, 3, 1, 2).float(), atol=1e-3, rtol=0
    )


def test_file_layout_is_read_in_the_right_orientation(stl_dir):
    dm = datamodule(stl_dir)
    dm.setup("test")
    labels = dm.splits["test"].source.labels
    made = make_images(labels, 10, (96, 96), seed=1)  # the generator's test split uses seed + 1
    assert np.array_equal(np.asarray(dm.splits["test"].source[3][0]), made[3])


def test_default_split_holds_out_a_tenth_of_train(stl_dir):
    dm = datamodule(stl_dir)
    dm.setup("fit")
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (90, 10)
    assert not set(dm.splits["train"].indices) & set(dm.splits["val"].indices)


def test_fold_trains_on_that_folds_images(stl_dir):
    dm = datamodule(stl_dir, fold=2)
    dm.setup("fit")
    fold_size = N_TRAIN // 5
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == fold_size
    fold_line = (Path(stl_dir) / "stl10_binary" / "fold_indices.txt").read_text().splitlines()[2]
    full = datamodule(stl_dir, val_size=0)
    full.setup("fit")
    first = int(fold_line.split()[0])
    assert np.array_equal(
        dm.splits["train"].source.data[0], full.splits["train"].source.data[first]
    )


def test_invalid_fold_is_refused(stl_dir):
    with pytest.raises(ValueError, match=r"data\.fold must be 0-9"):
        datamodule(stl_dir, fold=10)


def test_train_augmentation_crops_flips_and_jitters(stl_dir):
    def first_image(**kwargs) -> torch.Tensor:
        dm = datamodule(stl_dir, **kwargs)
        dm.setup("fit")
        return dm.splits["train"][(0, 0)][0]

    plain = datamodule(stl_dir)
    plain.setup("fit")
    eval_view = plain.splits["val"]
    no_augmentation = first_image(crop_scale=(1.0, 1.0), horizontal_flip=False)
    assert no_augmentation.shape == (3, 96, 96)
    train_index = plain.splits["train"].indices[0]
    same_as_eval = eval_view.transform(eval_view.source[train_index][0])
    # a full-image crop at aspect ratio ~1 is (nearly) the identity
    assert (no_augmentation - same_as_eval).abs().mean() < 0.5
    cropped = first_image()
    assert cropped.shape == (3, 96, 96) and not torch.allclose(cropped, same_as_eval)
    assert not torch.equal(first_image(color_jitter=0.4), cropped)


def test_missing_data_says_where_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        datamodule(str(tmp_path)).setup("fit")
    message = str(error.value)
    assert str(tmp_path / "stl10_binary") in message
    assert "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz" in message
    assert "data.download=true" in message


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError(TimeoutError("timed out"))

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    with pytest.raises(FileNotFoundError, match="could not download STL-10"):
        datamodule(str(tmp_path), download=True).prepare_data()
