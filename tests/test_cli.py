"""End to end through the CLI: fit, test and predict from the saved checkpoint; W&B offline; DDP.

The commands run in this process (``bad_inputs.in_workdir`` makes it look like a fresh one: its
own working directory, W&B offline, made-up data accepted); a fresh interpreter costs about 12 s
of CPU for importing torch and Lightning. ``main.py`` itself runs as a subprocess where only a
process of its own can show it: DDP (Lightning starts the second process by running the script
again), the first start's output (test_console), signals and exit statuses (test_reliability_*).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bad_inputs import in_workdir
from bad_inputs import run_main as run_in_process

from convrepro.cli import ConvReproCLI
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10
from convrepro.training import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# A small learnable CIFAR-10 and a tiny backbone keep a 2-epoch run to seconds on a CPU.
TINY_ARGS = [
    "--config",
    str(ROOT / "configs" / "vgg11_cifar.yaml"),
    "--model.backbone=tiny_backbone.TinyNet",
    "--model.optimizer.init_args.lr=0.1",
    "--data.init_args.data_dir=data/cifar10",
    "--data.init_args.batch_size=32",
    "--data.init_args.val_size=160",
    "--data.init_args.num_workers=0",
    "--trainer.log_every_n_steps=5",
]


def run_main(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        # sitecustomize there lets torchvision accept made-up CIFAR files (md5 check only)
        "PYTHONPATH": os.pathsep.join([str(TESTS / "subprocess_site"), str(TESTS)]),
    }
    for inherited in ("CONVREPRO_RUN_ID", "CONVREPRO_RUN_ID_OWNER", "WANDB_SERVICE"):
        env.pop(inherited, None)  # the child must not join this process's run or W&B service
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    make_cifar10(tmp_path / "data" / "cifar10", n_train=960, n_test=200)
    return tmp_path


@pytest.fixture
def workdir(cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``cifar_dir`` as the working directory of commands run by :func:`cli`."""
    in_workdir(cifar_dir, monkeypatch)
    return cifar_dir


def cli(*args: str) -> None:
    """``main.py ARGS`` in this process; it must succeed. Its W&B run ends as at a process exit."""
    import wandb

    try:
        assert run_in_process(list(args)) == 0
    finally:
        wandb.finish()


def only_run_dir(cwd: Path) -> Path:
    runs = list((cwd / "runs" / "vgg11_cifar").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_fit_test_predict_from_checkpoint(workdir):
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=2")
    run_dir = only_run_dir(workdir)
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["backbone"]["class_path"] == "tiny_backbone.TinyNet"
    assert saved["run"]["id"] == run_dir.name

    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(row["epoch"]) for row in history] == [0, 1]
    summary = RunFolder(run_dir).read_summary()
    assert summary.epochs == 2
    assert summary.best_val_acc > 0.3  # 10 classes: chance is 0.1

    best = run_dir / "checkpoints" / "best.ckpt"
    cli("test", *TINY_ARGS, f"--ckpt_path={best}")
    summary = RunFolder(run_dir).read_summary()
    assert 0.3 < summary.test["test/acc"] <= 1.0
    assert summary.test["test/acc_top5"] >= summary.test["test/acc"]

    cli("predict", *TINY_ARGS, "--ckpt_path=best")
    rows = list(csv.DictReader((run_dir / "predictions.csv").open()))
    assert len(rows) == 200
    assert rows[0]["sample"] == "test/00000"
    assert {row["predicted_class"] for row in rows} <= set(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    )
    assert all(0.0 < float(row["probability"]) <= 1.0 for row in rows)
    # test and predict wrote next to the training run instead of starting new ones
    assert only_run_dir(workdir) == run_dir


@pytest.mark.slow
def test_wandb_offline_run_holds_resolved_config_and_final_metrics(workdir):
    import wandb

    from convrepro.cli import ConvReproCLI

    started = ConvReproCLI(
        args=[
            "fit",
            *TINY_ARGS,
            "--trainer.max_epochs=1",
            "--trainer.callbacks+=convrepro.training.ValidationPlots",
            "--trainer.callbacks.num_images=8",
        ]
    )
    run = started.trainer.logger.experiment
    try:
        run_dir = only_run_dir(workdir)
        assert run.offline and Path(run.dir).resolve().is_relative_to(run_dir)
        # the whole resolved CLI config, not only the module's hyperparameters
        assert run.config["model"]["backbone"]["class_path"] == "tiny_backbone.TinyNet"
        assert run.config["data"]["init_args"]["val_size"] == 160
        assert run.config["trainer"]["max_epochs"] == 1
        assert run.summary["val/acc"] == pytest.approx(
            RunFolder(run_dir).read_summary().best_val_acc
        )
        assert run.summary["val/acc_best"] == pytest.approx(run.summary["val/acc"])
        # ValidationPlots: a confusion-matrix table over all 160 validation images, 8 images
        assert run.summary["val/confusion_matrix"]["nrows"] == 10 * 10
        assert run.summary["val/predictions"]["count"] == 8
    finally:
        wandb.finish()


@pytest.mark.slow
def test_second_run_in_the_same_folder_gets_its_own_directory(workdir):
    for _ in range(2):
        cli("fit", *TINY_ARGS, "--trainer.max_epochs=1")
    runs = sorted((workdir / "runs" / "vgg11_cifar").iterdir())
    assert len(runs) == 2
    assert all((run / "config.yaml").is_file() for run in runs)


@pytest.mark.slow
def test_csv_logger_replaces_wandb(workdir):
    cli(
        "fit",
        *TINY_ARGS,
        "--trainer.max_epochs=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
    )
    run_dir = only_run_dir(workdir)
    assert not (run_dir / "wandb").exists()
    metrics = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert any(row.get("val/acc") for row in metrics)


@pytest.mark.slow
def test_two_process_ddp_fit_has_one_wandb_run_and_one_checkpoint_folder(cifar_dir):
    run_main(
        cifar_dir,
        "fit",
        *TINY_ARGS,
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.limit_train_batches=4",  # what is checked is the run's layout, not learning
        "--trainer.limit_val_batches=2",
        timeout=600,
    )
    run_dir = only_run_dir(cifar_dir)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert RunFolder(run_dir).read_summary().epochs == 1


@pytest.mark.slow
def test_test_without_a_checkpoint_uses_the_runs_best_not_fresh_weights(workdir):
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1")
    run_dir = only_run_dir(workdir)
    cli("test", *TINY_ARGS, "--ckpt_path=best")
    scored = RunFolder(run_dir).read_summary()
    cli("test", *TINY_ARGS, f"--run.id={run_dir.name}")  # no --ckpt_path
    again = RunFolder(run_dir).read_summary()
    assert again.test["test/acc"] == scored.test["test/acc"]
    best = run_dir / "checkpoints" / "best.ckpt"
    assert Path(again.test_checkpoint).resolve() == Path(scored.test_checkpoint).resolve() == best


@pytest.mark.slow
def test_a_requeued_cluster_job_resumes_its_own_run_or_starts_it(workdir, monkeypatch):
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1")  # someone else's newer run
    other = only_run_dir(workdir)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # Requeued before its first checkpoint: its own run, anew.
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1", "--ckpt_path=last")
    own = workdir / "runs" / "vgg11_cifar" / "slurm-4242"
    assert RunFolder(own).read_summary().epochs == 1
    assert RunFolder(other).read_summary().epochs == 1  # not resumed, not touched
    # Requeued again, with its checkpoint: resumes its own run, to the longer length.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=2", "--ckpt_path=last")
    assert RunFolder(own).read_summary().epochs == 2
    # A new job (no requeue) that continues: the experiment's newest run, not a new folder.
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=3", "--ckpt_path=last")
    assert RunFolder(own).read_summary().epochs == 3
    assert sorted(p.name for p in (workdir / "runs" / "vgg11_cifar").iterdir()) == sorted(
        [other.name, "slurm-4242"]
    )


def _epoch_lrs(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    column = next(key for key in rows[0] if key.startswith("lr-SGD"))  # the weights' group
    return [float(row[column]) for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule",
    [
        ["--model.lr_scheduler=convrepro.training.WarmupCosineLR"],
        [
            "--model.lr_scheduler=torch.optim.lr_scheduler.MultiStepLR",
            "--model.lr_scheduler.init_args.milestones=[1,3]",
        ],
        [],  # the default: ReduceLROnPlateau on val/acc
    ],
    ids=["cosine", "multistep", "plateau"],
)
def test_a_resume_that_lengthens_the_run_never_trains_at_lr_zero(workdir, schedule):
    args = [*TINY_ARGS, *schedule]
    cli("fit", *args, "--trainer.max_epochs=4", "--run.id=straight")
    cli("fit", *args, "--trainer.max_epochs=2", "--run.id=resumed")
    cli("fit", *args, "--trainer.max_epochs=4", "--run.id=resumed", "--ckpt_path=last")
    runs = workdir / "runs" / "vgg11_cifar"
    straight, resumed = _epoch_lrs(runs / "straight"), _epoch_lrs(runs / "resumed")
    assert len(resumed) == 4
    if schedule and "WarmupCosineLR" in schedule[0]:
        # Re-planned over the new length: the extra epochs train at a falling, non-zero LR.
        assert resumed[2] > resumed[3] > 0
    else:  # schedules that do not depend on the run's length continue unchanged
        assert resumed == pytest.approx(straight)


@pytest.mark.slow
def test_later_commands_add_to_the_records_and_never_falsify_them(workdir):
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1")
    run_dir = only_run_dir(workdir)
    run = RunFolder(run_dir)
    cli("test", *TINY_ARGS, "--ckpt_path=best")
    tested = run.read_summary()
    assert tested.test_checkpoint_step == tested.global_step  # which weights, not only which file
    # validate is no epoch of the fit: history.csv keeps the fit's one row.
    cli("validate", *TINY_ARGS, "--ckpt_path=best")
    assert len(run.read_history()) == 1
    # Resuming a finished run trains nothing and validates nothing: its best stays recorded.
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1", "--ckpt_path=last")
    assert run.read_summary().best_val_acc == tested.best_val_acc
    assert run.read_summary().test == tested.test  # the weights did not change
    # Training on after the test: the old result is kept, marked as of the earlier weights.
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=2", "--ckpt_path=last")
    summary = run.read_summary()
    assert summary.test == {} and summary.test_checkpoint is None
    (earlier,) = summary.earlier_tests
    assert earlier["test/acc"] == tested.test["test/acc"]
    assert earlier["global_step"] == tested.global_step
    assert Path(earlier["checkpoint"]).is_absolute()
    invocations = json.loads(run.provenance_file.read_text())["invocations"]
    subcommands = [entry["subcommand"] for entry in invocations]
    assert subcommands == ["fit", "test", "validate", "resume", "resume"]


@pytest.mark.slow
def test_results_of_a_checkpoint_go_next_to_its_run_whatever_the_config(workdir):
    cli("fit", *TINY_ARGS, "--trainer.max_epochs=1")
    run_dir = only_run_dir(workdir)
    other = workdir / "tiny_other.yaml"  # another experiment name for the same network
    other.write_text((ROOT / "configs" / "vgg11_cifar.yaml").read_text())
    args = [*TINY_ARGS]
    args[1] = str(other)
    best = run_dir / "checkpoints" / "best.ckpt"
    cli("test", *args, f"--ckpt_path={best}")
    cli("predict", *args, f"--ckpt_path={best}")
    assert not (workdir / "runs" / "tiny_other").exists()
    assert "test/acc" in RunFolder(run_dir).read_summary().test
    assert (run_dir / "predictions.csv").is_file()
    invocations = json.loads(RunFolder(run_dir).provenance_file.read_text())["invocations"]
    assert [i["subcommand"] for i in invocations] == ["fit", "test", "predict"]
    assert str(other) in " ".join(invocations[1]["command"])


def test_the_cli_as_a_library_builds_the_classes_and_starts_no_run(workdir):
    """``ConvReproCLI(args=..., run=False)``, LightningCLI's way to get the model, datamodule
    and Trainer of a config in a notebook or script: no subcommand, so no run folder."""
    built = ConvReproCLI(args=[*TINY_ARGS, "--trainer.fast_dev_run=1"], run=False)
    assert isinstance(built.model, ImageClassifier)
    assert built.model.hparams.num_classes == built.datamodule.num_classes == 10
    assert built.trainer.precision == "32-true"  # the machine's, as for the subcommands
    assert not (workdir / "runs").exists()
    built.trainer.fit(built.model, built.datamodule)  # the caller runs it as plain Lightning
    assert built.trainer.global_step == 1
