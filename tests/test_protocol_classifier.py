"""The test protocol inside ImageClassifier's test and predict steps, and from the CLI."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from convrepro.cli import ConvReproCLI
from convrepro.testing import make_image_folder
from convrepro.training import (
    CombinedEvaluation,
    DenseEvaluation,
    MultiCropEvaluation,
    StackedViewsEvaluation,
    TenCropEvaluation,
)
from convrepro.training.classifier import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 4


class TinyFullyConvolutional(nn.Module):
    """A conv layer averaged over space: scores any image size, so it is its own dense form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 5)

    def forward(self, images: Tensor) -> Tensor:
        return self.conv(images).mean(dim=(2, 3))

    def dense(self) -> nn.Module:
        return self


def _trainer() -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)


def _test_data() -> tuple[Tensor, Tensor]:
    torch.manual_seed(0)
    return torch.randn(12, 3, 20, 24), torch.randint(0, NUM_CLASSES, (12,))


def test_test_step_scores_with_the_protocol_and_reports_error_rates():
    images, targets = _test_data()
    protocol = TenCropEvaluation(crop_size=16)
    model = ImageClassifier(
        TinyFullyConvolutional(), num_classes=NUM_CLASSES, test_protocol=protocol
    )
    loader = DataLoader(TensorDataset(images, targets), batch_size=5)
    (results,) = _trainer().test(model, loader, verbose=False)

    with torch.no_grad():
        log_posteriors = protocol(model.backbone, images)
    accuracy = (log_posteriors.argmax(dim=1) == targets).float().mean().item()
    assert results["test/acc"] == pytest.approx(accuracy)
    assert results["test/error"] == pytest.approx(1 - accuracy)
    assert "test/error_top5" not in results  # top-5 of 4 classes would always be 0
    nll = nn.functional.nll_loss(log_posteriors, targets).item()
    assert results["test/loss"] == pytest.approx(nll, rel=1e-5)
    assert "test_protocol" not in model.hparams  # see the checkpoint test below


def test_predict_step_returns_the_protocols_posteriors():
    images, targets = _test_data()
    protocol = DenseEvaluation(scales=[16, 20], flip=True)
    model = ImageClassifier(
        TinyFullyConvolutional(), num_classes=NUM_CLASSES, test_protocol=protocol
    )
    batches = _trainer().predict(model, DataLoader(TensorDataset(images, targets), batch_size=6))
    probabilities = torch.cat([batch["probabilities"] for batch in batches])
    with torch.no_grad():
        expected = protocol.posteriors(model.backbone, images)
    torch.testing.assert_close(probabilities, expected)


def test_a_protocol_the_backbone_cannot_run_fails_at_construction():
    with pytest.raises(ValueError, match="DenseEvaluation needs a backbone"):
        ImageClassifier(nn.Linear(3, 2), num_classes=2, test_protocol=DenseEvaluation())


@pytest.mark.slow  # end to end: fit and test through the CLI
def test_testing_a_checkpoint_uses_the_protocol_of_the_test_command(tmp_path, monkeypatch):
    # LightningCLI re-applies a checkpoint's hyperparameters over the command line; the protocol
    # of the training run (none here) must not replace the one asked for at test time.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    data = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), n_per_class=2)
    small = [
        f"--config={ROOT / 'configs/paper/vgg11_imagenet.yaml'}",
        f"--data.init_args.data_dir={data}",
        "--data.init_args.test_split=test",
        "--data.init_args.batch_size=2",
        "--data.init_args.val_size=2",
        "--data.init_args.num_workers=0",
        "--data.init_args.image_size=32",
        "--data.init_args.train_scale=40",
        "--data.init_args.resize_size=40",
        "--data.init_args.test_scale=48",
        "--model.backbone.init_args.head=cifar",
        "--trainer.logger=false",
    ]
    fit = ConvReproCLI(
        args=[
            "fit",
            *small,
            "--model.test_protocol=null",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
        ]
    )
    assert fit.model.test_protocol is None
    test = ConvReproCLI(
        args=["test", *small, "--model.test_protocol.init_args.scales=[40,48]", "--ckpt_path=last"]
    )
    protocol = test.model.test_protocol
    assert isinstance(protocol, DenseEvaluation) and protocol.scales == [40, 48]
    summary = json.loads(next(tmp_path.glob("runs/vgg11_imagenet/*/summary.json")).read_text())
    assert summary["test/error"] == pytest.approx(1 - summary["test/acc"])
    assert "test/error_top5" not in summary and "test/acc_top5" not in summary  # 3 classes


# channels_last is a memory layout: every test protocol, with every model family, must give the
# numbers of the default layout, in test and predict alike (the 10-view stack is rank 5, which
# ``contiguous(memory_format=channels_last)`` refuses).
def _backbones() -> dict[str, tuple[nn.Module, int]]:
    from convrepro.models import VGG, AlexNet, ConvLocalNet

    return {
        "vgg-a-cifar": (VGG("A", num_classes=NUM_CLASSES, head="cifar"), 32),
        "alexnet-torchvision": (AlexNet("torchvision", num_classes=NUM_CLASSES, lrn=True), 224),
        "conv-local-11pct": (ConvLocalNet(num_classes=NUM_CLASSES), 24),
        "tiny-fully-convolutional": (TinyFullyConvolutional(), 24),
    }


def _protocols(size: int) -> dict[str, object]:
    return {
        "none": None,
        "stacked-views": StackedViewsEvaluation(center_view=1),
        "ten-crop": TenCropEvaluation(crop_size=size),
        "multi-crop": MultiCropEvaluation(scales=[size + 8], grid=2, flip=True, crop_size=size),
        "dense": DenseEvaluation(flip=True),
        "combined": CombinedEvaluation([TenCropEvaluation(crop_size=size), DenseEvaluation()]),
    }


# Every model family with the default and the rank-5 protocol; every protocol with a small
# network that runs them all.
CASES = [
    (backbone, protocol)
    for backbone in ("vgg-a-cifar", "alexnet-torchvision", "conv-local-11pct")
    for protocol in ("none", "stacked-views")
] + [
    ("tiny-fully-convolutional", protocol)
    for protocol in ("none", "stacked-views", "ten-crop", "multi-crop", "dense", "combined")
]


@pytest.mark.parametrize(("backbone_name", "protocol_name"), CASES)
def test_channels_last_gives_the_same_numbers_with_every_protocol(backbone_name, protocol_name):
    torch.manual_seed(0)
    backbone, size = _backbones()[backbone_name]
    protocol = _protocols(size)[protocol_name]
    stacked = protocol_name == "stacked-views"
    # Stacked views come cut by the data pipeline; the other protocols cut larger images.
    shape = (3, 2, 3, size, size) if stacked else (3, 3, size + 8, size + 8)
    if protocol_name == "none":
        shape = (3, 3, size, size)
    images, targets = torch.randn(*shape), torch.tensor([0, 1, 2])
    loader = DataLoader(TensorDataset(images, targets), batch_size=3)
    outcomes = []
    for channels_last in (False, True):
        model = ImageClassifier(
            backbone, num_classes=NUM_CLASSES, test_protocol=protocol, channels_last=channels_last
        )
        (tested,) = _trainer().test(model, loader, verbose=False)
        (predicted,) = _trainer().predict(model, loader)
        outcomes.append((tested, predicted["probabilities"]))
        if channels_last:
            weight = next(p for p in model.backbone.parameters() if p.ndim == 4)
            assert weight.is_contiguous(memory_format=torch.channels_last)
    (plain_test, plain_predict), (fast_test, fast_predict) = outcomes
    assert fast_test == pytest.approx(plain_test, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(fast_predict, plain_predict, rtol=1e-4, atol=1e-5)
