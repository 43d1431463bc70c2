"""Predicting on one's own images (``data.predict_path``): any datamodule, any readable format,
bad files skipped, the CSV and the picture it writes."""

import csv
import logging
import warnings
from pathlib import Path

import pytest
import torch
from bad_inputs import in_workdir
from PIL import Image
from test_cli import TINY_ARGS, cli, only_run_dir

from convrepro.data import CIFAR10DataModule, ImageFolderDataModule, STL10DataModule
from convrepro.errors import MissingFileError
from convrepro.testing import (
    BAD_FILES,
    IMAGE_KINDS,
    make_cifar10,
    make_image_folder,
    skip_md5_checks,
)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Every image kind the folders read, in nested folders, plus three unreadable files."""
    return make_image_folder(
        tmp_path / "photos", n_per_class=len(IMAGE_KINDS), size=(60, 80), with_bad_files=True
    )


def readable_count(root: Path) -> int:
    return sum(1 for path in root.rglob("*") if path.is_file()) - len(BAD_FILES)


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (lambda: CIFAR10DataModule("unused", batch_size=4, num_workers=0), 32),
        (lambda: CIFAR10DataModule("unused", resize=40, batch_size=4, num_workers=0), 40),
        (lambda: STL10DataModule("unused", batch_size=4, num_workers=0), 96),
    ],
    ids=["cifar", "cifar-resized", "stl10"],
)
def test_archive_datamodules_classify_photos_resized_to_their_input(photos, make, size, caplog):
    dm = make()
    dm.predict_path = str(photos)
    with caplog.at_level(logging.INFO):
        dm.setup("predict")
    assert f"Skipping {len(BAD_FILES)} unreadable image files" in caplog.text
    assert sorted(Path(file).name for file in dm.skipped_files) == sorted(BAD_FILES)
    batches = list(dm.predict_dataloader())
    assert all(images.shape[1:] == (3, size, size) for images, _ in batches)
    assert sum(len(labels) for _, labels in batches) == readable_count(photos)
    names = dm.sample_names("predict")
    assert names == sorted(names) and all(Path(name).is_file() for name in names)
    assert not any(Path(name).name in BAD_FILES for name in names)
    assert isinstance(dm.sample_images("predict", 2)[0], Image.Image)
    assert "test" not in dm.splits  # the test split was not needed


def test_image_folders_predict_with_their_test_transform(tmp_path, photos):
    pets = make_image_folder(tmp_path / "pets", n_per_class=2)
    one = next(photos.rglob("*.jpg"))
    dm = ImageFolderDataModule(
        str(pets), image_size=32, test_scale=48, batch_size=2, num_workers=0, predict_path=str(one)
    )
    dm.setup("predict")
    (images, labels), *rest = list(dm.predict_dataloader())
    assert images.shape == (1, 3, 48, 48) and labels.tolist() == [-1] and not rest
    assert dm.sample_names("predict") == [str(one)]


def test_missing_or_empty_predict_paths_are_one_line_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image\n")
    dm = CIFAR10DataModule("unused", num_workers=0, predict_path=str(tmp_path / "empty"))
    with pytest.raises(MissingFileError, match="no image files in it or any folder below it"):
        dm.setup("predict")
    dm.predict_path = str(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match="no such file or folder"):
        dm.setup("predict")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    dm.predict_path = str(broken)
    with pytest.raises(MissingFileError, match="none of its 1"):
        dm.setup("predict")


def test_without_predict_path_predict_is_the_test_split(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    make_cifar10(tmp_path, n_train=20, n_test=6)
    dm = CIFAR10DataModule(str(tmp_path), val_size=4, batch_size=4, num_workers=0, download=False)
    dm.setup("predict")
    assert dm.sample_names("predict") == [f"test/{i:05d}" for i in range(6)]
    assert torch.cat([labels for _, labels in dm.predict_dataloader()]).min() >= 0


@pytest.mark.slow
def test_predict_command_writes_csv_with_top5_and_a_grid(
    tmp_path, photos, monkeypatch, capfd, caplog
):
    make_cifar10(tmp_path / "data" / "cifar10", n_train=400, n_test=20)
    in_workdir(tmp_path, monkeypatch)
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1")
    caplog.clear()
    # Cluster scripts often run with PYTHONWARNINGS=ignore: what was skipped must still show.
    with warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.simplefilter("ignore")
        cli("predict", *TINY_ARGS, "--ckpt_path=best", f"--data.init_args.predict_path={photos}")
    printed = capfd.readouterr().err + caplog.text
    assert "unreadable image files" in printed and BAD_FILES[0] in printed
    run_dir = only_run_dir(tmp_path)
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert len(rows) == readable_count(photos)
    classes = set(CIFAR10DataModule("unused").class_names)
    for row in rows:
        assert Path(row["sample"]).is_file() and row["predicted_class"] in classes
        top5 = [entry.rsplit(" ", 1) for entry in row["top5"].split("; ")]
        assert len(top5) == 5 and top5[0][0] == row["predicted_class"]
        assert float(top5[0][1]) == pytest.approx(float(row["probability"]), abs=1e-4)
        probabilities = [float(p) for _, p in top5]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    with Image.open(run_dir / "predictions.png") as grid:
        assert grid.width > 400 and grid.height > 400  # 16 images, four per row
    listed = list(csv.DictReader((run_dir / "skipped_images.csv").open()))
    assert sorted(Path(row["file"]).name for row in listed) == sorted(BAD_FILES)
    assert {row["command"] for row in listed} == {"predict"} and all(r["reason"] for r in listed)
    assert f"Predictions: {run_dir.relative_to(tmp_path) / 'predictions.csv'}" in printed
