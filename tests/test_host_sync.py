"""A training step must not make the host wait for the device, except at logging steps.

On a GPU every ``.item()``, ``bool(tensor)`` or data-dependent shape (``nonzero``, boolean
indexing, ``unique``) stalls the host until the queued kernels finish, so the next step's
launches cannot overlap this step's compute. On the CPU the same calls reach the same aten ops,
so a dispatch mode counts them here.
"""

from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils._python_dispatch import TorchDispatchMode

from convrepro.classifier import ImageClassifier
from convrepro.data import CIFAR10DataModule

from datasets import make_cifar10, skip_md5_checks
from tiny_backbone import TinyNet

# aten ops whose result the host must read (or whose output size depends on the data).
HOST_READS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
}
LOG_EVERY = 5


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class HostReadsPerStep(pl.Callback):
    """Host reads from one batch start to the next: the step, its hooks, logging, progress bar."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self._mode: CountHostReads | None = None

    def _close(self, step: int) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.counts[step] = self._mode.count
            self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._close(trainer.global_step)
        self._mode = CountHostReads()
        self._mode.__enter__()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close(trainer.global_step)  # the epoch's last step: reads at epoch end are fine


def test_training_steps_do_not_read_device_values_between_log_steps(tmp_path, monkeypatch):
    skip_md5_checks(monkeypatch)
    data_dir = make_cifar10(tmp_path / "cifar", n_train=200, n_test=10)
    datamodule = CIFAR10DataModule(
        data_dir=str(data_dir), val_size=40, batch_size=16, num_workers=0, device_resident=True
    )
    model = ImageClassifier(
        TinyNet(lrn=False),
        num_classes=10,
        optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=100),
    )
    probe = HostReadsPerStep()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=LOG_EVERY,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[probe],  # with the default progress bar
    )
    trainer.fit(model, datamodule)
    # counts[s] covers the step that ends at global step s (the last one is epoch end).
    quiet = {s: n for s, n in probe.counts.items() if s % LOG_EVERY and s < trainer.global_step}
    assert len(quiet) >= 6
    assert all(n == 0 for n in quiet.values()), quiet
