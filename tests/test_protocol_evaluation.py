"""Test-time protocols: dense, multi-scale, multi-crop, ten-crop and combined evaluation."""

import pytest
import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from convrepro.models import VGG
from convrepro.training import (
    CombinedEvaluation,
    DenseEvaluation,
    MultiCropEvaluation,
    TenCropEvaluation,
)


class Recorder(nn.Module):
    """Class scores that change under a flip, a crop or a rescale; records every input.

    Score c is the mean of channel c weighted by a ramp over the columns (so not
    flip-invariant) plus the input's width over 100 (so it tells scales apart). ``dense()`` is
    the model itself, as a fully-convolutional net scores any size.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[Tensor] = []

    def forward(self, images: Tensor) -> Tensor:
        self.inputs.append(images)
        ramp = torch.linspace(0.0, 2.0, images.shape[-1])
        return (images * ramp).mean(dim=(2, 3)) + images.shape[-1] / 100

    def dense(self) -> nn.Module:
        return self


def _posteriors(model: nn.Module, views: list[Tensor]) -> Tensor:
    return torch.stack([model(view).softmax(dim=1) for view in views]).mean(dim=0)


def _coordinate_images(batch: int, height: int, width: int) -> Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column: a crop tells where it was cut."""
    rows, columns = torch.meshgrid(
        torch.arange(height, dtype=torch.float32),
        torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    image = torch.stack([rows, columns, torch.zeros_like(rows)])
    return image.expand(batch, -1, -1, -1).clone()


def _top_left(crop: Tensor) -> tuple[int, int]:
    return int(crop[0, 0, 0, 0]), int(crop[0, 1, 0, 0])


def test_dense_evaluation_equals_the_fc_model_at_224():
    torch.manual_seed(0)
    vgg = VGG("A", num_classes=5).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        scores = DenseEvaluation(flip=False)(vgg, images)
        expected = vgg(images).log_softmax(dim=1)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-5)


def test_dense_evaluation_averages_the_posteriors_of_image_and_flip():
    model = Recorder()
    images = torch.zeros(2, 3, 40, 48)
    images[:, 0, :, :24] = images[:, 1, :, 24:] = 3.0  # class 0 on the left, 1 on the right
    scores = DenseEvaluation(flip=True)(model, images)
    expected = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(scores.exp(), expected)
    # the model is not flip-invariant, so the average is not the unflipped posterior
    assert not torch.allclose(scores.exp(), model(images).softmax(1), atol=0.1)


def test_multi_scale_dense_rescales_each_image_and_averages_over_scales_and_flips():
    model = Recorder()
    images = torch.rand(2, 3, 64, 80)
    scores = DenseEvaluation(scales=[32, 48, 64], flip=True)(model, images)
    views = list(model.inputs)
    assert [tuple(view.shape) for view in views] == [
        (2, 3, h, w) for h, w in [(32, 40), (32, 40), (48, 60), (48, 60), (64, 80), (64, 80)]
    ]
    assert views[4] is images  # the largest scale is the image as given, not resampled
    torch.testing.assert_close(views[1], views[0].flip(-1))
    torch.testing.assert_close(scores.exp(), _posteriors(Recorder(), views))


def test_a_test_scale_larger_than_the_images_is_an_error():
    with pytest.raises(ValueError, match=r"Q=512 is larger than the test images \(384x500\)"):
        DenseEvaluation(scales=[256, 512])(Recorder(), torch.rand(1, 3, 384, 500))


def test_dense_evaluation_needs_a_fully_convolutional_form():
    with pytest.raises(ValueError, match=r"DenseEvaluation needs a backbone with .*\.dense\(\)"):
        DenseEvaluation().check(nn.Conv2d(3, 5, 1))


def test_multi_crop_cuts_a_regular_grid_at_each_scale_with_flips():
    model = Recorder()
    images = _coordinate_images(2, 64, 80)
    protocol = MultiCropEvaluation(crop_size=32, grid=3, flip=True)
    scores = protocol(model, images)
    assert len(model.inputs) == 3 * 3 * 2
    unflipped, flipped = model.inputs[0::2], model.inputs[1::2]
    assert [_top_left(crop) for crop in unflipped] == [
        (top, left) for top in (0, 16, 32) for left in (0, 24, 48)
    ]
    assert all(crop.shape == (2, 3, 32, 32) for crop in model.inputs)
    for crop, mirrored in zip(unflipped, flipped, strict=True):
        torch.testing.assert_close(mirrored, crop.flip(-1))
    torch.testing.assert_close(scores.exp(), _posteriors(Recorder(), model.inputs))


def test_multi_crop_as_in_the_paper_is_150_crops_per_image():
    # 5 x 5 grid x 2 flips x 3 scales (paper sec. 3.2), here on small images.
    model = Recorder()
    MultiCropEvaluation(crop_size=24, grid=5, flip=True, scales=[32, 40, 48])(
        model, torch.rand(1, 3, 48, 60)
    )
    assert len(model.inputs) == 150
    assert {tuple(crop.shape[-2:]) for crop in model.inputs} == {(24, 24)}


def test_a_one_crop_grid_is_the_center_crop():
    images = torch.rand(2, 3, 37, 50)
    protocol = MultiCropEvaluation(crop_size=24, grid=1, flip=False)
    expected = Recorder()(TF.center_crop(images, [24, 24])).log_softmax(dim=1)
    torch.testing.assert_close(protocol(Recorder(), images), expected)


def test_ten_crop_matches_torchvision_ten_crop():
    images = _coordinate_images(2, 40, 52)
    model = Recorder()
    scores = TenCropEvaluation(crop_size=32)(model, images)
    reference = TF.ten_crop(images, [32, 32])
    assert len(model.inputs) == 10
    assert sorted(_top_left(crop) for crop in model.inputs) == sorted(
        _top_left(crop) for crop in reference
    )
    torch.testing.assert_close(scores.exp(), _posteriors(Recorder(), list(reference)))


def test_crops_larger_than_the_images_are_an_error():
    with pytest.raises(ValueError, match="cannot cut 224 px crops from 200x300 images"):
        TenCropEvaluation(224)(Recorder(), torch.rand(1, 3, 200, 300))


def test_combined_evaluation_averages_the_protocols_posteriors():
    images = torch.rand(2, 3, 40, 48)
    dense, ten_crop = DenseEvaluation(), TenCropEvaluation(crop_size=32)
    combined = CombinedEvaluation([dense, ten_crop])(Recorder(), images)
    expected = (dense(Recorder(), images).exp() + ten_crop(Recorder(), images).exp()) / 2
    torch.testing.assert_close(combined.exp(), expected)
    with pytest.raises(ValueError, match="needs a backbone"):
        CombinedEvaluation([ten_crop, dense]).check(nn.Conv2d(3, 5, 1))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DenseEvaluation(scales=[]), "non-empty list"),
        (lambda: MultiCropEvaluation(scales=[0, 256]), "positive sizes"),
        (lambda: MultiCropEvaluation(grid=0), "grid must be at least 1"),
        (lambda: TenCropEvaluation(crop_size=0), "crop_size must be positive"),
        (lambda: CombinedEvaluation([]), "at least one protocol"),
    ],
)
def test_bad_protocol_settings_are_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_log_posteriors_stay_finite_when_a_posterior_underflows():
    class Confident(nn.Module):
        def forward(self, images: Tensor) -> Tensor:
            return torch.tensor([[0.0, -1e4]]).expand(len(images), -1)

    scores = TenCropEvaluation(crop_size=8)(Confident(), torch.rand(3, 3, 10, 10))
    assert torch.isfinite(scores).all()
    assert torch.isfinite(nn.functional.cross_entropy(scores, torch.tensor([1, 1, 1])))


def test_crops_default_to_the_networks_input_size_and_a_mismatch_is_refused():
    """The 227-input paper AlexNet tested on 224 crops would have its adaptive pool stretch a
    5x5 map to 6x6 without a word; the crop size follows the network instead."""
    from convrepro.models import AlexNet

    paper, torchvision_variant = (
        AlexNet("paper", num_classes=10),
        AlexNet("torchvision", num_classes=10),
    )
    for backbone, size in ((paper, 227), (torchvision_variant, 224)):
        protocol = TenCropEvaluation()
        protocol.check(backbone)
        assert protocol.crop_size == size
    with pytest.raises(ValueError, match=r"crop_size=224, but AlexNet .* takes 227x227 inputs"):
        TenCropEvaluation(224).check(paper)
    TenCropEvaluation(227).check(paper)  # the right size, given explicitly
    imagenet_head = MultiCropEvaluation()
    imagenet_head.check(VGG("A", num_classes=10))
    assert imagenet_head.crop_size == 224
    with pytest.raises(ValueError, match=r"no fixed input size; give .*crop_size"):
        MultiCropEvaluation().check(VGG("A", head="cifar", num_classes=10))
    MultiCropEvaluation(crop_size=32).check(VGG("A", head="cifar", num_classes=10))
    with pytest.raises(ValueError, match="takes 227x227"):
        CombinedEvaluation([TenCropEvaluation(), MultiCropEvaluation(224)]).check(paper)
