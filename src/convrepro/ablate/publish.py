"""Results that ship with the repository: an ablation's records in ``results/<name>/``
(:mod:`~convrepro.ablate.readme` renders the README's "Results" section from them).

``publish`` copies what a reader needs to check a number (the report, and per run its
``config.yaml``, ``provenance.json``, ``summary.json``, ``history.csv`` and log) and nothing
heavy (no checkpoints, no W&B files), in the ablation folder's own layout, so ``report`` works
on the copy too. The copy names no path of the machine the grid ran on
(:mod:`convrepro.runs.scrub`; :func:`scrub_published` does it to an earlier copy in place). It
never replaces a published grid by one with fewer runs or results (a grid published from the
wrong folder would erase it), replaces one at all only when asked, and publishes runs without a
result only when asked, naming them.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from convrepro.ablate.report import (
    REPORT_FILE,
    write_report,
)
from convrepro.ablate.results import (
    RESULTS_FILE,
    MissingRun,
    collect_results,
    runs_without_result,
)
from convrepro.ablate.spec import (
    SPEC_FILE,
    AblationSpec,
    load_spec,
    runs_root,
)
from convrepro.errors import AblationError
from convrepro.runs.scrub import MachinePaths, found_in_provenance

#: What ``publish`` copies of each run folder, when it exists.
RUN_RECORDS = ("config.yaml", "provenance.json", "summary.json", "history.csv", "log.txt")
RESULTS_ROOT = Path("results")


@dataclass(frozen=True)
class Publication:
    """What :func:`publish` did: the folder, its runs without a result, what it replaced."""

    folder: Path
    missing: list[MissingRun]
    changes: list[str]


def publish(
    spec: AblationSpec,
    out: Path,
    results_root: Path = RESULTS_ROOT,
    *,
    replace: bool = False,
    allow_incomplete: bool = False,
) -> Publication:
    """Copy the records of the ablation in ``out`` into ``results_root/<name>/``, with no path
    of this machine in them, and re-render its report there.

    Refused (:class:`AblationError`, nothing written) when no run has a result; when a planned
    run has none, unless ``allow_incomplete``; when an earlier copy exists, unless ``replace``;
    and always when that copy holds more runs or results than the new one would.
    """
    destination = results_root / spec.name
    looked_in = runs_root(out) / spec.name
    results = collect_results(spec, out)[0]
    missing = runs_without_result(spec, out, results)
    new = _Held(
        {run.id for run in spec.runs() if spec.run_folder(out, run).path.is_dir()},
        {spec.run(r.arm, r.seed).id: r.test_acc for r in results},
    )
    held = _Held.read(destination)
    kept = f"; {destination}/ ({held}) left as it is" if held else ""
    if not results:
        raise AblationError(
            f"no run of {spec.name} has a test result in {looked_in}/, nothing to publish"
            f"{kept}; give the folder the grid ran in (publish OUT_DIR, or --out OUT_DIR)"
        )
    if held and (len(new.runs) < len(held.runs) or len(new.results) < len(held.results)):
        raise AblationError(
            f"{destination}/ holds {held}, the grid in {looked_in}/ {new}: publishing would lose "
            f"{held.lost_to(new)}; nothing published (a published grid is not replaced by a "
            f"smaller one: check --out, or git rm -r {destination} first to drop it)"
        )
    if missing and not allow_incomplete:
        raise AblationError(
            f"{len(missing)} of {len(spec.runs())} planned runs of {spec.name} have no test "
            f"result in {looked_in}/: {', '.join(map(str, missing))}; finish them (run the grid "
            f"again), or publish without them with --allow-incomplete (the README names them)"
            f"{kept}"
        )
    if held and not replace:
        raise AblationError(
            f"{destination}/ already holds a published {spec.name} ({held}); pass --replace to "
            f"replace it with the grid in {out}/ ({new}; the console lists what changes)"
        )
    staging = results_root / f".{spec.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / SPEC_FILE).write_text(spec.to_yaml())
    for run in spec.runs():
        source = spec.run_folder(out, run).path
        if source.is_dir():
            copy_run_records(source, spec.run_folder(staging, run).path)
    scrub_published(staging, MachinePaths(outputs=(out.resolve().as_posix(),)))
    changes = held.changes_to(new) if held else []
    # Swap in whole: a reader never sees half of a new copy next to half of the old one.
    if destination.exists():
        shutil.rmtree(destination)
    staging.rename(destination)
    return Publication(destination, missing, changes)


def copy_run_records(source: Path, target: Path) -> list[Path]:
    """Copy the :data:`RUN_RECORDS` that run folder ``source`` has into ``target`` (created if
    missing; nothing else: no checkpoints); returns the copies. Paths in them are as written."""
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in RUN_RECORDS:
        if (source / name).is_file():
            copies.append(Path(shutil.copy2(source / name, target / name)))
    return copies


def scrub_published(folder: Path, also: MachinePaths | None = None) -> list[Path]:
    """Replace the machine paths in the published grid in ``folder`` (those its provenance
    records, and ``also``) and re-render its report from the scrubbed records; returns the
    files that changed."""
    paths = found_in_provenance(folder) + (also or MachinePaths())
    spec = load_spec(folder / SPEC_FILE, need_base=False)
    before = _texts(folder)
    records = [
        spec.run_folder(folder, run).path / name for run in spec.runs() for name in RUN_RECORDS
    ]
    paths.scrub_files([folder / SPEC_FILE, *records])
    spec = load_spec(folder / SPEC_FILE, need_base=False)  # its base, data folder as published
    write_report(spec, folder)
    paths.scrub_files([folder / RESULTS_FILE, folder / REPORT_FILE])
    after = _texts(folder)
    return sorted(path for path in after if before.get(path) != after[path])


def _texts(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@dataclass(frozen=True)
class _Held:
    """A grid's run folders and its results (``{run id: test accuracy}``)."""

    runs: set[str]
    results: dict[str, float]

    @classmethod
    def read(cls, folder: Path) -> _Held | None:
        """What an earlier published copy holds; ``None`` where there is none. Read without
        validating: a damaged copy still counts what it has."""
        if not folder.exists():
            return None
        runs = {p.name for p in folder.glob("runs/*/*") if p.is_dir()}
        results = {}
        if (folder / RESULTS_FILE).is_file():
            with (folder / RESULTS_FILE).open(newline="") as handle:
                for row in csv.DictReader(handle):
                    results[f"{row.get('arm')}-seed{row.get('seed')}"] = _float(row.get("test_acc"))
        return cls(runs, results)

    def __str__(self) -> str:
        return f"{len(self.runs)} runs, {len(self.results)} with a result"

    def lost_to(self, new: _Held) -> str:
        lost = [f"the result of {run}" for run in sorted(set(self.results) - set(new.results))]
        lost += [f"the records of {run}" for run in sorted(self.runs - new.runs)]
        return ", ".join(lost)

    def changes_to(self, new: _Held) -> list[str]:
        """What replacing this copy by ``new`` changes, one line per run (or that nothing
        does)."""
        lines = [
            f"added: {run}, test acc {100 * new.results[run]:.2f}%"
            for run in sorted(set(new.results) - set(self.results))
        ]
        lines += [f"dropped: {run}" for run in sorted(set(self.results) - set(new.results))]
        lines += [
            f"changed: {run}, test acc {100 * self.results[run]:.2f}% -> "
            f"{100 * new.results[run]:.2f}%"
            for run in sorted(set(self.results) & set(new.results))
            if self.results[run] != new.results[run]
        ]
        return lines or [f"same results ({len(new.results)} runs); records copied again"]


def _float(value: str | None) -> float:
    try:
        return float(value or "nan")
    except ValueError:
        return math.nan
