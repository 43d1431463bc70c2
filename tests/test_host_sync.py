"""A training step must not make the host wait for the device, except at logging steps.

On a GPU every ``.item()``, ``bool(tensor)`` or data-dependent shape (``nonzero``, boolean
indexing, ``unique``) stalls the host until the queued kernels finish, so the next step's
launches cannot overlap this step's compute. On the CPU the same calls reach the same aten ops,
so a dispatch mode counts them here.
"""

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from convrepro.cli import ConvReproCLI
from convrepro.data.device import DeviceBatches

from datasets import make_cifar10, skip_md5_checks

ROOT = Path(__file__).resolve().parents[1]

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
        if func.__name__.split(".")[0] in HOST_READS or _is_boolean_indexing(func, args):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _is_boolean_indexing(func, args) -> bool:
    return func is torch.ops.aten.index.Tensor and any(
        index is not None and index.dtype == torch.bool for index in args[1]
    )


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
    # The fast config through the CLI: its callbacks (resume, NaN guard, checkpoints), the
    # W&B logger and the progress bar all run, on device-resident data.
    skip_md5_checks(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    data_dir = make_cifar10(tmp_path / "cifar", n_train=200, n_test=10)
    cli = ConvReproCLI(
        args=[
            "fit",
            f"--config={ROOT / 'configs' / 'vgg16_cifar_fast.yaml'}",
            "--model.backbone=tiny_backbone.TinyNet",
            "--model.compile=false",
            f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.batch_size=16",
            "--data.init_args.val_size=40",
            "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=1",
            f"--trainer.log_every_n_steps={LOG_EVERY}",
            "--trainer.callbacks+=test_host_sync.HostReadsPerStep",
        ]
    )
    assert isinstance(cli.trainer.train_dataloader, DeviceBatches)
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, HostReadsPerStep))
    # counts[s] covers the step that ends at global step s (the last one is epoch end).
    steps = cli.trainer.global_step
    quiet = {s: n for s, n in probe.counts.items() if s % LOG_EVERY and s < steps}
    assert len(quiet) >= 6
    assert all(n == 0 for n in quiet.values()), quiet
