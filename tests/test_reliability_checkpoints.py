"""Checkpoint files: atomic writes, which one ``--ckpt_path last`` picks, no NaN checkpoints;
and the checks behind them cost no host sync between logging steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from test_host_sync import LOG_EVERY, HostReadsPerStep

from convrepro.cli import main
from convrepro.data import CIFAR10DataModule
from convrepro.reliability import checkpoint_io as checkpointing
from convrepro.reliability.checkpoint_io import AtomicCheckpointIO
from convrepro.reliability.divergence import DivergenceGuard
from convrepro.reliability.preemption import PreemptionCheckpoint
from convrepro.reliability.resume import ExactResume
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10, skip_md5_checks
from convrepro.training.classifier import ImageClassifier

from tiny_backbone import TinyNet

ROOT = Path(__file__).resolve().parents[1]


class CrashMidWrite(BaseException):
    pass


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)

    def dies_halfway(obj, handle):
        handle.write(b"PK\x03\x04 half a zip archive")
        raise CrashMidWrite

    monkeypatch.setattr(checkpointing.torch, "save", dies_halfway)
    with pytest.raises(CrashMidWrite):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1
    monkeypatch.undo()

    # a process killed outright cannot clean up: its partial file stays hidden, not as last.ckpt
    (path.parent / ".last.ckpt.tmp-99999").write_bytes(b"partial")
    io.save_checkpoint({"step": 3}, path)
    assert io.load_checkpoint(path)["step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_unconfirmed_saves_can_be_rolled_back_until_confirmed(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.keep_predecessors = True  # as the DivergenceGuard sets it
    io.save_checkpoint({"step": 1}, path)
    io.confirm()
    io.save_checkpoint({"step": 2}, path)
    io.save_checkpoint({"step": 3}, tmp_path / "best.ckpt")
    io.roll_back()  # step 2's weights turned out bad: back to step 1, no best.ckpt
    assert io.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    io.save_checkpoint({"step": 4}, path)
    io.confirm()  # good: what it replaced is dropped
    assert io.load_checkpoint(path)["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_resume_picks_the_newer_of_last_and_interrupted(tmp_path):
    folder = tmp_path / "checkpoints"
    assert RunFolder(tmp_path).resume_checkpoint() is None
    folder.mkdir()
    last, interrupted = folder / "last.ckpt", folder / "interrupted.ckpt"
    last.write_bytes(b"")
    assert RunFolder(tmp_path).resume_checkpoint() == last
    interrupted.write_bytes(b"")
    os.utime(last, (1_000, 1_000))
    assert RunFolder(tmp_path).resume_checkpoint() == interrupted
    os.utime(interrupted, (500, 500))
    assert RunFolder(tmp_path).resume_checkpoint() == last


class PoisonWeightsAtStep(Callback):
    """Sets a weight to NaN after global step ``step``: every later loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters())[0].fill_(float("nan"))


def test_last_checkpoint_is_the_last_epoch_also_when_it_did_not_improve(tmp_path, monkeypatch):
    """Lightning 2.6 writes last.ckpt at a validation only together with a best checkpoint."""
    skip_md5_checks(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVREPRO_RUN_ID", raising=False)
    make_cifar10(tmp_path / "data" / "cifar10", n_train=320 + 160, n_test=32)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "vgg11_cifar.yaml"),
        "--model.backbone=tiny_backbone.TinyNet",
        "--model.optimizer.init_args.lr=0",  # the same val/acc every epoch: never an improvement
        "--data.init_args.data_dir=data/cifar10",
        "--data.init_args.batch_size=32",
        "--data.init_args.val_size=160",
        "--data.init_args.num_workers=0",
        "--trainer.max_epochs=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--run.id=flat",
        "--run.checkpoint_every_n_steps=4",
    ]
    main(args)
    run = RunFolder(tmp_path / "runs" / "vgg11_cifar" / "flat")
    assert torch.load(run.best_checkpoint, weights_only=True)["global_step"] == 10  # epoch 0
    last = torch.load(run.last_checkpoint, weights_only=True)
    assert (last["global_step"], last["epoch"]) == (20, 1)  # not the periodic save at step 16
    assert run.read_summary().last_checkpoint == str(run.last_checkpoint.resolve())


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capfd):
    skip_md5_checks(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVREPRO_RUN_ID", raising=False)
    make_cifar10(tmp_path / "data" / "cifar10", n_train=480, n_test=32)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "vgg11_cifar.yaml"),
        "--model.backbone=tiny_backbone.TinyNet",
        "--data.init_args.data_dir=data/cifar10",
        "--data.init_args.batch_size=32",
        "--data.init_args.val_size=160",
        "--data.init_args.num_workers=0",
        "--trainer.max_epochs=5",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=5",
        "--run.id=nan",
        "--run.checkpoint_every_n_steps=4",
        "--trainer.callbacks+=test_reliability_checkpoints.PoisonWeightsAtStep",
        "--trainer.callbacks.step=6",
    ]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 3
    # Steps 7 and 8 have NaN losses; the periodic save at step 8 is refused, not written.
    message = capfd.readouterr().err.strip().splitlines()[-1]
    last = tmp_path / "runs" / "vgg11_cifar" / "nan" / "checkpoints" / "last.ckpt"
    assert message.startswith(
        "error: training diverged: the loss became NaN or infinite at step 7 "
        f"(noticed at step 8, epoch 0); the last good checkpoint is {last.resolve()} (step 4)."
    )
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 4
    weights = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    assert weights and all(torch.isfinite(w).all() for w in weights.values())


def test_safety_callbacks_read_nothing_on_the_host_between_logging_steps(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    data_dir = make_cifar10(tmp_path / "cifar", n_train=200, n_test=10)
    datamodule = CIFAR10DataModule(
        data_dir=str(data_dir), val_size=40, batch_size=16, num_workers=0, device_resident=True
    )
    model = ImageClassifier(TinyNet(lrn=False), num_classes=10)
    probe = HostReadsPerStep()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=1,
        logger=False,
        log_every_n_steps=LOG_EVERY,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[
            probe,
            ExactResume(),
            DivergenceGuard(),
            PreemptionCheckpoint(tmp_path / "interrupted.ckpt"),
        ],
    )
    trainer.fit(model, datamodule)
    reads = {s: n for s, n in probe.counts.items() if s < trainer.global_step}
    assert all(n == 0 for s, n in reads.items() if s % LOG_EVERY), reads
    assert reads[LOG_EVERY] > 0  # the NaN check reads its flag at logging steps
