"""Runs an ablation grid: every arm x seed as ``fit`` then ``test --ckpt_path best`` of the CLI.

Each step is a subprocess of ``python -m convrepro``, so a run is exactly what a person would get
by typing the command (printed at the top of the run's ``log.txt``), and a crash in one run cannot
take the grid down. Re-running the grid continues where it stopped: finished runs are skipped,
runs with a ``last.ckpt`` resume from it, the rest start fresh. With several GPUs, one run per GPU
goes at a time.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import yaml

from convrepro.ablate.spec import SPEC_FILE, AblationSpec, Run, runs_root
from convrepro.errors import AblationError
from convrepro.runs.folder import RunFolder

#: The project's CLI (``main.py``), started once per fit and per test.
CLI_COMMAND = (sys.executable, "-m", "convrepro")
#: What a run was started with (in its run folder); a later invocation with other settings must
#: not mix into it.
SETTINGS_FILE = "ablation_run.json"


class Status(Enum):
    """Where a run stands, and so what the next invocation does with it."""

    DONE = "done"  # tested: skipped
    UNTESTED = "untested"  # fit finished: test only
    PARTIAL = "partial"  # last.ckpt exists: resume fit, then test
    NEW = "new"  # fit from scratch, then test


@dataclass(frozen=True)
class Failure:
    """A run whose fit or test exited non-zero."""

    run_id: str
    step: str
    returncode: int
    log: Path

    def __str__(self) -> str:
        return f"{self.run_id}: {self.step} exited with {self.returncode}; see {self.log}"


def status_of(run: RunFolder) -> Status:
    """What is left to do for ``run``."""
    summary = run.read_summary()
    if summary.tested:
        return Status.DONE
    if summary.fit_finished:
        return Status.UNTESTED
    if run.last_checkpoint.is_file():
        return Status.PARTIAL
    return Status.NEW


def cli_command(spec: AblationSpec, out: Path, run: Run, subcommand: str, *extra: str) -> list[str]:
    """The ``python -m convrepro`` command line of one step of ``run``."""
    tags = json.dumps([run.arm, f"seed-{run.seed}"])
    return [
        *CLI_COMMAND,
        subcommand,
        f"--config={spec.base}",
        *run.cli_args(),
        f"--run.root={runs_root(out)}",
        f"--run.name={spec.name}",
        f"--run.id={run.id}",
        f"--run.group={spec.name}",
        f"--run.tags={tags}",
        *extra,
    ]


def steps(spec: AblationSpec, out: Path, run: Run, status: Status) -> list[tuple[str, list[str]]]:
    """The (name, command) steps that finish ``run`` from ``status``."""
    if status is Status.DONE:
        return []
    test = ("test", cli_command(spec, out, run, "test", "--ckpt_path=best"))
    if status is Status.UNTESTED:
        return [test]
    resume = ["--ckpt_path=last"] if status is Status.PARTIAL else []
    return [("fit", cli_command(spec, out, run, "fit", *resume)), test]


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
) -> list[Failure]:
    """Finish every run of ``spec`` under ``out``; returns the runs that failed.

    Args:
        spec: The ablation.
        out: The ablation's folder; runs go to ``<out>/runs/<name>/<arm>-seed<N>``.
        devices: ``CUDA_VISIBLE_DEVICES`` values, one run at a time on each. ``None``: every
            visible GPU when there are several, else one run at a time on whatever the
            base config picks.
        dry_run: Print what would run, run nothing, write nothing.
    """
    runs = spec.runs()
    _check_settings_unchanged(spec, out, runs)
    statuses = {run.id: status_of(spec.run_folder(out, run)) for run in runs}
    todo = [run for run in runs if statuses[run.id] is not Status.DONE]
    if devices is None:
        visible = visible_devices()
        devices = visible if len(visible) > 1 else []
    print(
        f"{spec.name}: {len(runs) - len(todo)} of {len(runs)} runs done, {len(todo)} to go"
        + (f" on devices {', '.join(devices)}" if devices else ""),
        flush=True,
    )
    if dry_run:
        for run in todo:
            print(f"[{statuses[run.id].value}] {run.id}")
            for _, command in steps(spec, out, run, statuses[run.id]):
                print(f"    {shlex.join(command)}")
        return []
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_FILE).write_text(spec.to_yaml())

    free_devices: queue.Queue[str | None] = queue.Queue()
    for device in devices or [None]:
        free_devices.put(device)

    def finish(run: Run) -> Failure | None:
        device = free_devices.get()
        try:
            return _finish_run(spec, out, run, statuses[run.id], device)
        finally:
            free_devices.put(device)

    pool = ThreadPoolExecutor(max_workers=max(1, len(devices)))
    try:
        futures = [pool.submit(finish, run) for run in todo]
        return [failure for future in futures if (failure := future.result()) is not None]
    finally:
        # On Ctrl-C the running runs get the signal too; the queued ones must not start.
        pool.shutdown(cancel_futures=True)


def _finish_run(
    spec: AblationSpec, out: Path, run: Run, status: Status, device: str | None
) -> Failure | None:
    folder = spec.run_folder(out, run)
    folder.path.mkdir(parents=True, exist_ok=True)
    settings = folder.path / SETTINGS_FILE
    if not settings.exists():
        settings.write_text(json.dumps(_settings(spec, run), indent=2) + "\n")
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    where = f" on GPU {device}" if device is not None else ""
    for step, command in steps(spec, out, run, status):
        resuming = (
            " (resuming from last.ckpt)" if status is Status.PARTIAL and step == "fit" else ""
        )
        print(f"{run.id}: {step}{resuming}{where}", flush=True)
        started = time.monotonic()
        returncode = _execute(command, folder.log, env, device)
        if returncode != 0:
            failure = Failure(run.id, step, returncode, folder.log)
            print(f"FAILED {failure}", flush=True)
            return failure
        print(f"{run.id}: {step} done in {time.monotonic() - started:.0f} s", flush=True)
    return None


def _execute(command: list[str], log: Path, env: dict[str, str], device: str | None) -> int:
    prefix = f"CUDA_VISIBLE_DEVICES={device} " if device is not None else ""
    with log.open("a") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {prefix}{shlex.join(command)}\n")
        handle.flush()
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode


def _settings(spec: AblationSpec, run: Run) -> dict[str, Any]:
    # The base config's content, not its path: comments and moves do not matter, values do.
    return {"base_config": yaml.safe_load(spec.base.read_text()), "args": run.cli_args()}


def _check_settings_unchanged(spec: AblationSpec, out: Path, runs: Sequence[Run]) -> None:
    changed = []
    for run in runs:
        settings = spec.run_folder(out, run).path / SETTINGS_FILE
        if settings.is_file() and json.loads(settings.read_text()) != _settings(spec, run):
            changed.append(str(settings.parent))
    if changed:
        raise AblationError(
            f"{len(changed)} run(s) under {out} were started with other settings (the base "
            f"config or the overrides differ now): {', '.join(changed)}. Mixing them "
            "would compare different experiments: write to another --out, or delete those run "
            "folders to redo them."
        )
