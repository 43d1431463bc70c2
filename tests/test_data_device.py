"""The device-resident data path: same batches and augmentation distribution as the DataLoader path.

Runs on the CPU through the same code as on a GPU (``DeviceBatches`` only ever sees a device).
"""

from functools import partial
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from convrepro.data import CIFAR10DataModule, STL10DataModule
from convrepro.data.augment.batch import (
    RandomResizedCrop,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    jitter_in_order,
    resized_crop,
)
from convrepro.data.device import DeviceBatches, DevicePipeline
from convrepro.data.transforms import CIFAR10_STATS, image_pipeline
from convrepro.testing import balanced_labels, make_cifar10, make_images, skip_md5_checks
from convrepro.training.classifier import ImageClassifier

from tiny_backbone import TinyNet

CPU = torch.device("cpu")


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    return make_cifar10(tmp_path / "cifar", n_train=200, n_test=50)


@pytest.fixture
def one_thread():
    # Tiny models on a 2-core machine shared with other jobs: two intra-op threads spend most
    # of their time waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cifar(data_dir, device_resident, **kwargs) -> CIFAR10DataModule:
    kwargs = {"val_size": 40, "batch_size": 16, "num_workers": 0, "seed": 3, **kwargs}
    return CIFAR10DataModule(data_dir=str(data_dir), device_resident=device_resident, **kwargs)


def attach_trainer(dm, world_size: int, rank: int) -> None:
    """What the datamodule reads from a Trainer, as on rank ``rank`` of a DDP run on CPUs."""
    dm.trainer = SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        num_devices=world_size,
        strategy=SimpleNamespace(root_device=CPU),
        _accelerator_connector=SimpleNamespace(
            use_distributed_sampler=False, is_distributed=world_size > 1
        ),
    )


def assert_same_batches(plain, fast) -> None:
    plain, fast = list(plain), list(fast)
    assert len(plain) == len(fast) > 0
    for (plain_images, plain_labels), (fast_images, fast_labels) in zip(plain, fast, strict=True):
        assert torch.equal(plain_labels, fast_labels)
        torch.testing.assert_close(fast_images, plain_images, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("world_size", "rank"), [(1, 0), (2, 1)])
def test_same_batches_as_the_dataloader_when_nothing_is_random(cifar_dir, world_size, rank):
    # Without crop and flip the transform is deterministic (resize included), so the device
    # path must give the DataLoader's exact batches: same split, order, shard and pixels.
    settings = {"crop_padding": 0, "horizontal_flip": False, "resize": 40}
    plain, fast = cifar(cifar_dir, False, **settings), cifar(cifar_dir, True, **settings)
    for dm in (plain, fast):
        attach_trainer(dm, world_size, rank)
        dm.setup(None)
    assert isinstance(fast.train_dataloader(), DeviceBatches)
    for epoch in (0, 1):
        plain.train_sampler.set_epoch(epoch)
        fast.train_sampler.set_epoch(epoch)
        assert_same_batches(plain.train_dataloader(), fast.train_dataloader())
    assert len(fast.train_dataloader()) == len(plain.train_dataloader())  # drop_last kept
    assert_same_batches(plain.val_dataloader(), fast.val_dataloader())
    assert_same_batches(plain.test_dataloader(), fast.test_dataloader())
    # Lightning tracks prediction indices only through a DataLoader.
    assert isinstance(fast.predict_dataloader(), torch.utils.data.DataLoader)


def test_augmentation_is_reproducible_and_resumes_mid_epoch(cifar_dir):
    dm = cifar(cifar_dir, True)
    dm.setup("fit")
    dm.train_sampler.set_epoch(1)
    epoch = list(dm.train_dataloader())
    again = list(dm.train_dataloader())
    assert_same_batches(epoch, again)
    dm.train_sampler.set_epoch(2)
    other = next(iter(dm.train_dataloader()))[0]
    assert not torch.allclose(other, epoch[0][0])  # a new permutation and new draws
    # Resuming after two steps continues with the very batches an uninterrupted epoch has.
    dm.train_sampler.load_state_dict({"epoch": 1, "start_index": 2 * dm.batch_size})
    assert_same_batches(epoch[2:], dm.train_dataloader())


def position_coded_images(count: int) -> torch.Tensor:
    """32x32 images whose red value says the row and green the column (never 0: padding is)."""
    coordinate = torch.arange(32, dtype=torch.uint8) * 8 + 4
    image = torch.stack(
        [
            coordinate.view(32, 1).expand(32, 32),
            coordinate.view(1, 32).expand(32, 32),
            torch.full((32, 32), 128, dtype=torch.uint8),
        ]
    )
    return image.expand(count, 3, 32, 32).contiguous()


def pixel_values(normalized: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_STATS.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STATS.std).view(1, 3, 1, 1)
    return ((normalized * std + mean) * 255).round().long()


def crop_offsets_and_flips(normalized: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flipped) of each padded-crop-and-flip of a :func:`position_coded_images`."""
    values = pixel_values(normalized)
    # The crop moves content by at most 4 px, so the centre always shows the image.
    source_row = (values[:, 0, 16, 16] - 4) // 8
    column_16, column_17 = (values[:, 1, 16, 16] - 4) // 8, (values[:, 1, 16, 17] - 4) // 8
    flipped = column_17 < column_16
    # Output column 16 is crop column 16, or 15 when mirrored; crop column c is c + left - 4.
    left = torch.where(flipped, column_16 - 11, column_16 - 12)
    return (source_row - 12).numpy(), left.numpy(), flipped.numpy()


def test_crop_offsets_and_flip_rate_match_the_pil_path():
    count = 3000
    transform = cifar("unused", False).train_transform()
    images = position_coded_images(count)
    torch.manual_seed(0)
    pil_path = torch.stack([transform(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
    device_path = DevicePipeline.from_transform(transform)(images, torch.Generator().manual_seed(0))
    pil, fast = crop_offsets_and_flips(pil_path), crop_offsets_and_flips(device_path)
    for pil_values, fast_values in zip(pil[:2], fast[:2], strict=True):
        pil_counts = np.bincount(pil_values, minlength=9) / count
        fast_counts = np.bincount(fast_values, minlength=9) / count
        assert len(pil_counts) == len(fast_counts) == 9  # offsets 0..8 of padding 4
        # Uniform over the 9 offsets: a share's standard deviation is 0.006 here.
        assert np.abs(pil_counts - 1 / 9).max() < 0.025
        assert np.abs(fast_counts - 1 / 9).max() < 0.025
    assert abs(pil[2].mean() - 0.5) < 0.03
    assert abs(fast[2].mean() - 0.5) < 0.03


# (datamodule, image size, draws per image, tolerance): a random colour factor per image moves
# the whole image's statistics, so colour jitter needs a wider margin for the same draws.
STATISTICS_CASES = {
    "cifar-crop-flip-resize": (lambda root: cifar(root, False, resize=36), 32, 20, 0.025),
    "cifar-pca-lighting": (lambda root: cifar(root, False, pca_lighting=0.1), 32, 20, 0.025),
    # The papers' 0-255 scales: the same margin in pixel units (x 255 / ~60).
    "cifar-mean-rgb-lighting": (
        lambda root: cifar(root, False, normalization="mean-rgb", pca_lighting=0.1),
        32,
        20,
        1.5,
    ),
    "cifar-mean-image-resize": (
        lambda root: cifar(root, False, normalization="mean-image", resize=36),
        32,
        20,
        1.5,
    ),
    "stl10-crop-flip": (lambda root: STL10DataModule(data_dir=str(root)), 96, 10, 0.01),
    "stl10-jitter": (
        lambda root: STL10DataModule(data_dir=str(root), color_jitter=0.4),
        96,
        10,
        0.05,
    ),
}


@pytest.mark.parametrize("case", STATISTICS_CASES)
def test_pixel_statistics_match_the_pil_path(case, tmp_path, monkeypatch, one_thread):
    # Each path augments the same 100 made-up images `repeats` times; per-channel mean and std
    # of the normalized pixels must agree up to the sampling noise.
    make, size, repeats, tolerance = STATISTICS_CASES[case]
    skip_md5_checks(monkeypatch)
    make_cifar10(tmp_path, n_train=100, n_test=10)  # PCA lighting is fitted to these
    transform = make(tmp_path).train_transform()
    labels = balanced_labels(100, 10, seed=0)
    images = torch.from_numpy(make_images(labels, 10, (size, size))).permute(0, 3, 1, 2)
    images = images.contiguous().repeat(repeats, 1, 1, 1)
    torch.manual_seed(0)
    pil = torch.stack([transform(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
    fast = DevicePipeline.from_transform(transform)(images, torch.Generator().manual_seed(0))

    def statistics(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([batch.mean((0, 2, 3)), batch.std((0, 2, 3))])

    torch.testing.assert_close(statistics(fast), statistics(pil), atol=tolerance, rtol=0)


def test_colour_jitter_factors_follow_torchvision():
    # On a flat gray image brightness alone gives floor(100 * factor): the factors can be read
    # back from both paths and compared exactly in distribution.
    transform = image_pipeline([v2.ColorJitter(brightness=0.4)], CIFAR10_STATS)
    images = torch.full((3000, 3, 4, 4), 100, dtype=torch.uint8)
    torch.manual_seed(0)
    pil = torch.stack([transform(Image.fromarray(i.permute(1, 2, 0).numpy())) for i in images])
    fast = DevicePipeline.from_transform(transform)(images, torch.Generator().manual_seed(0))
    quantiles = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    for batch in (pil, fast):
        factors = pixel_values(batch)[:, 0, 0, 0].double() / 100
        torch.testing.assert_close(
            factors.quantile(quantiles), 0.6 + 0.8 * quantiles, atol=0.025, rtol=0
        )


@pytest.mark.parametrize(
    ("image_size", "scale"),
    [((96, 96), (0.19, 1.0)), ((24, 96), (0.9, 1.0))],  # the second often falls back
    ids=["stl10", "wide-image-central-fallback"],
)
def test_resized_crop_boxes_follow_torchvision(image_size, scale):
    count = 4000
    reference = v2.RandomResizedCrop(96, scale=scale)
    torch.manual_seed(0)
    image = torch.zeros(3, *image_size)
    boxes = [reference.make_params([image]) for _ in range(count)]
    expected = torch.tensor([[b["top"], b["left"], b["height"], b["width"]] for b in boxes])
    ours = RandomResizedCrop((96, 96), scale, reference.ratio)
    actual = torch.stack(
        ours.sample_boxes(torch.Size((count, 3, *image_size)), torch.Generator().manual_seed(0)),
        dim=1,
    )
    for boxes in (expected, actual):  # every box inside the image
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= image_size[0]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= image_size[1]).all()
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)

    def summary(boxes: torch.Tensor) -> torch.Tensor:
        top, left, height, width = boxes.double().unbind(1)
        area = height * width / (image_size[0] * image_size[1])
        centre_row, centre_col = top + height / 2, left + width / 2
        return torch.stack(
            [
                area.quantile(quantiles),
                (width / height).log().quantile(quantiles),
                (centre_row / image_size[0]).quantile(quantiles),
                (centre_col / image_size[1]).quantile(quantiles),
            ]
        )

    torch.testing.assert_close(summary(actual), summary(expected), atol=0.03, rtol=0)


def test_resized_crop_equals_torchvision_resize_of_the_crop():
    images = torch.randint(0, 256, (5, 3, 96, 96), dtype=torch.uint8)
    boxes = [(0, 0, 96, 96), (10, 3, 40, 60), (50, 70, 46, 26), (1, 2, 17, 95), (80, 0, 16, 9)]
    top, left, height, width = torch.tensor(boxes).unbind(1)
    ours = resized_crop(images, top, left, height, width, (96, 96))
    for image, box, result in zip(images, boxes, ours, strict=True):
        expected = TF.resized_crop(image, *box, size=[96, 96], antialias=True)
        # uint8 rounding of torchvision's integer kernel vs float bilinear: at most one level.
        assert (result.int() - expected.int()).abs().max() <= 1


def test_colour_adjustments_equal_torchvision_per_image():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    factors = torch.tensor([0.6, 0.75, 0.9, 1.1, 1.25, 1.4])
    for ours, reference in (
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ):
        result = ours(images.float(), factors.view(-1, 1, 1, 1))
        expected = torch.stack(
            [reference(i, float(f)) for i, f in zip(images, factors, strict=True)]
        )
        assert (result - expected.float()).abs().max() <= 1  # float32 rounding at a .0 boundary
    # The order is per image: brightness then contrast for image 0, the reverse for image 1.
    pair = images[:2]
    adjustments = [(adjust_brightness, torch.full((2, 1, 1, 1), 1.3))]
    adjustments.append((adjust_contrast, torch.full((2, 1, 1, 1), 0.7)))
    result = jitter_in_order(pair, adjustments, torch.tensor([[0, 1], [1, 0]]))
    first = TF.adjust_contrast(TF.adjust_brightness(pair[0], 1.3), 0.7)
    second = TF.adjust_brightness(TF.adjust_contrast(pair[1], 0.7), 1.3)
    assert (result.int() - torch.stack([first, second]).int()).abs().max() <= 1


def test_unsupported_transforms_are_one_clear_error():
    rotate = image_pipeline([v2.RandomRotation(10)], CIFAR10_STATS)
    with pytest.raises(ValueError, match=r"cannot run RandomRotation.*device_resident: false"):
        DevicePipeline.from_transform(rotate)
    with pytest.raises(ValueError, match="image_pipeline"):
        DevicePipeline.from_transform(v2.Compose([v2.RandomHorizontalFlip()]))
    shrink = DevicePipeline.from_transform(
        image_pipeline([v2.RandomResizedCrop(32)], CIFAR10_STATS)
    )
    with pytest.raises(ValueError, match="would shrink"):
        shrink(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.Generator())


def fit(dm: CIFAR10DataModule, **trainer_args) -> pl.Trainer:
    """Train a tiny net on ``dm`` on the CPU (SGD 0.05, momentum 0.9)."""
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(
        TinyNet(lrn=False),
        num_classes=10,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=100),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        **trainer_args,
    )
    trainer.fit(model, dm)
    return trainer


def test_trainer_fit_runs_the_device_batches(cifar_dir, one_thread):
    dm = cifar(cifar_dir, True)
    trainer = fit(dm, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    assert isinstance(trainer.train_dataloader, DeviceBatches)
    assert trainer.num_training_batches == 2
    assert dm.train_sampler.epoch == 1  # Lightning reached set_epoch through batch_sampler
    assert trainer.global_step == 4
    assert trainer.num_sanity_val_steps == 2 and "val/acc" in trainer.callback_metrics
    trainer.test(trainer.lightning_module, datamodule=dm, verbose=False)
    assert isinstance(trainer.test_dataloaders, DeviceBatches)
    assert "test/acc" in trainer.callback_metrics
    predictions = trainer.predict(trainer.lightning_module, datamodule=dm)
    assert sum(len(p["index"]) for p in predictions) == 50  # every test image, via DataLoader


def test_fast_path_learns_as_well_as_the_dataloader_path(tmp_path, monkeypatch, one_thread):
    skip_md5_checks(monkeypatch)
    data_dir = make_cifar10(tmp_path / "cifar", n_train=960, n_test=10, learnable=True)
    accuracies = []
    for device_resident in (False, True):
        trainer = fit(cifar(data_dir, device_resident, val_size=160, batch_size=32), max_epochs=4)
        # The best epoch: at this learning rate the tiny net's last epoch can dip on either
        # path, depending on the draws alone.
        accuracies.append(trainer.callback_metrics["val/acc_best"].item())
    assert min(accuracies) > 0.6, accuracies  # chance is 0.1
    assert abs(accuracies[0] - accuracies[1]) < 0.15, accuracies
