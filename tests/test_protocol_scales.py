"""VGG's training scale S (fixed or jittered) and the test images handed to a test protocol."""

import pytest
import torch
from torchvision.transforms import v2

from convrepro.data import ImageFolderDataModule
from convrepro.data.augment import TrainingScale
from convrepro.testing import make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    # 64 x 80 images (and one 195 x 33 BMP): every image is upscaled, as small data would be
    return make_image_folder(root, classes=("a", "b"), n_per_class=4, size=(64, 80))


def test_fixed_scale_rescales_the_shorter_side_to_s_keeping_the_aspect_ratio():
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    assert TrainingScale(256)(image).shape == (3, 256, 320)
    assert TrainingScale(256)(image.transpose(1, 2)).shape == (3, 320, 256)


def test_scale_jittering_draws_s_per_image_from_smin_to_smax():
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    jitter = TrainingScale((256, 512))
    torch.manual_seed(0)
    shapes = [jitter(image).shape for _ in range(200)]
    shorter = torch.tensor([shape[1] for shape in shapes])
    assert shorter.min() >= 256 and shorter.max() <= 512
    assert shorter.min() < 280 and shorter.max() > 488  # the whole range is used
    assert all(abs(shape[2] - shape[1] * 80 / 64) <= 1 for shape in shapes)


def test_bad_training_scales_are_errors(folder):
    with pytest.raises(ValueError, match="0 < Smin <= Smax"):
        TrainingScale((512, 256))
    with pytest.raises(ValueError, match=r"train_scale=200 is smaller than data\.image_size=224"):
        ImageFolderDataModule(str(folder), train_scale=200)


def test_folder_training_with_scale_jittering_gives_seeded_224_crops(folder):
    dm = ImageFolderDataModule(
        str(folder), val_size=2, batch_size=2, num_workers=0, train_scale=[256, 512]
    )
    dm.setup("fit")
    steps = dm.splits["train"].transform.transforms
    assert any(isinstance(step, TrainingScale) for step in steps)
    assert any(isinstance(step, v2.RandomCrop) for step in steps)
    assert not any(isinstance(step, v2.RandomResizedCrop) for step in steps)
    train = dm.splits["train"]
    image, _ = train[(0, 0)]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    torch.testing.assert_close(train[(0, 0)][0], image)  # seeded per (epoch, sample)
    assert not torch.equal(train[(1, 0)][0], image)


def test_test_scale_hands_over_the_central_square_at_q(folder):
    dm = ImageFolderDataModule(str(folder), batch_size=2, num_workers=0, test_scale=96)
    dm.setup("test")
    assert {dm.splits["test"][i][0].shape for i in range(len(dm.splits["test"]))} == {(3, 96, 96)}


def test_test_whole_image_keeps_the_aspect_ratio_at_one_image_per_device(folder):
    dm = ImageFolderDataModule(
        str(folder), batch_size=1, num_workers=0, test_scale=96, test_whole_image=True
    )
    dm.setup("test")
    assert dm.splits["test"][0][0].shape == (3, 96, 120)  # 64 x 80 with shorter side 96
    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (1, 3, 96, 120)

    with pytest.raises(ValueError, match=r"set data\.batch_size to 1"):
        ImageFolderDataModule(
            str(folder), batch_size=2, num_workers=0, test_scale=96, test_whole_image=True
        ).setup("test")
    with pytest.raises(ValueError, match=r"test_whole_image needs data\.test_scale"):
        ImageFolderDataModule(str(folder), test_whole_image=True)


def test_validation_keeps_the_center_crop_when_testing_at_another_scale(folder):
    dm = ImageFolderDataModule(
        str(folder), val_size=2, batch_size=2, num_workers=0, image_size=32, test_scale=96
    )
    dm.setup("fit")
    assert dm.splits["val"][0][0].shape == (3, 32, 32)
