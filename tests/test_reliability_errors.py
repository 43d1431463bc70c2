"""Bad input through ``main()``: one ``error:`` line, exit status 2, no traceback, no run folder.

A run that fails before its first training step leaves nothing behind (its folder held only a
config and an empty W&B run); real bugs keep their traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import nn

from convrepro.cli import main
from convrepro.errors import MissingFileError
from convrepro.training.classifier import ImageClassifier

from datasets import make_cifar10, make_image_folder, skip_md5_checks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
CIFAR = [
    "--config",
    str(CONFIGS / "vgg11_cifar.yaml"),
    "--data.init_args.data_dir=data/cifar10",
    "--data.init_args.batch_size=32",
    "--data.init_args.val_size=160",
    "--data.init_args.num_workers=0",
    "--trainer.max_epochs=1",
    *QUIET,
]
TINY = [*CIFAR, "--model.backbone=tiny_backbone.TinyNet"]
FOLDER = [
    "--config",
    str(CONFIGS / "vgg16_pets.yaml"),
    "--model.backbone=tiny_backbone.TinyNet",
    "--data.init_args.data_dir=data/pets",
    "--data.init_args.batch_size=2",
    "--data.init_args.image_size=32",
    "--data.init_args.resize_size=36",
    "--data.init_args.num_workers=0",
    "--data.init_args.on_bad_image=error",
    *QUIET,
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_cifar10(root / "cifar10", n_train=480, n_test=32)
    make_image_folder(root / "pets", classes=("cat", "dog"), n_per_class=4, with_bad_files=True)
    return root


@pytest.fixture
def workdir(tmp_path, data, monkeypatch) -> Path:
    skip_md5_checks(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("CONVREPRO_RUN_ID", raising=False)
    monkeypatch.delenv("CONVREPRO_DEBUG", raising=False)
    (tmp_path / "data").symlink_to(data)
    return tmp_path


def fails_with(capfd, *args: str, code: int = 2) -> str:
    """Run main(); return its one ``error:`` line after checking the exit status and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == code
    err = capfd.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    return errors[0]


def no_run_left(workdir: Path) -> bool:
    return not any((workdir / "runs").glob("*/*"))


def test_unknown_option_names_it(workdir, capfd):
    line = fails_with(capfd, "fit", *TINY, "--trainer.max_epoks=3")
    assert "--trainer.max_epoks=3" in line


def test_wrong_type_names_key_and_value(workdir, capfd):
    line = fails_with(capfd, "fit", *TINY, "--trainer.max_epochs=three")
    assert line == "error: trainer.max_epochs: expected int; Given value: three"


def test_invalid_value_raised_while_building_a_class(workdir, capfd):
    line = fails_with(capfd, "fit", *TINY, "--data.init_args.crop_padding=-1")
    assert line == "error: data.crop_padding must be >= 0, got -1"


def test_missing_data_says_where_to_put_it_and_leaves_no_run(workdir, capfd):
    line = fails_with(
        capfd, "fit", *TINY, "--data.init_args.data_dir=nowhere", "--data.init_args.download=false"
    )
    assert "CIFAR-10 is missing or incomplete in" in line and "data.download=true" in line
    assert no_run_left(workdir)  # W&B and the config had already written into it


def test_download_without_network(workdir, capfd, monkeypatch):
    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    line = fails_with(capfd, "fit", *TINY, "--data.init_args.data_dir=empty")
    assert "could not download CIFAR-10" in line and "name resolution" in line
    assert no_run_left(workdir)


def test_unreadable_images_with_on_bad_image_error(workdir, capfd):
    line = fails_with(capfd, "fit", *FOLDER)
    assert "3 unreadable image files in" in line
    assert no_run_left(workdir)


def test_train_and_test_classes_differ(workdir, capfd):
    pets = workdir / "pets"
    shutil.copytree(workdir / "data" / "pets", pets)
    (pets / "test" / "dog").rename(pets / "test" / "wolf")
    line = fails_with(capfd, "fit", *FOLDER, f"--data.init_args.data_dir={pets}")
    assert "class folders" in line and "wolf" in line


def test_checkpoint_of_another_architecture(workdir, capfd):
    torch.save({"state_dict": nn.Linear(3, 4).state_dict()}, "other.ckpt")
    line = fails_with(capfd, "fit", *TINY, "--ckpt_path=other.ckpt")
    assert "--ckpt_path other.ckpt was saved from another model" in line
    assert "Missing keys: features.0.weight" in line


def test_weights_file_that_is_not_a_state_dict_is_not_unpickled(workdir, capfd):
    torch.save({"model": ImageClassifier}, "pickled.pt")  # would import/run code if unpickled
    line = fails_with(capfd, "fit", *CIFAR, "--model.backbone.init_args.weights=pickled.pt")
    assert "refusing to read pickled.pt" in line


def test_batch_larger_than_the_training_split(workdir, capfd):
    line = fails_with(capfd, "fit", *TINY, "--data.init_args.batch_size=512")
    assert "batch size 512 is larger than the 320-image training split" in line


def test_images_too_small_for_the_model_fail_before_training(workdir, capfd):
    line = fails_with(
        capfd,
        "fit",
        "--config",
        str(CONFIGS / "alexnet_cifar.yaml"),
        *CIFAR[2:],
        "--data.init_args.resize=null",
    )
    assert "needs inputs of at least 67x67 px, got 32x32" in line and "resize: 227" in line
    assert no_run_left(workdir)


def test_resume_without_a_checkpoint(workdir, capfd):
    line = fails_with(capfd, "fit", *TINY, "--ckpt_path=last")
    assert "--ckpt_path last: no checkpoint of experiment 'vgg11_cifar'" in line


def test_debug_variable_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.setenv("CONVREPRO_DEBUG", "1")
    with pytest.raises(MissingFileError):
        main(["fit", *TINY, "--ckpt_path=last"])


def test_a_bug_keeps_its_traceback_and_the_run_folder(workdir, monkeypatch):
    def broken_step(self, batch, batch_idx):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ImageClassifier, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", *TINY, "--trainer.logger=false"])
    assert not no_run_left(workdir)  # kept for the post-mortem
