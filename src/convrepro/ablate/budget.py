"""How long a published grid took, from its runs' records (``summary.json``'s fit time,
``provenance.json``'s invocations), for the README's budget line.

A grid may run in several sessions: a fit killed with its session records no end, and the run's
fit time then counts only the part after its resume; the line says so rather than average it in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from convrepro.ablate.results import RunResult
from convrepro.runs.provenance import TRAINING_SUBCOMMANDS

#: Minutes without a run in progress that the budget line calls the grid's pauses.
PAUSE_MINUTES = 10


def budget_line(results: Sequence[RunResult], records: list[dict[str, Any]]) -> str:
    """The README's budget line of a published grid: epochs, fit time per run, the whole grid's
    time. ``records``: each result's run's first ``fit`` and invocations, as the README reads
    them."""
    epochs = sorted({r.epochs for r in results})
    # A fit killed (with its session, say) records no end, and its run's fit time counts only the
    # resumed part: such runs stay out of the per-run times, and the line says how many.
    stopped = [_fit_was_stopped(record["invocations"]) for record in records]
    whole = [
        r.wall_time_s / 60
        for r, halted in zip(results, stopped, strict=True)
        if not halted and not math.isnan(r.wall_time_s)
    ]
    parts = []
    if len(whole) == 1:
        parts.append(f"training (fit) took {whole[0]:.1f} min")
    elif whole:
        parts.append(
            f"training (fit) took {statistics.mean(whole):.1f} min per run on average "
            f"({min(whole):.1f}-{max(whole):.1f})"
            + (f" over the {len(whole)} runs trained in one go" if any(stopped) else "")
        )
    if any(stopped):
        parts.append(
            f"{_runs(sum(stopped))} stopped mid-fit and resumed from the last checkpoint (a "
            "run's record times only the part after its resume)"
        )
    parts = parts or ["training (fit) times not recorded"]
    timed = [
        (datetime.fromisoformat(item["started"]), datetime.fromisoformat(item["ended"]))
        for record in records
        for item in record["invocations"]
        if item["ended"]
    ]
    first = min(datetime.fromisoformat(record["fit"]["started"]) for record in records)
    ended = max(end for _, end in timed)
    started, span = _iso(first), (ended - first).total_seconds() / 60
    busy = _covered_seconds(timed) / 60
    whole_grid = f"{span:.0f} min ({started} to {_iso(ended)})"
    if span - busy >= PAUSE_MINUTES:  # it ran in more than one session, or was relaunched
        whole_grid = (
            f"ran from {started} to {_iso(ended)} with pauses: runs were in progress for "
            f"{busy:.0f} of those {span:.0f} min"
            + (" (at least: a stopped fit records no end)" if any(stopped) else "")
        )
    return (
        f"Budget: {', '.join(map(str, epochs))} epochs per run; {'; '.join(parts)}; the whole "
        f"grid, tests included, {whole_grid}."
    )


def _runs(count: int) -> str:
    return "1 run was" if count == 1 else f"{count} runs were"


def _fit_was_stopped(invocations: list[dict[str, Any]]) -> bool:
    fits = [item for item in invocations if item["subcommand"] in TRAINING_SUBCOMMANDS]
    return any(not item["ended"] for item in fits)


def _covered_seconds(intervals: list[tuple[datetime, datetime]]) -> float:
    """How long at least one of ``intervals`` was open (overlaps counted once)."""
    covered, reached = 0.0, None
    for start, end in sorted(intervals):
        if reached is None or start > reached:
            covered += (end - start).total_seconds()
            reached = end
        elif end > reached:
            covered += (end - reached).total_seconds()
            reached = end
    return covered


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
