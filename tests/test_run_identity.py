"""Which run ``--ckpt_path last`` resumes under a launcher (issue: reliability, item 8).

A launcher's id is what the processes of one launch agree on; it names a run across launches
only when it says so: torchrun's ``--rdzv-id``, a requeued SLURM job, an elastic restart.
torchrun's id made up per launch (``--standalone``, one node) and a new SLURM job's id name no
earlier run, so ``--ckpt_path last`` resumes the experiment's newest run, or says where it
looked.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from bad_inputs import CIFAR

from convrepro.errors import MissingFileError
from convrepro.runs import RunFolder, RunOptions
from convrepro.runs.identity import RUN_ID_ENV, RUN_ID_OWNER_ENV, resolve_run
from convrepro.testing import make_cifar10

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
LAUNCHER_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "LOCAL_RANK",
    RUN_ID_ENV,
    RUN_ID_OWNER_ENV,
)


@pytest.fixture
def launched_by(monkeypatch):
    """This process as one a launcher started, with only the given variables of a launch."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.setenv(name, "")  # so that what resolve_run exports is undone afterwards
        monkeypatch.delenv(name)

    def launch(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return launch


def saved_run(root: Path, run_id: str) -> RunFolder:
    run = RunFolder.at(root, "exp", run_id)
    run.checkpoints.mkdir(parents=True)
    run.last_checkpoint.touch()
    return run


def resolve(root: Path, ckpt_path: str = "last", subcommand: str = "fit", **options):
    return resolve_run(RunOptions(root=str(root), **options), "exp", ckpt_path, subcommand)


def torchrun(run_id: str, restarts: int = 0) -> dict[str, str]:
    return {
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": str(restarts),
        "LOCAL_RANK": "0",
    }


def test_a_torchrun_launchs_own_id_names_no_run_last_is_the_newest(tmp_path, launched_by):
    run = saved_run(tmp_path, "20261201-101010-abcd")
    launched_by(**torchrun(str(uuid.uuid4())))
    assert resolve(tmp_path) == (run, str(run.last_checkpoint))


def test_nothing_to_resume_says_where_it_looked(tmp_path, launched_by):
    launched_by(**torchrun(str(uuid.uuid4())))
    with pytest.raises(MissingFileError) as raised:
        resolve(tmp_path)
    said = str(raised.value)
    assert f"looked in {tmp_path / 'exp' / '*' / 'checkpoints'}/" in said
    assert "torchrun's id for this launch is this launch's own, no earlier run's" in said


def test_a_named_torchrun_run_is_its_own_and_refuses_to_start_over_unless_restarted(
    tmp_path, launched_by, caplog
):
    saved_run(tmp_path, "someone-elses")
    launched_by(**torchrun("vgg16-run1"))
    with pytest.raises(MissingFileError, match="the run of torchrun --rdzv-id=vgg16-run1, "):
        resolve(tmp_path)
    launched_by(**torchrun("vgg16-run1", restarts=1))  # an elastic restart before a checkpoint
    with caplog.at_level(logging.INFO):
        run, checkpoint = resolve(tmp_path)
    assert (run.id, checkpoint) == ("vgg16-run1", None)
    assert "starting that run from the beginning" in caplog.text
    own = saved_run(tmp_path, "vgg16-run1")
    assert resolve(tmp_path) == (own, str(own.last_checkpoint))


def test_a_new_slurm_job_continues_the_newest_run_a_requeue_its_own(tmp_path, launched_by):
    earlier = saved_run(tmp_path, "slurm-4241")
    launched_by(SLURM_JOB_ID="4242")
    assert resolve(tmp_path) == (earlier, str(earlier.last_checkpoint))
    launched_by(SLURM_RESTART_COUNT="1")  # requeued before its first checkpoint: its own, anew
    assert resolve(tmp_path)[0].id == "slurm-4242"
    with pytest.raises(MissingFileError, match="the run of SLURM job 4242, "):
        resolve(tmp_path, "best", "test")  # only a fit starts over
    own = saved_run(tmp_path, "slurm-4242")
    assert resolve(tmp_path) == (own, str(own.last_checkpoint))
    with pytest.raises(MissingFileError, match=r"the run of run.id=other, .* has no checkpoint"):
        resolve(tmp_path, id="other")


@pytest.mark.slow
def test_torchrun_standalone_resumes_the_run_of_its_last_launch(tmp_path):
    """Two launches of ``torchrun --standalone``: each gets a new random id, and the second's
    ``--ckpt_path last`` continues the first's run, in its folder."""
    make_cifar10(tmp_path / "data" / "cifar10", n_train=160, n_test=32)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in LAUNCHER_VARIABLES and not key.startswith(("SLURM_", "TORCHELASTIC_"))
    }
    site = [ROOT / "src", TESTS / "subprocess_site", TESTS]  # this checkout's code first
    env.update(PYTHONPATH=os.pathsep.join(map(str, site)), OMP_NUM_THREADS="1")

    def launch(*extra: str) -> None:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        done = subprocess.run(
            [*torchrun, "--nproc_per_node=1", str(ROOT / "main.py"), "fit", *CIFAR, *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    tiny = "--model.backbone=tiny_backbone.TinyNet"
    launch(tiny, "--trainer.max_epochs=1")
    (run,) = (tmp_path / "runs" / "vgg11_cifar").iterdir()
    launch(tiny, "--trainer.max_epochs=2", "--ckpt_path=last")
    assert list((tmp_path / "runs" / "vgg11_cifar").iterdir()) == [run]
    assert RunFolder(run).read_summary().epochs == 2
