"""ImageFolderDataModule: class discovery, odd image files, bad-file policies, layouts."""

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convrepro.data import ImageFolderDataModule
from convrepro.data.images import load_rgb
from convrepro.testing import BAD_FILES, IMAGE_KINDS, make_image_folder

N_PER_CLASS = len(IMAGE_KINDS)  # one file of each kind per class


@pytest.fixture
def folder(tmp_path):
    return str(make_image_folder(tmp_path / "pets", n_per_class=N_PER_CLASS))


def datamodule(data_dir: str, **kwargs) -> ImageFolderDataModule:
    kwargs = {"val_size": 4, "batch_size": 4, "num_workers": 0, "image_size": 32, **kwargs}
    return ImageFolderDataModule(data_dir=data_dir, **kwargs)


def test_classes_are_the_sorted_train_folders_known_before_setup(tmp_path):
    root = make_image_folder(tmp_path, classes=("dog", "cat", "bird"), n_per_class=2)
    dm = datamodule(str(root))
    assert dm.class_names == ["bird", "cat", "dog"] and dm.num_classes == 3


def test_every_kind_of_image_file_loads_as_rgb(folder):
    dm = datamodule(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's palette-transparency warning
        dm.setup()
        for split in ("train", "val", "test"):
            view = dm.splits[split]
            for position in range(len(view)):
                image, label = view[position]
                assert image.shape == (3, 32, 32) and image.dtype == torch.float32
                assert label in (0, 1)
    assert len(dm.splits["test"]) == 2 * N_PER_CLASS
    odd = load_rgb(f"{folder}/train/cat/cat_0007.bmp")
    assert (odd.mode, odd.size) == ("RGB", (195, 33))


def test_sixteen_bit_images_are_scaled_not_clipped(folder):
    path = f"{folder}/train/cat/cat_0006.png"
    with Image.open(path) as image:
        assert image.mode.startswith("I")
        high_byte = np.asarray(image) >> 8
    rgb = np.asarray(load_rgb(path))
    assert all(np.array_equal(rgb[..., channel], high_byte) for channel in range(3))


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    assert load_rgb(str(path)).size == (20, 40)


def test_eval_resizes_shorter_side_then_center_crops(folder):
    dm = datamodule(folder, image_size=24)
    assert dm.resize_size == round(24 / 0.875)
    assert datamodule(folder, image_size=224).resize_size == 256
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))[0].shape == (4, 3, 24, 24)


def test_sample_names_are_paths_relative_to_the_data_dir(folder):
    dm = datamodule(folder)
    dm.setup("predict")
    names = dm.sample_names("predict")
    assert names[0] == "test/cat/cat_0000.jpg" and len(names) == 2 * N_PER_CLASS


def test_separate_val_folder_is_used_instead_of_holding_out(tmp_path):
    root = make_image_folder(tmp_path, n_per_class=3, splits=("train", "val", "test"))
    dm = datamodule(str(root))
    dm.setup("fit")
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (6, 6)
    assert dm.sample_names("val")[0].startswith("val/")


def test_bad_files_are_skipped_with_one_console_message(tmp_path, caplog):
    root = make_image_folder(tmp_path, n_per_class=N_PER_CLASS, with_bad_files=True)
    dm = datamodule(str(root))
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("ignore")  # PYTHONWARNINGS=ignore must not hide them
        dm.setup("fit")
    messages = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(messages) == 1
    assert all(name in messages[0] for name in BAD_FILES)
    assert sorted(Path(file).name for file in dm.skipped_files) == sorted(BAD_FILES)
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 2 * N_PER_CLASS
    assert sum(1 for _ in dm.train_dataloader()) == (2 * N_PER_CLASS - 4) // 4


def test_bad_files_stop_setup_with_one_error_when_asked(tmp_path):
    root = make_image_folder(tmp_path, n_per_class=2, with_bad_files=True)
    with pytest.raises(ValueError, match="3 unreadable image files") as error:
        datamodule(str(root), on_bad_image="error").setup("fit")
    assert all(name in str(error.value) for name in BAD_FILES)
    assert "on_bad_image=skip" in str(error.value)


def test_train_and_test_classes_must_match(folder):
    shutil.copytree(f"{folder}/test/cat", f"{folder}/test/bird")
    shutil.rmtree(f"{folder}/test/dog")
    with pytest.raises(ValueError, match=r"only in train: \['dog'\]; only in test: \['bird'\]"):
        datamodule(folder)


def test_missing_root_or_train_folder_shows_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        datamodule(str(tmp_path / "nowhere"))
    (tmp_path / "pets" / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"pets/train/.*Expected layout"):
        datamodule(str(tmp_path / "pets"))


def test_missing_test_folder_is_an_error_only_when_testing(tmp_path):
    root = make_image_folder(tmp_path, n_per_class=4, splits=("train",))
    dm = datamodule(str(root))
    dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="no test/ folder"):
        dm.setup("test")


def test_imagenet_style_val_folder_can_be_the_test_split(tmp_path):
    root = make_image_folder(tmp_path, n_per_class=5, splits=("train", "val"))
    dm = datamodule(str(root), test_split="val")
    dm.setup()
    assert (len(dm.splits["train"]), len(dm.splits["val"])) == (6, 4)  # held out from train
    assert dm.sample_names("val")[0].startswith("train/")
    assert len(dm.splits["test"]) == 10 and dm.sample_names("test")[0].startswith("val/")
    with pytest.raises(FileNotFoundError, match=r"(?s)no test/ folder.*test/<class>"):
        datamodule(str(root)).setup("test")
