"""Where a run lives on disk: ``<root>/<name>/<id>/`` holds its config, checkpoints and results.

Every process of a distributed run must agree on the id before any of them can talk to the
others, so the id comes from the launcher's environment when there is one.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_ID_ENV = "CONVREPRO_RUN_ID"
RUN_ID_OWNER_ENV = "CONVREPRO_RUN_ID_OWNER"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


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
    """

    name: str | None = None
    root: str = "runs"
    id: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


def new_run_id() -> str:
    """A sortable, collision-resistant id: ``20261125-170231-a3f9``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def shared_run_id(explicit: str | None) -> str:
    """The run id every process of this launch agrees on, exported for processes spawned later."""
    # An id this very process exported belongs to its previous run (a second CLI call in a
    # notebook or test); ids exported by a parent launcher or by the user are shared.
    inherited = (
        os.environ.get(RUN_ID_ENV) if os.environ.get(RUN_ID_OWNER_ENV) != str(os.getpid()) else None
    )
    candidates = (
        explicit,
        inherited,
        _slurm_job_id(),
        os.environ.get("TORCHELASTIC_RUN_ID") if _is_torchrun() else None,
    )
    run_id = next((c for c in candidates if c and c != "none"), None) or new_run_id()
    if not re.fullmatch(r"[\w.-]+", run_id):
        raise ValueError(f"run id {run_id!r} may only hold letters, digits, '.', '_' and '-'")
    os.environ[RUN_ID_ENV] = run_id  # Lightning's DDP launcher starts ranks 1.. from this env
    os.environ[RUN_ID_OWNER_ENV] = str(os.getpid())
    return run_id


def _slurm_job_id() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"slurm-{job}-{task}" if job and task else (f"slurm-{job}" if job else None)


def _is_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def latest_resumable_run(root: str | Path, name: str) -> Path | None:
    """The newest run folder of experiment ``name`` that holds a ``last.ckpt``."""
    candidates = sorted(Path(root, name).glob(f"*/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}"))
    return max(candidates, key=lambda p: p.stat().st_mtime).parents[1] if candidates else None


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint was written in, if it sits in one (``<run>/checkpoints/x``)."""
    path = Path(ckpt_path).resolve()
    return path.parents[1] if path.parent.name == CHECKPOINT_DIR else None
