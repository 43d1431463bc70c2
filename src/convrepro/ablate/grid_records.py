"""A grid that outlives its machine: each finished point's records, committed as it finishes.

``python -m convrepro.ablate FILE --commit-records [--push]`` (local launcher) copies each
finished point's records (those ``publish`` copies, plus the point's settings; no checkpoints,
no machine paths) into ``grids/<name>/`` of the checkout the code runs from, in the layout of
an ablation folder, and commits just that folder (``git commit -- grids/<name>``: whatever else
a developer staged stays staged); ``--push`` pushes the branch after each commit, so the records
leave the machine. Started again, here or on a fresh clone of the branch with the same data, the
grid counts each committed point as done, copies its records into the run folder under ``--out``
(so ``status``, ``report`` and ``publish`` read it as any finished run) and runs only the rest.

A committed point counts only if it was made by this code (the same code commit, no uncommitted
changes: :func:`~convrepro.runs.provenance.checkout_version`, which leaves ``grids/`` out, so the
grid's own record commits do not change it), with this data (the same fingerprint, computed by
the provenance's own :func:`~convrepro.runs.provenance.data_fingerprint`) and with this point's
settings (base config and arguments, machine paths aside). Any other is refused, in one line
naming the point and what differs: never rerun or accepted silently.

Why ``grids/<name>/`` and not a folder given on the command line or ``results/``: a fresh clone
finds the records without being told where; ``results/`` holds published grids only (the
README is rendered from every grid there); and the provenance can leave one fixed folder out of
the code version, so committing records mid-grid keeps every point's code version the same.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convrepro.ablate.point import SETTINGS_FILE, has_started, settings_of, write_settings
from convrepro.ablate.publish import copy_run_records
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, Run
from convrepro.errors import AblationError
from convrepro.runs.folder import RunFolder
from convrepro.runs.provenance import (
    GRID_RECORDS,
    CodeVersion,
    checkout_version,
    read_provenance,
    run_data_label,
)
from convrepro.runs.scrub import MachinePaths, found_in_provenance

#: Tries of a ``git add``/``commit`` that finds the index locked (another git command, or
#: another launcher of the same grid committing), a second apart.
COMMIT_TRIES = 10
_DATA_DIR_ARG = "--data.init_args.data_dir="


@dataclass
class GridRecords:
    """The committed records of one grid, in ``<repository>/grids/<name>/``.

    Attributes:
        spec: The grid.
        out: Its output folder on this machine (run folders, checkpoints).
        repository: The root of the git checkout the code runs from.
        code: That checkout's code version when the grid started.
        push_to: ``(remote, branch ref)`` to push each commit to; ``None``: commit only.
    """

    spec: AblationSpec
    out: Path
    repository: Path
    code: CodeVersion
    push_to: tuple[str, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls, spec: AblationSpec, out: Path, repository: Path | None, push: bool = False
    ) -> GridRecords:
        """The grid's records in ``repository``, once git is known to be able to commit them
        there: raises an :class:`AblationError` (before anything runs) where it could not."""
        if repository is None:
            raise AblationError(
                "--commit-records: convrepro is imported from an installed package, not a git "
                "checkout; run the grid from a clone or worktree of the repository"
            )
        top = _git(repository, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            raise AblationError(
                f"--commit-records: {repository} is not in a git repository ({_last(top)}); run "
                "the grid from a clone or worktree of the repository"
            )
        root = Path(top.stdout.strip())
        branch = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD").stdout.strip()
        if not branch:
            raise AblationError(
                f"--commit-records: {root} has a detached HEAD; commits there would be on no "
                f"branch, and a clone would not get them: git switch -c grid/{spec.name}"
            )
        if _git(root, "var", "GIT_COMMITTER_IDENT").returncode != 0:
            raise AblationError(
                f"--commit-records: git does not know who commits in {root}; set git config "
                "user.name and user.email (or GIT_COMMITTER_NAME and GIT_COMMITTER_EMAIL)"
            )
        code = checkout_version(root)
        if code.git_dirty:
            raise AblationError(
                f"--commit-records: {root} has uncommitted changes (git status), so the records "
                "could not name the code that made them; commit them, or run the grid from a "
                f"clean worktree of the commit (git worktree add -b grid/{spec.name} "
                f"../grid-{spec.name} <commit>)"
            )
        push_to = _upstream(root, branch) if push else None
        return cls(spec, out, root, code, push_to)

    @property
    def folder(self) -> Path:
        """``<repository>/grids/<name>``."""
        return self.repository / GRID_RECORDS / self.spec.name

    def record_of(self, run: Run) -> RunFolder:
        return self.spec.run_folder(self.folder, run)

    def committed(self, runs: Iterable[Run]) -> list[Run]:
        """The points among ``runs`` that have a record (checked by :meth:`check`)."""
        return [run for run in runs if self.record_of(run).summary_file.is_file()]

    def check(self, runs: Sequence[Run], data: Mapping[str, dict[str, Any]]) -> None:
        """Refuse (one :class:`AblationError`) the records of ``runs`` that this grid did not
        make: other code, other data (``data``: each arm's fingerprint now), other settings."""
        refused = []
        for run in runs:
            why = self._differences(run, self.record_of(run), data)
            if why:
                refused.append(f"{run.id}: {'; '.join(why)}")
        if refused:
            raise AblationError(
                f"{len(refused)} committed record(s) in {self.folder} do not match this grid, "
                f"so they are not counted and not redone: {' | '.join(refused)}. Run the grid "
                f"from the code, data and settings that made them, or git rm -r {self.folder} "
                "to start it afresh"
            )

    def _differences(
        self, run: Run, record: RunFolder, data: Mapping[str, dict[str, Any]]
    ) -> list[str]:
        """What makes ``record`` (scrubbed) another grid's ``run`` than this one's."""
        invocations = read_provenance(record)
        why = [] if record.read_summary().tested else ["it has no test result"]
        if not invocations:
            return [*why, "it has no provenance.json, so its code and data are unknown"]
        made_by = sorted({invocation.code.label for invocation in invocations})
        if any(i.code.git_commit != self.code.git_commit or i.code.git_dirty for i in invocations):
            why.append(f"made by other code ({', '.join(made_by)}; here {self.code.label})")
        recorded_data = run_data_label(invocation.data for invocation in invocations)
        data_here = run_data_label([data[run.arm]])
        if recorded_data != data_here:
            why.append(f"made from other data (fingerprint {recorded_data}; here {data_here})")
        settings = record.path / SETTINGS_FILE
        if not settings.is_file():
            return [*why, f"it has no {SETTINGS_FILE}, so its settings are unknown"]
        # Machine paths aside, as in the record: the data may lie elsewhere on this machine.
        here = self._here() + MachinePaths(
            repositories=(os.getcwd(),),
            data=(*(d.get("data_dir") or "" for d in data.values()), *_data_dir_args(run)),
        )
        now = json.loads(here.scrub(json.dumps(settings_of(self.spec, run))))
        return why + _setting_differences(json.loads(settings.read_text()), now)

    def restore(self, run: Run) -> None:
        """Put the (checked) record of ``run`` into its run folder under ``out``: done."""
        folder = self.spec.run_folder(self.out, run)
        if has_started(folder):
            raise AblationError(
                f"{run.id} is finished in the committed records ({self.record_of(run).path}) "
                f"and begun in {folder.path}: move that run folder away (or use another --out) "
                "so that the committed result counts"
            )
        copy_run_records(self.record_of(run).path, folder.path)
        write_settings(self.spec, folder, run)  # the record's, machine paths aside (checked)

    def record(self, runs: Sequence[Run], data: Mapping[str, dict[str, Any]]) -> None:
        """Copy the records of finished ``runs`` that have none yet (no checkpoints, no machine
        paths), then commit the grid's folder (and push it, if asked). A record :meth:`check`
        would refuse (``data``: as there) is not committed: an :class:`AblationError`."""
        with self._lock:  # points finish on parallel threads; git takes one commit at a time
            added = {run.id: paths for run in runs if (paths := self._copy(run, data))}
            for paths in added.values():  # the grid's own file beside them, as an ablation's
                (self.folder / SPEC_FILE).write_text(paths.scrub(self.spec.to_yaml()))
            what = f"records of {', '.join(added)}" if added else "records left uncommitted"
            self._commit(f"grid {self.spec.name}: {what} (finished points, no checkpoints)")

    def _copy(self, run: Run, data: Mapping[str, dict[str, Any]]) -> MachinePaths | None:
        """Copy ``run``'s records, scrubbed, into a new record (never over one); the machine
        paths scrubbed, ``None`` if it had a record. Staged beside it and renamed: a record is
        whole, or absent."""
        target = self.record_of(run).path
        if target.exists():
            return None
        source = self.spec.run_folder(self.out, run).path
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        files = copy_run_records(source, staging)
        if (source / SETTINGS_FILE).is_file():
            files.append(Path(shutil.copy2(source / SETTINGS_FILE, staging / SETTINGS_FILE)))
        paths = found_in_provenance(source) + self._here()
        paths.scrub_files(files)
        why = self._differences(run, RunFolder(staging), data)
        if why:
            shutil.rmtree(staging)
            raise AblationError(
                f"{run.id} in {source}: not committed to {self.folder}, as a later start would "
                f"refuse it: {'; '.join(why)}"
            )
        staging.rename(target)
        return paths

    def _here(self) -> MachinePaths:
        return MachinePaths((self.repository.as_posix(),), (self.out.resolve().as_posix(),))

    def _commit(self, message: str) -> None:
        if not self.folder.is_dir():  # no record yet
            return
        folder = self.folder.relative_to(self.repository).as_posix()
        for attempt in range(COMMIT_TRIES):
            done = _git(self.repository, "add", "--", folder)
            if done.returncode == 0:
                if not _git(self.repository, "status", "--porcelain", "--", folder).stdout.strip():
                    return  # nothing new
                done = _git(self.repository, "commit", "--quiet", "-m", message, "--", folder)
            if done.returncode == 0:
                break
            if "index.lock" not in done.stderr or attempt == COMMIT_TRIES - 1:
                raise AblationError(
                    f"--commit-records: git could not commit {folder} ({_last(done)}); the run "
                    f"folders in {self.out} keep the results, and the next start commits them"
                )
            time.sleep(1)
        if self.push_to is not None:
            remote, branch = self.push_to
            pushed = _git(self.repository, "push", "--quiet", remote, f"HEAD:{branch}")
            if pushed.returncode != 0:  # no network now: the next push carries this commit too
                print(
                    f"{self.spec.name}: records committed, not pushed to {remote} "
                    f"({_last(pushed)}); the next push carries them",
                    flush=True,
                )


def _setting_differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    why = []
    if recorded.get("base_config") != now["base_config"]:
        why.append("its base config differs from this one")
    before, after = recorded.get("args", []), now["args"]
    if before != after:
        only_before = [a for a in before if a not in after]
        only_now = [a for a in after if a not in before]
        why.append(
            f"its settings differ (recorded {' '.join(only_before) or '-'}; "
            f"now {' '.join(only_now) or '-'})"
        )
    return why


def _data_dir_args(run: Run) -> list[str]:
    """The absolute data folders ``run``'s arguments name (``--set``), as written: found in
    a record's commands too, they are scrubbed alike on either side."""
    values = [a.removeprefix(_DATA_DIR_ARG) for a in run.cli_args() if a.startswith(_DATA_DIR_ARG)]
    return [value for value in values if Path(value).is_absolute()]


def _upstream(root: Path, branch: str) -> tuple[str, str]:
    remote = _git(root, "config", f"branch.{branch}.remote").stdout.strip()
    merge = _git(root, "config", f"branch.{branch}.merge").stdout.strip()
    if not remote or not merge:
        raise AblationError(
            f"--push: branch {branch} of {root} has no upstream to push the records to; push "
            f"it once with git push -u origin {branch}"
        )
    return remote, merge


def _git(repository: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["git", "-C", str(repository), *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:  # a push to a host that does not answer
        return subprocess.CompletedProcess(command, 124, "", "git timed out after 300 s")
    except OSError as error:
        raise AblationError(
            f"--commit-records: git cannot run here ({error}); install it, or run the grid "
            "without --commit-records"
        ) from None


def _last(done: subprocess.CompletedProcess[str]) -> str:
    """The last line git wrote (its error), or its exit status."""
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"git exited with {done.returncode}"
