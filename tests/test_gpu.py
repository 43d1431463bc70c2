"""What only a GPU can show: the device-resident path, sync-free steps, autocast and compile on
CUDA. Skipped without CUDA; ``benchmarks/gpu_check.py`` runs them on a GPU machine."""

from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from test_alexnet import paper_lrn_formula

from convrepro.data import CIFAR10DataModule
from convrepro.data.device import DeviceBatches
from convrepro.models import PaperLRN
from convrepro.testing import make_cifar10, skip_md5_checks
from convrepro.training.classifier import ImageClassifier

from tiny_backbone import TinyNet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return make_cifar10(tmp_path / "cifar", n_train=256, n_test=64)


def cifar_on_cuda(data_dir, device_resident: bool, **kwargs) -> CIFAR10DataModule:
    kwargs = {"val_size": 64, "batch_size": 32, "num_workers": 0, "seed": 1, **kwargs}
    dm = CIFAR10DataModule(data_dir=str(data_dir), device_resident=device_resident, **kwargs)
    dm.trainer = SimpleNamespace(
        world_size=1,
        global_rank=0,
        num_devices=1,
        strategy=SimpleNamespace(root_device=CUDA),
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=False, is_distributed=False),
    )
    dm.setup("fit")
    return dm


def test_device_batches_on_cuda_equal_the_dataloader_batches_when_nothing_is_random(cifar_dir):
    settings = {"crop_padding": 0, "horizontal_flip": False, "resize": 40}
    plain, fast = (
        cifar_on_cuda(cifar_dir, False, **settings),
        cifar_on_cuda(cifar_dir, True, **settings),
    )
    batches = fast.train_dataloader()
    assert isinstance(batches, DeviceBatches) and batches.device.type == "cuda"
    for (images, labels), (fast_images, fast_labels) in zip(
        plain.train_dataloader(), batches, strict=True
    ):
        assert torch.equal(labels.to(CUDA), fast_labels)
        torch.testing.assert_close(fast_images, images.to(CUDA), atol=1e-5, rtol=0)


def test_device_augmentation_makes_no_host_syncs_after_the_epochs_first_copy(cifar_dir):
    batches = cifar_on_cuda(cifar_dir, True).train_dataloader()
    delivered = iter(batches)
    next(delivered)  # copies the epoch's positions to the device once
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = [images.sum() for images, _ in delivered]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(rest) == len(batches) - 1 and torch.isfinite(torch.stack(rest)).all()


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_paper_lrn_under_cuda_autocast_matches_the_float64_formula(dtype, rtol):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3).to(CUDA)
    torch.nn.init.constant_(conv.weight, 30.0)  # activations of several hundred
    with torch.autocast("cuda", dtype=dtype):
        activations = torch.relu(conv(torch.rand(2, 3, 12, 12, device=CUDA)))
        out = PaperLRN()(activations)
    assert activations.dtype == out.dtype == dtype and activations.float().max() > 300
    assert torch.isfinite(out).all()
    expected = paper_lrn_formula(activations.cpu())
    torch.testing.assert_close(out.cpu().double(), expected, rtol=rtol, atol=0)


def test_compiled_channels_last_bf16_training_saves_loadable_weights(cifar_dir, tmp_path):
    dm = CIFAR10DataModule(
        data_dir=str(cifar_dir), val_size=64, batch_size=32, num_workers=0, device_resident=True
    )
    model = ImageClassifier(
        TinyNet(lrn=True),
        num_classes=10,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=100),
        channels_last=True,
        compile=True,
    )
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=6,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    keys = [key for key in checkpoint["state_dict"] if key.startswith("backbone.")]
    assert keys and not any("_orig_mod" in key for key in keys)
    fresh = ImageClassifier(TinyNet(lrn=True), num_classes=10)
    fresh.load_state_dict(checkpoint["state_dict"])  # an uncompiled model takes them as they are
