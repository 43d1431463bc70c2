"""What an ablation produces: ``results.csv`` (:mod:`~convrepro.ablate.results`), ``summary.md``,
two plots (:mod:`~convrepro.ablate.plots`), and the paper table.

Everything here reads finished run folders (``summary.json``, ``history.csv``), so a report can
be re-rendered at any time without training. Accuracies are fractions in the run files and
percentages in everything written for people.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from convrepro.ablate import factorial, stats
from convrepro.ablate.plots import plot_test_accuracy, plot_val_curves
from convrepro.ablate.published import PUBLISHED, Published, published_for
from convrepro.ablate.results import (
    RESULTS_FILE,
    RunResult,
    collect_results,
    read_results_csv,
    runs_without_result,
    test_percent_by_arm,
    write_results_csv,
)
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, format_cli_value, load_spec
from convrepro.errors import AblationError
from convrepro.runs.provenance import compare_provenance
from convrepro.runs.scrub import REPOSITORY

REPORT_FILE = "summary.md"
CURVES_PLOT = "val_acc_curves.png"
TEST_PLOT = "test_acc.png"


def write_report(spec: AblationSpec, out: Path) -> list[Path]:
    """Write ``results.csv``, ``summary.md`` and both plots into ``out``; returns their paths."""
    results = collect_results(spec, out)[0]
    missing = [str(run) for run in runs_without_result(spec, out, results)]  # id (why)
    write_results_csv(results, out / RESULTS_FILE)
    # Provenance: do all runs share one code version and data fingerprint? (runs/provenance.py)
    provenance = compare_provenance([spec.run_folder(out, run) for run in spec.runs()])
    (out / REPORT_FILE).write_text(
        render_summary(spec, results, missing) + "\n".join(["", *provenance, ""])
    )
    plot_val_curves(spec, out, results, out / CURVES_PLOT)
    plot_test_accuracy(spec, results, out / TEST_PLOT)
    return [out / name for name in (RESULTS_FILE, REPORT_FILE, CURVES_PLOT, TEST_PLOT)]


# -- summary.md ------------------------------------------------------------------------------


def render_summary(spec: AblationSpec, results: Sequence[RunResult], missing: Sequence[str]) -> str:
    """The markdown report: per-arm statistics, comparisons with the baseline, plots."""
    by_arm = test_percent_by_arm(results, spec.arms)
    lines = [
        f"# Ablation `{spec.name}`",
        "",
        f"Base config `{_in_repository(spec.base)}`; seeds {', '.join(map(str, spec.seeds))}; "
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
    if any(not math.isnan(r.test_acc_center) for r in results):
        lines += [
            "",
            "The test accuracy above is the test protocol's (its views averaged); its single "
            "centre crop alone gives:",
            "",
            "| arm | runs | centre crop mean ± std | 95% CI of the mean |",
            "| --- | ---: | ---: | ---: |",
        ]
        for arm, values in test_percent_by_arm(results, spec.arms, "test_acc_center").items():
            centre = stats.summarize(list(values.values()))
            lines.append(f"| {arm} | {centre.n} | {_mean_std(centre)} | {_ci(centre)} |")
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
    lines += render_grid_contrasts(spec, by_arm, "test accuracy", headings=True)
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


def render_contrasts(
    contrasts: Sequence[factorial.Contrast], by_arm: Mapping[str, Mapping[int, float]], note: str
) -> list[str]:
    """Contrasts of arm means (a 2x2 grid's effects, named arm pairs) as a table with Welch's
    and the paired intervals, then ``note`` on what they mean."""
    lines = [
        "| effect | kind | Δ | 95% CI (Welch-Satterthwaite) | p (df) | paired over seeds: "
        "95% CI | paired p (seeds) | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for effect in factorial.effects(contrasts, by_arm):
        w, p = effect.welch, effect.paired
        lines.append(
            f"| {effect.contrast.label} | {effect.contrast.kind} | {_signed(w.difference)} "
            f"| {_range(w)} | {_p(w.p)} ({_number(w.df, 1)}) | {_range(p)} "
            f"| {_p(p.p)} ({len(effect.paired_seeds)}) | {effect.runs} |"
        )
    return [*lines, "", note]


def render_grid_contrasts(
    spec: AblationSpec,
    by_arm: Mapping[str, Mapping[int, float]],
    measure: str,
    headings: bool = False,
) -> list[str]:
    """The grid's 2x2 reading (``factors:``) and its named arm pairs (``contrasts:``), each
    introduced by a line (a ``##`` heading with ``headings``) that names ``measure``; nothing
    for a grid with neither."""
    parts: list[tuple[str, str, Sequence[factorial.Contrast], str]] = []
    if spec.factors is not None:
        reading = "The 2x2 reading of the four arms"
        parts.append(("Factorial reading", reading, spec.factors.contrasts(), FACTORIAL_NOTE))
    if spec.contrasts:
        pairs = [pair.contrast() for pair in spec.contrasts]
        parts.append(("Named contrasts", "The grid's named contrasts", pairs, PAIR_NOTE))
    lines = []
    for title, sentence, contrasts, note in parts:
        unit = f"{measure}, percentage points"
        intro = f"## {title} ({unit})" if headings else f"{sentence} ({unit}):"
        lines += ["", intro, "", *render_contrasts(contrasts, by_arm, note)]
    return lines


FACTORIAL_NOTE = (
    "Simple: one change made on its own, at one level of the other factor (two arms). Main: "
    "the two simple effects of a change averaged (four arms). Interaction: the change's simple "
    "effect at the other factor's second level minus that at its first. Both: both changes at "
    "once. Each is a contrast of arm means; its CI uses the contrast's standard error "
    "sqrt(sum w² s²/n) with Welch-Satterthwaite df (the two-arm ones are Welch's test), the "
    "paired one the contrast computed seed by seed (a seed gives every arm the same data)."
)
PAIR_NOTE = (
    "Pair: one arm's mean minus another's. Its CI is Welch's over the two arms' runs; the paired "
    "one takes the difference seed by seed (a seed gives every arm the same data)."
)


def _in_repository(path: Path) -> str:
    """``path`` relative to this checkout where it lies in it: a published grid's report,
    re-rendered, names no folder of the machine that rendered it."""
    if REPOSITORY is not None and path.is_absolute() and path.is_relative_to(REPOSITORY):
        return path.relative_to(REPOSITORY).as_posix()
    return str(path)


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
        "for the network the arm trains, as its source reports it.",
        "",
        "| ablation | arm | runs | top-1 error | top-5 error | Δ top-1 vs baseline [95% CI] "
        "| Welch p | published |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for path in results_files:
        name, baseline, results = _load_results(path)
        errors = {
            arm: {seed: 100 - acc for seed, acc in values.items()}
            for arm, values in test_percent_by_arm(results, []).items()
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
                for p in published_for(name, arm)
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
