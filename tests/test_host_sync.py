"""A training step must not make the host wait for the device, except at logging steps.

The counting (a dispatch mode on the CPU, CUDA's sync debug mode on a GPU) lives in
``benchmarks/host_syncs.py``, which the GPU check runs on the fast configs too.
"""

import sys
from pathlib import Path

from convrepro.cli import ConvReproCLI
from convrepro.data.device import DeviceBatches
from convrepro.testing import make_cifar10, skip_md5_checks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # host_syncs, also by class_path in the CLI
from host_syncs import HostReadsPerStep, quiet_steps  # noqa: E402

LOG_EVERY = 5


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
            "--trainer.callbacks+=host_syncs.HostReadsPerStep",
        ]
    )
    assert isinstance(cli.trainer.train_dataloader, DeviceBatches)
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, HostReadsPerStep))
    quiet = quiet_steps(probe.counts, LOG_EVERY)
    assert len(quiet) >= 6
    assert all(n == 0 for n in quiet.values()), quiet
