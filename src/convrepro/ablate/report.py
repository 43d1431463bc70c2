"""What an ablation produces: ``results.csv``, ``summary.md``, two plots, and the paper table.

Everything here reads finished run folders (``summary.json``, ``history.csv``), so a report can
be re-rendered at any time without training. Accuracies are fractions in the run files and
percentages in everything written for people.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convrepro.ablate import stats
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, format_cli_value, load_spec
from convrepro.errors import AblationError
from convrepro.runs.folder import RunFolder
from convrepro.training import metrics

RESULTS_FILE = "results.csv"
REPORT_FILE = "summary.md"
CURVES_PLOT = "val_acc_curves.png"
TEST_PLOT = "test_acc.png"


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
    checkpoint: str


RESULT_COLUMNS = tuple(f.name for f in fields(RunResult))


def collect_results(spec: AblationSpec, out: Path) -> tuple[list[RunResult], list[str]]:
    """The finished runs of ``spec`` under ``out``, and the ids of those without a test result."""
    results, missing = [], []
    for run in spec.runs():
        summary = spec.run_folder(out, run).read_summary()
        if summary.test_acc is None:
            missing.append(run.id)
            continue
        results.append(
            RunResult(
                arm=run.arm,
                seed=run.seed,
                best_val_acc=_or_nan(summary.best_val_acc),
                test_acc=summary.test_acc,
                test_acc_top5=_or_nan(summary.test_acc_top5),
                epochs=summary.epochs or 0,
                wall_time_s=round(_or_nan(summary.fit_seconds), 1),
                checkpoint=summary.best_checkpoint or "",
            )
        )
    return results, missing


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
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in RESULT_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise AblationError(
            f"{path} is not an ablation results.csv (needs columns {', '.join(RESULT_COLUMNS)}"
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
        )
        for row in rows
    ]


def write_report(spec: AblationSpec, out: Path) -> list[Path]:
    """Write ``results.csv``, ``summary.md`` and both plots into ``out``; returns their paths."""
    results, missing = collect_results(spec, out)
    write_results_csv(results, out / RESULTS_FILE)
    (out / REPORT_FILE).write_text(render_summary(spec, results, missing))
    plot_val_curves(spec, out, out / CURVES_PLOT)
    plot_test_accuracy(spec, results, out / TEST_PLOT)
    return [out / name for name in (RESULTS_FILE, REPORT_FILE, CURVES_PLOT, TEST_PLOT)]


# -- summary.md ------------------------------------------------------------------------------


def _test_percent_by_arm(
    results: Iterable[RunResult], arms: Iterable[str]
) -> dict[str, dict[int, float]]:
    """Test accuracy in percent, ``{arm: {seed: value}}``: the given arms first, in order."""
    by_arm: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    for result in results:
        by_arm.setdefault(result.arm, {})[result.seed] = 100 * result.test_acc
    return by_arm


def render_summary(spec: AblationSpec, results: Sequence[RunResult], missing: Sequence[str]) -> str:
    """The markdown report: per-arm statistics, comparisons with the baseline, plots."""
    by_arm = _test_percent_by_arm(results, spec.arms)
    lines = [
        f"# Ablation `{spec.name}`",
        "",
        f"Base config `{spec.base}`; seeds {', '.join(map(str, spec.seeds))}; "
        f"baseline arm `{spec.baseline}`.",
        "",
        "| arm | overrides |",
        "| --- | --- |",
        *(f"| {arm} | {_overrides(values)} |" for arm, values in spec.arms.items()),
    ]
    if spec.overrides:
        lines += ["", f"Every arm: {_overrides(spec.overrides)}"]
    lines += [
        "",
        "## Test accuracy (%)",
        "",
        "| arm | runs | mean ± std | 95% CI of the mean | top-5 mean ± std | best val acc "
        "mean ± std | per seed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    notes = []
    for arm, values in by_arm.items():
        rows = [r for r in results if r.arm == arm]
        summary = stats.summarize(list(values.values()))
        if summary.note:
            notes.append(f"`{arm}`: {summary.note}")
        top5 = stats.summarize([100 * r.test_acc_top5 for r in rows])
        val = stats.summarize([100 * r.best_val_acc for r in rows])
        per_seed = ", ".join(f"{seed}: {value:.2f}" for seed, value in sorted(values.items()))
        lines.append(
            f"| {arm} | {summary.n} | {_mean_std(summary)} | {_ci(summary)} | {_mean_std(top5)} "
            f"| {_mean_std(val)} | {per_seed} |"
        )
    comparisons = [
        stats.compare(arm, values, spec.baseline, by_arm[spec.baseline])
        for arm, values in by_arm.items()
        if arm != spec.baseline
    ]
    if comparisons:
        lines += [
            "",
            f"## Difference from `{spec.baseline}` (test accuracy, percentage points)",
            "",
            "| arm | Δ mean | 95% CI of Δ (Welch) | Welch p (df) | paired t p (seeds) "
            "| exact permutation p (splits) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in comparisons:
            lines.append(
                f"| {c.arm} | {_signed(c.welch.difference)} | {_range(c.welch)} "
                f"| {_p(c.welch.p)} ({_number(c.welch.df, 1)}) "
                f"| {_p(c.paired.p)} ({len(c.paired_seeds)}) "
                f"| {_p(c.permutation.p)} ({c.permutation.splits}) |"
            )
            notes += [f"`{c.arm}` vs `{c.baseline}`: {note}" for note in c.notes]
    if missing:
        notes.append(f"no test result yet (left out): {', '.join(missing)}")
    if notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    lines += [
        "",
        "Statistics: std is the sample standard deviation (ddof=1); CI of the mean is the "
        "t-interval. Δ = arm - baseline. Welch: unequal-variance t-test, Welch-Satterthwaite df, "
        "the headline test. Paired t: over the seeds both arms ran (unless the ablation fixes "
        "the data seed, seed N sets initialisation, data split, order and augmentation alike "
        "in every arm). Exact permutation: all splits of the pooled "
        "runs, two-sided on |Δ|; with n runs per arm its p cannot go below "
        "2 / C(2n, n) (0.1 for 3 vs 3). All two-sided; no correction for multiple comparisons.",
        "",
        f"![validation accuracy]({CURVES_PLOT})",
        "",
        f"![test accuracy]({TEST_PLOT})",
        "",
    ]
    return "\n".join(lines)


def _overrides(values: Mapping[str, Any]) -> str:
    pairs = (f"`{key}={format_cli_value(value)}`" for key, value in values.items())
    return ", ".join(pairs) or "(base config)"


def _number(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def _mean_std(summary: stats.ArmSummary) -> str:
    if summary.n == 0 or math.isnan(summary.mean):
        return "n/a"
    return f"{summary.mean:.2f} ± {_number(summary.std)}"


def _ci(summary: stats.ArmSummary) -> str:
    if math.isnan(summary.ci_low):
        return "n/a"
    return f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}]"


def _range(test: stats.TTest) -> str:
    if math.isnan(test.ci_low):
        return "n/a"
    return f"[{test.ci_low:+.2f}, {test.ci_high:+.2f}]"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# -- plots -----------------------------------------------------------------------------------


def read_val_history(run: RunFolder) -> dict[int, float]:
    """``{epoch: val/acc}`` of a run; for an epoch logged twice (a resume redid it), the last."""
    return {
        int(row["epoch"]): float(row[metrics.VAL_ACC])
        for row in run.read_history()
        if row.get(metrics.VAL_ACC) not in (None, "")
    }


def plot_val_curves(spec: AblationSpec, out: Path, path: Path) -> None:
    """Validation accuracy per epoch: each arm's mean over seeds, shaded from min to max."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    curves: dict[str, list[dict[int, float]]] = defaultdict(list)
    for run in spec.runs():
        history = read_val_history(spec.run_folder(out, run))
        if history:
            curves[run.arm].append(history)
    for arm, histories in curves.items():
        epochs = sorted(set().union(*histories))
        values = [[100 * h[e] for h in histories if e in h] for e in epochs]
        x = np.array(epochs) + 1
        line = axes.plot(x, [np.mean(v) for v in values], label=f"{arm} ({len(histories)} runs)")
        low, high = [min(v) for v in values], [max(v) for v in values]
        axes.fill_between(x, low, high, alpha=0.2, color=line[0].get_color(), linewidth=0)
    if curves:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no validation history yet", ha="center", transform=axes.transAxes)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(
        xlabel="epoch",
        ylabel="validation accuracy (%)",
        title=f"{spec.name}: mean over seeds, band = min to max",
    )
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


def plot_test_accuracy(spec: AblationSpec, results: Sequence[RunResult], path: Path) -> None:
    """Final test accuracy per arm: every seed as a dot, mean with its 95% t-interval."""
    figure = Figure(figsize=(max(4.0, 1.2 * len(spec.arms) + 2), 4.5), layout="constrained")
    axes = figure.subplots()
    by_arm = _test_percent_by_arm(results, spec.arms)
    for position, values in enumerate(by_arm.values()):
        if not values:
            continue
        seeds = np.array(list(values.values()))
        # Seeds spread sideways so equal values stay visible; a fixed pattern keeps plots stable.
        offsets = np.linspace(-0.12, 0.12, seeds.size) if seeds.size > 1 else np.zeros(1)
        axes.scatter(position + offsets, seeds, s=18, color="0.45", zorder=3)
        summary = stats.summarize(seeds)
        half_width = summary.mean - summary.ci_low if summary.n > 1 else 0.0
        axes.errorbar(
            position + 0.3, summary.mean, yerr=half_width, fmt="o", color="C0", capsize=5, zorder=4
        )
    axes.set_xticks(range(len(by_arm)), list(by_arm))
    axes.set(
        ylabel="test accuracy (%)",
        title=f"{spec.name}: seeds (grey), mean ± 95% CI (blue)",
    )
    axes.grid(alpha=0.3, axis="y")
    figure.savefig(path, dpi=120)


# -- published numbers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A published top-1/top-5 number: an error rate, or the change in error that LRN made."""

    model: str
    dataset: str
    top1: float
    top5: float | None
    source: str
    measure: str = "error (%)"
    #: The arm name we give the same architecture (VGG configurations), to line rows up.
    arm: str | None = None


_VGG_TABLE3 = (
    "Simonyan & Zisserman, ICLR 2015 (arXiv 1409.1556), Table 3: single-scale evaluation on "
    "ILSVRC-2012 val, rows with training scale S=256 and test scale Q=256"
)
_ALEXNET = "Krizhevsky, Sutskever & Hinton, NeurIPS 2012, sec. 3.3"
_KUANGLIU = "github.com/kuangliu/pytorch-cifar README (VGG16 with BatchNorm)"
_CHENYAOFO = "github.com/chenyaofo/pytorch-cifar-models README"
_HUYVNPHAN = (
    "github.com/huyvnphan/PyTorch_CIFAR10 README ('Val. Acc.', measured on the 10k test images)"
)

#: Every published number the comparison uses, with its source. CIFAR-10 repositories report
#: accuracy; errors here are 100 - accuracy.
PUBLISHED: tuple[Published, ...] = (
    Published("VGG A", "ImageNet", 29.6, 10.4, _VGG_TABLE3, arm="A"),
    Published("VGG A-LRN", "ImageNet", 29.7, 10.5, _VGG_TABLE3, arm="A-LRN"),
    Published("VGG B", "ImageNet", 28.7, 9.9, _VGG_TABLE3, arm="B"),
    Published("VGG C", "ImageNet", 28.1, 9.4, _VGG_TABLE3, arm="C"),
    Published("VGG D", "ImageNet", 27.0, 8.8, _VGG_TABLE3, arm="D"),
    Published("VGG E", "ImageNet", 27.3, 9.0, _VGG_TABLE3, arm="E"),
    Published("AlexNet", "ImageNet", -1.4, -1.2, _ALEXNET, "error change from adding LRN (pp)"),
    Published("4-layer CNN, no LRN", "CIFAR-10", 13.0, None, _ALEXNET),
    Published("4-layer CNN with LRN", "CIFAR-10", 11.0, None, _ALEXNET),
    Published("VGG16 (BN)", "CIFAR-10", 100 - 92.64, None, _KUANGLIU, arm="D"),
    Published("vgg11_bn", "CIFAR-10", 100 - 92.79, 100 - 99.72, _CHENYAOFO, arm="A"),
    Published("vgg13_bn", "CIFAR-10", 100 - 94.00, 100 - 99.77, _CHENYAOFO, arm="B"),
    Published("vgg16_bn", "CIFAR-10", 100 - 94.16, 100 - 99.71, _CHENYAOFO, arm="D"),
    Published("vgg19_bn", "CIFAR-10", 100 - 93.91, 100 - 99.64, _CHENYAOFO, arm="E"),
    Published("vgg11_bn", "CIFAR-10", 100 - 92.39, None, _HUYVNPHAN, arm="A"),
    Published("vgg13_bn", "CIFAR-10", 100 - 94.22, None, _HUYVNPHAN, arm="B"),
    Published("vgg16_bn", "CIFAR-10", 100 - 94.00, None, _HUYVNPHAN, arm="D"),
    Published("vgg19_bn", "CIFAR-10", 100 - 93.95, None, _HUYVNPHAN, arm="E"),
)


def render_paper_comparison(results_files: Sequence[Path]) -> str:
    """Markdown: our error rates per ablation arm next to the published numbers for that arm.

    Each ``results.csv`` is named after the ablation whose folder holds it; its baseline comes
    from the ``ablation.yaml`` saved beside it (else the first arm in the file).
    """
    sources = list(dict.fromkeys(p.source for p in PUBLISHED))
    lines = [
        "## Our results next to published ones",
        "",
        "Top-1 / top-5 test error in %, mean ± sample std over seeds. Published numbers on "
        "ImageNet are not comparable in absolute terms with CIFAR-10 ones: compare the size "
        "and sign of effects (Δ). Published: `model, data set: top-1 / top-5 error [source]` "
        "for the same VGG configuration (the CIFAR-10 ones with BatchNorm).",
        "",
        "| ablation | arm | runs | top-1 error | top-5 error | Δ top-1 vs baseline [95% CI] "
        "| Welch p | published |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for path in results_files:
        name, baseline, results = _load_results(path)
        errors = {
            arm: {seed: 100 - acc for seed, acc in values.items()}
            for arm, values in _test_percent_by_arm(results, []).items()
        }
        for arm, values in errors.items():
            top1 = stats.summarize(list(values.values()))
            top5 = stats.summarize([100 - 100 * r.test_acc_top5 for r in results if r.arm == arm])
            delta = "baseline"
            welch_p = ""
            if arm != baseline and baseline in errors:
                test = stats.welch_test(list(values.values()), list(errors[baseline].values()))
                delta = f"{_signed(test.difference)} {_range(test)}"
                welch_p = _p(test.p)
            published = "; ".join(
                f"{p.model}, {p.dataset}: {_optional(p.top1)} / {_optional(p.top5)} "
                f"{_cite(p, sources)}"
                for p in PUBLISHED
                if p.arm == arm
            )
            lines.append(
                f"| {name} | {arm} | {top1.n} | {_mean_std(top1)} | {_mean_std(top5)} "
                f"| {delta} | {welch_p} | {published} |"
            )
    lines += [
        "",
        "### Published numbers",
        "",
        "| model | dataset | measure | top-1 | top-5 | source |",
        "| --- | --- | --- | ---: | ---: | --- |",
        *(
            f"| {p.model} | {p.dataset} | {p.measure} | {_optional(p.top1)} "
            f"| {_optional(p.top5)} | {_cite(p, sources)} |"
            for p in PUBLISHED
        ),
        "",
        *(f"{i}. {source}" for i, source in enumerate(sources, start=1)),
        "",
    ]
    return "\n".join(lines)


def _cite(published: Published, sources: list[str]) -> str:
    return f"[{sources.index(published.source) + 1}]"


def _optional(value: float | None) -> str:
    return "n/a" if value is None else _number(value)


def _load_results(path: Path) -> tuple[str, str, list[RunResult]]:
    if not path.is_file():
        raise AblationError(f"{path}: no such file (expected an ablation's {RESULTS_FILE})")
    results = read_results_csv(path)
    spec_file = path.parent / SPEC_FILE
    if spec_file.is_file():
        spec = load_spec(spec_file, need_base=False)
        return spec.name, spec.baseline, results
    return path.parent.name, results[0].arm, results
