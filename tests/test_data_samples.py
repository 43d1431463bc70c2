"""The per-sample DataLoader path: torchvision's augmentation distributions and pixels, drawn
from a counter-based stream per (seed, epoch, sample), with torch's global RNG left alone."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_device import STATISTICS_CASES, crop_offsets_and_flips, position_coded_images
from torchvision.transforms import v2

from convrepro.data import CIFAR10DataModule, ImageFolderDataModule, STL10DataModule
from convrepro.data.augment import PCALighting, TrainingScale
from convrepro.data.augment.lighting import RGBPCA
from convrepro.data.augment.sample import RandomResizedCrop, sample_step
from convrepro.data.samples import SamplePipeline
from convrepro.data.sampling import SampleRandom, sample_key
from convrepro.data.transforms import CIFAR10_STATS, IMAGENET_STATS, image_pipeline
from convrepro.testing import (
    balanced_labels,
    make_cifar10,
    make_image_folder,
    make_images,
    skip_md5_checks,
)


def streams(count: int, seed: int = 0) -> list[SampleRandom]:
    return [SampleRandom(sample_key(seed, 0, index)) for index in range(count)]


def test_sample_random_is_a_pure_function_of_its_key_with_the_right_distributions():
    first = [SampleRandom(sample_key(5, 2, 7)).bits() for _ in range(2)]
    assert first[0] == first[1]
    assert SampleRandom(sample_key(5, 2, 8)).bits() != first[0]
    assert SampleRandom(sample_key(5, 3, 7)).bits() != first[0]
    draws = np.array([[r.uniform(), r.below(9), r.normal()] for r in streams(20_000)])
    uniform, below, normal = draws.T
    assert uniform.min() >= 0.0 and uniform.max() < 1.0
    assert abs(uniform.mean() - 0.5) < 0.01 and abs(uniform.std() - math.sqrt(1 / 12)) < 0.01
    counts = np.bincount(below.astype(int), minlength=9) / len(below)
    assert len(counts) == 9 and np.abs(counts - 1 / 9).max() < 0.01
    assert abs(normal.mean()) < 0.03 and abs(normal.std() - 1) < 0.03
    # Neighbouring samples' streams are uncorrelated.
    assert abs(np.corrcoef(uniform[:-1], uniform[1:])[0, 1]) < 0.03
    orders = [tuple(r.permutation(3)) for r in streams(6000)]
    shares = np.array([orders.count(order) for order in set(orders)]) / len(orders)
    assert len(shares) == 6 and np.abs(shares - 1 / 6).max() < 0.02


def test_crop_offsets_and_flip_rate_are_uniform_like_torchvision():
    count = 3000
    transform = CIFAR10DataModule("unused").train_transform()
    pipeline = SamplePipeline.from_transform(transform)
    images = position_coded_images(count)
    augmented = torch.stack([pipeline(i, r) for i, r in zip(images, streams(count), strict=True)])
    tops, lefts, flipped = crop_offsets_and_flips(augmented)
    for offsets in (tops, lefts):
        assert np.abs(np.bincount(offsets, minlength=9) / count - 1 / 9).max() < 0.025
    assert abs(flipped.mean() - 0.5) < 0.03


@pytest.mark.parametrize("case", STATISTICS_CASES)
def test_pixel_statistics_match_torchvision(case, tmp_path, monkeypatch):
    make, size, repeats, tolerance = STATISTICS_CASES[case]
    skip_md5_checks(monkeypatch)
    make_cifar10(tmp_path, n_train=100, n_test=10)  # PCA lighting is fitted to these
    transform = make(tmp_path).train_transform()
    pipeline = SamplePipeline.from_transform(transform)
    assert pipeline is not None
    labels = balanced_labels(100, 10, seed=0)
    images = [Image.fromarray(i) for i in make_images(labels, 10, (size, size))] * repeats
    torch.manual_seed(0)
    reference = torch.stack([transform(image) for image in images])
    ours = torch.stack([pipeline(i, r) for i, r in zip(images, streams(len(images)), strict=True)])

    def statistics(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([batch.mean((0, 2, 3)), batch.std((0, 2, 3))])

    torch.testing.assert_close(statistics(ours), statistics(reference), atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    ("image_size", "scale"),
    [((375, 500), (0.08, 1.0)), ((24, 96), (0.9, 1.0))],  # the second often falls back
    ids=["photo", "wide-image-central-fallback"],
)
def test_resized_crop_boxes_follow_torchvision(image_size, scale):
    count = 4000
    reference = v2.RandomResizedCrop(224, scale=scale)
    torch.manual_seed(0)
    image = torch.zeros(3, *image_size)
    boxes = [reference.make_params([image]) for _ in range(count)]
    expected = torch.tensor([[b["top"], b["left"], b["height"], b["width"]] for b in boxes])
    step = sample_step(reference)
    assert isinstance(step, RandomResizedCrop)
    actual = torch.tensor([step.box(*image_size, random) for random in streams(count)])
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)

    def summary(boxes: torch.Tensor) -> torch.Tensor:
        top, left, height, width = boxes.double().unbind(1)
        assert (top >= 0).all() and (top + height <= image_size[0]).all()
        assert (left >= 0).all() and (left + width <= image_size[1]).all()
        area = height * width / (image_size[0] * image_size[1])
        return torch.stack(
            [
                area.quantile(quantiles),
                (width / height).log().quantile(quantiles),
                ((top + height / 2) / image_size[0]).quantile(quantiles),
                ((left + width / 2) / image_size[1]).quantile(quantiles),
            ]
        )

    torch.testing.assert_close(summary(actual), summary(expected), atol=0.03, rtol=0)


def test_colour_jitter_and_hue_factors_follow_torchvision():
    # On a flat image brightness alone gives floor(100 * factor): factors can be read back.
    brightness = image_pipeline([v2.ColorJitter(brightness=0.4)], CIFAR10_STATS)
    pipeline = SamplePipeline.from_transform(brightness)
    image = torch.full((3, 4, 4), 100, dtype=torch.uint8)
    batch = torch.stack([pipeline(image, random) for random in streams(3000)])
    std, mean = torch.tensor(CIFAR10_STATS.std), torch.tensor(CIFAR10_STATS.mean)
    factors = ((batch[:, 0, 0, 0] * std[0] + mean[0]) * 255).round().double() / 100
    quantiles = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(
        factors.quantile(quantiles), 0.6 + 0.8 * quantiles, atol=0.025, rtol=0
    )
    # Hue has a per-sample version too (torchvision's kernel), so every ColorJitter runs here.
    assert SamplePipeline.from_transform(image_pipeline([v2.ColorJitter(hue=0.1)], CIFAR10_STATS))


def test_pca_lighting_shift_has_covariance_std_squared_times_the_pixel_covariance():
    pca = RGBPCA(eigenvalues=(0.04, 0.01, 0.0025), eigenvectors=((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    stats = CIFAR10_STATS
    transform = image_pipeline([], stats, colour_steps=[PCALighting(pca, std=0.5)])
    pipeline = SamplePipeline.from_transform(transform)
    image = torch.full((3, 2, 2), 128, dtype=torch.uint8)
    shifted = torch.stack([pipeline(image, random)[:, 0, 0] for random in streams(4000)])
    shift = (shifted - shifted.mean(0)) * torch.tensor(stats.std)  # back to [0, 1] units
    torch.testing.assert_close(
        shift.var(0).double(), 0.25 * torch.tensor(pca.eigenvalues).double(), rtol=0.1, atol=0
    )


def test_deterministic_steps_give_torchvisions_exact_pixels(tmp_path):
    folder = make_image_folder(tmp_path, n_per_class=3, size=(75, 100))
    dm = ImageFolderDataModule(str(folder), image_size=56, test_scale=64)
    photo = Image.fromarray(make_images([0], 2, (75, 100))[0])
    cifar = CIFAR10DataModule("unused", resize=40)
    for transform in (
        dm.eval_transform(),
        dm.test_transform(),
        cifar.eval_transform(),
        cifar.predict_transform(),
        STL10DataModule("unused").predict_transform(),
    ):
        pipeline = SamplePipeline.from_transform(transform)
        assert pipeline is not None, transform
        torch.testing.assert_close(
            pipeline(photo, SampleRandom(0)), transform(photo), atol=1e-5, rtol=0
        )


def test_training_scale_draws_s_from_the_sample_stream():
    transform = image_pipeline([TrainingScale((64, 96)), v2.RandomCrop(32)], IMAGENET_STATS)
    step = sample_step(transform.transforms[1])
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    shorter = [step(image, random).shape[1] for random in streams(500)]
    assert min(shorter) == 64 and max(shorter) == 96  # every S, each end included
    assert SamplePipeline.from_transform(transform)(image, SampleRandom(1)).shape == (3, 32, 32)


def test_other_transforms_run_under_a_seeded_global_rng(tmp_path):
    rotate = image_pipeline([v2.RandomRotation(10)], CIFAR10_STATS)
    assert SamplePipeline.from_transform(rotate) is None  # no per-sample version
    assert SamplePipeline.from_transform(v2.Compose([v2.RandomHorizontalFlip()])) is None
    folder = make_image_folder(tmp_path, n_per_class=3, size=(40, 40))
    dm = ImageFolderDataModule(str(folder), val_size=0, batch_size=2, image_size=32, num_workers=0)
    dm.setup("fit")
    view = dm.splits["train"]
    view.transform = rotate
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    first = view[(0, 1)][0]
    assert torch.equal(torch.rand(2), expected)  # the global RNG is restored
    assert torch.equal(view[(0, 1)][0], first) and not torch.equal(view[(1, 1)][0], first)


@pytest.mark.parametrize("padding", [3, (1, 2), (1, 2, 3, 4), [0, 5, 2, 1]])
def test_every_random_crop_padding_form_pads_as_torchvision(padding):
    """A crop as large as the padded image has one position: both fast paths must then give
    torchvision's own padded image, pixel for pixel (a 4-tuple is left, top, right, bottom)."""
    from convrepro.data.device import _batch_step

    image = torch.randint(0, 256, (3, 30, 28), dtype=torch.uint8)
    padded = v2.Pad(padding, fill=7)(image)
    crop = v2.RandomCrop(tuple(padded.shape[-2:]), padding=padding, fill=7)
    assert torch.equal(crop(image), padded)
    per_sample = sample_step(crop)(image, SampleRandom(sample_key(0, 0, 0)))
    assert torch.equal(per_sample, padded)
    batch = _batch_step(crop, torch.device("cpu"))(image[None], torch.Generator().manual_seed(0))
    assert torch.equal(batch[0], padded)
