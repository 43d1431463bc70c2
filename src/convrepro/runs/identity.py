"""Which run a command works on: the ``run:`` options, the id every process of a launch agrees
on (the SLURM job's, torchrun's, or one exported by a parent launcher), and what ``--ckpt_path
last|best`` or a checkpoint file mean (:func:`resolve_run`).

Every process of a distributed run must agree on the id before any of them can talk to the
others, so the id comes from the launcher's environment when there is one.
"""

from __future__ import annotations

import os
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


def shared_run_id(explicit: str | None) -> str:
    """The run id every process of this launch agrees on, exported for processes spawned later."""
    chosen = explicit if explicit and explicit != "none" else launch_run_id()
    run_id = check_folder_name(chosen or new_run_id(), "run.id")
    os.environ[RUN_ID_ENV] = run_id  # Lightning's DDP launcher starts ranks 1.. from this env
    os.environ[RUN_ID_OWNER_ENV] = str(os.getpid())
    return run_id


def launch_run_id() -> str | None:
    """The run id the launch gives every process: one exported by a parent launcher (or by the
    user, ``CONVREPRO_RUN_ID``), the SLURM job (array task) id, or torchrun's run id; ``None``
    for a plain start. A requeued SLURM job keeps its id, so a restart finds its own run."""
    # An id this very process exported belongs to its previous run (a second CLI call in a
    # notebook or test); ids exported by a parent launcher or by the user are shared.
    inherited = (
        os.environ.get(RUN_ID_ENV) if os.environ.get(RUN_ID_OWNER_ENV) != str(os.getpid()) else None
    )
    candidates = (
        inherited,
        _slurm_job_id(),
        os.environ.get("TORCHELASTIC_RUN_ID") if _is_torchrun() else None,
    )
    return next((c for c in candidates if c and c != "none"), None)


def resolve_run(
    options: RunOptions, name: str, ckpt_path: str | None, subcommand: str
) -> tuple[RunFolder, str | None]:
    """The run a command works on, and the checkpoint file it starts from.

    ``--ckpt_path last|best`` name a checkpoint of the experiment's newest run (of ``run.id``'s
    if given); a checkpoint file inside a run of the same experiment makes its results go next
    to it. Raises a :class:`~convrepro.errors.UserError` naming the setting, before anything is
    written, for a name that is not one folder, a run folder that cannot be written, a missing
    checkpoint, or a new ``fit`` into a run that already has checkpoints (its config and history
    would then describe two runs).
    """
    root, run_id = Path(options.root), options.id
    check_folder_name(name, "run.name")
    launched = launch_run_id() if not run_id else None
    if ckpt_path in ("last", "best"):
        own = run_id or launched
        found = RunFolder.at(root, name, own) if own else RunFolder.latest_resumable(root, name)
        if launched and subcommand == "fit" and found.resume_checkpoint() is None:
            # A cluster job's first start, or a restart before its first checkpoint: its own
            # run from the beginning, never the newest run of someone else.
            rank_zero_info(
                f"--ckpt_path {ckpt_path}: this job's run ({found.path}) has no checkpoint yet; "
                "starting it from the beginning"
            )
            ckpt_path, run_id = None, launched
        elif found is None or found.resume_checkpoint() is None:
            where = found.checkpoints if found else root / name / "*" / RunFolder.CHECKPOINT_DIR
            raise MissingFileError(
                f"--ckpt_path {ckpt_path}: no checkpoint of experiment '{name}' under "
                f"{where}/. Start a new run without --ckpt_path, or pass --ckpt_path "
                "path/to/file.ckpt."
            )
        else:
            ckpt_path, run_id = str(found.checkpoint_named(ckpt_path)), found.id
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


def _slurm_job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}-{task}" if job and task else (f"slurm-{job}" if job else None)


def _is_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ
