"""Two real DDP processes (gloo, CPU): sharded training, exact evaluation, indexed predictions."""

import json
import os
import socket
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from test_data_base import NumberedDataModule, sample_id
from torch import nn

from convrepro.testing import start_processes

WORLD_SIZE = 2
# 9 validation and test images over 2 ranks in batches of 4: shards of 5 and 4 images, which
# naive batching would split into 2 and 1 batches (a hang, as validation syncs every step).
NUM_TRAIN, NUM_EVAL, GLOBAL_BATCH = 49, 9, 8


class RecordingModel(pl.LightningModule):
    """Records which sample ids each hook saw on this rank."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 2))
        self.seen: dict[str, list[int]] = {"train0": [], "train1": [], "val": [], "test": []}

    def training_step(self, batch, batch_index):
        images, labels = batch
        self.seen[f"train{self.current_epoch}"].extend(sample_id(images))
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_index):
        images, _ = batch
        self.seen["val"].extend(sample_id(images))
        # a per-step collective: hangs unless every rank has the same number of batches
        self.log("val/step_mean", self.net(images).mean(), on_step=True, sync_dist=True)

    def test_step(self, batch, batch_index):
        self.seen["test"].extend(sample_id(batch[0]))

    def predict_step(self, batch, batch_index):
        return sample_id(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class IndexWriter(BasePredictionWriter):
    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.pairs: list[tuple[list[int], list[int]]] = []

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        # one dataloader: predictions come as a flat list, indices keep a dataloader level
        self.pairs = list(zip(predictions, batch_indices[0], strict=True))


def run_rank(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD_SIZE),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    dm = NumberedDataModule(
        num_train=NUM_TRAIN + NUM_EVAL,
        num_test=NUM_EVAL,
        val_size=NUM_EVAL,
        batch_size=GLOBAL_BATCH,
    )
    model, writer = RecordingModel(), IndexWriter()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy="ddp",
        max_epochs=2,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    trainer.predict(model, datamodule=dm, return_predictions=False)
    record = {
        **model.seen,
        "val_ids": dm.splits["val"].indices,
        "predictions": writer.pairs,
        "per_device_batch": dm.per_device_batch_size,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_training_shards_and_exact_evaluation(tmp_path):
    start_processes(run_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert all(r["per_device_batch"] == GLOBAL_BATCH // WORLD_SIZE for r in ranks)

    for epoch in ("train0", "train1"):
        shards = [set(r[epoch]) for r in ranks]
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) == 24  # 49 // 2, full batches of 4
        assert not shards[0] & shards[1]
    assert ranks[0]["train0"] != ranks[0]["train1"]

    val_counts = Counter(i for r in ranks for i in r["val"])
    assert val_counts == Counter({i: 2 for i in ranks[0]["val_ids"]})  # 2 epochs, once each
    assert Counter(i for r in ranks for i in r["test"]) == Counter(range(NUM_EVAL))

    predicted = Counter()
    for r in ranks:
        for ids, indices in r["predictions"]:
            assert ids == indices  # Lightning's recorded indices are the samples predicted
            predicted.update(ids)
    assert predicted == Counter(range(NUM_EVAL))
