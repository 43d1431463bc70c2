"""The two plots of an ablation report: validation curves per arm, test accuracy per seed."""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import MaxNLocator

from convrepro.ablate import stats
from convrepro.ablate.results import RunResult, test_percent_by_arm
from convrepro.ablate.spec import AblationSpec
from convrepro.runs.folder import RunFolder
from convrepro.training import metrics


def read_val_history(run: RunFolder) -> dict[int, float]:
    """``{epoch: val/acc}`` of a run; for an epoch logged twice (a resume redid it), the last."""
    return {
        int(row["epoch"]): float(row[metrics.VAL_ACC])
        for row in run.read_history()
        if row.get(metrics.VAL_ACC) not in (None, "")
    }


def val_curves(
    spec: AblationSpec, out: Path, results: Sequence[RunResult]
) -> dict[str, list[dict[int, float]]]:
    """Per arm, the validation history of each run with a test result, the runs every number of
    the report rests on: an unfinished run's shorter history would bend its arm's mean where it
    stops."""
    curves: dict[str, list[dict[int, float]]] = defaultdict(list)
    for result in results:
        history = read_val_history(spec.run_folder(out, spec.run(result.arm, result.seed)))
        if history:
            curves[result.arm].append(history)
    return dict(curves)


def plot_val_curves(
    spec: AblationSpec, out: Path, results: Sequence[RunResult], path: Path
) -> None:
    """Validation accuracy per epoch (:func:`val_curves`): each arm's mean over seeds, shaded
    from min to max."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    curves = val_curves(spec, out, results)
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
        axes.text(0.5, 0.5, "no finished run yet", ha="center", transform=axes.transAxes)
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
    by_arm = test_percent_by_arm(results, spec.arms)
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
    axes.set_ylabel("test accuracy (%)")
    # Name and legend on lines of their own, wrapped to the figure's width (a character is under
    # 0.7 em): a two-arm figure is too narrow for one line, and constrained layout does not
    # shorten a title, which ran off both edges.
    points = FontProperties(size=rcParams["axes.titlesize"]).get_size_in_points()
    width = int(figure.get_figwidth() * 72 / (0.7 * points))
    lines = (spec.name, "seeds (grey), mean ± 95% CI (blue)")
    axes.set_title("\n".join(textwrap.fill(line, width) for line in lines))
    axes.grid(alpha=0.3, axis="y")
    figure.savefig(path, dpi=120)
