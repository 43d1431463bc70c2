"""Two nodes on this machine: two real node processes rendezvous over the loopback address (gloo,
CPU, ``--trainer.num_nodes=2 --trainer.devices=1``), started by torchrun and with the variables
srun sets, and form one run, the same run as one node with the same global batch.

* One run folder, one W&B run, files written by global rank 0 only; validation and test see
  every sample exactly once; each global batch holds the samples one node's batch holds (the
  samples are recorded by :class:`RecordSamples`, named by a hash of their pixels).
* SIGTERM to both nodes mid-epoch: one checkpoint; two nodes resume from it bit for bit as the
  uninterrupted run, one node resumes saying what changed and trains on the same samples.
* A node killed (``kill -9``) or hung: the other stops with one line (exit 4) at once or after
  ``run.process_group_timeout_s``, and what was saved stays loadable.
* The SLURM launcher's ``--nodes 2``: the ``#SBATCH`` and ``srun`` lines of its dry run. The same
  job on a real two-node SLURM cluster is in test_slurm_ablation.py, which owns that cluster.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy
from test_ddp_reliability import CLI_ARGS, GLOBAL_BATCH, NUM_TEST, NUM_TRAIN, NUM_VAL, free_port
from test_reliability_resume import validation_history
from torch import nn

from convrepro.ablate.__main__ import main as ablate
from convrepro.cli import ConvReproCLI
from convrepro.errors import ConfigError
from convrepro.reliability.checkpoint_io import CheckpointFile
from convrepro.reliability.distributed import WORLD_KEY, configure_processes, describe_world_change
from convrepro.runs import RunFolder
from convrepro.runs.provenance import read_provenance
from convrepro.testing import hold_until_sigterm, make_cifar10, skip_md5_checks

pytestmark = pytest.mark.cluster  # minutes of node processes: python -m pytest -m cluster

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
RECORD_ENV, HOLD_ENV = "MULTINODE_RECORD", "MULTINODE_HOLD"
STEPS_PER_EPOCH = NUM_TRAIN // GLOBAL_BATCH  # 10; 2 epochs
EXPERIMENT = "vgg11_cifar"
# Every run of these tests has the same settings; the environment switches the hooks on.
HOOKS = [
    "--trainer.callbacks+=test_multinode.RecordSamples",
    "--trainer.callbacks+=test_multinode.HoldAt",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
]
TWO_NODES = [*CLI_ARGS, *HOOKS, "--trainer.num_nodes=2"]
ONE_NODE = [*CLI_ARGS, *HOOKS, "--trainer.num_nodes=1"]


class RecordSamples(Callback):
    """Appends the samples of every batch this process trains, validates or tests to
    ``$MULTINODE_RECORD/rank<global rank>.jsonl`` (outside the run folder, which only rank 0
    writes), with the epoch and global step. A sample's name is a hash of its pixels: the same
    sample, with the same augmentation (seeded by epoch and sample), hashes alike anywhere."""

    def _record(self, trainer: Trainer, stage: str, batch) -> None:
        folder = os.environ.get(RECORD_ENV)
        if not folder or trainer.sanity_checking:
            return
        images, _ = batch
        names = [
            hashlib.blake2b(image.numpy().tobytes(), digest_size=6).hexdigest() for image in images
        ]
        entry = {"stage": stage, "epoch": trainer.current_epoch, "step": trainer.global_step}
        line = json.dumps({**entry, "rank": trainer.global_rank, "samples": names})
        with Path(folder, f"rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(line + "\n")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._record(trainer, "train", batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        self._record(trainer, "validate", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dl_idx=0) -> None:
        self._record(trainer, "test", batch)


class HoldAt(Callback):
    """Where ``$MULTINODE_HOLD`` (JSON: epoch, batch, ranks, folder) says, those ranks stop at
    the start of that batch, create ``held.rank<R>`` in the folder and wait (at most 2 min) for
    SIGTERM, which the run's own handler also gets: a job whose nodes are told to stop mid-epoch,
    or, when no signal comes, a node that hangs (the test kills it)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        hold = json.loads(os.environ.get(HOLD_ENV, "null"))
        here = hold and (trainer.current_epoch, batch_idx) == (hold["epoch"], hold["batch"])
        if not here or trainer.global_rank not in hold["ranks"]:
            return
        hold_until_sigterm(Path(hold["folder"], f"held.rank{trainer.global_rank}"), 120)


# -- launching nodes ----------------------------------------------------------------------------


def node_env(**extra: str) -> dict[str, str]:
    """A node process's environment: this checkout's code (``src`` first: an installed package
    may be another checkout's), made-up data accepted, one thread, W&B offline, and nothing of
    a launch this test process may itself be part of."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "TORCHELASTIC_", "CONVREPRO_RUN_ID", "WANDB_SERVICE"))
        and key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "NODE_RANK")
    }
    site = [ROOT / "src", TESTS / "subprocess_site", TESTS]
    env.update(PYTHONPATH=os.pathsep.join(map(str, site)), OMP_NUM_THREADS="1")
    return {**env, "WANDB_MODE": "offline", **extra}


def start_torchrun_nodes(workdir: Path, name: str, args: list[str], **env: str) -> list:
    """``torchrun --nnodes 2 --node-rank N`` twice, as on two machines (one rendezvous)."""
    port = free_port()
    return [
        _start(
            workdir / f"{name}.node{node}.log",
            [
                *(sys.executable, "-m", "torch.distributed.run", "--nnodes=2"),
                *("--nproc-per-node=1", f"--node-rank={node}", "--master-addr=127.0.0.1"),
                *(f"--master-port={port}", f"--rdzv-id={name}", str(ROOT / "main.py"), *args),
            ],
            workdir,
            node_env(**env),
        )
        for node in (0, 1)
    ]


def start_slurm_nodes(workdir: Path, job: str, args: list[str], **env: str) -> list:
    """``main.py`` twice with what srun sets in the one task on each node of ``sbatch --nodes=2
    --ntasks-per-node=1`` (what Lightning's SLURMEnvironment reads); the port is fixed, as it
    would be from the job id, so that tests do not collide."""
    job_env = {
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NAME": "multinode",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "127.0.0.1,127.0.0.1",
        "SLURM_LOCALID": "0",
        "MASTER_PORT": str(free_port()),
        **env,
    }
    return [
        _start(
            workdir / f"slurm-{job}.{' '.join(args[:1])}.node{node}.log",
            [sys.executable, str(ROOT / "main.py"), *args],
            workdir,
            node_env(**job_env, SLURM_PROCID=str(node), SLURM_NODEID=str(node)),
        )
        for node in (0, 1)
    ]


def _start(log: Path, command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    # Output to a file: a pipe nobody reads until the end could fill and block the process.
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=handle)
    process.log = log
    return process


def finish(nodes: list[subprocess.Popen], timeout_s: float = 240) -> list[str]:
    """Wait for the node processes; their outputs."""
    deadline = time.monotonic() + timeout_s
    for node in nodes:
        try:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for each in nodes:
                each.kill()
            pytest.fail(f"nodes still running after {timeout_s} s:\n{outputs(nodes)}")
    return [node.log.read_text() for node in nodes]


def outputs(nodes: list[subprocess.Popen]) -> str:
    return "\n".join(f"--- {node.log.name}\n{node.log.read_text()[-4000:]}" for node in nodes)


def wait_until_held(folder: Path, ranks: list[int], nodes: list, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not all((folder / f"held.rank{rank}").exists() for rank in ranks):
        if any(node.poll() is not None for node in nodes) or time.monotonic() > deadline:
            for node in nodes:
                node.kill()
            pytest.fail(f"the nodes did not reach the hold\n{outputs(nodes)}")
        time.sleep(0.05)


def hold(folder: Path, epoch: int, batch: int, ranks: list[int]) -> str:
    return json.dumps({"epoch": epoch, "batch": batch, "ranks": ranks, "folder": str(folder)})


# -- what the runs left -------------------------------------------------------------------------


def records(folder: Path, stage: str) -> dict[tuple[int, int], list[dict]]:
    """The recorded batches of ``stage``, by (epoch, global step)."""
    grouped = defaultdict(list)
    for path in sorted(folder.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["stage"] == stage:
                grouped[entry["epoch"], entry["step"]].append(entry)
    return grouped


def samples(batches: list[dict]) -> list[str]:
    return [name for batch in batches for name in batch["samples"]]


def assert_global_batches_equal(two_nodes: dict, one_node: dict) -> None:
    """Each step of the two-node run: one half batch per rank, together one node's batch."""
    assert two_nodes and set(two_nodes) <= set(one_node)
    for key, batches in two_nodes.items():
        assert sorted(batch["rank"] for batch in batches) == [0, 1], key
        assert [len(batch["samples"]) for batch in batches] == [GLOBAL_BATCH // 2] * 2
        assert sorted(samples(batches)) == sorted(samples(one_node[key])), key


def assert_each_sample_once(batches_by_epoch: dict, reference: dict, size: int) -> None:
    """Every evaluation (validation each epoch, a test) saw each of ``size`` samples once."""
    assert batches_by_epoch
    for key, batches in batches_by_epoch.items():
        seen = samples(batches)
        assert len(seen) == len(set(seen)) == size, key  # none twice (padding), none dropped
        assert sorted(seen) == sorted(samples(reference[key])), key
        assert {batch["rank"] for batch in batches} == {0, 1}


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def weights(content: dict) -> dict[str, torch.Tensor]:
    """The network's weights (the state dict also holds each rank's own metric counts)."""
    return {k: v for k, v in content["state_dict"].items() if k.startswith("backbone.")}


def history(run: RunFolder) -> list[dict[str, str]]:
    with run.history.open(newline="") as handle:
        return list(csv.DictReader(handle))


def files_of(run: RunFolder) -> set[str]:
    """The run folder's files, W&B's own folder counted as one entry."""
    return {
        str(path.relative_to(run.path))
        for path in run.path.rglob("*")
        if path.is_file() and "wandb" not in path.relative_to(run.path).parts
    }


def assert_one_writer(run: RunFolder, commands: int) -> None:
    """Rank 0's records, once per command: one provenance entry and one W&B offline folder of
    the run's one W&B run each (another rank's would add their own), and no per-rank files."""
    assert len(read_provenance(run)) == commands
    offline = [p.name for p in (run.path / "wandb").glob("offline-run-*")]
    assert len(offline) == commands
    assert all(name.endswith(f"-{EXPERIMENT}-{run.id}") for name in offline)
    assert not [name for name in files_of(run) if "rank" in name]


def assert_no_stray_runs(workdir: Path) -> None:
    """Every run folder is one a test named: no process started a run of its own."""
    known = {"one-node", "one-node-test", "torchrun", "slurm-41", "slurm-51", "slurm-52"}
    assert {p.name for p in (workdir / "runs" / EXPERIMENT).iterdir()} <= known


# -- the runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multinode")
    make_cifar10(root / "data" / "cifar10", n_train=NUM_TRAIN + NUM_VAL, n_test=NUM_TEST)
    return root


def run_in_process(workdir: Path, record: Path, args: list[str]) -> ConvReproCLI:
    """A CLI command in this process, as one node (fresh state, its samples recorded)."""
    record.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        skip_md5_checks(patch)
        patch.chdir(workdir)
        for name in ("CONVREPRO_RUN_ID", "CONVREPRO_RUN_ID_OWNER"):
            patch.setenv(name, "")  # so that what the CLI exports is removed afterwards
            patch.delenv(name)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv(RECORD_ENV, str(record))
        return ConvReproCLI(args=[*args, "--trainer.logger=false"])


@pytest.fixture(scope="module")
def one_node(workdir) -> dict:
    """The reference: the same run on one node, in this process."""
    record = workdir / "record-one-node"
    run_in_process(workdir, record, ["fit", *ONE_NODE, "--run.id=one-node"])
    return {"train": records(record, "train"), "validate": records(record, "validate")}


@pytest.fixture(scope="module")
def torchrun_run(workdir) -> dict:
    """The uninterrupted two-node run, started by torchrun on each node."""
    record = workdir / "record-torchrun"
    record.mkdir()
    nodes = start_torchrun_nodes(
        workdir, "torchrun", ["fit", *TWO_NODES], **{RECORD_ENV: str(record)}
    )
    said = finish(nodes)
    assert [node.returncode for node in nodes] == [0, 0], outputs(nodes)
    return {
        "run": RunFolder(workdir / "runs" / EXPERIMENT / "torchrun"),
        "said": said,
        "record": record,
    }


@pytest.fixture(scope="module")
def slurm_stopped(workdir) -> dict:
    """Two SLURM-style nodes told to stop (SIGTERM to both) mid-epoch 0; a copy of the run as it
    was then, for the one-node resume."""
    record, marks = workdir / "record-slurm", workdir / "marks-slurm"
    record.mkdir()
    marks.mkdir()
    env = {RECORD_ENV: str(record), HOLD_ENV: hold(marks, epoch=0, batch=3, ranks=[0, 1])}
    nodes = start_slurm_nodes(workdir, "41", ["fit", *TWO_NODES], **env)
    wait_until_held(marks, [0, 1], nodes)
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    said = finish(nodes)
    run = RunFolder(workdir / "runs" / EXPERIMENT / "slurm-41")
    copy = RunFolder(workdir / "copy" / EXPERIMENT / "slurm-41")
    shutil.copytree(run.path, copy.path)
    return {"nodes": nodes, "said": said, "run": run, "copy": copy, "record": record}


@pytest.fixture(scope="module")
def slurm_resumed(workdir, slurm_stopped) -> dict:
    """The stopped run resumed on two nodes (the same command plus --ckpt_path last), then
    tested on two nodes."""
    record = workdir / "record-slurm-resumed"
    record.mkdir()
    env = {RECORD_ENV: str(record)}
    for command in (["fit", *TWO_NODES, "--ckpt_path=last"], ["test", *TWO_NODES]):
        # The job requeued: the same id, and SLURM counts the restart.
        nodes = start_slurm_nodes(workdir, "41", command, SLURM_RESTART_COUNT="1", **env)
        finish(nodes)
        assert [node.returncode for node in nodes] == [0, 0], outputs(nodes)
    return {"run": slurm_stopped["run"], "record": record}


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torchrun_nodes_form_one_run_that_trains_like_one_node(torchrun_run, one_node, workdir):
    run = torchrun_run["run"]  # both nodes' run: torchrun's --rdzv-id
    assert_no_stray_runs(workdir)
    assert_one_writer(run, commands=1)
    assert files_of(run) == {
        ".records.lock",
        "config.yaml",
        "provenance.json",
        "history.csv",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    }
    (fit,) = read_provenance(run)
    assert (fit.outcome, fit.devices["nodes"], fit.devices["world_size"]) == ("finished", 2, 2)
    config = yaml.safe_load(run.config().read_text())
    assert config["run"]["process_group_timeout_s"] == 600  # the default, recorded
    assert config["trainer"]["num_nodes"] == 2
    # one row per epoch (not one per rank); accuracy = a whole number of the 157 samples
    rows = history(run)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    for row in rows:
        correct = float(row["val/acc"]) * NUM_VAL
        assert correct == pytest.approx(round(correct), abs=1e-3)
    # the same samples as one node, step by step and epoch by epoch
    record = torchrun_run["record"]
    train = records(record, "train")
    assert len(train) == 2 * STEPS_PER_EPOCH
    assert_global_batches_equal(train, one_node["train"])
    assert_each_sample_once(records(record, "validate"), one_node["validate"], NUM_VAL)
    # and so the same weights, up to the order in which the two halves' gradients are summed
    two = weights(checkpoint(run.last_checkpoint))
    one = weights(
        checkpoint(workdir / "runs" / EXPERIMENT / "one-node" / "checkpoints" / "last.ckpt")
    )
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurm_nodes_stop_together_and_resume_on_two_nodes_exactly(
    slurm_stopped, slurm_resumed, torchrun_run, one_node, workdir
):
    # SIGTERM to both nodes at step 4: they agree at the next logging step (5), one checkpoint
    nodes, run = slurm_stopped["nodes"], slurm_stopped["run"]
    assert [node.returncode for node in nodes] == [143, 143], outputs(nodes)
    assert "SIGTERM: stopped at step 5 and saved" in slurm_stopped["said"][0]
    stopped = slurm_stopped["copy"]
    assert files_of(stopped) == {
        ".records.lock",
        "config.yaml",
        "provenance.json",
        "checkpoints/interrupted.ckpt",
        "checkpoints/last.ckpt",  # the periodic save at step 4
    }
    assert checkpoint(stopped.interrupt_checkpoint)["global_step"] == 5
    assert [entry.outcome for entry in read_provenance(stopped)] == ["stopped by SIGTERM"]
    assert_no_stray_runs(workdir)  # both nodes: the job's id

    # resumed on two nodes and tested there: one run, rank 0's files only
    assert_one_writer(run, commands=3)  # fit, resume, test
    assert "checkpoints/interrupted.ckpt" not in files_of(run)  # the finished fit removed it
    # bit for bit the uninterrupted (torchrun) run: weights, optimiser, validation history
    resumed, uninterrupted = (
        checkpoint(run.last_checkpoint),
        checkpoint(torchrun_run["run"].last_checkpoint),
    )
    assert resumed["global_step"] == uninterrupted["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for (_, a), (_, b) in zip(
        sorted(resumed["optimizer_states"][0]["state"].items()),
        sorted(uninterrupted["optimizer_states"][0]["state"].items()),
        strict=True,
    ):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert resumed["lr_schedulers"] == uninterrupted["lr_schedulers"]
    # (the learning-rate columns stay blank for the epoch a run resumed in, on one node too)
    assert validation_history(run.path) == validation_history(torchrun_run["run"].path)
    # the data order went on where it stopped: steps 5..19, as one node's global batches
    train = records(slurm_resumed["record"], "train")
    assert sorted(train) == [(s // STEPS_PER_EPOCH, s) for s in range(5, 2 * STEPS_PER_EPOCH)]
    assert_global_batches_equal(train, one_node["train"])
    assert_each_sample_once(
        records(slurm_resumed["record"], "validate"), one_node["validate"], NUM_VAL
    )

    # the two-node test: every test sample once, and the accuracy one node gets from the same
    # weights (this process tests a copy of best.ckpt)
    test_on_two = records(slurm_resumed["record"], "test")
    shutil.copy(run.best_checkpoint, workdir / "slurm-best.ckpt")
    record = workdir / "record-one-node-test"
    test_args = ["test", *ONE_NODE, "--run.id=one-node-test", "--ckpt_path=slurm-best.ckpt"]
    run_in_process(workdir, record, test_args)
    assert_each_sample_once(test_on_two, records(record, "test"), NUM_TEST)
    one_node_acc = (
        RunFolder(workdir / "runs" / EXPERIMENT / "one-node-test").read_summary().test_acc
    )
    assert run.read_summary().test_acc == one_node_acc
    correct = one_node_acc * NUM_TEST
    assert correct == pytest.approx(round(correct), abs=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resume_on_one_node_says_what_changed_and_trains_the_same_samples(
    slurm_stopped, torchrun_run, one_node, workdir, capfd, caplog
):
    stopped = slurm_stopped["copy"]  # the two-node run as SIGTERM left it
    record = workdir / "record-one-node-resume"
    args = ["fit", *ONE_NODE, f"--run.root={stopped.path.parents[1]}", "--run.id=slurm-41"]
    run_in_process(workdir, record, [*args, "--ckpt_path=last"])
    said = capfd.readouterr().err + caplog.text
    assert "Resuming with trainer.num_nodes changed from 2 to 1" in said
    assert (
        "Resuming on 1 process (1 node x 1 device); the checkpoint was saved on 2 processes "
        "(2 nodes x 1 device). The data order goes on from the same sample and the global batch "
        "stays 32, now 32 per process instead of 16"
    ) in said
    fit, resume = read_provenance(stopped)
    assert (fit.devices["world_size"], fit.devices["nodes"]) == (2, 2)
    assert (resume.devices["world_size"], resume.devices["nodes"]) == (1, 1)
    changed = resume.changed_settings
    assert changed.pop("trainer.num_nodes") == [2, 1]
    assert all(key.startswith("trainer.logger") for key in changed)  # W&B off in this process
    assert (resume.checkpoint_step, resume.outcome) == (5, "finished")
    # the steps after the stop train on the two-node run's global batches
    train = records(record, "train")
    assert sorted(train) == [(s // STEPS_PER_EPOCH, s) for s in range(5, 2 * STEPS_PER_EPOCH)]
    for key, (batch,) in train.items():
        assert sorted(batch["samples"]) == sorted(samples(one_node["train"][key]))
    # to rounding, the run two nodes finished
    one = checkpoint(stopped.last_checkpoint)
    two = checkpoint(torchrun_run["run"].last_checkpoint)
    assert one["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in weights(two).items():
        torch.testing.assert_close(weights(one)[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_node_stops_the_other_at_once_with_one_line(workdir):
    marks = workdir / "marks-killed"
    marks.mkdir()
    # node 1 stops at epoch 1's third batch (after the save at step 12); node 0 goes on into
    # that step's gradient all-reduce and waits there for node 1
    env = {HOLD_ENV: hold(marks, epoch=1, batch=2, ranks=[1])}
    nodes = start_slurm_nodes(workdir, "51", ["fit", *TWO_NODES, "--trainer.logger=false"], **env)
    wait_until_held(marks, [1], nodes)
    killed = time.monotonic()
    nodes[1].kill()  # SIGKILL: the node is gone, nothing of it runs on
    finish(nodes[:1], timeout_s=120)
    seconds = time.monotonic() - killed
    said = nodes[0].log.read_text()
    assert nodes[0].returncode == 4, said[-4000:]
    assert seconds < 30, seconds  # measured here: 3-5 s, most of it the interpreter's exit
    print(f"node 0 exited {seconds:.1f} s after node 1 was killed")
    assert "Traceback" not in said
    (error,) = [line for line in said.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        "error: lost contact with another process of this run: the process at 127.0.0.1:"
    )
    assert "closed its connection" in error and "killed, crashed, or its node failed" in error
    assert "(global rank 0 of 2, node 0)" in error and error.endswith("with --ckpt_path last")
    # what was saved before is there and loads; the run resumes from it
    run = RunFolder(workdir / "runs" / EXPERIMENT / "slurm-51")
    assert checkpoint(run.last_checkpoint)["global_step"] == 12  # the periodic save
    assert checkpoint(run.best_checkpoint)["global_step"] == STEPS_PER_EPOCH
    assert run.resume_checkpoint() == run.last_checkpoint
    assert [row["epoch"] for row in history(run)] == ["0"]
    (fit,) = read_provenance(run)
    assert fit.outcome.startswith("lost another process: the process at 127.0.0.1:")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hung_node_stops_the_other_after_the_configured_timeout(workdir):
    marks = workdir / "marks-hung"
    marks.mkdir()
    timeout_s = 6
    env = {HOLD_ENV: hold(marks, epoch=1, batch=2, ranks=[0])}  # node 0 hangs; no signal comes
    args = [
        "fit",
        *TWO_NODES,
        "--trainer.logger=false",
        f"--run.process_group_timeout_s={timeout_s}",
    ]
    nodes = start_slurm_nodes(workdir, "52", args, **env)
    wait_until_held(marks, [0], nodes)
    held = time.monotonic()
    finish(nodes[1:], timeout_s=120)
    seconds = time.monotonic() - held
    nodes[0].kill()
    finish(nodes[:1])
    said = nodes[1].log.read_text()
    assert nodes[1].returncode == 4, said[-4000:]
    print(f"node 1 exited {seconds:.1f} s after node 0 hung (timeout {timeout_s} s)")
    assert timeout_s - 1 < seconds < timeout_s + 20, seconds  # the config's, not 30 minutes
    assert "Traceback" not in said
    (error,) = [line for line in said.splitlines() if line.startswith("error: ")]
    assert "did not answer within the process-group timeout" in error
    assert f"Timed out waiting {timeout_s * 1000}ms" in error  # gloo's words: the timeout given
    assert "run.process_group_timeout_s" in error
    assert "(global rank 1 of 2, node 1)" in error
    run = RunFolder(workdir / "runs" / EXPERIMENT / "slurm-52")
    assert yaml.safe_load(run.config().read_text())["run"]["process_group_timeout_s"] == timeout_s
    assert checkpoint(run.last_checkpoint)["global_step"] == 12


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
def test_process_group_timeout_is_set_once_from_the_config():
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    configure_processes(trainer, 42)
    assert trainer.strategy._timeout == timedelta(seconds=42)  # what init_process_group gets
    with pytest.raises(ConfigError, match="must be a positive number of seconds"):
        configure_processes(trainer, 0)
    strategy = DDPStrategy(timeout=timedelta(seconds=5))
    trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy, logger=False)
    with pytest.raises(ConfigError, match="set it once, as run"):
        configure_processes(trainer, 42)


@pytest.mark.filterwarnings("ignore:The `srun` command is available")
@pytest.mark.parametrize("launch", ["python main.py", "NODE_RANK=1 python main.py"])
def test_several_nodes_from_a_process_started_alone_are_refused_at_once(launch, monkeypatch):
    """Without a launcher, node 0 waited run.process_group_timeout_s (600 s) for nodes nothing
    started. Lightning's own launch, one command per node with NODE_RANK, is left alone."""
    for name in ("NODE_RANK", "GROUP_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name in [v for v in os.environ if v.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(name)
    if launch.startswith("NODE_RANK"):
        monkeypatch.setenv("NODE_RANK", "1")
    trainer = Trainer(accelerator="cpu", num_nodes=2, devices=3, logger=False)
    if launch.startswith("NODE_RANK"):
        configure_processes(trainer, 42)
        return
    with pytest.raises(ConfigError) as refused:
        configure_processes(trainer, 42)
    said = str(refused.value)
    assert said.startswith("trainer.num_nodes=2, but this process was started on its own")
    assert "torchrun --nnodes=2 --nproc-per-node=3 --node-rank=<0..1>" in said
    assert "--nodes=2 --ntasks-per-node=3: srun python main.py" in said


def test_what_a_resume_on_another_layout_says():
    saved = CheckpointFile(Path("x.ckpt"), {WORLD_KEY: {"num_nodes": 2, "devices_per_node": 4}}, {})
    conv, bn = nn.Conv2d(3, 8, 3), nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    layout = SimpleNamespace  # what describe_world_change reads of a Trainer
    assert describe_world_change(saved, layout(num_nodes=2, num_devices=4), 256, conv) is None
    assert describe_world_change(saved, layout(num_nodes=1, num_devices=8), 256, conv) == (
        "Resuming on 8 processes (1 node x 8 devices); the checkpoint was saved on 8 processes "
        "(2 nodes x 4 devices). Every process keeps its global rank and data shard: the run goes "
        "on as before."
    )
    fewer = describe_world_change(saved, layout(num_nodes=1, num_devices=2), 256, bn)
    assert "the global batch stays 256, now 128 per process instead of 32" in fewer
    assert fewer.endswith(
        "BatchNorm statistics (per process unless trainer.sync_batchnorm) now "
        "cover 128 samples instead of 32."
    )
    older = CheckpointFile(Path("x.ckpt"), {}, {})  # saved before checkpoints kept the layout
    assert describe_world_change(older, layout(num_nodes=1, num_devices=2), 256, bn) is None


@pytest.mark.skipif(shutil.which("sbatch") is None, reason="needs sbatch and srun (slurm-wlm)")
def test_slurm_launcher_two_nodes_writes_the_sbatch_and_srun_lines(workdir, capsys):
    base = {
        "trainer": {"max_epochs": 1, "logger": False, "accelerator": "cpu"},
        "model": {"backbone": {"class_path": "tiny_backbone.TinyNet"}},
        "data": {
            "class_path": "convrepro.data.CIFAR10DataModule",
            "init_args": {"data_dir": str(workdir / "data" / "cifar10"), "download": False},
        },
    }
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(base))
    spec = workdir / "two_nodes.yaml"
    arms = {"lrn": {"model.backbone.init_args.lrn": True}}
    spec.write_text(
        yaml.safe_dump({"name": "two", "base": "tiny.yaml", "seeds": [0, 1, 2], "arms": arms})
    )
    out = workdir / "ablation"
    submit = [str(spec), "--launcher=slurm", "--dry-run", f"--out={out}", "--time=30"]
    for resources, per_node, extra in (
        (["--gpus-per-run=0", "--tasks-per-run=2"], 1, []),
        (["--gpus-per-run=8"], 4, ["#SBATCH --gpus-per-node=4"]),
    ):
        assert ablate([*submit, *resources, "--nodes=2", "--partition=big"]) == 0
        printed = capsys.readouterr().out.splitlines()
        lines = set(printed)
        for line in (
            "#SBATCH --nodes=2",
            f"#SBATCH --ntasks-per-node={per_node}",
            "#SBATCH --partition=big",
            "#SBATCH --array=0-2%3",
            "#SBATCH --requeue",
            *extra,
        ):
            assert line in lines, printed
        (srun,) = [line for line in printed if line.startswith("srun ")]
        assert srun.endswith(f"-u -m submitit.core._submit {out / 'slurm'}")
        points = [line for line in printed if "-m convrepro.ablate one" in line]
        assert len(points) == 3
        for point in points:  # each task of a point runs it as one of nodes x tasks processes
            assert point.endswith(f"--devices-per-node={per_node} --num-nodes=2")
    assert not out.exists()  # a dry run writes nothing
