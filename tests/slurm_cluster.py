"""A real SLURM cluster on this machine, for the tests of the SLURM launcher.

Load it with ``pytest_plugins = ["slurm_cluster"]``. The session-scoped ``slurm_cluster`` fixture
writes a ``slurm.conf`` into a temporary folder (this host as controller and node, all its CPUs,
no accounting, ``proctrack/linuxproc`` and ``task/none`` so that no cgroups are needed), starts
munged (with a key of its own), slurmctld and slurmd in the foreground as children of this
process, waits until ``sinfo`` shows the nodes idle, points ``SLURM_CONF`` at the config, and at
the end cancels what is left and stops the daemons by pid.

Partition ``test`` is this host as one node. Partition ``twonodes`` adds a second node on the same
host (a second slurmd, ``-N <host>-2``, on a port of its own; Debian's build allows several), so
that a job with ``--nodes=2`` really gets two nodes: SLURM_NNODES=2, a task per node, node ids 0
and 1, as on a cluster (only the machine is the same).

Debian's ``slurm-wlm`` and ``munge`` packages provide the daemons; they run as root. Where they
cannot start, the tests that use the fixture skip and say why; in CI (``CI=true``) that is a
failure, so the SLURM tests cannot silently stop running there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PARTITION = "test"
TWO_NODE_PARTITION = "twonodes"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster."""

    folder: Path
    config: Path
    partition: str
    node: str
    cpus: int
    two_node_partition: str
    second_node: str

    def run(self, *command: str) -> str:
        """A SLURM client command's output (it fails the test if the command fails)."""
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
        return result.stdout

    def wait_until_idle(self, timeout_s: float = 120) -> None:
        """Wait until ``squeue`` lists no pending or running job."""
        deadline = time.monotonic() + timeout_s
        while self.run("squeue", "--noheader").strip():
            assert time.monotonic() < deadline, self.run("squeue")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        _skip_or_fail(
            f"SLURM not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
        )
    if os.geteuid() != 0:
        _skip_or_fail("the SLURM test cluster's daemons run as root")
    folder = tmp_path_factory.mktemp("slurm")
    cluster = _write_config(folder)
    daemons: list[subprocess.Popen] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(cluster.config))
        try:
            daemons = _start_daemons(cluster)
            _wait_for_idle_node(cluster, daemons)
        except (OSError, RuntimeError) as error:
            _stop(daemons)
            _skip_or_fail(f"the SLURM test cluster did not start: {error}")
        try:
            yield cluster
        finally:
            for partition in (PARTITION, TWO_NODE_PARTITION):
                subprocess.run(["scancel", f"--partition={partition}"], capture_output=True)
            _wait_for_empty_queue(timeout_s=40)
            _stop(daemons)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the SLURM tests, but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_config(folder: Path) -> SlurmCluster:
    node = socket.gethostname().split(".")[0]  # hostname -s: what slurmd calls itself
    second = f"{node}-2"
    cpus = os.cpu_count() or 1
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    for name in ("munge", "state", "spool", f"spool/{node}", f"spool/{second}"):
        (folder / name).mkdir(mode=0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    config = folder / "slurm.conf"
    config.write_text(
        f"""\
ClusterName=convrepro-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder / "munge" / "munge.socket"}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# start pending jobs within a second or two of resources freeing (defaults: 60 s, 30 s)
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={folder / "state"}
# %n: each slurmd (node) its own
SlurmdSpoolDir={folder / "spool"}/%n
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder}/slurmd.%n.pid
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder}/slurmd.%n.log
ReturnToService=2
MinJobAge=300
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
NodeName={second} NodeHostname={node} NodeAddr=127.0.0.1 Port={_free_port()} CPUs={cpus} \
RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={TWO_NODE_PARTITION} Nodes={node},{second} MaxTime=INFINITE State=UP
"""
    )
    return SlurmCluster(folder, config, PARTITION, node, cpus, TWO_NODE_PARTITION, second)


def _start_daemons(cluster: SlurmCluster) -> list[subprocess.Popen]:
    munge = cluster.folder / "munge"
    commands = [
        [
            "munged",
            "--foreground",
            "--force",  # root, and a socket folder munged would otherwise find too private
            f"--key-file={munge / 'munge.key'}",
            f"--socket={munge / 'munge.socket'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        ],
        ["slurmctld", "-D", "-f", str(cluster.config)],
        ["slurmd", "-D", "-f", str(cluster.config), "-N", cluster.node],
        ["slurmd", "-D", "-f", str(cluster.config), "-N", cluster.second_node],
    ]
    daemons = []
    for command in commands:
        name = f"slurmd.{command[-1]}" if command[0] == "slurmd" else command[0]
        log = (cluster.folder / f"{name}.out").open("w")
        daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        if command[0] == "munged":
            _wait_for(lambda: (munge / "munge.socket").exists(), "munged's socket", daemons)
    return daemons


def _wait_for_idle_node(cluster: SlurmCluster, daemons: list[subprocess.Popen]) -> None:
    def idle() -> bool:
        result = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True
        )
        # one line per node and partition it is in
        states = result.stdout.split()
        return result.returncode == 0 and len(states) == 3 and set(states) == {"idle"}

    _wait_for(idle, "the nodes to be idle", daemons, cluster.folder)


def _wait_for(
    condition, what: str, daemons: list[subprocess.Popen], folder: Path | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        exited = [d.args[0] for d in daemons if d.poll() is not None]
        if exited or time.monotonic() > deadline:
            logs = f"; logs in {folder}" if folder else ""
            why = f"{', '.join(exited)} exited" if exited else f"timed out waiting for {what}"
            raise RuntimeError(why + logs)
        time.sleep(0.2)


def _wait_for_empty_queue(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = subprocess.run(["squeue", "--noheader"], capture_output=True, text=True)
        if result.returncode != 0 or not result.stdout.strip():
            return
        time.sleep(0.5)


def _stop(daemons: list[subprocess.Popen]) -> None:
    for daemon in reversed(daemons):  # slurmd, slurmctld, then munged
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
