"""The README's opening tables: what a grid answers, in short.

A grid with a 2x2 design (``factors:``) gets its effects (:mod:`~convrepro.ablate.factorial`);
one with named contrasts (``contrasts:``) gets them beside the same contrasts in the published
grids it names in ``compare_with:`` (:mod:`~convrepro.ablate.contrasts`). Both beside what others
measured (:data:`~convrepro.ablate.published.PUBLISHED_EFFECTS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from convrepro.ablate import factorial
from convrepro.ablate.contrasts import ArmPair
from convrepro.ablate.published import PUBLISHED_EFFECTS
from convrepro.ablate.report import _range, _signed
from convrepro.ablate.results import RunResult, errors_by_arm
from convrepro.ablate.spec import AblationSpec
from convrepro.errors import AblationError


class Grid(Protocol):
    """A published grid: its file and its runs' results."""

    spec: AblationSpec
    results: list[RunResult]


def render_answer(published: Grid) -> str:
    """A factorial grid's effects on one screen: each change alone, averaged, together, with
    what others measured beside them."""
    spec = published.spec
    errors = errors_by_arm(published.results, spec.arms)
    lines = [
        f"### In short: `{spec.name}`",
        "",
        "Test error (multiview where the protocol has it), percentage points; negative = fewer "
        "errors; 95% CI: Welch-Satterthwaite over seeds. The grid's section below has the "
        "arms, the paired intervals and p-values.",
        "",
        "| change | kind | Δ error | 95% CI | runs | measured elsewhere |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for effect in factorial.effects(spec.factors.contrasts(), errors):
        label = effect.contrast.label
        elsewhere = PUBLISHED_EFFECTS.get((spec.name, label), "-")
        lines.append(
            f"| {label} | {effect.contrast.kind} | {_signed(effect.welch.difference)} "
            f"| {_range(effect.welch)} | {effect.runs} | {elsewhere} |"
        )
    return "\n".join([*lines, ""])


def render_comparison(published: Grid, by_name: Mapping[str, Grid]) -> str:
    """A grid's named contrasts (``contrasts:``) beside the same contrasts in the published
    grids it names in ``compare_with:`` (e.g. the same arms trained for fewer epochs)."""
    spec = published.spec
    absent = [name for name in spec.compare_with if name not in by_name]
    if absent:
        raise AblationError(
            f"{spec.name} compares itself with {', '.join(absent)}, not published in results/: "
            "publish it first, or remove it from the ablation file's compare_with"
        )
    grids = [published, *(by_name[name] for name in spec.compare_with)]
    errors = [errors_by_arm(g.results, g.spec.arms) for g in grids]
    columns = [f"`{g.spec.name}` ({_epochs(g.results)})" for g in grids]
    # A heading of its own: a grid with factors too has render_answer's "In short" as well.
    others = ", ".join(f"`{name}`" for name in spec.compare_with)
    lines = [
        f"### In short: `{spec.name}`" + (f" beside {others}" if others else ", named contrasts"),
        "",
        "Test error (multiview where the protocol has it), percentage points; negative = fewer "
        "errors; each cell: Δ error [95% Welch-Satterthwaite CI over the two arms' runs]; "
        "paired: the 95% CI of the difference taken seed by seed (runs of each arm). Each "
        "grid's section below has its arms and the p-values; its summary.md has every run.",
        "",
        "| change | " + " | ".join(columns) + " | measured elsewhere |",
        "| --- | " + " | ".join("---:" for _ in columns) + " | --- |",
    ]
    for pair in spec.contrasts:
        cells = []
        for grid, values in zip(grids, errors, strict=True):
            arms = (pair.changed, pair.reference)
            if not set(arms) <= set(grid.spec.arms):
                cells.append("no such arms")
            elif any(dict(grid.spec.arms[arm]) != dict(spec.arms[arm]) for arm in arms):
                cells.append("other arms of these names")
            else:
                cells.append(_pair_cell(pair, values))
        elsewhere = PUBLISHED_EFFECTS.get((spec.name, pair.label), "-")
        change = f"{pair.label}: `{pair.changed}` - `{pair.reference}`"
        lines.append(f"| {change} | " + " | ".join(cells) + f" | {elsewhere} |")
    return "\n".join([*lines, ""])


def _pair_cell(pair: ArmPair, errors: Mapping[str, Mapping[int, float]]) -> str:
    """A pair's difference in one grid, its intervals where both arms have the runs for them."""
    counts = {arm: len(errors[arm]) for arm in (pair.changed, pair.reference)}
    runs = "+".join(map(str, counts.values()))
    empty = [f"`{arm}`" for arm, count in counts.items() if count == 0]
    if empty:
        return f"no run of {' and '.join(empty)}"
    (effect,) = factorial.effects([pair.contrast()], errors)
    difference = _signed(effect.welch.difference)
    if min(counts.values()) < 2:
        return f"{difference} ({runs} runs: too few for a CI)"
    paired = f"; paired {_range(effect.paired)}" if len(effect.paired_seeds) > 1 else ""
    return f"{difference} {_range(effect.welch)}{paired} ({runs})"


def _epochs(results: Sequence[RunResult]) -> str:
    lengths = sorted({r.epochs for r in results})
    return f"{'/'.join(map(str, lengths)) or '?'} epochs"
