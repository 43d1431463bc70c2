"""Every config in configs/ parses, instantiates and runs one fit step on made-up data, and paired
configs differ only where they are meant to.

Parametrised over the folder, so a new config is covered without touching this file.
"""

from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from convrepro.cli import ConvReproCLI
from convrepro.testing import make_cifar10, make_image_folder, make_stl10, skip_md5_checks

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


# Pairs of configs and what (after the CLI's defaults are filled in) tells them apart.
FAST_SWITCHES = {
    "trainer.benchmark": (None, True),
    "model.channels_last": (False, True),
    "model.compile": (False, True),
    "data.init_args.device_resident": (False, True),
}
PAIRS = {
    ("alexnet_cifar", "alexnet_nolrn_cifar"): {"model.backbone.init_args.lrn": (True, False)},
    # A-LRN at the paper's input scale, where LRN acts (tests/test_lrn_regime.py).
    ("vgg11_cifar", "vgg11_lrn_cifar"): {
        "model.backbone.init_args.config": ("A", "A-LRN"),
        "data.init_args.normalization": (None, "mean-rgb"),
    },
    ("vgg16_cifar", "vgg16_cifar_fast"): FAST_SWITCHES,
    ("vgg16_bn_cifar", "vgg16_bn_cifar_fast"): FAST_SWITCHES,
}


class _ParseOnly(ConvReproCLI):
    """The CLI's parser and defaults; stops before it builds anything or makes a run folder."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _resolved(name: str) -> dict[str, Any]:
    """Every setting of ``configs/<name>.yaml`` with the defaults it leaves out, by dotted key."""
    config = _ParseOnly(args=[f"--config={ROOT / 'configs' / name}.yaml"], run=False).config
    return {key: value for key, value in config.items() if key != "config"}


def _datamodule_name(config: Path) -> str:
    text = config.read_text()
    return next(name for name in MAKERS if f"convrepro.data.{name}" in text)


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
    assert not list(tmp_path.rglob("*.ckpt"))  # fast_dev_run saves no checkpoint


@pytest.mark.parametrize(
    ("pair", "differences"), PAIRS.items(), ids=[" vs ".join(pair) for pair in PAIRS]
)
def test_paired_configs_differ_only_where_they_are_meant_to(pair, differences):
    first, second = (_resolved(name) for name in pair)
    assert first.keys() == second.keys()
    differing = {key: (first[key], second[key]) for key in first if first[key] != second[key]}
    assert differing == differences


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
