"""Scaling an ablation out: the SLURM launcher on a real local cluster, and W&B sweep agents.

One tiny grid (2 arms x 2 seeds, a tiny network on made-up CIFAR-10, CPU, deterministic) runs
under the local launcher as the reference. The same grid, plus an arm whose optimizer cannot be
built, is submitted through submitit and the real ``sbatch`` (tests/slurm_cluster.py starts the
cluster); two of its points are stopped mid-fit, one as a preemption (``scontrol requeue``), one
by the time limit's warning signal, and must resume from their checkpoints. Every finished point
must match the reference exactly, the broken arm must show as failed with its log, one point
also runs as a 2-task DDP job, on one node and on two (the cluster's second node is a second
slurmd on this host), and the command a W&B agent would run must give the reference's run as
well.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Callback
from submitit.helpers import DelayedSubmission

from convrepro.ablate import slurm, slurm_job
from convrepro.ablate.__main__ import main
from convrepro.ablate.spec import load_spec
from convrepro.ablate.sweep import sweep_config
from convrepro.runs import RunFolder
from convrepro.runs.provenance import read_provenance
from convrepro.testing import hold_until_sigterm, make_cifar10, skip_md5_checks

pytest_plugins = ["slurm_cluster"]

TESTS = Path(__file__).resolve().parent
#: results.csv columns that must match between launchers (times and paths differ).
COMPARED = ("arm", "seed", "best_val_acc", "test_acc", "test_acc_top5", "epochs")
HOLD_RUNS_ENV, HOLD_MARKERS_ENV = "HOLD_RUN_DIRS", "HOLD_MARKERS"
#: The points stopped mid-fit, and how: as SLURM preempts (SIGTERM to every process of the job,
#: requeued by SLURM), and as it warns of the time limit (submitit's signal, USR2: the job stops
#: the run and requeues itself).
HELD = {"no-lrn-seed1": "scontrol requeue", "lrn-seed0": "pre-timeout signal"}
#: Requeues after a time limit that the grid's jobs may take (the file's `max_timeouts`).
MAX_TIMEOUTS = 5

# Full validation and test sets (no limit_*_batches): a DDP run then sees the same images.
TINY_BASE = """
trainer:
  max_epochs: 2
  logger: false
  accelerator: cpu
  devices: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  callbacks: [{class_path: test_slurm_ablation.RunHooks}]
model:
  backbone: {class_path: tiny_backbone.TinyNet}
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05}}
data:
  class_path: convrepro.data.CIFAR10DataModule
  init_args: {data_dir: DATA, batch_size: 16, val_size: 32, num_workers: 0, download: false}
"""
ARMS = {
    "no-lrn": {"model.backbone.init_args.lrn": False},
    "lrn": {"model.backbone.init_args.lrn": True},
}
# Parses (SGD takes any float), fails when the optimizer is built: a point that fails at run time.
BROKEN_ARM = {"broken": {"model.optimizer.init_args.lr": -1.0}}


class RunHooks(Callback):
    """What the runs of these tests need beyond their config (it is in the base config, so in
    every run alike).

    * torchvision accepts the made-up CIFAR-10 files (its md5 check only), from when the CLI
      builds this callback, before any data is read. tests/subprocess_site does that for other
      tests' subprocesses at every interpreter start, which would cost each SLURM task's
      submitit process a torch import.
    * The runs whose folders ``$HOLD_RUN_DIRS`` lists are held in their first attempt (until
      their marker exists in ``$HOLD_MARKERS``) mid-epoch until a stop signal arrives, as jobs
      stopped mid-fit; each then saves its interrupt checkpoint and exits. Later attempts go on.
    """

    def __init__(self) -> None:
        skip_md5_checks()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        held = os.environ.get(HOLD_RUNS_ENV, "").split(os.pathsep)
        here = (trainer.current_epoch, batch_idx) == (1, 1)
        if not here or trainer.default_root_dir not in held:
            return
        marker = Path(os.environ[HOLD_MARKERS_ENV], Path(trainer.default_root_dir).name)
        if marker.exists():
            return
        hold_until_sigterm(marker, 300)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict[str, Path]:
    """The ablation files, the made-up data, and an environment for the runs' processes."""
    folder = tmp_path_factory.mktemp("grid")
    data = make_cifar10(folder / "data", n_train=96, n_test=32)  # 64 train: 4 steps per epoch
    (folder / "tiny.yaml").write_text(TINY_BASE.replace("DATA", str(data)))
    files = {}
    for name, arms, seeds, extra in (
        ("grid", ARMS, [0, 1], {}),
        ("grid_and_broken", {**ARMS, **BROKEN_ARM}, [0, 1], {}),
        (
            "ddp",
            {"no-lrn": ARMS["no-lrn"]},
            [1],
            {"slurm": {"gpus_per_run": 0, "tasks_per_run": 2}},
        ),
    ):
        spec = {"name": "tiny", "base": "tiny.yaml", "seeds": seeds, "arms": arms, **extra}
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(spec, sort_keys=False))
    files["folder"] = folder
    return files


@pytest.fixture(scope="module")
def run_environment():
    """What every process of the runs sees: the tests' classes importable, one thread each (two
    cores); and here, where the launchers open the data first, made-up files accepted."""
    with pytest.MonkeyPatch.context() as patch:
        # this checkout's package first: an installed one may be another checkout's
        patch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]))
        patch.setenv("OMP_NUM_THREADS", "1")
        for variable in ("CONVREPRO_RUN_ID", HOLD_RUNS_ENV, HOLD_MARKERS_ENV):
            patch.delenv(variable, raising=False)
        skip_md5_checks(patch)
        yield


@pytest.fixture(scope="module")
def local_results(grid, run_environment) -> list[dict[str, str]]:
    """The reference: the grid under the local launcher, two points at a time."""
    out = grid["folder"] / "local"
    assert main([str(grid["grid"]), f"--out={out}", "--devices=0,1"]) == 0
    return compared_rows(out / "results.csv")


@pytest.fixture(scope="module")
def slurm_grid(grid, run_environment, slurm_cluster) -> dict:
    """The grid and the broken arm as one job array; the :data:`HELD` points stop mid-fit."""
    out = grid["folder"] / "slurm"
    markers = grid["folder"] / "held"
    markers.mkdir()
    with pytest.MonkeyPatch.context() as patch:  # sbatch passes the environment to the jobs
        held_dirs = [str(out / "runs" / "tiny" / run_id) for run_id in HELD]
        patch.setenv(HOLD_RUNS_ENV, os.pathsep.join(held_dirs))
        patch.setenv(HOLD_MARKERS_ENV, str(markers))
        submit = [str(grid["grid_and_broken"]), "--launcher=slurm", f"--out={out}"]
        limits = [f"--partition={slurm_cluster.partition}", "--time=10", "--gpus-per-run=0"]
        limits.append(f"--max-timeouts={MAX_TIMEOUTS}")
        assert main([*submit, *limits]) == 0
    jobs = slurm.read_submitted(out)
    for run_id, how in HELD.items():
        job = jobs[run_id].job_id
        wait_for((markers / run_id).exists, f"{run_id} to reach epoch 1", 240, out)
        if how == "scontrol requeue":
            slurm_cluster.run("scontrol", "requeue", job)
        else:  # what SLURM sends the job's steps signal_delay seconds before the time limit
            signal_name = slurm_job.PRE_TIMEOUT_SIGNAL.name.removeprefix("SIG")
            slurm_cluster.run("scancel", f"--signal={signal_name}", f"{job}.0")
        wait_for(lambda job=job: pending(slurm_cluster, job), f"{job} to be requeued", 60, out)
    status_while_requeued = run_status(out)[1]
    for run_id in HELD:  # SLURM holds a requeued job back for two minutes; too long for a test
        slurm_cluster.run("scontrol", "update", f"JobId={jobs[run_id].job_id}", "StartTime=now")
    slurm_cluster.wait_until_idle(timeout_s=300)
    assert main(["report", str(out)]) == 0  # what a user runs once the array is done
    return {"out": out, "jobs": jobs, "status_while_requeued": status_while_requeued}


# -- the grid on SLURM ------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grid_on_slurm_ends_with_the_local_results(slurm_grid, local_results):
    out = slurm_grid["out"]
    assert compared_rows(out / "results.csv") == local_results
    assert len(local_results) == 4
    assert len({point.job_id.split("_")[0] for point in slurm_grid["jobs"].values()}) == 1
    assert sorted(slurm_grid["jobs"]) == sorted(
        f"{arm}-seed{seed}" for arm in ("no-lrn", "lrn", "broken") for seed in (0, 1)
    )
    # --max-timeouts reached submitit: what each task's pickled submission counts down from
    task = out / slurm.SLURM_FOLDER / f"{slurm_grid['jobs']['no-lrn-seed0'].job_id}_submitted.pkl"
    assert DelayedSubmission.load(task)._timeout_countdown == MAX_TIMEOUTS


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.parametrize("run_id", list(HELD))
def test_point_stopped_mid_fit_is_requeued_and_resumes(slurm_grid, local_results, run_id):
    out = slurm_grid["out"]
    held = RunFolder(out / "runs" / "tiny" / run_id)
    point = slurm_grid["jobs"][run_id]
    line = next(s for s in slurm_grid["status_while_requeued"] if s.startswith(run_id))
    assert line.split()[1:4] == ["preempted/requeued", "job", point.job_id]
    assert line.endswith(f"resumes from {held.interrupt_checkpoint}")
    log = held.log.read_text()
    assert "SIGTERM: stopped at step 6 and saved" in log  # epoch 1, second batch
    assert f"Restoring states from the checkpoint path at {held.interrupt_checkpoint}" in log
    assert [row["epoch"] for row in csv.DictReader(held.history.open())] == ["0", "1"]
    assert not held.interrupt_checkpoint.exists()  # the finished fit no longer needs it
    if HELD[run_id] == "pre-timeout signal":  # submitit stopped the run and requeued the job
        scheduler_log = Path(point.scheduler_log).read_text()
        assert "Caught signal SIGUSR2" in scheduler_log
        saved = scheduler_log.index(f"{run_id}: fit exited with 143")
        assert saved < scheduler_log.index(f"Requeued job {point.job_id}")  # saved, then requeued
    arm, seed = run_id.rsplit("-seed", 1)
    row = next(r for r in local_results if (r["arm"], r["seed"]) == (arm, seed))
    assert held.read_summary().test_acc == float(row["test_acc"])  # as if never stopped


@pytest.mark.cluster
@pytest.mark.slow
def test_failed_point_is_reported_with_its_log_and_the_others_finish(slurm_grid):
    out = slurm_grid["out"]
    exit_status, printed = run_status(out)
    assert exit_status == 1, printed  # while any point failed
    lines = {line.split()[0]: line for line in printed[:6]}
    for seed in (0, 1):
        log = out / "runs" / "tiny" / f"broken-seed{seed}" / "log.txt"
        assert f"broken-seed{seed}: fit exited with " in lines[f"broken-seed{seed}"]
        assert lines[f"broken-seed{seed}"].endswith(f"see {log}")
        assert "Invalid learning rate" in log.read_text()
    assert [lines[f"{arm}-seed{s}"].split()[1] for arm in ARMS for s in (0, 1)] == ["done"] * 4
    assert printed[6] == "tiny: 4 done, 2 failed"
    assert main(["report", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "no test result yet (left out): broken-seed0 (failed), broken-seed1 (failed)" in summary


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_point_as_a_two_task_job_matches_one_process(
    grid, run_environment, slurm_cluster, local_results
):
    out = grid["folder"] / "ddp"
    submit = [str(grid["ddp"]), "--launcher=slurm", f"--out={out}", "--time=10"]
    assert main(submit) == 0
    slurm_cluster.wait_until_idle(timeout_s=300)
    runs = list((out / "runs" / "tiny").iterdir())
    assert [run.name for run in runs] == ["no-lrn-seed1"]  # both tasks: one run folder
    run = RunFolder(runs[0])
    assert sorted(p.name for p in run.path.glob("config*.yaml")) == [
        "config.test.yaml",
        "config.yaml",
    ]
    assert "MEMBER: 2/2" in run.log.read_text()  # the second task joined the first's group
    summary = run.read_summary()
    row = next(r for r in local_results if (r["arm"], r["seed"]) == ("no-lrn", "1"))
    assert summary.test_acc == pytest.approx(float(row["test_acc"]), abs=1e-6)
    assert summary.best_val_acc == pytest.approx(float(row["best_val_acc"]), abs=1e-6)
    assert summary.test["test/loss"] == pytest.approx(
        RunFolder(grid["folder"] / "local/runs/tiny/no-lrn-seed1").read_summary().test["test/loss"],
        rel=1e-4,
    )


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_point_as_a_two_node_job_runs_on_both_nodes_and_matches_one_process(
    grid, run_environment, slurm_cluster, local_results
):
    out = grid["folder"] / "two-nodes"
    partition = f"--partition={slurm_cluster.two_node_partition}"
    assert (
        main(
            [
                str(grid["ddp"]),
                "--launcher=slurm",
                f"--out={out}",
                "--time=10",
                "--nodes=2",
                partition,
            ]
        )
        == 0
    )
    slurm_cluster.wait_until_idle(timeout_s=300)
    (point,) = slurm.read_submitted(out).values()
    # what sbatch got: two nodes, one task on each, each task running the point's command
    (script,) = (out / slurm.SLURM_FOLDER).glob("*_submission.sh")
    lines = script.read_text().splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", f"#SBATCH {partition}"):
        assert line in lines
    assert any(line.startswith("srun --unbuffered") for line in lines)
    task = out / slurm.SLURM_FOLDER / f"{point.job_id}_submitted.pkl"
    assert DelayedSubmission.load(task).args[0][-2:] == ["--devices-per-node=1", "--num-nodes=2"]
    for node in (slurm_cluster.node, slurm_cluster.second_node):  # a task ran on each slurmd
        assert "launch task StepId=" in (slurm_cluster.folder / f"slurmd.{node}.log").read_text()
    runs = list((out / "runs" / "tiny").iterdir())
    assert [run.name for run in runs] == ["no-lrn-seed1"]  # both nodes: one run folder
    run = RunFolder(runs[0])
    assert "MEMBER: 2/2" in run.log.read_text()
    config = yaml.safe_load(run.config().read_text())
    assert (config["trainer"]["num_nodes"], str(config["trainer"]["devices"])) == (2, "1")
    fit = read_provenance(run)[0]
    assert (fit.devices["nodes"], fit.devices["world_size"], fit.outcome) == (2, 2, "finished")
    summary = run.read_summary()
    row = next(r for r in local_results if (r["arm"], r["seed"]) == ("no-lrn", "1"))
    assert summary.test_acc == pytest.approx(float(row["test_acc"]), abs=1e-6)
    assert summary.best_val_acc == pytest.approx(float(row["best_val_acc"]), abs=1e-6)


# -- bad input: one line, nothing submitted -----------------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
def test_partition_slurm_rejects_submits_nothing(grid, run_environment, slurm_cluster, capsys):
    out = grid["folder"] / "rejected"
    submit = [str(grid["grid"]), "--launcher=slurm", f"--out={out}", "--time=10"]
    assert main([*submit, "--gpus-per-run=0", "--partition=nope"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: sbatch refused the job array: ") and error.count("\n") == 1
    assert "invalid partition" in error.lower() and "Nothing was submitted" in error
    assert not slurm.read_submitted(out)
    # The default of one GPU per run, on this CPU-only cluster: what it means and what to do.
    assert main(submit) == 2
    error = capsys.readouterr().err
    assert "generic resource" in error.lower() and "--gpus-per-run 0" in error
    assert error.count("\n") == 1 and not slurm.read_submitted(out)
    # two nodes per run from the one-node partition: sbatch would queue it for ever
    assert main([*submit, "--gpus-per-run=0", "--tasks-per-run=2", "--nodes=2"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: each run asks for 2 nodes (--nodes) and partition test has 1")
    assert "PartitionNodeLimit" in error and error.count("\n") == 1
    assert not slurm.read_submitted(out)
    # data every point reads is missing: stopped before the first point is submitted
    spec = yaml.safe_load(grid["grid"].read_text())
    spec["overrides"] = {"data.init_args.data_dir": str(grid["folder"] / "no-data")}
    no_data = grid["folder"] / "no-data.yaml"
    no_data.write_text(yaml.safe_dump(spec))
    assert main([str(no_data), *submit[1:], "--gpus-per-run=0"]) == 2
    assert capsys.readouterr().err.startswith("error: data of every arm: CIFAR-10 is missing")
    assert not slurm.read_submitted(out)
    assert not slurm_cluster.run("squeue", "--noheader").strip()


def test_without_sbatch_or_submitit_nothing_is_submitted(grid, capsys):
    out = grid["folder"] / "none"
    submit = [str(grid["grid"]), "--launcher=slurm", f"--out={out}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", str(Path(sys.executable).parent))  # python, but no sbatch
        assert main([*submit, "--time=10"]) == 2
    assert "sbatch/srun not found on PATH" in capsys.readouterr().err
    if shutil.which("sbatch") is None:
        pytest.skip("the other cases need sbatch on PATH")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "submitit", None)  # as if not installed
        assert main([*submit, "--time=10"]) == 2
    assert 'needs submitit: pip install -e ".[slurm]"' in capsys.readouterr().err
    assert main(submit) == 2  # the file sets no time limit
    assert "set the time limit of each job" in capsys.readouterr().err
    assert not out.exists()


# -- W&B sweeps -------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_agent_command_runs_the_local_launchers_point(grid, run_environment, local_results):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    out = grid["folder"] / "sweep"
    assert main(["sweep", str(grid["grid"]), f"--out={out}"]) == 0
    config = yaml.safe_load((out / "sweep.yaml").read_text())
    assert config == sweep_config(load_spec(grid["grid"]), grid["grid"], out)
    assert config["parameters"] == {
        "arm": {"values": ["no-lrn", "lrn"]},
        "seed": {"values": [0, 1]},
    }
    # What the agent runs for one of the grid's runs, expanded as wandb's agent expands it
    run = {"arm": {"value": "lrn"}, "seed": {"value": 0}}
    flags = create_sweep_command_args({"args": run})
    macros = {**flags, "env": ["/usr/bin/env"], "interpreter": [sys.executable]}
    command = []
    for part in create_sweep_command(config["command"]):
        is_macro = part.startswith("${") and part.endswith("}")
        command += macros[part[2:-1]] if is_macro else [part]
    # `python -m convrepro.ablate one ...`, which runs the point in its own process as it would
    # in the agent's (the local launcher's tests start that command as a process).
    entry = ["/usr/bin/env", sys.executable, "-m", "convrepro.ablate", "one"]
    assert command[: len(entry)] == entry
    assert main(command[len(entry) - 1 :]) == 0

    summary = RunFolder(out / "runs" / "tiny" / "lrn-seed0").read_summary()
    row = next(r for r in local_results if (r["arm"], r["seed"]) == ("lrn", "0"))
    assert summary.test_acc == float(row["test_acc"])
    assert summary.best_val_acc == float(row["best_val_acc"])


# -- helpers ------------------------------------------------------------------------------------


def compared_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return [{key: row[key] for key in COMPARED} for row in csv.DictReader(handle)]


def run_status(out: Path) -> tuple[int, list[str]]:
    """``status``'s exit status and printed lines."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exit_status = main(["status", str(out)])
    return exit_status, printed.getvalue().splitlines()


def pending(cluster, job: str) -> bool:
    return cluster.run("squeue", "--noheader", f"--jobs={job}", "--format=%T").strip() == "PENDING"


def wait_for(condition, what: str, timeout_s: float, out: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {log}\n{log.read_text()[-3000:]}" for log in sorted(out.rglob("*log*"))
            )
            pytest.fail(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.5)
