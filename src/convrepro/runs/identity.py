"""Which run a command works on: the ``run:`` options, the id every process of a launch agrees
on (the SLURM job's, torchrun's, or one exported by a parent launcher), and what ``--ckpt_path
last|best`` or a checkpoint file mean (:func:`resolve_run`).

Every process of a distributed run must agree on the id before any of them can talk to the
others, so a new run's id comes from the launcher's environment when there is one. Not every
such id names a run across launches, though (:class:`Launch`): torchrun makes up a random one
per launch unless given ``--rdzv-id``, and a new SLURM job has a new job id; only a requeued job
or an elastic restart is the same run again. ``--ckpt_path last`` resumes the run an id names,
else the experiment's newest run with a checkpoint.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from convrepro.errors import ConfigError, MissingFileError
from convrepro.reliability.distributed import DEFAULT_PROCESS_GROUP_TIMEOUT_S
from convrepro.runs.folder import RunFolder, check_folder_name

RUN_ID_ENV = "CONVREPRO_RUN_ID"
RUN_ID_OWNER_ENV = "CONVREPRO_RUN_ID_OWNER"
#: torchrun's own rendezvous id when it is given none (``--standalone``, one node): uuid4().
_MADE_UP_BY_TORCHRUN = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


@dataclass
class RunOptions:
    """Run bookkeeping (the ``run:`` section of a config).

    Args:
        name: Experiment name; default: the stem of the first ``--config`` file.
        root: Folder that holds all runs.
        id: This run's folder name; default: a new time-stamped id (or the cluster job's id,
            so a requeued job continues in the same folder).
        group: W&B group (the ablation runner sets the ablation's name).
        tags: W&B tags (the ablation runner sets the arm).
        checkpoint_every_n_steps: Overwrite ``checkpoints/last.ckpt`` every this many training
            steps, so that a job killed without warning loses at most that much work (stop
            signals save a checkpoint of their own). ``None`` keeps only the end-of-epoch saves.
        process_group_timeout_s: Seconds a process of a multi-process (DDP) run waits for the
            others at any collective (each step's gradient all-reduce, barriers, the start)
            before it stops with an error (exit 4). A peer that dies is noticed at once; this
            bounds the wait for one that hangs or never starts. Raise it if rank 0 does long
            work alone while the others wait (a first download of a large data set, checkpoints
            on a slow file system).
    """

    name: str | None = None
    root: str = "runs"
    id: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    checkpoint_every_n_steps: int | None = 1000
    process_group_timeout_s: float = DEFAULT_PROCESS_GROUP_TIMEOUT_S


def new_run_id() -> str:
    """A sortable, collision-resistant id: ``20261125-170231-a3f9``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Launch:
    """What the launcher's environment says about this process's run.

    Attributes:
        id: The id every process of the launch agrees on (a new run's folder); ``None`` for a
            plain start.
        source: Where ``id`` came from, for messages (``SLURM job 4242``).
        names_run: Whether ``id`` names one run across launches, so that ``--ckpt_path last``
            resumes that run: an id exported by a parent launcher or the user, torchrun's
            ``--rdzv-id``, or any id of a restart (a requeued SLURM job, an elastic restart).
            A new SLURM job's id and the id torchrun makes up per launch name none.
        restarted: A requeued SLURM job (``SLURM_RESTART_COUNT``) or a torchrun elastic restart
            (``TORCHELASTIC_RESTART_COUNT``).
    """

    id: str | None = None
    source: str = ""
    names_run: bool = False
    restarted: bool = False


def current_launch() -> Launch:
    """This process's :class:`Launch`: the id exported by a parent launcher (or by the user,
    ``CONVREPRO_RUN_ID``), else the SLURM job (array task) id, else torchrun's run id."""
    restarted = any(_count(v) > 0 for v in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT"))
    # An id this very process exported belongs to its previous run (a second CLI call in a
    # notebook or test); ids exported by a parent launcher or by the user are shared.
    if os.environ.get(RUN_ID_OWNER_ENV) != str(os.getpid()):
        inherited = os.environ.get(RUN_ID_ENV)
        if inherited and inherited != "none":
            return Launch(inherited, f"{RUN_ID_ENV}={inherited}", True, restarted)
    slurm = _slurm_job_id()
    if slurm:
        return Launch(slurm, f"SLURM job {slurm.removeprefix('slurm-')}", restarted, restarted)
    torchrun = os.environ.get("TORCHELASTIC_RUN_ID") if _is_torchrun() else None
    if torchrun and torchrun != "none":
        if _MADE_UP_BY_TORCHRUN.fullmatch(torchrun):
            return Launch(torchrun, "torchrun's id for this launch", restarted, restarted)
        return Launch(torchrun, f"torchrun --rdzv-id={torchrun}", True, restarted)
    return Launch()


def shared_run_id(explicit: str | None) -> str:
    """The run id every process of this launch agrees on, exported for processes spawned later."""
    chosen = explicit if explicit and explicit != "none" else current_launch().id
    run_id = check_folder_name(chosen or new_run_id(), "run.id")
    os.environ[RUN_ID_ENV] = run_id  # Lightning's DDP launcher starts ranks 1.. from this env
    os.environ[RUN_ID_OWNER_ENV] = str(os.getpid())
    return run_id


def resolve_run(
    options: RunOptions, name: str, ckpt_path: str | None, subcommand: str
) -> tuple[RunFolder, str | None]:
    """The run a command works on, and the checkpoint file it starts from.

    ``--ckpt_path last|best`` name a checkpoint of ``run.id``'s run, else of the run the
    launch's id names (:class:`Launch`), else of the experiment's newest run; a checkpoint file
    inside a run of the same experiment makes its results go next to it. Raises a
    :class:`~convrepro.errors.UserError` naming the setting, before anything is written, for a
    name that is not one folder, a run folder that cannot be written, a missing checkpoint, or
    a new ``fit`` into a run that already has checkpoints (its config and history would then
    describe two runs).
    """
    root, run_id = Path(options.root), options.id
    check_folder_name(name, "run.name")
    if ckpt_path in ("last", "best"):
        run_id, ckpt_path = _resume_target(root, name, run_id, ckpt_path, subcommand)
    elif ckpt_path and not run_id:
        if not Path(ckpt_path).is_file():
            raise MissingFileError(f"--ckpt_path {ckpt_path}: no such file")
        owner = RunFolder.containing(ckpt_path)
        if owner is not None:
            # A saved run's checkpoint: its results go next to it, whichever config (and so
            # experiment name) the command was given; its provenance records that config.
            root, name, run_id = owner.path.parents[1], owner.name, owner.id
    run = RunFolder.at(root, name, shared_run_id(run_id))
    run.check_writable()
    if subcommand != "fit" and not ckpt_path and run.resume_checkpoint() is not None:
        # The run's own weights, not the config's fresh ones over its results.
        ckpt_path = str(run.evaluation_checkpoint())
        rank_zero_info(f"No --ckpt_path: using the run's {Path(ckpt_path).name}")
    if subcommand == "fit" and not ckpt_path and run.resume_checkpoint() is not None:
        raise ConfigError(
            f"run.id={run.id}: {run.path} holds a run with checkpoints already. Resume it with "
            "--ckpt_path last, or start a new run with another run.id (or none)."
        )
    return run, ckpt_path


def _resume_target(
    root: Path, name: str, run_id: str | None, which: str, subcommand: str
) -> tuple[str, str | None]:
    """The run ``--ckpt_path last|best`` means and its checkpoint file: ``run.id``'s, the
    launch's if its id names a run, else the experiment's newest with a checkpoint. A restarted
    job whose own run has no checkpoint yet (it died before its first) gets that run and no
    checkpoint: ``fit`` starts it from the beginning. Anything else without a checkpoint is a
    :class:`MissingFileError` saying where it looked.
    """
    launch = Launch() if run_id else current_launch()
    own = run_id or (launch.id if launch.names_run else None)
    if own is None:
        found = RunFolder.latest_resumable(root, name)
        if found is None:
            where = root / name / "*" / RunFolder.CHECKPOINT_DIR
            why = f"; {launch.source} is this launch's own, no earlier run's" if launch.id else ""
            raise MissingFileError(
                f"--ckpt_path {which}: no run of experiment '{name}' has a checkpoint (looked in "
                f"{where}/{why}). Start a new run without --ckpt_path, or pass --run.id of the "
                "run to resume, or --ckpt_path path/to/file.ckpt."
            )
        return found.id, str(found.checkpoint_named(which))
    found = RunFolder.at(root, name, own)
    if found.resume_checkpoint() is not None:
        return found.id, str(found.checkpoint_named(which))
    whose = f"run.id={own}" if run_id else launch.source
    if launch.restarted and subcommand == "fit":
        rank_zero_info(
            f"--ckpt_path {which}: {whose} was restarted before its run ({found.path}) saved a "
            "checkpoint; starting that run from the beginning"
        )
        return own, None
    raise MissingFileError(
        f"--ckpt_path {which}: the run of {whose}, {found.path}, has no checkpoint in "
        f"{found.checkpoints}/. Start it without --ckpt_path, or pass --run.id of the run to "
        "resume, or --ckpt_path path/to/file.ckpt."
    )


def _count(variable: str) -> int:
    value = os.environ.get(variable, "")
    return int(value) if value.isdigit() else 0


def _slurm_job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}-{task}" if job and task else (f"slurm-{job}" if job else None)


def _is_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ
