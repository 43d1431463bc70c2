"""Every config in configs/ parses, instantiates and runs one fit step on made-up data.

Parametrised over the folder, so a new config is covered without touching this file.
"""

from pathlib import Path

import pytest
import torch
import torchvision

from convrepro.cli import ConvReproCLI
from convrepro.models import weights as weights_module

from datasets import make_cifar10, make_image_folder, make_stl10, skip_md5_checks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "ablations" not in p.parts)

# One made-up data set per datamodule, in its real on-disk format.
MAKERS = {
    "CIFAR10DataModule": lambda root: make_cifar10(root, n_train=40, n_test=8),
    "STL10DataModule": lambda root: make_stl10(root, n_train=40, n_test=8),
    "ImageFolderDataModule": lambda root: make_image_folder(
        root, classes=("a", "b", "c"), n_per_class=6, splits=("train", "test"), size=(64, 80)
    ),
}


def _datamodule_name(config: Path) -> str:
    text = config.read_text()
    return next(name for name in MAKERS if f"convrepro.data.{name}" in text)


@pytest.fixture
def fake_imagenet_download(monkeypatch):
    """The torchvision weights path, with the download replaced by a randomly initialised model."""

    def download(entry):
        builder = getattr(torchvision.models, entry.url.rsplit("/", 1)[-1].split("-")[0])
        return builder(weights=None).state_dict()

    monkeypatch.setattr(weights_module, "_download", download)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_runs_one_step(config, tmp_path, monkeypatch, fake_imagenet_download):
    skip_md5_checks(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    data_dir = MAKERS[_datamodule_name(config)](tmp_path / "data")
    cli = ConvReproCLI(
        args=[
            "fit",
            f"--config={config}",
            f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.batch_size=2",
            "--data.init_args.val_size=4",
            "--data.init_args.num_workers=0",
            "--trainer.fast_dev_run=1",
            # Compiling VGG-16 takes over a minute on a 2-core CPU; test_classifier compiles.
            "--model.compile=false",
        ]
    )
    assert cli.trainer.state.finished
    assert cli.datamodule.num_classes == cli.model.hparams.num_classes
    logits = cli.model.backbone.classifier[-1].out_features
    assert logits == cli.datamodule.num_classes
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ConvReproCLI(args=["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: convrepro." in capsys.readouterr().out


def test_a_torchvision_model_works_as_backbone(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    data_dir = make_cifar10(tmp_path / "data", n_train=40, n_test=8)
    cli = ConvReproCLI(
        args=[
            "fit",
            f"--config={ROOT / 'configs' / 'vgg11_cifar.yaml'}",
            "--model.backbone=torchvision.models.AlexNet",
            f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.resize=64",
            "--data.init_args.batch_size=2",
            "--data.init_args.val_size=4",
            "--data.init_args.num_workers=0",
            "--trainer.fast_dev_run=1",
        ]
    )
    assert isinstance(cli.model.backbone, torchvision.models.AlexNet)
    assert cli.model.backbone.classifier[-1].out_features == 10
    assert cli.trainer.state.finished
