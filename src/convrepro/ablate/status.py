"""``python -m convrepro.ablate status``: where every grid point stands.

Read from the run folders (summary, checkpoints, the failure record of ``one``) and, for points
submitted to SLURM, from ``squeue`` (see :mod:`~convrepro.ablate.slurm`). Works for a grid run by
any launcher; without SLURM submissions it reads the folders only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from convrepro.ablate.point import Failure, Status, has_started, launcher_running, status_of
from convrepro.ablate.slurm import (
    PREEMPTED_STATES,
    RUNNING_STATES,
    SchedulerState,
    SchedulerUnavailable,
    SubmittedPoint,
    read_submitted,
    scheduler_states,
)
from convrepro.ablate.spec import AblationSpec
from convrepro.runs.folder import RunFolder


class PointState(Enum):
    DONE = "done"
    RUNNING = "running"
    QUEUED = "queued"
    REQUEUED = "preempted/requeued"
    INTERRUPTED = "interrupted"  # stopped after saving, not queued: the next launch resumes it
    PARTIAL = "partial"  # trained some, not queued: the next launch resumes it
    FAILED = "failed"
    NOT_STARTED = "not started"


@dataclass(frozen=True)
class PointStatus:
    run_id: str
    state: PointState
    detail: str


def grid_status(spec: AblationSpec, out: Path) -> tuple[list[PointStatus], str | None]:
    """Every point's state, and why the scheduler could not be asked (``None`` if it could)."""
    submitted = read_submitted(out)
    problem = None
    try:
        states = scheduler_states(point.job_id for point in submitted.values())
    except SchedulerUnavailable as error:
        states, problem = {}, str(error)
    statuses = []
    for run in spec.runs():
        point = submitted.get(run.id)
        scheduler = states.get(point.job_id) if point else None
        state, detail = _point_state(spec.run_folder(out, run), point, scheduler)
        statuses.append(PointStatus(run.id, state, detail))
    return statuses, problem


def render_status(spec: AblationSpec, statuses: list[PointStatus], problem: str | None) -> str:
    """A table of the points, then how many are in each state."""
    width = max(len(s.run_id) for s in statuses)
    state_width = max(len(s.state.value) for s in statuses)
    lines = [
        f"{s.run_id:<{width}}  {s.state.value:<{state_width}}  {s.detail}".rstrip()
        for s in statuses
    ]
    counts = {state: sum(s.state is state for s in statuses) for state in PointState}
    summary = ", ".join(f"{n} {state.value}" for state, n in counts.items() if n)
    lines.append(f"{spec.name}: {summary}")
    if problem:
        lines.append(f"(scheduler not asked: {problem})")
    return "\n".join(lines)


def _point_state(
    folder: RunFolder, point: SubmittedPoint | None, scheduler: SchedulerState | None
) -> tuple[PointState, str]:
    progress = status_of(folder)
    failure = Failure.recorded_in(folder)
    checkpoint = folder.resume_checkpoint()
    job = f"job {point.job_id}" if point else ""
    if progress is Status.DONE:
        return PointState.DONE, f"test acc {folder.read_summary().test_acc:.4f}"
    if scheduler is not None and scheduler.state in RUNNING_STATES:
        return PointState.RUNNING, f"{job}; log {folder.log}"
    if scheduler is not None and scheduler.active:
        ran_before = has_started(folder) or failure is not None
        if scheduler.state in PREEMPTED_STATES or ran_before:
            resume = f"; resumes from {checkpoint}" if checkpoint else ""
            return PointState.REQUEUED, f"{job} {scheduler.state.lower()}{resume}"
        return PointState.QUEUED, f"{job} ({scheduler.reason})"
    launcher = launcher_running(folder)
    if launcher is not None:
        epochs = len({row["epoch"] for row in folder.read_history()})
        return PointState.RUNNING, f"by {launcher}; {epochs} epochs validated; log {folder.log}"
    if failure is not None and failure.interrupted:
        return PointState.INTERRUPTED, f"{failure}; launch again to resume"
    if failure is not None:
        return PointState.FAILED, str(failure)
    if point is not None and not folder.log.is_file():
        return PointState.FAILED, f"{job} ended before the run started; see {point.scheduler_log}"
    if point is not None and progress is Status.NEW:  # the job ended without an outcome
        ended = f" {scheduler.state.lower()}" if scheduler else " ended"
        return PointState.FAILED, f"{job}{ended}; see {folder.log} and {point.scheduler_log}"
    if progress is not Status.NEW:
        return PointState.PARTIAL, f"resumes from {checkpoint or 'its fit'} when launched again"
    return PointState.NOT_STARTED, ""
