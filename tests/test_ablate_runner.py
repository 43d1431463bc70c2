"""The ablation runner: checks before running, the local launcher and the one-run entry
(resume, skip, retry), and status.

Most tests swap each CLI step for a stand-in script that honours the CLI's file contract (run
folder, ``history.csv``, ``summary.json``, ``last.ckpt``) in milliseconds, and run each grid
point's ``one`` command in this process; configs and data are checked for real (a tiny network,
made-up CIFAR-10). tests/test_ablate_resume.py runs the real CLI, kills a grid and resumes it.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from scipy import stats as scipy_stats
from test_ablate_spec import write_ablation_file

from convrepro.ablate import local, point, slurm, status
from convrepro.ablate.__main__ import main
from convrepro.ablate.point import FAILURE_FILE, LOCK_FILE, SETTINGS_FILE, Status, status_of
from convrepro.ablate.results import RESULT_COLUMNS
from convrepro.ablate.spec import load_spec
from convrepro.errors import AblationError
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10, skip_md5_checks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Stands in for `python -m convrepro`: writes what the CLI writes, no training. The test
# accuracy is 80% + 1 point per seed + 2 points with LRN. FAKE_FAIL="<run id>:<step>,..." makes
# that step exit 3 before doing anything; FAKE_CRASH="<run id>" dies in fit right after epoch 0's
# checkpoint, as a killed run would. FAKE_PROVENANCE='{"code": ..., "data": ...}' appends each
# step's record to provenance.json with that code version and data fingerprint.
FAKE_CLI = r"""
import json, os, sys
from pathlib import Path

subcommand = sys.argv[1]
args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
run_id = args["run.id"]
run_dir = Path(args["run.root"], args["run.name"], run_id)
print("fake", subcommand, "CUDA_VISIBLE_DEVICES =", os.environ.get("CUDA_VISIBLE_DEVICES"))
if f"{run_id}:{subcommand}" in os.environ.get("FAKE_FAIL", "").split(","):
    sys.exit(3)
seed = int(args["seed_everything"])
summary_file = run_dir / "summary.json"
summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
if subcommand == "fit":
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    history = run_dir / "history.csv"
    rows = [] if history.exists() else ["epoch,step,val/acc"]
    first = 1 if args.get("ckpt_path") == "last" else 0
    for epoch in range(first, 2):
        rows.append(f"{epoch},{epoch + 1},{0.3 + 0.2 * epoch + 0.01 * seed}")
        if epoch == 0:
            (run_dir / "checkpoints" / "last.ckpt").write_text("")
            if os.environ.get("FAKE_CRASH") == run_id:
                history.open("a").write("\n".join(rows) + "\n")
                sys.exit(1)
    history.open("a").write("\n".join(rows) + "\n")
    summary.update(best_val_acc=0.5 + 0.01 * seed, epochs=2, fit_seconds=1.5,
                   best_checkpoint=str(run_dir / "checkpoints" / "best.ckpt"))
else:
    lrn = args.get("model.backbone.init_args.lrn") == "true"
    summary.update({"test/acc": 0.80 + 0.01 * seed + 0.02 * lrn, "test/acc_top5": 0.99})
summary_file.write_text(json.dumps(summary))
if os.environ.get("FAKE_PROVENANCE"):
    record = {"subcommand": subcommand, "command": ["python", "-m", "convrepro", *sys.argv[1:]],
              "cwd": os.getcwd(), "host": "fake", "started": "2026-01-01T00:00:00Z",
              "ended": "2026-01-01T00:01:00Z", "outcome": "finished",
              **json.loads(os.environ["FAKE_PROVENANCE"])}
    path = run_dir / "provenance.json"
    invocations = json.loads(path.read_text())["invocations"] if path.exists() else []
    path.write_text(json.dumps({"invocations": [*invocations, record]}))
"""


# A real config of a tiny network on made-up CIFAR-10 (DATA): the checks before a grid runs
# parse it with the CLI's parser and open its data.
TINY_BASE = """
trainer:
  max_epochs: 2
  logger: false
  accelerator: cpu
  devices: 1
  limit_val_batches: 1
  limit_test_batches: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  callbacks: [{class_path: tiny_backbone.HoldAtEpoch, init_args: {epoch: 1}}]
model:
  backbone: {class_path: tiny_backbone.TinyNet}
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05}}
data:
  class_path: convrepro.data.CIFAR10DataModule
  init_args: {data_dir: DATA, batch_size: 16, val_size: 32, num_workers: 0, download: false}
"""


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("cifar"), n_train=96, n_test=32)


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    """Each CLI step runs FAKE_CLI; each point's `one` command runs in this process, with the
    device the launcher gave it."""
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    device = threading.local()

    def run_cli(args, log):
        env = dict(os.environ)
        if getattr(device, "id", None) is not None:
            env["CUDA_VISIBLE_DEVICES"] = device.id
        with log.open("a") as handle:
            command = [sys.executable, str(script), *args]
            return subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, env=env
            ).returncode

    def run_command(command, on_device):
        device.id = on_device
        return main(command[len(point.ONE_COMMAND) - 1 :])  # `one ...`

    monkeypatch.setattr(point, "run_cli", run_cli)
    monkeypatch.setattr(local, "run_command", run_command)
    skip_md5_checks(monkeypatch)  # the launcher opens the made-up data before running
    for variable in ("FAKE_FAIL", "FAKE_CRASH", "FAKE_PROVENANCE"):
        monkeypatch.delenv(variable, raising=False)


def write_ablation(folder: Path, data_dir: Path | str = "data", **changes) -> Path:
    """The default ablation file over a real tiny config on the data in ``data_dir``."""
    return write_ablation_file(folder, TINY_BASE.replace("DATA", str(data_dir)), **changes)


def commands_in(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("=== ")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 200


# -- checks before anything runs --------------------------------------------------------------


def test_misspelled_key_fails_before_any_run_dry_run_included(
    tmp_path, cifar_dir, fake_cli, capsys
):
    typo = {"model.backbone.init_args.lrn": True, "model.backbone.init_args.lnr": True}
    ablation = write_ablation(tmp_path, cifar_dir, arms={"no-lrn": {}, "lrn": typo})
    out = tmp_path / "out"
    for dry_run in ([], ["--dry-run"]):
        assert main([str(ablation), "--out", str(out), *dry_run]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: arm 'lrn': model.backbone:") and "'lnr'" in error
        assert error.count("\n") == 1
    assert not out.exists()  # the first arm did not train its seeds first


def test_runs_that_never_started_take_the_new_settings(tmp_path, cifar_dir, fake_cli, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL", "lrn-seed0:fit,lrn-seed1:fit")  # fail before training
    assert main([str(write_ablation(tmp_path, cifar_dir)), "--out", str(out)]) == 1
    monkeypatch.delenv("FAKE_FAIL")
    fixed = {"no-lrn": {"model.backbone.init_args.lrn": False}, "lrn": {"trainer.max_epochs": 3}}
    assert main([str(write_ablation(tmp_path, cifar_dir, arms=fixed)), "--out", str(out)]) == 0
    settings = json.loads((out / "runs/tiny_lrn/lrn-seed1" / SETTINGS_FILE).read_text())
    assert "--trainer.max_epochs=3" in settings["args"]


def test_data_missing_for_every_run_stops_before_the_first(tmp_path, fake_cli, capsys):
    out = tmp_path / "out"
    assert main([str(write_ablation(tmp_path, tmp_path / "no-data")), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: data of every arm: CIFAR-10 is missing or incomplete in")
    assert "nothing was run" in error and error.count("\n") == 1
    assert not (out / "runs").exists()


# -- running the grid --------------------------------------------------------------------------


def test_runs_spread_over_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(local.torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local.visible_devices() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a scheduler's pick: keep its numbering
    assert local.visible_devices() == ["3", "5"]


def test_grid_runs_every_run_in_parallel_and_reports(tmp_path, cifar_dir, fake_cli, capsys):
    ablation = write_ablation(tmp_path, cifar_dir, seeds=(0, 1, 2))
    out = tmp_path / "out"
    assert main([str(ablation), "--out", str(out), "--devices", "0,1"]) == 0

    rows = read_csv(out / "results.csv")
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [(r["arm"], r["seed"]) for r in rows] == [
        (arm, str(seed)) for arm in ("no-lrn", "lrn") for seed in (0, 1, 2)
    ]
    assert [float(r["test_acc"]) for r in rows] == pytest.approx(
        [0.80, 0.81, 0.82, 0.82, 0.83, 0.84]
    )
    assert {r["epochs"] for r in rows} == {"2"}

    run_dir = out / "runs" / "tiny_lrn" / "lrn-seed1"
    fit, test = commands_in(run_dir / "log.txt")
    assert "--run.group=tiny_lrn" in fit and """'--run.tags=["lrn", "seed-1"]'""" in fit
    assert "--seed_everything=1 --data.init_args.seed=1 --trainer.max_epochs=2" in fit
    assert test.endswith("--ckpt_path=best")
    devices = {
        line.split("CUDA_VISIBLE_DEVICES = ")[1].strip()
        for log in out.glob("runs/tiny_lrn/*/log.txt")
        for line in log.read_text().splitlines()
        if line.startswith("fake ")
    }
    assert devices == {"0", "1"}  # two runs at a time, one per device

    summary = (out / "summary.md").read_text()
    assert "| no-lrn | 3 | 81.00 ± 1.00 | [78.52, 83.48] |" in summary
    welch = scipy_stats.ttest_ind([82, 83, 84], [80, 81, 82], equal_var=False)
    low, high = welch.confidence_interval()
    assert (
        f"| lrn | +2.00 | [{low:+.2f}, {high:+.2f}] | {welch.pvalue:.3f} ({welch.df:.1f}) "
        "| n/a (3) | 0.200 (20) |" in summary
    )
    assert "the same difference for every seed" in summary  # why the paired p is n/a
    for plot in ("val_acc_curves.png", "test_acc.png"):
        assert_png(out / plot)
    assert "wrote" in capsys.readouterr().out


def test_rerun_skips_finished_runs_resumes_partial_ones_and_retries_failures(
    tmp_path, cifar_dir, fake_cli, monkeypatch, capsys
):
    ablation = write_ablation(tmp_path, cifar_dir)
    out = tmp_path / "out"
    runs = out / "runs" / "tiny_lrn"
    monkeypatch.setenv("FAKE_FAIL", "no-lrn-seed1:fit,lrn-seed1:test")
    monkeypatch.setenv("FAKE_CRASH", "lrn-seed0")
    assert main([str(ablation), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    for failed, step, code in (("no-lrn-seed1", "fit", 3), ("lrn-seed0", "fit", 1)):
        assert f"{failed}: {step} exited with {code}; see {runs / failed / 'log.txt'}" in printed
    assert "lrn-seed1: test exited with 3" in printed
    assert (
        "3 of 4 runs have no test result yet: no-lrn-seed1 (failed), lrn-seed0 (failed), "
        "lrn-seed1 (failed)" in printed
    )
    assert [
        status_of(RunFolder(runs / r)) for r in ("no-lrn-seed0", "no-lrn-seed1", "lrn-seed0")
    ] == [
        Status.DONE,
        Status.NEW,
        Status.PARTIAL,
    ]
    assert status_of(RunFolder(runs / "lrn-seed1")) is Status.UNTESTED
    assert [r["arm"] for r in read_csv(out / "results.csv")] == ["no-lrn"]
    assert (
        "no test result yet (left out): no-lrn-seed1 (failed), lrn-seed0 (failed), "
        "lrn-seed1 (failed)" in (out / "summary.md").read_text()
    )

    finished = runs / "no-lrn-seed0"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.rglob("*") if p.is_file()}
    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.delenv("FAKE_CRASH")
    assert main([str(ablation), "--out", str(out)]) == 0
    assert "1 of 4 runs done, 3 to go" in capsys.readouterr().out

    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.rglob("*") if p.is_file()}
    assert after == before  # the finished run was not touched
    partial = commands_in(runs / "lrn-seed0" / "log.txt")
    assert [c.split(" fit ")[-1].endswith("--ckpt_path=last") for c in partial[:2]] == [False, True]
    assert partial[2].endswith("--ckpt_path=best")
    epochs = [row["epoch"] for row in read_csv(runs / "lrn-seed0" / "history.csv")]
    assert epochs == ["0", "1"]  # continued from epoch 0's checkpoint, not restarted
    retried = commands_in(runs / "no-lrn-seed1" / "log.txt")
    assert len(retried) == 3 and "--ckpt_path" not in retried[1]  # failed fit, fresh fit, test
    assert len(commands_in(runs / "lrn-seed1" / "log.txt")) == 3  # fit, failed test, test
    assert len(read_csv(out / "results.csv")) == 4
    assert not list(runs.glob(f"*/{FAILURE_FILE}"))  # every point's last attempt succeeded


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, cifar_dir, fake_cli, capsys):
    out = tmp_path / "out"
    assert main([str(write_ablation(tmp_path, cifar_dir)), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "0 of 4 runs done, 4 to go" in printed
    assert "[new] lrn-seed1: " in printed and " one " in printed and "--arm=lrn --seed=1" in printed
    assert "--run.id=lrn-seed1" in printed
    assert not out.exists()
    # Seed by seed, so that a grid stopped part-way leaves every arm with the same seeds.
    planned = [line.split(":")[0] for line in printed.splitlines() if line.startswith("[new]")]
    assert planned == [
        "[new] no-lrn-seed0",
        "[new] lrn-seed0",
        "[new] no-lrn-seed1",
        "[new] lrn-seed1",
    ]


def test_changed_settings_are_refused_before_anything_runs(
    tmp_path, cifar_dir, fake_cli, monkeypatch, capsys
):
    out = tmp_path / "out"
    ablation = write_ablation(tmp_path, cifar_dir)
    monkeypatch.setenv("FAKE_FAIL", "lrn-seed1:fit")
    assert main([str(ablation), "--out", str(out)]) == 1
    monkeypatch.delenv("FAKE_FAIL")
    changed = write_ablation(tmp_path, cifar_dir, overrides={"trainer.max_epochs": 3})
    assert main([str(changed), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "3 run(s) under" in error and "were started with other settings" in error
    assert "tiny_lrn/lrn-seed0" in error and "tiny_lrn/lrn-seed1" not in error  # never trained
    assert len(commands_in(out / "runs" / "tiny_lrn" / "lrn-seed1" / "log.txt")) == 1


def test_one_runs_a_single_point_and_names_unknown_ones(tmp_path, cifar_dir, fake_cli, capsys):
    ablation, out = write_ablation(tmp_path, cifar_dir), tmp_path / "out"
    assert main(["one", str(ablation), "--arm", "lrn", "--seed", "1", "--out", str(out)]) == 0
    assert [p.name for p in (out / "runs" / "tiny_lrn").iterdir()] == ["lrn-seed1"]
    assert RunFolder(out / "runs/tiny_lrn/lrn-seed1").read_summary().test_acc == pytest.approx(0.83)
    assert main(["one", str(ablation), "--arm", "lrn", "--seed", "1", "--out", str(out)]) == 0
    assert "lrn-seed1: done already" in capsys.readouterr().out
    assert main(["one", str(ablation), "--arm", "bn", "--seed", "1"]) == 2
    assert "has no run 'bn' with seed 1: arms no-lrn, lrn, seeds 0, 1" in capsys.readouterr().err


def test_a_point_another_launcher_is_running_is_left_alone(tmp_path, cifar_dir, fake_cli, capsys):
    ablation, out = write_ablation(tmp_path, cifar_dir), tmp_path / "out"
    folder = out / "runs" / "tiny_lrn" / "lrn-seed1"
    folder.mkdir(parents=True)
    one = ["one", str(ablation), "--arm", "lrn", "--seed", "1", "--out", str(out)]
    with (folder / LOCK_FILE).open("a+") as held:  # as the other launcher's process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("process 4242 on node7\n")
        held.flush()
        assert main(one) == 75  # EX_TEMPFAIL: busy elsewhere, not failed
        error = capsys.readouterr().err
        assert error.startswith("error: lrn-seed1 is being run by process 4242 on node7")
        assert error.count("\n") == 1
        assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # nothing else written
        # The whole grid: the busy point is left alone and not reported as failed.
        assert main([str(ablation), "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "lrn-seed1: left to the launcher that is running it" in printed
        assert "failed" not in printed.lower()
    # Released, as when that process ends, however it ends: now this launcher runs the point.
    assert main(one) == 0
    assert status_of(RunFolder(folder)) is Status.DONE


def test_status_shows_each_point_and_fails_while_one_failed(
    tmp_path, cifar_dir, fake_cli, monkeypatch, capsys
):
    ablation, out = write_ablation(tmp_path, cifar_dir), tmp_path / "out"
    monkeypatch.setenv("FAKE_FAIL", "no-lrn-seed1:fit")
    monkeypatch.setenv("FAKE_CRASH", "lrn-seed0")
    for seed, arm in ((0, "no-lrn"), (1, "no-lrn"), (0, "lrn")):
        main(["one", str(ablation), f"--arm={arm}", f"--seed={seed}", f"--out={out}"])
    capsys.readouterr()
    assert main(["status", str(ablation), "--out", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    log = out / "runs" / "tiny_lrn" / "no-lrn-seed1" / "log.txt"
    assert [line.split()[:2] for line in lines[:4]] == [
        ["no-lrn-seed0", "done"],
        ["no-lrn-seed1", "failed"],
        ["lrn-seed0", "failed"],  # died (exit 1) after saving a checkpoint
        ["lrn-seed1", "not"],
    ]
    assert lines[0].endswith("test acc 0.8000")
    assert lines[1].endswith(f"no-lrn-seed1: fit exited with 3; see {log}")
    assert lines[4] == "tiny_lrn: 1 done, 2 failed, 1 not started"
    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.delenv("FAKE_CRASH")
    assert main([str(ablation), "--out", str(out)]) == 0
    assert main(["status", str(out)]) == 0  # the output folder works as well
    assert capsys.readouterr().out.splitlines()[-1] == "tiny_lrn: 4 done"


def test_status_names_the_local_launcher_running_a_point(tmp_path, capsys):
    """A point a launcher on this machine runs is `running`, by whom and how far; once that
    process is gone, or its id is another program's, the lock file's old name counts for nothing."""
    ablation, out = write_ablation_file(tmp_path), tmp_path / "out"
    spec = load_spec(ablation)
    folder = spec.run_folder(out, spec.run("lrn", 1))
    folder.checkpoints.mkdir(parents=True)
    (folder.checkpoints / "last.ckpt").write_bytes(b"")
    # epoch 1 logged twice: a resume redid it
    folder.history.write_text("epoch,step,val/acc\n0,10,0.5\n1,20,0.6\n1,20,0.6\n")
    lock = folder.path / LOCK_FILE
    take_lock = (
        "import fcntl, os, socket, sys, time  # a convrepro launcher's process, as far as the "
        f"lock goes\nheld = open({str(lock)!r}, 'a+'); fcntl.flock(held, fcntl.LOCK_EX)\n"
        "held.write(f'process {os.getpid()} on {socket.gethostname()}\\n'); held.flush()\n"
        "print('held', flush=True); time.sleep(120)"
    )
    launcher = subprocess.Popen([sys.executable, "-c", take_lock], stdout=subprocess.PIPE)
    try:
        assert launcher.stdout.readline() == b"held\n"
        assert main(["status", str(ablation), f"--out={out}"]) == 0
        row = next(
            line for line in capsys.readouterr().out.splitlines() if line.startswith("lrn-seed1")
        )
        assert row.split(maxsplit=2)[1:] == [
            "running",
            f"by process {launcher.pid} on {socket.gethostname()}; 2 epochs validated; "
            f"log {folder.log}",
        ]
    finally:
        launcher.kill()
        launcher.wait()
    other = subprocess.Popen(["sleep", "120"])  # the id of a live process that is no launcher
    try:
        for holder in (launcher.pid, other.pid):
            lock.write_text(f"process {holder} on {socket.gethostname()}\n")
            assert main(["status", str(ablation), f"--out={out}"]) == 0
            row = next(
                line
                for line in capsys.readouterr().out.splitlines()
                if line.startswith("lrn-seed1")
            )
            assert row.split()[1] == "partial"
    finally:
        other.kill()
        other.wait()


def test_status_reads_the_scheduler_and_the_run_folders(tmp_path, monkeypatch, capsys):
    ablation, out = write_ablation_file(tmp_path), tmp_path / "out"
    spec = load_spec(ablation)
    jobs = {run.id: f"7_{task}" for task, run in enumerate(spec.runs())}
    logs = {run_id: str(out / "slurm" / f"{job}_0_log.out") for run_id, job in jobs.items()}
    (out / "slurm").mkdir(parents=True)
    points = {r: {"job_id": j, "scheduler_log": logs[r]} for r, j in jobs.items()}
    (out / "slurm" / slurm.JOBS_FILE).write_text(json.dumps(points))
    requeued = spec.run_folder(out, spec.run("no-lrn", 1))
    requeued.checkpoints.mkdir(parents=True)
    requeued.interrupt_checkpoint.write_bytes(b"")
    requeued.log.write_text("")
    states = {
        "7_0": slurm.SchedulerState("RUNNING", "None"),
        "7_1": slurm.SchedulerState("PENDING", "BeginTime"),  # it ran before: requeued
        "7_2": slurm.SchedulerState("PENDING", "Priority"),
        "7_3": slurm.SchedulerState("FAILED", "NonZeroExitCode"),  # the run never started
    }
    monkeypatch.setattr(status, "scheduler_states", lambda job_ids: states)
    assert main(["status", str(ablation), f"--out={out}"]) == 1
    lines = [line.split(maxsplit=2) for line in capsys.readouterr().out.splitlines()]
    assert lines[:4] == [
        ["no-lrn-seed0", "running", f"job 7_0; log {spec.run_folder(out, spec.runs()[0]).log}"],
        [
            "no-lrn-seed1",
            "preempted/requeued",
            f"job 7_1 pending; resumes from {requeued.interrupt_checkpoint}",
        ],
        ["lrn-seed0", "queued", "job 7_2 (Priority)"],
        ["lrn-seed1", "failed", f"job 7_3 ended before the run started; see {logs['lrn-seed1']}"],
    ]


def test_a_grid_refuses_to_run_other_code_than_its_checkouts(tmp_path, monkeypatch, capsys):
    """A worktree pinned to a commit, with the package imported from another checkout (an
    editable install): its points would train with that other code. Refused before anything
    runs; the checkout the package comes from is fine."""
    from convrepro.ablate import preflight

    worktree = tmp_path / "worktree"
    (worktree / "src" / "convrepro").mkdir(parents=True)
    with pytest.raises(AblationError, match=r"would not run the code of .*PYTHONPATH=src"):
        preflight.check_code_is_this_checkout(worktree)
    preflight.check_code_is_this_checkout(Path(preflight.__file__).parents[3])
    preflight.check_code_is_this_checkout(tmp_path)  # not a checkout: nothing to compare
    monkeypatch.chdir(worktree)
    ablation = write_ablation_file(tmp_path)
    assert main([str(ablation), "--out", str(tmp_path / "out")]) == 2
    assert "would not run the code of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
