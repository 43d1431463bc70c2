"""Runs of several processes (devices x nodes): the launch checked against the config, how long a
process waits for the others, what it says when it loses them, and what a resume on another
number of processes changes.

Every process of a DDP run waits for the others at each collective: the gradient all-reduce of
every step, barriers, and the rendezvous when the run starts. A process whose peer dies (killed,
crashed, its node failed) notices at once, as the peer's connections close; one whose peer hangs
or never starts waits for ``run.process_group_timeout_s``. Lightning's default, 30 minutes, keeps
a whole allocation idle that long; the CLI sets this module's default instead. Either way the
process stops with one line saying what happened and how to go on (:func:`lost_peer`, exit 4),
and nothing saved before is touched: checkpoints are written atomically by rank 0.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from convrepro.errors import ConfigError, PeerLost
from convrepro.reliability.checkpoint_io import CheckpointFile

#: Seconds a process waits for the others (``run.process_group_timeout_s``): long enough for rank
#: 0's solo work that the others wait for at a barrier (a checkpoint on a slow file system, W&B
#: starting), short enough that a hung node does not hold the job for half an hour.
DEFAULT_PROCESS_GROUP_TIMEOUT_S = 600

#: Where a checkpoint keeps the layout of the processes that saved it.
WORLD_KEY = "convrepro_world"
#: Layers whose statistics depend on how many samples one process sees.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

_CLOSED = re.compile(r"closed by peer|reset by peer|broken pipe|connection refused", re.I)
_TIMED_OUT = re.compile(r"timed out|timeout", re.I)
_PEER = re.compile(r"\[([^\]\s]+)\]:(\d+)")  # gloo names the peer: "[10.0.0.7]:41234"
_SOURCE = re.compile(r"^\[[^\]]*:\d+\]\s*")  # the C++ source line gloo starts its messages with
_BACKEND = re.compile(r"gloo|nccl|c10d|ProcessGroup|TCPStore", re.I)
# torch's errors of collectives and of the rendezvous store (absent where torch.distributed is)
_DIST_ERROR = getattr(torch.distributed, "DistError", ())


def configure_processes(trainer: Trainer, timeout_s: float) -> None:
    """Before any process talks to another: refuse a launch that does not match the config, and
    give the strategy the process-group timeout (``run.process_group_timeout_s``)."""
    if not timeout_s > 0:
        raise ConfigError(
            f"run.process_group_timeout_s must be a positive number of seconds, got {timeout_s}"
        )
    _check_launch(trainer)
    strategy: Any = trainer.strategy
    # DDP, FSDP, DeepSpeed and ModelParallel keep the timeout they pass to init_process_group
    # here until their processes connect; the CLI sets it once, from the config.
    if hasattr(strategy, "_timeout"):
        timeout = timedelta(seconds=timeout_s)
        if strategy._timeout not in (None, default_pg_timeout, timeout):
            raise ConfigError(
                f"trainer.strategy sets a process-group timeout of {strategy._timeout} and "
                f"run.process_group_timeout_s={timeout_s}: set it once, as "
                "run.process_group_timeout_s"
            )
        strategy._timeout = timeout


def _check_launch(trainer: Trainer) -> None:
    """A ConfigError if the launcher started another layout of processes than the config asks
    for: each process would otherwise train a run of its own into the shared folder, or wait
    forever for processes that were never started."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is not None:
        kind: type | None = type(environment)
    else:  # one device: Lightning looks for no launcher, so a launched world goes unnoticed
        kind = next((e for e in (SLURMEnvironment, TorchElasticEnvironment) if e.detect()), None)
    layout = _launch_layout(kind)
    if layout is None:
        if trainer.num_nodes > 1 and _started_alone(kind):
            raise ConfigError(_alone_message(trainer.num_nodes, trainer.num_devices))
        return
    launcher, nodes, per_node = layout
    if (nodes, per_node) != (trainer.num_nodes, trainer.num_devices):
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes} x trainer.devices={trainer.num_devices}: "
            f"{launcher} started this run as {nodes} node(s) x {per_node} process(es) each. Pass "
            f"--trainer.num_nodes={nodes} --trainer.devices={per_node} (one device per process),"
            " or launch as many processes as the config asks for"
        )


def _launch_layout(kind: type | None) -> tuple[str, int, int] | None:
    """``(launcher, nodes, processes per node)`` of a launcher that starts every process itself
    (torchrun, srun); ``None`` when Lightning starts them (or there is only this one)."""
    if kind is not None and issubclass(kind, TorchElasticEnvironment):
        world = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return f"torchrun (WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local})", world // local, local
    if kind is not None and issubclass(kind, SLURMEnvironment):
        tasks, nodes = int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_NNODES", 1))
        return f"SLURM (SLURM_NTASKS={tasks}, SLURM_NNODES={nodes})", nodes, tasks // nodes
    return None


def _started_alone(kind: type | None) -> bool:
    """Whether this process was started by itself, as ``python main.py``: no launcher, nor the
    node rank that Lightning's own multi-node launch (one command per node) is given by hand."""
    lightning_starts_it = kind is None or issubclass(kind, LightningEnvironment)
    return lightning_starts_it and not any(v in os.environ for v in ("NODE_RANK", "GROUP_RANK"))


def _alone_message(nodes: int, per_node: int) -> str:
    """How to start the other nodes, as the README's "Multi-node runs" does: otherwise node 0
    waits ``run.process_group_timeout_s`` for nodes nothing starts, then fails."""
    return (
        f"trainer.num_nodes={nodes}, but this process was started on its own (not by torchrun or "
        f"srun), and nothing starts the other {nodes - 1} node(s): it would wait "
        "run.process_group_timeout_s for them. Run the command on every node under torchrun "
        f"(torchrun --nnodes={nodes} --nproc-per-node={per_node} --node-rank=<0..{nodes - 1}> "
        "--master-addr=<node 0's address> --master-port=29500 main.py ...) or srun (an "
        f"sbatch job with --nodes={nodes} --ntasks-per-node={per_node}: srun python main.py "
        "...), as in the README's section Multi-node runs; or pass --trainer.num_nodes=1 to train "
        "on this machine alone"
    )


def lost_peer(error: BaseException | None) -> PeerLost | None:
    """``error`` as a :class:`~convrepro.errors.PeerLost` if it, or an exception it came from, is
    a collective that failed because a peer's connection closed or a peer did not answer within
    the timeout; ``None`` for anything else (a bug keeps its traceback)."""
    while error is not None:
        if isinstance(error, PeerLost):
            return error
        said = _SOURCE.sub("", str(error).strip()).split(". ")[0].rstrip(".")
        distributed = isinstance(error, _DIST_ERROR) or (
            isinstance(error, RuntimeError) and _BACKEND.search(str(error))
        )
        if distributed and (_CLOSED.search(said) or _TIMED_OUT.search(said)):
            return _peer_lost(said)
        error = error.__cause__ or error.__context__
    return None


def _peer_lost(said: str) -> PeerLost:
    peer = _PEER.search(said)
    who = f"the process at {peer[1]}:{peer[2]}" if peer else "another process of this run"
    if _CLOSED.search(said):
        detail = f"{who} closed its connection"
        why = "it ended: killed, crashed, or its node failed (its own log says which)"
    else:
        detail = f"{who} did not answer within the process-group timeout"
        why = (
            "it hung, stalled or never started (run.process_group_timeout_s sets how long "
            "the others wait)"
        )
    rank, world = _rank_and_world()
    nodes = ("GROUP_RANK", "SLURM_NODEID", "NODE_RANK")
    node = next((os.environ[v] for v in nodes if v in os.environ), "?")
    return PeerLost(
        f"lost contact with another process of this run: {detail} ({said}), so {why}. This "
        f"process (global rank {rank} of {world}, node {node}) stopped too. Checkpoints saved "
        "so far are intact: once every node is back, start the same command on every node "
        "with --ckpt_path last",
        detail,
    )


def _rank_and_world() -> tuple[str, str]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return str(torch.distributed.get_rank()), str(torch.distributed.get_world_size())
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "?"))
    return rank, os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "?"))


def world_layout(trainer: Trainer) -> dict[str, int]:
    """The layout of a run's processes, as its checkpoints keep it (:data:`WORLD_KEY`)."""
    return {"num_nodes": trainer.num_nodes, "devices_per_node": trainer.num_devices}


def announce_world_change(
    checkpoint: CheckpointFile, trainer: Trainer, datamodule: Any, model: nn.Module
) -> str | None:
    """Print (rank 0) and return :func:`describe_world_change` for a resume of ``checkpoint``."""
    change = describe_world_change(
        checkpoint, trainer, getattr(datamodule, "batch_size", None), model
    )
    if change is not None:
        rank_zero_info(change)
    return change


def describe_world_change(
    checkpoint: CheckpointFile, trainer: Trainer, batch_size: int | None, model: nn.Module
) -> str | None:
    """What resuming ``checkpoint`` on this trainer's processes changes, in a few sentences;
    ``None`` if they are laid out as when it was saved (or it does not say)."""
    saved = checkpoint.content.get(WORLD_KEY)
    now = world_layout(trainer)
    if not saved or saved == now:
        return None
    before, after = _size(saved), _size(now)
    text = f"Resuming on {_describe(now)}; the checkpoint was saved on {_describe(saved)}."
    if before == after:
        return (
            f"{text} Every process keeps its global rank and data shard: the run goes on as before."
        )
    text += " The data order goes on from the same sample"
    if batch_size is None or batch_size % after:
        return f"{text}; gradients are averaged over another split of each batch."
    text += (
        f" and the global batch stays {batch_size}, now {batch_size // after} per process instead"
        f" of {batch_size // before}: gradients are averaged over another split of each batch, so"
        " the numbers follow an uninterrupted run to rounding, not bit for bit."
    )
    if any(isinstance(m, BATCH_NORMS) for m in model.modules()):
        text += (
            f" BatchNorm statistics (per process unless trainer.sync_batchnorm) now cover "
            f"{batch_size // after} samples instead of {batch_size // before}."
        )
    return text


def _size(layout: dict[str, int]) -> int:
    return layout["num_nodes"] * layout["devices_per_node"]


def _describe(layout: dict[str, int]) -> str:
    size, nodes, devices = _size(layout), layout["num_nodes"], layout["devices_per_node"]
    processes = "1 process" if size == 1 else f"{size} processes"
    return f"{processes} ({nodes} node{'s' * (nodes > 1)} x {devices} device{'s' * (devices > 1)})"
