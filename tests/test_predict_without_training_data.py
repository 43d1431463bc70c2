"""A trained model tests and predicts with its checkpoint and the images alone: class names and
the input protocol come from the checkpoint (``convrepro.data.trained_inputs``), not from the
training folder, which may be gone (another machine, a released checkpoint)."""

import csv
import logging
from pathlib import Path

import pytest
import torch
import yaml
from bad_inputs import in_workdir
from test_cli import cli

from convrepro.data import ImageFolderDataModule
from convrepro.errors import ConfigError
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10_folders, make_image_folder

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "fox")
PETS_ARGS = [
    "--config",
    str(ROOT / "configs" / "vgg16_pets.yaml"),
    "--model.backbone=tiny_backbone.TinyNet",
    "--model.freeze_features=false",
    "--data.init_args.batch_size=8",
    "--data.init_args.val_size=6",
    "--data.init_args.num_workers=0",
    "--trainer.log_every_n_steps=1",
]
TRAINED_SIZE = [
    "--data.init_args.image_size=32",
    "--data.init_args.resize_size=36",
    "--data.init_args.normalization=mean-rgb",
]
# A config that says another input size and scale than the model was trained with.
OTHER_SIZE = [
    "--data.init_args.image_size=64",
    "--data.init_args.resize_size=72",
    "--data.init_args.normalization=channel-std",
]
CONV_LOCAL_ARGS = [
    "--config",
    str(ROOT / "configs" / "conv_local_cifar.yaml"),
    "--data.init_args.source=folders",
    "--data.init_args.data_dir=data/cifar10",
    "--data.init_args.batch_size=20",
    "--data.init_args.val_size=40",
    "--data.init_args.num_workers=0",
    "--trainer.max_epochs=1",
    "--trainer.log_every_n_steps=1",
]


def only_run(workdir: Path, name: str) -> RunFolder:
    (path,) = (workdir / "runs" / name).iterdir()
    return RunFolder(path)


def predictions(run: RunFolder) -> list[dict[str, str]]:
    return list(csv.DictReader(run.predictions.open()))


def scores_and_predictions(
    args: list[str], run: RunFolder, photos: Path
) -> tuple[float, list[dict]]:
    """``test`` and ``predict`` of the run's best checkpoint: test accuracy, predictions."""
    checkpoint = f"--ckpt_path={run.checkpoints / 'best.ckpt'}"
    cli("test", *args, checkpoint)
    cli("predict", *args, checkpoint, f"--data.init_args.predict_path={photos}")
    return run.read_summary().test_acc, predictions(run)


@pytest.mark.slow
def test_an_image_folder_model_needs_no_training_folder(tmp_path, monkeypatch, caplog):
    data = make_image_folder(tmp_path / "data" / "pets", CLASSES, n_per_class=8, size=(40, 48))
    photos = make_image_folder(tmp_path / "photos", ("a", "b"), 3, splits=("new",), size=(50, 60))
    in_workdir(tmp_path, monkeypatch)
    cli("fit", *PETS_ARGS, *TRAINED_SIZE, "--trainer.max_epochs=1")
    run = only_run(tmp_path, "vgg16_pets")
    saved = torch.load(run.checkpoints / "best.ckpt", weights_only=True)
    assert saved["ImageFolderDataModule"]["pixel_stats"]["images"] == 24 - 6  # train, not val
    accuracy, predicted = scores_and_predictions(PETS_ARGS + TRAINED_SIZE, run, photos)

    # The training images are gone, and the config now says another input size.
    (data / "train").rename(tmp_path / "train-elsewhere")
    with caplog.at_level(logging.INFO):
        again = scores_and_predictions(PETS_ARGS + OTHER_SIZE, run, photos)
    assert again == (accuracy, predicted)  # the same numbers, image by image
    assert {row["predicted_class"] for row in predicted} <= set(CLASSES)
    assert "Using data.image_size=32, the input protocol the checkpoint was trained" in caplog.text
    # The records say what ran: the checkpoint's protocol and classes, not the config's.
    recorded = yaml.safe_load(run.config("predict").read_text())["data"]["init_args"]
    assert (recorded["image_size"], recorded["resize_size"]) == (32, 36)
    assert recorded["normalization"] == "mean-rgb"  # with the training split's mean RGB
    assert recorded["class_names"] == list(CLASSES)

    # Training still needs the training folder, and one of the same classes.
    (tmp_path / "train-elsewhere").rename(data / "train")
    (data / "train" / "emu").mkdir()
    for image in list((data / "train" / "cat").iterdir())[:2]:
        image.rename(data / "train" / "emu" / image.name)
    dm = ImageFolderDataModule(str(data), class_names=list(CLASSES), num_workers=0)
    with pytest.raises(ConfigError, match=r"only in train: \['emu'\]"):
        dm.setup("fit")


@pytest.mark.slow
def test_cuda_convnet_mean_image_travels_in_the_checkpoint(tmp_path, monkeypatch):
    data = make_cifar10_folders(tmp_path / "data" / "cifar10", n_train=200, n_test=20)
    photos = make_image_folder(tmp_path / "photos", ("a", "b"), 2, splits=("new",))
    in_workdir(tmp_path, monkeypatch)
    cli("fit", *CONV_LOCAL_ARGS)
    run = only_run(tmp_path, "conv_local_cifar")
    saved = torch.load(run.checkpoints / "best.ckpt", weights_only=True)
    assert saved["CIFAR10DataModule"]["mean_image"].shape == (3, 24, 24)
    accuracy, predicted = scores_and_predictions(CONV_LOCAL_ARGS, run, photos)

    # Without train/ there is no mean image to compute: the checkpoint's is the one used.
    (data / "train").rename(tmp_path / "train-elsewhere")
    assert scores_and_predictions(CONV_LOCAL_ARGS, run, photos) == (accuracy, predicted)


def test_given_class_names_must_be_distinct_and_match_the_test_folder(tmp_path):
    data = make_image_folder(tmp_path / "pets", CLASSES, n_per_class=2, splits=("test",))
    assert ImageFolderDataModule(str(data), class_names=list(CLASSES)).class_names == list(CLASSES)
    with pytest.raises(ConfigError, match="two or more classes once"):
        ImageFolderDataModule(str(data), class_names=["cat", "cat"])
    with pytest.raises(ConfigError, match=r"only in data.class_names: \['emu'\]"):
        ImageFolderDataModule(str(data), class_names=[*CLASSES, "emu"])
