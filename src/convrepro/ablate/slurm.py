"""The SLURM launcher: a grid's unfinished points as one job array, submitted through submitit.

Each array task runs :class:`~convrepro.ablate.slurm_job.GridPointJob`, which runs the point's
``python -m convrepro.ablate one`` command, so a point is the same run as under the local
launcher. Submitting returns once the array is queued. Which task runs which point is kept in
``<out>/slurm/jobs.json``; submitit's own files and each task's scheduler log are beside it.
States come from ``squeue`` and the run folders, never from ``sacct``: many clusters (and the
test cluster) have no accounting.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from convrepro.ablate import preflight
from convrepro.ablate.point import Status, check_settings_unchanged, one_command, status_of
from convrepro.ablate.slurm_options import SlurmOptions
from convrepro.ablate.spec import SPEC_FILE, AblationSpec
from convrepro.errors import AblationError
from convrepro.files import write_atomic

SLURM_FOLDER = "slurm"
JOBS_FILE = "jobs.json"
#: squeue states of a job that will still run (or is running) the point.
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})
PREEMPTED_STATES = frozenset({"PREEMPTED", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
ACTIVE_STATES = RUNNING_STATES | PENDING_STATES | PREEMPTED_STATES


@dataclass(frozen=True)
class SubmittedPoint:
    """The array task that runs a point, and the scheduler's log of that task."""

    job_id: str  # <array id>_<task id>, as squeue prints it; kept across requeues
    scheduler_log: str


@dataclass(frozen=True)
class SchedulerState:
    """A job's state and reason as ``squeue`` prints them (``PENDING``, ``BeginTime``)."""

    state: str
    reason: str

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


class SchedulerUnavailable(AblationError):
    """``squeue`` could not be asked (not installed, or the controller does not answer)."""


def submit_grid(
    spec: AblationSpec, out: Path, options: SlurmOptions, dry_run: bool = False
) -> str | None:
    """Submit every point that is neither done nor queued as one job array; returns its id.

    Checks first, and submits nothing when a check fails: submitit and ``sbatch`` present, the
    options complete, no run started with other settings, every arm's config parses, the data
    is there; ``sbatch`` itself then refuses a partition, account or QOS it does not know.
    """
    submitit = _import_submitit()
    if options.time is None:
        raise AblationError(
            "set the time limit of each job: `time:` in the ablation file's slurm: section, "
            "or --time (minutes or [D-]HH:MM:SS)"
        )
    runs = spec.runs()
    check_settings_unchanged(spec, out, runs)
    configs = preflight.parse_every_arm(spec, out)
    submitted = read_submitted(out)
    states = scheduler_states(point.job_id for point in submitted.values())
    queued = {
        run_id
        for run_id, point in submitted.items()
        if point.job_id in states and states[point.job_id].active
    }
    done = [run for run in runs if status_of(spec.run_folder(out, run)) is Status.DONE]
    todo = [run for run in runs if run not in done and run.id not in queued]
    print(
        f"{spec.name}: {len(done)} of {len(runs)} runs done, {len(queued)} queued or running, "
        f"{len(todo)} to submit",
        flush=True,
    )
    spec_file = out / SPEC_FILE
    commands = [one_command(spec_file, out, run, *launch_flags(options)) for run in todo]
    parameters = submitit_parameters(spec.name, options)
    if dry_run:
        print(f"sbatch parameters (submitit): {json.dumps(parameters)}")
        print(f"requeues after the time limit: at most {options.max_timeouts} per point")
        for command in commands:
            print(f"    {shlex.join(command)}")
        if commands:
            print("sbatch script (one array task per point; its srun starts the run's processes):")
            print(sbatch_script(submitit, out, parameters, len(commands)))
        return None
    if not todo:
        return None
    _check_partition_nodes(options)
    preflight.check_data(configs)
    out.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_yaml())  # what the jobs read, however long they queue

    from convrepro.ablate.slurm_job import GridPointJob

    executor = submitit.SlurmExecutor(
        folder=out / SLURM_FOLDER, max_num_timeout=options.max_timeouts
    )
    executor.update_parameters(**parameters)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # submitit prints sbatch's complaint too
            jobs = executor.map_array(GridPointJob(), commands)
    except submitit.core.utils.FailedJobError as error:
        said = (str(error).strip() or captured.getvalue().strip()).splitlines() or ["?"]
        reason = said[-1].removeprefix("sbatch: error: ")
        raise AblationError(
            f"sbatch refused the job array: {reason}. Nothing was submitted; "
            + _remedy(reason, options)
        ) from None
    submitted.update(
        {
            run.id: SubmittedPoint(job.job_id, str(job.paths.stdout))
            for run, job in zip(todo, jobs, strict=True)
        }
    )
    write_atomic(
        out / SLURM_FOLDER / JOBS_FILE,
        json.dumps({run_id: asdict(point) for run_id, point in submitted.items()}, indent=2),
    )
    return jobs[0].job_id.split("_")[0]


def sbatch_script(submitit: Any, out: Path, parameters: dict[str, Any], count: int) -> str:
    """The script submitit would hand to ``sbatch`` for an array of ``count`` points.

    Made the way submitit makes it for ``map_array`` (its executor's own text, with the array's
    ``map_count``), so that a dry run shows the real ``#SBATCH`` and ``srun`` lines; nothing is
    written.
    """
    executor = submitit.SlurmExecutor(folder=out / SLURM_FOLDER)
    executor.update_parameters(**parameters)
    executor.parameters["map_count"] = count
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def _check_partition_nodes(options: SlurmOptions) -> None:
    """Refuse runs of more nodes than their partition has. ``sbatch`` accepts such a job, which
    then waits in the queue for ever (reason ``PartitionNodeLimit``)."""
    if options.nodes == 1:
        return
    result = subprocess.run(
        ["sinfo", "--noheader", "--format=%P %D"], capture_output=True, text=True
    )
    if result.returncode != 0:
        return  # sbatch will say what is wrong
    nodes: dict[str, int] = {}
    default = None
    for line in result.stdout.splitlines():  # a line per partition and node state
        name, count = line.split()
        default = name.rstrip("*") if name.endswith("*") else default
        nodes[name.rstrip("*")] = nodes.get(name.rstrip("*"), 0) + int(count)
    partition = options.partition or default
    if partition in nodes and nodes[partition] < options.nodes:
        raise AblationError(
            f"each run asks for {options.nodes} nodes (--nodes) and partition {partition} has "
            f"{nodes[partition]}: sbatch would queue the jobs for ever (PartitionNodeLimit). "
            "Nothing was submitted; choose a partition with enough nodes (sinfo -N lists "
            "them), or lower --nodes"
        )


def _remedy(reason: str, options: SlurmOptions) -> str:
    """What to do about sbatch's refusal, in the user's terms."""
    if "generic resource" in reason.lower() and options.gpus_per_run:
        partition = f"partition {options.partition}" if options.partition else "the partition"
        return (
            f"each run asks for {options.gpus_per_run} GPU(s) (gres) and {partition} has none "
            "(sinfo -o '%P %G' lists the partitions' GPUs). Choose a GPU partition "
            "(--partition), or train on CPUs with --gpus-per-run 0"
        )
    return (
        "fix the slurm: section of the ablation file or the --partition/--account/--qos/... flags"
    )


def submitit_parameters(name: str, options: SlurmOptions) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments for every task of the array."""
    parameters: dict[str, Any] = {
        "job_name": name,
        "time": options.time_minutes(),
        "nodes": options.nodes,
        "ntasks_per_node": options.tasks // options.nodes,
        "signal_delay_s": options.signal_delay,
        "stderr_to_stdout": True,  # one scheduler log per task
        # requeueable, so that preemption, `scontrol requeue` and submitit's time-limit
        # handling put the job back in the queue
        "additional_parameters": {"requeue": True, **options.sbatch},
    }
    if options.gpus_per_run:
        parameters["gpus_per_node"] = options.gpus_per_run // options.nodes
    for key in ("partition", "account", "qos", "cpus_per_task", "mem", "array_parallelism"):
        if (value := getattr(options, key)) is not None:
            parameters[key] = value
    return parameters


def launch_flags(options: SlurmOptions) -> list[str]:
    """The ``one`` flags of a multi-process point: its DDP layout, one process per task."""
    if options.tasks == 1:
        return []
    return [f"--devices-per-node={options.tasks // options.nodes}", f"--num-nodes={options.nodes}"]


def read_submitted(out: Path) -> dict[str, SubmittedPoint]:
    """Which job array task runs (or ran) each point, from the latest submission of each."""
    path = out / SLURM_FOLDER / JOBS_FILE
    if not path.is_file():
        return {}
    points = json.loads(path.read_text())
    return {run_id: SubmittedPoint(**point) for run_id, point in points.items()}


def scheduler_states(job_ids: Iterable[str]) -> dict[str, SchedulerState]:
    """``squeue``'s state of each job it still knows (finished ones for ``MinJobAge``)."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    if not arrays:
        return {}
    if shutil.which("squeue") is None:
        raise SchedulerUnavailable("squeue not found on PATH: job states are unknown")
    result = subprocess.run(
        [
            *("squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r"),
            f"--jobs={','.join(arrays)}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return {}  # all of them finished long enough ago to be forgotten
        raise SchedulerUnavailable(f"squeue failed: {result.stderr.strip() or result.returncode}")
    states = {}
    for line in result.stdout.splitlines():
        job_id, state, reason = line.strip().split("|", 2)
        states[job_id] = SchedulerState(state, reason)
    return states


def _import_submitit() -> Any:
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise AblationError(
            "--launcher slurm: sbatch/srun not found on PATH. Submit from a machine of the "
            "SLURM cluster (a login node), or leave out --launcher slurm to run the grid here"
        )
    try:
        import submitit
    except ImportError:
        raise AblationError(
            '--launcher slurm needs submitit: pip install -e ".[slurm]" (or pip install submitit)'
        ) from None
    return submitit
