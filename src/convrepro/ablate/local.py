"""The local launcher: every unfinished grid point as ``python -m convrepro.ablate one``, here.

One point at a time, or with several GPUs one point per GPU at a time (``CUDA_VISIBLE_DEVICES``
set for it). Each point is its own process, so a crash in one cannot take the grid down.
Re-running continues where it stopped: finished points are skipped, the others resume (see
:mod:`~convrepro.ablate.point`). With :class:`~convrepro.ablate.grid_records.GridRecords` it also
continues from the points an earlier session committed, here or on another machine, and commits
each point's records as it finishes.
"""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from convrepro.ablate import preflight
from convrepro.ablate.point import (
    Failure,
    Status,
    check_settings_unchanged,
    one_command,
    status_of,
    steps,
)
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, Run
from convrepro.errors import PointBusy

if TYPE_CHECKING:
    from convrepro.ablate.grid_records import GridRecords


def visible_devices() -> list[str]:
    """The GPUs to spread runs over: ``CUDA_VISIBLE_DEVICES`` entries, else all GPUs' indices."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d for d in listed.split(",") if d] if listed else [str(i) for i in range(count)]
    return ids[:count]


def run_grid(
    spec: AblationSpec,
    out: Path,
    devices: Sequence[str] | None = None,
    dry_run: bool = False,
    records: GridRecords | None = None,
) -> list[Failure]:
    """Finish every point of ``spec`` under ``out``; returns the points that failed.

    Args:
        spec: The ablation.
        out: The ablation's folder; runs go to ``<out>/runs/<name>/<arm>-seed<N>``.
        devices: ``CUDA_VISIBLE_DEVICES`` values, one point at a time on each. ``None``: every
            visible GPU when there are several, else one point at a time on whatever the
            base config picks.
        dry_run: Check the configs, print what would run, run nothing, write nothing.
        records: The grid's committed records: points they hold count as done (once checked
            against this code, data and settings), and each point's are committed as it
            finishes.
    """
    runs = spec.runs()
    preflight.check_code_is_this_checkout()
    check_settings_unchanged(spec, out, runs)
    configs = preflight.parse_every_arm(spec, out)
    statuses = {run.id: status_of(spec.run_folder(out, run)) for run in runs}
    committed = records.committed(runs) if records is not None else []
    restored = [run for run in committed if statuses[run.id] is not Status.DONE]
    # Seed by seed: a grid stopped part-way leaves every arm with the same seeds, and a drift
    # in the machine's speed or load falls on every arm alike.
    todo = sorted(
        (run for run in runs if statuses[run.id] is not Status.DONE and run not in committed),
        key=lambda run: spec.seeds.index(run.seed),
    )
    if devices is None:
        visible = visible_devices()
        devices = visible if len(visible) > 1 else []
    from_records = f" ({len(restored)} committed in {records.folder})" if restored else ""
    print(
        f"{spec.name}: {len(runs) - len(todo)} of {len(runs)} runs done{from_records}, "
        f"{len(todo)} to go" + (f" on devices {', '.join(devices)}" if devices else ""),
        flush=True,
    )
    spec_file = out / SPEC_FILE
    if dry_run:
        for run in todo:
            command = shlex.join(one_command(spec_file, out, run))
            print(f"[{statuses[run.id].value}] {run.id}: {command}")
            for _, args in steps(spec, out, run, statuses[run.id]):
                print(f"    python -m convrepro {shlex.join(args)}")
        return []
    # Records are checked against this machine's data (and committed only if they match it).
    data = preflight.check_data(configs) if todo or records is not None else {}
    if records is not None:
        records.check(committed, data)
    out.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_yaml())  # what the points read: this grid, not a later edit
    if records is not None:
        for run in restored:
            records.restore(run)
        # Points finished before records were kept (or whose commit failed) are committed now.
        records.record([run for run in runs if statuses[run.id] is Status.DONE], data)

    free_devices: queue.Queue[str | None] = queue.Queue()
    for device in devices or [None]:
        free_devices.put(device)

    def finish(run: Run) -> Failure | None:
        device = free_devices.get()
        folder = spec.run_folder(out, run)
        try:
            returncode = run_command(one_command(spec_file, out, run), device)
            # Committed before the device is free: the next point on it starts after the commit.
            if returncode == 0 and records is not None and status_of(folder) is Status.DONE:
                records.record([run], data)
        finally:
            free_devices.put(device)
        if returncode == 0:
            return None
        if returncode == PointBusy.exit_code:  # another launcher runs it: not a failure
            print(f"{run.id}: left to the launcher that is running it", flush=True)
            return None
        return Failure.recorded_in(folder) or Failure(run.id, "one", returncode, folder.log)

    pool = ThreadPoolExecutor(max_workers=max(1, len(devices)))
    try:
        futures = [pool.submit(finish, run) for run in todo]
        return [failure for future in futures if (failure := future.result()) is not None]
    finally:
        # On Ctrl-C the running points get the signal too; the queued ones must not start.
        pool.shutdown(cancel_futures=True)


def run_command(command: list[str], device: str | None) -> int:
    """Run one point's command (on GPU ``device``, if given); its exit status."""
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return subprocess.run(command, env=env).returncode
