"""One grid point: ``fit`` (resumed from its checkpoint if it has one), then ``test``.

``python -m convrepro.ablate one FILE --arm A --seed N`` runs :func:`run_point`. The local launcher,
the SLURM jobs and W&B sweep agents all run that command and nothing else, so a grid point is the
same run whoever started it, and a point stopped under one launcher resumes under another.

Both steps are the project's CLI (:func:`convrepro.cli.main`), called in this process one after
the other: one interpreter start per point instead of one per step. Their output goes to the run
folder's ``log.txt``, each step under a header with the ``python -m convrepro ...`` command that
redoes it by hand; this process prints one line per step. A failed step is recorded in
:data:`FAILURE_FILE` (step, exit status, log) for ``status``, until the next attempt starts.

In a multi-process run (DDP: SLURM tasks, or the processes Lightning starts by running this command
again) every process runs the same steps; only the first keeps the books (settings, headers, the
failure record) and holds the run folder's lock (:data:`LOCK_FILE`): a second launcher reaching a
point that is running (a sweep agent beside the local launcher, an array submitted twice) is
refused instead of writing into the same checkpoints. The lock is the operating system's
(``flock``), so a process that dies, even by ``kill -9``, leaves none behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from convrepro.ablate.spec import AblationSpec, Run, runs_root
from convrepro.errors import AblationError, PointBusy
from convrepro.files import write_atomic
from convrepro.runs.folder import RunFolder

#: What a run was started with (in its run folder); a later invocation with other settings must
#: not mix into it.
SETTINGS_FILE = "ablation_run.json"
#: The failed step of a run's last attempt (removed when the next attempt starts), for ``status``.
FAILURE_FILE = "ablation_failure.json"
#: Locked while a launcher runs the point; holds who that is (process id and host).
LOCK_FILE = "ablation_run.lock"
#: Exit statuses of a run stopped by SIGTERM or Ctrl+C after saving its interrupt checkpoint.
INTERRUPTED = (128 + signal.SIGTERM, 128 + signal.SIGINT)
#: How long the other processes of a multi-process run wait for the first to write the summary
#: that ``test --ckpt_path best`` reads.
SUMMARY_WAIT_S = 300.0
#: The project's CLI as a person types it; the header of each step in ``log.txt``.
CLI_PROGRAM = ("python", "-m", "convrepro")
#: The one-run entry, as the launchers start it.
ONE_COMMAND = (sys.executable, "-m", "convrepro.ablate", "one")


class Status(Enum):
    """Where a run stands, and so what the next invocation does with it."""

    DONE = "done"  # tested: skipped
    UNTESTED = "untested"  # fit finished: test only
    PARTIAL = "partial"  # a checkpoint exists: resume fit, then test
    NEW = "new"  # fit from scratch, then test


@dataclass(frozen=True)
class Failure:
    """A step of a run that exited non-zero."""

    run_id: str
    step: str
    returncode: int
    log: Path

    def __str__(self) -> str:
        return f"{self.run_id}: {self.step} exited with {self.returncode}; see {self.log}"

    @property
    def interrupted(self) -> bool:
        """Stopped by a signal after saving: resumable, not broken."""
        return self.returncode in INTERRUPTED

    @classmethod
    def recorded_in(cls, folder: RunFolder) -> Failure | None:
        """The failure :func:`run_point` recorded in ``folder``, if its last attempt failed."""
        path = folder.path / FAILURE_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        return cls(values["run_id"], values["step"], values["returncode"], Path(values["log"]))


def status_of(run: RunFolder) -> Status:
    """What is left to do for ``run``."""
    summary = run.read_summary()
    if summary.tested:
        return Status.DONE
    if summary.fit_finished:
        return Status.UNTESTED
    if run.resume_checkpoint() is not None:
        return Status.PARTIAL
    return Status.NEW


def has_started(run: RunFolder) -> bool:
    """Whether training left a checkpoint or a summary, which new settings would mix with."""
    return run.resume_checkpoint() is not None or run.summary_file.is_file()


def cli_args(spec: AblationSpec, out: Path, run: Run, subcommand: str, *extra: str) -> list[str]:
    """The arguments of ``python -m convrepro`` for one step of ``run``."""
    tags = json.dumps([run.arm, f"seed-{run.seed}"])
    return [
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


def steps(
    spec: AblationSpec, out: Path, run: Run, status: Status, launch: Sequence[str] = ()
) -> list[tuple[str, list[str]]]:
    """The (name, CLI arguments) steps that finish ``run`` from ``status``.

    ``launch`` (device and node counts of a multi-process job) comes last; it is how the run
    is started, not what it is, so it is not part of the run's settings.
    """
    if status is Status.DONE:
        return []
    test = ("test", cli_args(spec, out, run, "test", *launch, "--ckpt_path=best"))
    if status is Status.UNTESTED:
        return [test]
    resume = ["--ckpt_path=last"] if status is Status.PARTIAL else []
    return [("fit", cli_args(spec, out, run, "fit", *launch, *resume)), test]


def one_command(spec_file: Path, out: Path, run: Run, *launch: str) -> list[str]:
    """The command that runs ``run`` of the ablation in ``spec_file`` (what launchers start)."""
    where = [f"--arm={run.arm}", f"--seed={run.seed}", f"--out={out}"]
    return [*ONE_COMMAND, str(spec_file), *where, *launch]


def settings_of(spec: AblationSpec, run: Run) -> dict[str, Any]:
    """What makes a run this run: the base config's content (not its path: comments and moves
    do not matter, values do) and the run's arguments."""
    return {"base_config": yaml.safe_load(spec.base.read_text()), "args": run.cli_args()}


def write_settings(spec: AblationSpec, folder: RunFolder, run: Run) -> None:
    """Record in ``folder`` that ``run`` starts (or, restored from its records, started) with
    today's settings (:data:`SETTINGS_FILE`)."""
    write_atomic(folder.path / SETTINGS_FILE, json.dumps(settings_of(spec, run), indent=2))


def check_settings_unchanged(spec: AblationSpec, out: Path, runs: Sequence[Run]) -> None:
    """Refuse runs that started (a checkpoint or a summary) with other settings than now."""
    changed = []
    for run in runs:
        folder = spec.run_folder(out, run)
        settings = folder.path / SETTINGS_FILE
        if (
            has_started(folder)
            and settings.is_file()
            and json.loads(settings.read_text()) != settings_of(spec, run)
        ):
            changed.append(str(folder.path))
    if changed:
        raise AblationError(
            f"{len(changed)} run(s) under {out} were started with other settings (the base "
            f"config or the overrides differ now): {', '.join(changed)}. Mixing them "
            "would compare different experiments: write to another --out, or delete those run "
            "folders to redo them."
        )


def run_point(
    spec: AblationSpec, out: Path, run: Run, launch: Sequence[str] = ()
) -> Failure | None:
    """Finish ``run`` (see the module docstring); returns its failed step, if one failed."""
    folder = spec.run_folder(out, run)
    check_settings_unchanged(spec, out, [run])
    primary = is_primary_process()
    folder.path.mkdir(parents=True, exist_ok=True)  # every process appends to its log
    with _locked(folder, run) if primary else contextlib.nullcontext():
        status = status_of(folder)  # under the lock: a launcher that held it may have finished
        if status is Status.DONE:
            print(f"{run.id}: done already", flush=True)
            return None
        if primary:
            (folder.path / FAILURE_FILE).unlink(missing_ok=True)  # this attempt's outcome counts
            if not has_started(folder):  # a run that never trained takes today's settings
                write_settings(spec, folder, run)
        return _run_steps(spec, out, run, folder, status, launch, primary)


def _run_steps(
    spec: AblationSpec,
    out: Path,
    run: Run,
    folder: RunFolder,
    status: Status,
    launch: Sequence[str],
    primary: bool,
) -> Failure | None:
    for step, args in steps(spec, out, run, status, launch):
        resuming = " (resuming from its checkpoint)" if status is Status.PARTIAL else ""
        print(f"{run.id}: {step}{resuming if step == 'fit' else ''}", flush=True)
        if step == "test" and not primary:
            _wait_for_fit_summary(folder)
        if primary:
            _write_header(folder.log, args)
        started = time.monotonic()
        returncode = run_cli(args, folder.log)
        if returncode != 0:
            failure = Failure(run.id, step, returncode, folder.log)
            if primary:
                write_atomic(folder.path / FAILURE_FILE, json.dumps(asdict(failure), default=str))
            print(f"FAILED {failure}", flush=True)
            return failure
        print(f"{run.id}: {step} done in {time.monotonic() - started:.0f} s", flush=True)
    return None


@contextlib.contextmanager
def _locked(folder: RunFolder, run: Run) -> Iterator[None]:
    """Hold the lock of ``run``'s folder, or refuse if another launcher holds it."""
    with (folder.path / LOCK_FILE).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PointBusy(
                f"{run.id} is being run by {holder} (it holds {handle.name}); this launcher "
                "leaves it alone. Its progress: python -m convrepro.ablate status"
            ) from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def launcher_running(folder: RunFolder) -> str | None:
    """Who runs the point now, as its lock file names it (``process 9188 on vm``), while that
    process lives on this machine; ``None`` otherwise. It reads the file and never takes the
    lock, which a launcher starting the point at that moment would find held and skip."""
    try:
        holder = (folder.path / LOCK_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    match = re.fullmatch(r"process (\d+) on (\S+)", holder)
    if match is None or match[2] != socket.gethostname():
        return None
    command = Path("/proc", match[1], "cmdline")
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    # The file keeps the last holder's name; its process id may since be another program's.
    if command.parent.is_dir() and b"convrepro" not in command.read_bytes():
        return None
    return holder


def is_primary_process() -> bool:
    """False in the other processes of a multi-process run, which repeat this command."""
    ranks = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(os.environ.get(variable, "0") == "0" for variable in ranks)


def run_cli(args: Sequence[str], log: Path) -> int:
    """``python -m convrepro ARGS`` in this process, its output appended to ``log``; its exit
    status (as the command's would be: 2 for a user error, 143 stopped by SIGTERM, 1 a bug)."""
    from convrepro.cli import main  # torch and Lightning: only once a step runs

    with _output_appended_to(log), warnings.catch_warnings():
        # the CLI warns when given arguments while sys.argv has some: here both are ours
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            main(list(args))
        except SystemExit as stop:
            return _exit_status(stop.code)
        except Exception:  # a bug: its traceback goes to the log, as it would from the CLI
            traceback.print_exc()
            return 1
        finally:
            _end_wandb_run()
            gc.collect()  # the step's model, data and trainer, before the next step builds its own
    return 0


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    return code if isinstance(code, int) else 1  # sys.exit("message") exits with 1


def _end_wandb_run() -> None:
    """Finish the step's W&B run, so the next step resumes it as a new process would."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def _write_header(log: Path, args: Sequence[str]) -> None:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    prefix = f"CUDA_VISIBLE_DEVICES={devices} " if devices is not None else ""
    command = shlex.join([*CLI_PROGRAM, *args])
    with log.open("a") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {prefix}{command}\n")


@contextlib.contextmanager
def _output_appended_to(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so also the output of
    libraries and of child processes) to ``log`` for the duration of the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log.open("a") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)


def _wait_for_fit_summary(folder: RunFolder) -> None:
    """Let the first process write the summary that ``--ckpt_path best`` reads."""
    deadline = time.monotonic() + SUMMARY_WAIT_S
    while not folder.read_summary().fit_finished:
        if time.monotonic() > deadline:
            raise AblationError(f"{folder.summary_file}: the first process never wrote it")
        time.sleep(0.5)
