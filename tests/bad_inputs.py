"""What the table of bad inputs (``test_user_errors_table.py``) is made of: the command lines,
callbacks that send signals, set-ups that break something, and checks of what is left on disk.

Each is a small function, so that a row reads as one line: ``Row(id, args, exit status, phrases
the message holds, check of the disk, set-up)``.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

from convrepro.cli import main
from convrepro.reliability import checkpoint_io
from convrepro.runs import RunFolder
from convrepro.runs.provenance import read_provenance
from convrepro.testing import (
    make_cifar10,
    make_cifar10_folders,
    make_image_folder,
    skip_md5_checks,
)

from tiny_backbone import TinyNet

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# On the CPU also where there is a GPU: the rows' numbers (the divergence step) are the CPU's.
QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.accelerator=cpu",
]
DATA = [
    "--data.init_args.data_dir=data/cifar10",
    "--data.init_args.batch_size=32",
    "--data.init_args.val_size=32",
    "--data.init_args.num_workers=0",
]
CIFAR = ["--config", str(CONFIGS / "vgg11_cifar.yaml"), *DATA, *QUIET, "--trainer.logger=false"]
# 128 training images: 4 steps per epoch
TINY = [*CIFAR, "--model.backbone=tiny_backbone.TinyNet", "--trainer.max_epochs=1"]
FOLDER = [
    "--config",
    str(CONFIGS / "vgg16_pets.yaml"),
    "--model.backbone=tiny_backbone.TinyNet",
    "--data.init_args.data_dir=pets",
    "--data.init_args.batch_size=2",
    "--data.init_args.image_size=32",
    "--data.init_args.resize_size=36",
    "--data.init_args.num_workers=0",
    "--data.init_args.on_bad_image=error",
    "--trainer.max_steps=1",
    "--trainer.logger=false",
    *QUIET,
]
RUN = "runs/vgg11_cifar/prepared"  # where a prepared run is copied to
# save_dir is required by the class; the CLI points it at the run folder
CSV_LOGGER = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=."]


class SignalAt(Callback):
    """Sends this process ``signum`` at global step ``step`` (after its batch), or at ``hook``."""

    def __init__(self, signum: int, step: int = 0, hook: str = "on_train_batch_end") -> None:
        self.signum, self.step = signum, step
        setattr(self, hook, self._send)

    def _send(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def signal_at(signum: int, step: int = 0, hook: str = "on_train_batch_end") -> list[str]:
    return [
        f"--trainer.callbacks+={__name__}.SignalAt",
        f"--trainer.callbacks.signum={int(signum)}",
        f"--trainer.callbacks.step={step}",
        f"--trainer.callbacks.hook={hook}",
    ]


# -- what is left on disk --------------------------------------------------------------------
def runs(workdir: Path) -> list[RunFolder]:
    return [RunFolder(path) for path in sorted((workdir / "runs").glob("*/*"))]


def nothing(workdir: Path) -> None:
    assert not runs(workdir), "a failed start must leave no run folder"


def resumable(workdir: Path) -> None:
    (run,) = runs(workdir)
    assert run.resume_checkpoint() is not None and run.config().is_file()


def all_of(*checks: Callable[[Path], None]) -> Callable[[Path], None]:
    def check(workdir: Path) -> None:
        for each in checks:
            each(workdir)

    return check


def prepared_config_kept(workdir: Path) -> None:
    resumable(workdir)
    config = yaml.safe_load((workdir / RUN / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 1
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.01


def resumed_with_more_epochs(workdir: Path) -> None:
    prepared_config_kept(workdir)  # config.yaml: how the run began
    run = RunFolder(workdir / RUN)
    assert read_provenance(run)[-1].changed_settings == {"trainer.max_epochs": [1, 2]}
    assert [row["epoch"] for row in run.read_history()] == ["0", "1"]


def last_good_checkpoint_is_good(workdir: Path) -> None:
    (run,) = runs(workdir)
    saved = torch.load(run.last_checkpoint, weights_only=True)
    net = TinyNet()
    weights = saved["state_dict"].items()
    net.load_state_dict(
        {k.removeprefix("backbone."): v for k, v in weights if k.startswith("backbone.")}
    )
    assert torch.isfinite(net(torch.randn(8, 3, 32, 32))).all()  # the poisoned ones give NaN


def no_interrupt_checkpoint(workdir: Path) -> None:
    resumable(workdir)  # the periodic last.ckpt
    (run,) = runs(workdir)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["last.ckpt"]  # no partial file


def training_log_kept(workdir: Path) -> None:
    rows = list(csv.DictReader(RunFolder(workdir / RUN).metrics_log.open()))
    assert any(row["train/loss"] for row in rows) and any(row["test/acc"] for row in rows)


def recorded_classes(count: int) -> Callable[[Path], None]:
    """The run's config.yaml holds the backbone's class count the run used."""

    def check(workdir: Path) -> None:
        resumable(workdir)
        (run,) = runs(workdir)
        config = yaml.safe_load(run.config().read_text())
        assert config["model"]["backbone"]["init_args"]["num_classes"] == count

    return check


def scored(checkpoint: str) -> Callable[[Path], None]:
    def check(workdir: Path) -> None:
        summary = RunFolder(workdir / RUN).read_summary()
        assert summary.tested == bool(checkpoint)
        assert (summary.test_checkpoint or "").endswith(checkpoint)

    return check


def nothing_outside_the_root(workdir: Path) -> None:
    nothing(workdir)
    assert {p.name for p in workdir.iterdir()} <= {"data", "runs"}


def data_folder_removed(workdir: Path) -> None:
    nothing(workdir)
    assert not (workdir / "fresh").exists(), "a failed download leaves no data folder"


# -- set-ups -----------------------------------------------------------------------------------
Setup = Callable[[Path, pytest.MonkeyPatch], None]


def file(name: str, write: Callable[[Path], None]) -> Setup:
    return lambda workdir, monkeypatch: write(workdir / name)


def pets(change: Callable[[Path], None] = lambda folder: None) -> Setup:
    def setup(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        shutil.copytree(workdir / "data" / "pets", workdir / "pets")
        change(workdir / "pets")

    return setup


def cifar_folders(change: Callable[[Path], None]) -> Setup:
    """CIFAR-10 as class folders in ``cifar_folders/`` (``data.source=folders``), changed."""

    def setup(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        change(make_cifar10_folders(workdir / "cifar_folders", n_train=100, n_test=20))

    return setup


def prepared(kind: str) -> Setup:
    """A run of the module's :func:`prepared_runs` (``finished`` or ``interrupted``)."""

    def setup(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        shutil.copytree(workdir / "data" / "prepare" / "runs" / "vgg11_cifar" / kind, workdir / RUN)

    return setup


def no_network(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails_halfway(url, download_root, *args, **kwargs):
        Path(download_root).mkdir(parents=True)
        Path(download_root, "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", fails_halfway)


def no_gpu(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as Lightning sees it, has no GPU (whether or not the test machine has)."""
    for accelerator in (CUDAAccelerator, MPSAccelerator):
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda: False))


def launched_by(**variables: str) -> Setup:
    """This process as one that a launcher (torchrun, srun) started: its variables set."""

    def setup(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return setup


def started_alone(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as ``python main.py`` started it: no launcher's variables, whatever the
    test process was started by."""
    launched = ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE")
    for name in [v for v in os.environ if v.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(name)
    for name in launched:
        monkeypatch.delenv(name, raising=False)


def read_only_root(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = workdir / "readonly"
    folder.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anywhere; a read-only mount answers access() like this
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: Path(p).resolve() != folder and real(p, mode)
        )


def second_ctrl_c_while_saving(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = checkpoint_io.write_atomic

    def interrupted_halfway(path, content):
        if Path(path).name != RunFolder.INTERRUPT_CHECKPOINT:
            return real(path, content)

        def half_then_ctrl_c(handle):
            handle.write(b"PK\x03\x04 half a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)

        return real(path, half_then_ctrl_c)

    monkeypatch.setattr(checkpoint_io, "write_atomic", interrupted_halfway)


def save(obj: object) -> Callable[[Path], None]:
    return lambda path: torch.save(obj, path)


class Malicious:
    def __reduce__(self):
        return (os.system, ("touch hacked",))


@dataclass(frozen=True)
class Row:
    """``main([*args])`` exits with ``code``; the ``error:`` line (exit 2, 3) or else the
    output holds each of ``says``, the output never ``never_says``; ``left`` checks the disk."""

    id: str
    args: list[str]
    code: int
    says: str | tuple[str, ...] = ()
    left: Callable[[Path], None] = nothing
    setup: Setup | None = None
    never_says: str | None = None


def run_main(args: list[str]) -> int:
    """The CLI's exit status for ``args``, run in this process."""
    try:
        main(args)
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def in_workdir(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run CLI commands from ``folder``, offline, on made-up data, as a fresh process would."""
    skip_md5_checks(monkeypatch)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("CONVREPRO_RUN_ID", "CONVREPRO_DEBUG"):
        monkeypatch.delenv(name, raising=False)


def make_data(root: Path) -> Path:
    """Made-up CIFAR-10 (128 training images after the 32 held out) and pets under ``root``."""
    make_cifar10(root / "cifar10", n_train=160, n_test=32)
    make_image_folder(root / "pets", classes=("cat", "dog"), n_per_class=4, with_bad_files=True)
    return root


def make_prepared_runs(data: Path) -> None:
    """Runs that rows start from, under ``data/prepare`` (see :func:`prepared`): ``finished``
    (one epoch, CSVLogger) and ``interrupted`` (SIGTERM at step 2)."""
    prepare = data / "prepare"
    prepare.mkdir()
    (prepare / "data").symlink_to(data)
    with pytest.MonkeyPatch.context() as monkeypatch:
        in_workdir(prepare, monkeypatch)
        assert run_main(["fit", *TINY, "--run.id=finished", *CSV_LOGGER]) == 0
        stop = signal_at(signal.SIGTERM, step=2)
        assert run_main(["fit", *TINY, "--run.id=interrupted", *stop]) == 143
