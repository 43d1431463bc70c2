"""The rows of an ablation's ``results.csv``: one finished run each, read from its run folder.

Accuracies are fractions here, as in the run files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from convrepro.ablate.point import Failure
from convrepro.ablate.spec import AblationSpec
from convrepro.errors import AblationError
from convrepro.runs.folder import RunFolder
from convrepro.training import metrics

RESULTS_FILE = "results.csv"


@dataclass(frozen=True)
class RunResult:
    """One finished run: a row of ``results.csv`` (accuracies as fractions)."""

    arm: str
    seed: int
    best_val_acc: float
    test_acc: float
    test_acc_top5: float
    epochs: int
    wall_time_s: float  # fit time summed over resumes, from the run's summary.json
    checkpoint: str  # relative to the run folder: checkpoints/best.ckpt
    #: The single centre view's accuracy, for test protocols that have one; NaN otherwise.
    test_acc_center: float = math.nan


RESULT_COLUMNS = tuple(f.name for f in fields(RunResult))
#: Columns a results.csv may lack (written before they existed): read as NaN.
OPTIONAL_COLUMNS = ("test_acc_center",)


def collect_results(spec: AblationSpec, out: Path) -> tuple[list[RunResult], list[str]]:
    """The finished runs of ``spec`` under ``out``, and the ids of those without a test result."""
    results, missing = [], []
    for run in spec.runs():
        folder = spec.run_folder(out, run)
        summary = folder.read_summary()
        if summary.test_acc is None:
            missing.append(run.id)
            continue
        _check_tested_checkpoint(folder.path, summary.test_checkpoint, summary.best_checkpoint)
        results.append(
            RunResult(
                arm=run.arm,
                seed=run.seed,
                best_val_acc=_or_nan(summary.best_val_acc),
                test_acc=summary.test_acc,
                test_acc_top5=_or_nan(summary.test_acc_top5),
                epochs=summary.epochs or 0,
                wall_time_s=round(_or_nan(summary.fit_seconds), 1),
                checkpoint=_in_run_folder(summary.best_checkpoint or "", folder.path),
                test_acc_center=_or_nan(summary.test.get(metrics.TEST_ACC_CENTER)),
            )
        )
    return results, missing


@dataclass(frozen=True)
class MissingRun:
    """A planned run without a test result, and why (:func:`why_no_result`)."""

    arm: str
    seed: int
    why: str

    def __str__(self) -> str:
        return f"{self.arm}-seed{self.seed} ({self.why})"


def runs_without_result(
    spec: AblationSpec, out: Path, results: Iterable[RunResult]
) -> list[MissingRun]:
    """The runs of ``spec`` missing from ``results``, each with why, read from its folder under
    ``out`` (a grid's folder or its published copy: both keep the run's provenance)."""
    have = {(result.arm, result.seed) for result in results}
    return [
        MissingRun(run.arm, run.seed, why_no_result(spec.run_folder(out, run)))
        for run in spec.runs()
        if (run.arm, run.seed) not in have
    ]


def why_no_result(folder: RunFolder) -> str:
    """``never ran``, ``diverged``, ``failed``, ``interrupted``, ``not tested`` or ``unfinished``
    (killed, or still running): what the run folder's records say of a run without a result."""
    invocations = []
    if folder.provenance_file.is_file():
        invocations = json.loads(folder.provenance_file.read_text()).get("invocations", [])
    outcome = (invocations[-1].get("outcome") or "") if invocations else ""
    if outcome == "diverged":
        return "diverged"
    if outcome.startswith("failed") or Failure.recorded_in(folder) is not None:
        return "failed"
    if outcome.startswith("stopped by"):
        return "interrupted"
    if folder.path.is_dir() and folder.read_summary().fit_finished:
        return "not tested"
    return "unfinished" if invocations else "never ran"


def _in_run_folder(checkpoint: str, run: Path) -> str:
    """``checkpoint`` relative to its run folder (``checkpoints/best.ckpt``): the same wherever
    the grid ran or was copied to. As recorded if it lies elsewhere."""
    parts = Path(checkpoint).parts
    if run.name in parts:
        return Path(*parts[len(parts) - parts[::-1].index(run.name) :]).as_posix()
    return checkpoint


def _check_tested_checkpoint(run: Path, tested: str | None, best: str | None) -> None:
    """The grid's protocol tests each run's best checkpoint (``test --ckpt_path best``); a
    result of any other checkpoint (a later ``test`` by hand) must not enter the table."""
    best_name = Path(best).name if best else "best.ckpt"
    if tested is None or Path(tested).name == best_name:  # None: not recorded (W&B, old runs)
        return
    raise AblationError(
        f"{run}: its test result is of {tested}, not of the "
        f"{best_name} the ablation tests (a later `test` replaced it). Test the best "
        f"checkpoint again: python main.py test --config <the run's config> --run.root "
        f"{run.parents[1]} --run.name {run.parent.name} --run.id {run.name} --ckpt_path best"
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def write_results_csv(results: Iterable[RunResult], path: Path) -> None:
    """``results.csv``: one row per finished run."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        writer.writerows(astuple(result) for result in results)


def read_results_csv(path: Path) -> list[RunResult]:
    """Rows of a ``results.csv`` written by :func:`write_results_csv`."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise AblationError(
            f"{path} is not an ablation results.csv (not a CSV text file: {error}); give a "
            f"{RESULTS_FILE} that an ablation wrote, or its folder"
        ) from None
    required = [c for c in RESULT_COLUMNS if c not in OPTIONAL_COLUMNS]
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise AblationError(
            f"{path} is not an ablation results.csv (needs columns {', '.join(required)}"
            f"{'; missing ' + ', '.join(missing) if missing else '; it has no rows'})"
        )
    return [
        RunResult(
            arm=row["arm"],
            seed=int(row["seed"]),
            best_val_acc=float(row["best_val_acc"]),
            test_acc=float(row["test_acc"]),
            test_acc_top5=float(row["test_acc_top5"]),
            epochs=int(row["epochs"]),
            wall_time_s=float(row["wall_time_s"]),
            checkpoint=row["checkpoint"],
            test_acc_center=float(row.get("test_acc_center") or math.nan),
        )
        for row in rows
    ]


def test_percent_by_arm(
    results: Iterable[RunResult], arms: Iterable[str], column: str = "test_acc"
) -> dict[str, dict[int, float]]:
    """A test accuracy column in percent, ``{arm: {seed: value}}``: the given arms first, in
    order."""
    by_arm: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    for result in results:
        by_arm.setdefault(result.arm, {})[result.seed] = 100 * getattr(result, column)
    return by_arm


def errors_by_arm(
    results: Iterable[RunResult], arms: Iterable[str], column: str = "test_acc"
) -> dict[str, dict[int, float]]:
    """A test accuracy column as error in percent, ``{arm: {seed: value}}``, runs without that
    column (NaN) left out."""
    accuracies = test_percent_by_arm(results, arms, column)
    return {
        arm: {seed: 100 - value for seed, value in values.items() if not math.isnan(value)}
        for arm, values in accuracies.items()
    }
