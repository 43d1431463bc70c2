"""Stopped runs resume exactly: SIGTERM, Ctrl+C and kill -9, mid-epoch and at an epoch's end.

Every interrupted run is compared with one uninterrupted run of the same config: same weights
(bit for bit, on the CPU with deterministic algorithms), same validation history, same
learning-rate scheduler state. The model has dropout, so the random streams must line up too.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_inputs import signal_at
from lightning.pytorch import Callback
from torch import nn

from convrepro.cli import ConvReproCLI, main
from convrepro.data import CIFAR10DataModule
from convrepro.data.augment.views import SubtractMeanImage
from convrepro.reliability.checkpoint_io import AtomicCheckpointIO
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10, skip_md5_checks

from tiny_backbone import TinyNet

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 10  # 480 images - 160 held out = 320 = 10 batches of 32
ARGS = [
    "--config",
    str(ROOT / "configs" / "vgg11_cifar.yaml"),
    "--model.backbone=test_reliability_resume.DropoutTinyNet",
    "--model.optimizer.init_args.lr=0.05",
    # patience 0 and a high threshold: the LR drops after most epochs, so a scheduler step
    # missed or repeated on resume shows in the weights
    "--model.lr_scheduler.init_args.patience=0",
    "--model.lr_scheduler.init_args.threshold=0.5",
    "--data.init_args.data_dir=data/cifar10",
    "--data.init_args.batch_size=32",
    "--data.init_args.val_size=160",
    "--data.init_args.num_workers=0",
    "--trainer.max_epochs=3",
    "--trainer.deterministic=true",
    "--trainer.log_every_n_steps=5",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--run.checkpoint_every_n_steps=4",
    "--trainer.callbacks+=test_reliability_resume.RecordTrainMetrics",
]


class DropoutTinyNet(TinyNet):
    """TinyNet with dropout before its classifier: resuming must also restore randomness."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes, lrn=False)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, num_classes))


class RecordTrainMetrics(Callback):
    """Keeps every finished epoch's train/loss and train/acc in the run folder (they are known
    once the next epoch starts, or the training ends), across the processes of a resumed run."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    def _record(self, trainer, epoch: int) -> None:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k in TRAIN_METRICS}
        if epoch < 0 or len(values) < len(TRAIN_METRICS):  # a fresh process knows none yet
            return
        path = Path(trainer.default_root_dir) / "train_metrics.json"
        recorded = json.loads(path.read_text()) if path.is_file() else {}
        recorded[str(epoch)] = values
        path.write_text(json.dumps(recorded))


TRAIN_METRICS = ("train/loss", "train/acc")


class SimulatedCrash(BaseException):
    """Ends a run like ``kill -9`` does, for in-process tests: nothing reacts by saving."""


class InterruptAtStep(Callback):
    """At global step ``step``: send this process ``signum``, or crash (``signum=0``)."""

    def __init__(self, step: int, signum: int = 0) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.signum:
            os.kill(os.getpid(), self.signum)
        else:
            raise SimulatedCrash


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume")
    make_cifar10(path / "data" / "cifar10", n_train=480, n_test=32)
    return path


@pytest.fixture
def in_workdir(workdir, monkeypatch) -> Path:
    skip_md5_checks(monkeypatch)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("CONVREPRO_RUN_ID", raising=False)
    return workdir


def fit(run_id: str, *extra: str) -> ConvReproCLI:
    return ConvReproCLI(args=["fit", *ARGS, f"--run.id={run_id}", "--trainer.logger=false", *extra])


@pytest.fixture(scope="module")
def uninterrupted(workdir) -> dict:
    with pytest.MonkeyPatch.context() as monkeypatch:
        skip_md5_checks(monkeypatch)
        monkeypatch.chdir(workdir)
        cli = fit("uninterrupted")
    return outcome(cli, workdir / "runs" / "vgg11_cifar" / "uninterrupted")


def outcome(cli: ConvReproCLI, run_dir: Path) -> dict:
    return {
        "weights": {k: v.clone() for k, v in cli.model.state_dict().items()},
        "history": validation_history(run_dir),
        "scheduler": cli.trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        "global_step": cli.trainer.global_step,
        "train_metrics": json.loads((run_dir / "train_metrics.json").read_text()),
    }


def assert_same_run(resumed: dict, expected: dict) -> None:
    assert resumed["global_step"] == expected["global_step"] == 3 * STEPS_PER_EPOCH
    assert resumed["history"] == expected["history"]
    assert resumed["scheduler"] == expected["scheduler"]
    assert resumed["scheduler"]["last_epoch"] == 3  # one plateau step per epoch, none lost
    # Each epoch's training loss and accuracy cover all of its batches, the resumed one too.
    assert resumed["train_metrics"] == expected["train_metrics"]
    assert sorted(expected["train_metrics"]) == ["0", "1", "2"]
    different = [
        key
        for key, value in expected["weights"].items()
        if not torch.equal(value, resumed["weights"][key])
    ]
    assert not different


def validation_history(run_dir: Path) -> list[dict[str, str]]:
    rows = csv.DictReader((run_dir / "history.csv").open())
    return [{k: v for k, v in row.items() if not k.startswith("lr")} for row in rows]


@pytest.mark.parametrize(
    ("name", "signum", "step", "exit_code"),
    [
        ("sigterm-mid-epoch", signal.SIGTERM, 15, 143),
        # a stop due on an epoch's last batch waits for the validation and one more step
        ("sigint-last-batch", signal.SIGINT, STEPS_PER_EPOCH, 130),
    ],
)
def test_stop_signal_saves_a_checkpoint_that_resumes_exactly(
    in_workdir, uninterrupted, caplog, name, signum, step, exit_code
):
    stopped_at = step + (1 if step % STEPS_PER_EPOCH == 0 else 0)
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "fit",
                *ARGS,
                f"--run.id={name}",
                "--trainer.logger=false",
                "--trainer.callbacks+=test_reliability_resume.InterruptAtStep",
                f"--trainer.callbacks.step={step}",
                f"--trainer.callbacks.signum={int(signum)}",
            ]
        )
    assert stop.value.code == exit_code
    run_dir = in_workdir / "runs" / "vgg11_cifar" / name
    checkpoint = run_dir / "checkpoints" / "interrupted.ckpt"
    message = f"stopped at step {stopped_at} and saved {checkpoint.relative_to(in_workdir)}"
    assert message in caplog.text
    assert RunFolder(run_dir).resume_checkpoint() == checkpoint  # newer than the periodic last.ckpt
    assert torch.load(checkpoint, weights_only=True)["global_step"] == stopped_at

    resumed = fit(name, "--ckpt_path=last")
    assert_same_run(outcome(resumed, run_dir), uninterrupted)
    assert not checkpoint.exists()  # a finished run drops its interrupt checkpoint
    assert [row["step"] for row in validation_history(run_dir)] == ["10", "20", "30"]


def test_crash_after_an_epoch_resumes_exactly_from_the_epoch_end_checkpoint(
    in_workdir, uninterrupted
):
    # Step 11: the periodic checkpoint skipped step 10 (an epoch's last batch) and is not due
    # before step 12, so the newest checkpoint is the one written after epoch 0's validation.
    with pytest.raises(SimulatedCrash):
        fit(
            "crash",
            "--trainer.callbacks+=test_reliability_resume.InterruptAtStep",
            "--trainer.callbacks.step=11",
        )
    run_dir = in_workdir / "runs" / "vgg11_cifar" / "crash"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == STEPS_PER_EPOCH

    resumed = fit("crash", "--ckpt_path=last")
    assert_same_run(outcome(resumed, run_dir), uninterrupted)
    assert isinstance(resumed.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


@pytest.mark.slow
def test_kill_9_loses_at_most_the_periodic_checkpoint_interval(in_workdir, uninterrupted):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS / "subprocess_site"), str(TESTS)]),
    }
    # Its own W&B service, as a separate job would have; a shared one would keep the killed
    # process's run open.
    env.pop("WANDB_SERVICE", None)
    killed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "main.py"),
            "fit",
            *ARGS,
            "--run.id=killed",
            "--trainer.callbacks+=test_reliability_resume.InterruptAtStep",
            "--trainer.callbacks.step=19",
            f"--trainer.callbacks.signum={int(signal.SIGKILL)}",
        ],
        cwd=in_workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = in_workdir / "runs" / "vgg11_cifar" / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert RunFolder(run_dir).resume_checkpoint() == last
    assert torch.load(last, weights_only=True)["global_step"] == 16  # every 4 steps

    resumed = ConvReproCLI(args=["fit", *ARGS, "--run.id=killed", "--ckpt_path=last"])
    try:
        assert_same_run(outcome(resumed, run_dir), uninterrupted)
        # the resumed run logs to the same W&B run (its id comes from the run folder)
        offline_runs = [p.name for p in (run_dir / "wandb").glob("offline-run-*")]
        assert len(offline_runs) == 2
        assert all(name.endswith("-vgg11_cifar-killed") for name in offline_runs)
        assert resumed.trainer.logger.experiment.id == "vgg11_cifar-killed"
    finally:
        import wandb

        wandb.finish()


def test_sigterm_while_the_run_is_set_up_saves_and_exits_143(in_workdir):
    """Lightning installs its SIGTERM handler only just before the sanity check; a stop while
    the run was set up (here: on_fit_start) killed the process without a checkpoint, so a
    requeued job's ``--ckpt_path last`` found nothing. A subprocess: the default action of
    SIGTERM would end the test process."""
    env = {**os.environ, "PYTHONPATH": f"{TESTS / 'subprocess_site'}{os.pathsep}{TESTS}"}
    for inherited in ("CONVREPRO_RUN_ID", "CONVREPRO_RUN_ID_OWNER", "WANDB_SERVICE"):
        env.pop(inherited, None)
    early_stop = ["--trainer.logger=false", *signal_at(signal.SIGTERM, hook="on_fit_start")]
    stopped = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "fit", *ARGS, "--run.id=early", *early_stop],
        cwd=in_workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    run = RunFolder(in_workdir / "runs" / "vgg11_cifar" / "early")
    assert run.resume_checkpoint() == run.interrupt_checkpoint
    assert torch.load(run.interrupt_checkpoint, weights_only=True)["global_step"] == 0


def test_a_resume_on_changed_data_trains_on_and_records_the_checkpoints_mean_image(in_workdir):
    """The mean image (and pixel statistics) a run fitted are part of what it trains: a resume
    continues on the checkpoint's, whatever data_dir now holds, and its checkpoints record them
    (not fresh ones fitted to the new data, nor the old ones over training on new ones)."""
    other = make_cifar10(in_workdir / "data" / "cifar10-other", n_train=480, n_test=32, seed=7)
    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "conv_local_cifar.yaml"),
        "--model.backbone=tiny_backbone.TinyNet",
        "--data.init_args.batch_size=32",
        "--data.init_args.val_size=160",
        "--data.init_args.num_workers=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        "--run.id=changed-data",
    ]
    ConvReproCLI(args=[*args, "--data.init_args.data_dir=data/cifar10", "--trainer.max_epochs=1"])
    run = RunFolder(in_workdir / "runs" / "conv_local_cifar" / "changed-data")
    first = torch.load(run.last_checkpoint, weights_only=True)
    trained = first["CIFAR10DataModule"]
    fresh = CIFAR10DataModule(str(other), preprocessing="cuda-convnet", val_size=160)
    fresh.setup("fit")
    assert not torch.equal(fresh.fitted_inputs["mean_image"], trained["mean_image"])

    on_other_data = [f"--data.init_args.data_dir={other}", "--trainer.max_epochs=2"]
    resumed = ConvReproCLI(args=[*args, *on_other_data, "--ckpt_path=last"])
    (used,) = [
        step.mean
        for step in resumed.datamodule.splits["train"].transform.transforms
        if isinstance(step, SubtractMeanImage)
    ]
    torch.testing.assert_close(used, trained["mean_image"].float(), rtol=0, atol=0)
    later = torch.load(run.last_checkpoint, weights_only=True)
    assert later["global_step"] > first["global_step"]
    assert torch.equal(later["CIFAR10DataModule"]["mean_image"], trained["mean_image"])
