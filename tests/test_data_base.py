"""The shared datamodule machinery, on an in-memory data set whose images name their index."""

import re
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from convrepro.data.base import BaseImageDataModule

IMAGE_SHAPE = (3, 4, 4)


class NumberedImages(Dataset):
    """Image ``i`` is filled with the value ``i``; labels alternate 0, 1."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full(IMAGE_SHAPE, float(index)), index % 2


def add_noise(image: torch.Tensor) -> torch.Tensor:
    return image + torch.rand(image.shape)  # stands in for random augmentation


def unchanged(image: torch.Tensor) -> torch.Tensor:
    return image


def sample_id(images: torch.Tensor) -> list[int]:
    """The index each image was made from (noise is < 1)."""
    return images.flatten(1)[:, 0].floor().long().tolist()


class NumberedDataModule(BaseImageDataModule):
    def __init__(self, num_train: int = 100, num_test: int = 37, **kwargs) -> None:
        kwargs.setdefault("val_size", 20)
        kwargs.setdefault("num_workers", 0)
        kwargs.setdefault("batch_size", 16)
        super().__init__(data_dir="unused", **kwargs)
        self.num_train, self.num_test = num_train, num_test
        self.loaded: list[str] = []

    @property
    def class_names(self) -> list[str]:
        return ["even", "odd"]

    def train_transform(self):
        return add_noise

    def eval_transform(self):
        return unchanged

    def _load_source(self, name):
        self.loaded.append(name)
        return {
            "train": NumberedImages(self.num_train),
            "test": NumberedImages(self.num_test),
            "val": None,
        }[name]


def attach_trainer(dm: BaseImageDataModule, world_size: int, rank: int, **connector) -> None:
    """What the datamodule reads from a Trainer, as on rank ``rank`` of a DDP run."""
    dm.trainer = SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        num_devices=world_size,
        _accelerator_connector=SimpleNamespace(
            use_distributed_sampler=connector.get("use_distributed_sampler", False),
            is_distributed=world_size > 1,
        ),
    )


def ids_of(loader) -> list[int]:
    return [i for images, _ in loader for i in sample_id(images)]


def test_class_count_is_known_before_setup():
    assert NumberedDataModule().num_classes == 2


def test_validation_is_held_out_from_train_by_seed_and_test_is_left_alone():
    dm = NumberedDataModule(seed=3)
    dm.setup("fit")
    train, val = dm.splits["train"].indices, dm.splits["val"].indices
    assert len(val) == 20 and len(train) == 80
    assert sorted(train + val) == list(range(100))
    assert dm.loaded == ["val", "train"]  # the test images were not even opened
    again = NumberedDataModule(seed=3)
    again.setup("fit")
    assert again.splits["val"].indices == val
    other = NumberedDataModule(seed=4)
    other.setup("fit")
    assert other.splits["val"].indices != val


def test_seed_follows_the_run_seed_unless_given(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    assert NumberedDataModule().seed == 5
    assert NumberedDataModule(seed=2).seed == 2
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert NumberedDataModule().seed == 0


def test_val_size_can_be_a_fraction_or_zero():
    dm = NumberedDataModule(val_size=0.25)
    dm.setup("fit")
    assert len(dm.splits["val"]) == 25
    dm = NumberedDataModule(val_size=0)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 100
    assert dm.val_dataloader() == []


@pytest.mark.parametrize(
    ("val_size", "error", "message"),
    [
        (1.0, ValueError, r"fraction must be in \[0, 1\)"),
        (-1, ValueError, "must not be negative"),
        (True, TypeError, "a count or a fraction"),
    ],
)
def test_bad_val_size_is_refused_at_construction(val_size, error, message):
    with pytest.raises(error, match=message):
        NumberedDataModule(val_size=val_size)


def test_val_size_that_leaves_no_training_images_is_an_error():
    dm = NumberedDataModule(val_size=100)
    with pytest.raises(ValueError, match="val_size=100 leaves no training images out of 100"):
        dm.setup("fit")


def test_loaders_normalize_batching_and_order():
    dm = NumberedDataModule(batch_size=16)
    dm.setup()
    train = list(dm.train_dataloader())
    assert len(train) == 5 and all(len(labels) == 16 for _, labels in train)  # 80 // 16
    assert sorted(ids_of(train)) == sorted(dm.splits["train"].indices)
    assert ids_of(dm.val_dataloader()) == dm.splits["val"].indices  # in order, all of them
    assert ids_of(dm.test_dataloader()) == list(range(37))
    assert ids_of(dm.predict_dataloader()) == list(range(37))
    assert dm.sample_names("predict")[:2] == ["test/00000", "test/00001"]
    assert dm.sample_names("val") == [f"train/{i:05d}" for i in dm.splits["val"].indices]


def test_last_incomplete_training_batch_is_dropped():
    dm = NumberedDataModule(batch_size=30)
    dm.setup("fit")
    assert [len(labels) for _, labels in dm.train_dataloader()] == [30, 30]  # 80 images


def test_sample_names_need_setup():
    with pytest.raises(RuntimeError, match="call setup"):
        NumberedDataModule().sample_names("test")


def test_global_batch_size_is_divided_over_devices():
    dm = NumberedDataModule(batch_size=16)
    attach_trainer(dm, world_size=2, rank=1)
    dm.setup("fit")
    assert dm.per_device_batch_size == 8
    assert all(len(labels) == 8 for _, labels in dm.train_dataloader())
    attach_trainer(dm, world_size=3, rank=0)
    with pytest.raises(ValueError, match=r"batch_size=16 is the global batch size .* 3 devices"):
        dm.setup("fit")


def test_batch_larger_than_training_split_is_a_clear_error():
    dm = NumberedDataModule(num_train=320, val_size=20, batch_size=512)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "batch size 512 is larger than the 300-image training split: lower data.batch_size"
        ),
    ):
        dm.setup("fit")


def test_lightning_distributed_sampler_must_be_off():
    dm = NumberedDataModule(batch_size=16)
    attach_trainer(dm, world_size=2, rank=0, use_distributed_sampler=True)
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.setup("fit")


def test_ranks_train_on_disjoint_shards_and_evaluate_each_image_once():
    per_rank_train, per_rank_test = [], []
    for rank in range(3):
        dm = NumberedDataModule(batch_size=6)
        attach_trainer(dm, world_size=3, rank=rank)
        dm.setup()
        per_rank_train.append(ids_of(dm.train_dataloader()))
        per_rank_test.append(ids_of(dm.test_dataloader()))
    train_seen = [i for ids in per_rank_train for i in ids]
    assert len(train_seen) == len(set(train_seen)) == 3 * 13 * 2  # 80 // 3 per rank, batches of 2
    assert sorted(i for ids in per_rank_test for i in ids) == list(range(37))


def test_default_workers_follow_cpus_and_devices(monkeypatch):
    monkeypatch.setattr(
        "convrepro.data.base.suggested_max_num_workers", lambda devices: 24 // devices
    )
    dm = NumberedDataModule(num_workers=None)
    assert dm.resolved_num_workers == 8  # capped
    attach_trainer(dm, world_size=4, rank=0)
    assert dm.resolved_num_workers == 6
    loader = NumberedDataModule(num_workers=0, persistent_workers=True)
    loader.setup("fit")
    assert loader.train_dataloader().persistent_workers is False  # needs workers


def test_augmentation_is_a_function_of_seed_epoch_and_sample():
    dm = NumberedDataModule()
    dm.setup("fit")
    view = dm.splits["train"]
    assert torch.equal(view[(0, 5)][0], view[(0, 5)][0])
    assert not torch.equal(view[(0, 5)][0], view[(1, 5)][0])
    other_seed = NumberedDataModule(seed=1)
    other_seed.setup("fit")
    assert not torch.equal(view[(0, 5)][0], other_seed.splits["train"][(0, 5)][0])


def test_augmentation_leaves_the_global_rng_alone():
    dm = NumberedDataModule()
    dm.setup("fit")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dm.splits["train"][(0, 1)]
    assert torch.equal(torch.rand(3), expected)


def batches_per_epoch(num_workers: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    dm = NumberedDataModule(batch_size=16, num_workers=num_workers, persistent_workers=True)
    dm.setup("fit")
    loader = dm.train_dataloader()  # one loader for all epochs, as Lightning does
    result = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        result.append([images for images, _ in loader])
    return result


def test_batches_do_not_depend_on_the_number_of_workers():
    in_process, two_workers = batches_per_epoch(0), batches_per_epoch(2)
    for epoch in range(2):
        assert all(
            torch.equal(a, b) for a, b in zip(in_process[epoch], two_workers[epoch], strict=True)
        )
    first, second = (torch.cat(batches) for batches in in_process)
    assert not torch.equal(first, second)


class TinyClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))
        self.epochs_seen: list[int] = []
        self.ids_per_epoch: list[list[int]] = []

    def on_train_epoch_start(self) -> None:
        self.epochs_seen.append(self.trainer.datamodule.train_sampler.epoch)
        self.ids_per_epoch.append([])

    def training_step(self, batch, batch_index):
        images, labels = batch
        self.ids_per_epoch[-1].extend(sample_id(images))
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_index):
        raise AssertionError("val_size=0 must not validate")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_moves_the_sampler_to_each_epoch_and_runs_without_validation():
    dm = NumberedDataModule(batch_size=16, val_size=0)
    model = TinyClassifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule=dm)
    assert model.epochs_seen == [0, 1, 2]
    assert len({tuple(ids) for ids in model.ids_per_epoch}) == 3  # a new order every epoch
    dm.train_sampler.set_epoch(1)
    expected = [index for _, index in dm.train_sampler][:96]  # val_size=0: positions = indices
    assert model.ids_per_epoch[1] == expected
