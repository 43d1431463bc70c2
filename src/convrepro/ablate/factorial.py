"""A 2x2 factorial reading of four arms: each factor's effect alone, averaged, and together.

When two arms differ in more than one thing, their difference is not the effect of any one of
them. An ablation file can declare its four arms a 2x2 design::

    factors:                        # factor -> {reference level: [arms], changed level: [arms]}
      LRN: {off: [13pct, 11pct-no-lrn], on: [13pct-lrn, 11pct]}
      local3 64 + fc10 wc 0.01: {no: [13pct, 13pct-lrn], yes: [11pct-no-lrn, 11pct]}

and the report then reads it as such (arm means ``m``; ``A``, ``B`` the factors, ``0`` the
reference level and ``1`` the changed one):

* simple effects: ``A`` at each level of ``B`` (``m[A1 B0] - m[A0 B0]``, ``m[A1 B1] - m[A0 B1]``)
  and the other way round: the effect of one change made on its own to one definition;
* main effects: ``A``'s two simple effects averaged (the effect of ``A`` averaged over ``B``);
* interaction: ``A``'s simple effect at ``B1`` minus that at ``B0`` (does ``A`` act differently
  once ``B`` is changed?);
* both: ``m[A1 B1] - m[A0 B0]``, both changes at once (e.g. the difference of two files).

Each is a linear contrast of arm means: Welch-Satterthwaite t-interval (independent arms) and a
paired one over seeds (a seed gives every arm the same data): :func:`stats.contrast_test`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepro.ablate import stats
from convrepro.errors import AblationError


@dataclass(frozen=True)
class Factor:
    """One factor: its name, its two levels (reference first) and each arm's level."""

    name: str
    levels: tuple[str, str]
    arm_levels: Mapping[str, int]

    def to_dict(self) -> dict[str, list[str]]:
        return {
            level: [arm for arm, at in self.arm_levels.items() if at == index]
            for index, level in enumerate(self.levels)
        }


@dataclass(frozen=True)
class Contrast:
    """A named combination of arm means: ``sum(weights[arm] * mean(arm))``."""

    kind: str  # "simple", "main", "interaction", "both"; "pair" (contrasts.ArmPair)
    label: str
    weights: Mapping[str, float]


@dataclass(frozen=True)
class Effect:
    """A contrast with its statistics over the arms' runs."""

    contrast: Contrast
    welch: stats.TTest
    paired: stats.TTest
    paired_seeds: tuple[int, ...]
    runs: int


# The four cells as (level of the first factor, level of the second), and every contrast's
# weights over them in that order.
_CELLS = ((0, 0), (1, 0), (0, 1), (1, 1))
_CONTRASTS = (
    ("simple", "{a}, at {b0}", (-1, 1, 0, 0)),
    ("simple", "{a}, at {b1}", (0, 0, -1, 1)),
    ("simple", "{b}, at {a0}", (-1, 0, 1, 0)),
    ("simple", "{b}, at {a1}", (0, -1, 0, 1)),
    ("main", "{a}, averaged over {B}", (-0.5, 0.5, -0.5, 0.5)),
    ("main", "{b}, averaged over {A}", (-0.5, -0.5, 0.5, 0.5)),
    ("interaction", "{A} x {B}", (1, -1, -1, 1)),
    ("both", "both changes: `{high}` - `{low}`", (-1, 0, 0, 1)),
)


@dataclass(frozen=True)
class Factorial:
    """Two factors of two levels over exactly four arms, one per cell."""

    first: Factor
    second: Factor

    def cell(self, first_level: int, second_level: int) -> str:
        return next(
            arm
            for arm, level in self.first.arm_levels.items()
            if level == first_level and self.second.arm_levels[arm] == second_level
        )

    def contrasts(self) -> list[Contrast]:
        """Simple effects, main effects, interaction and both changes, in reading order."""
        a, b = self.first, self.second
        cells = [self.cell(i, j) for i, j in _CELLS]
        names = {
            "a": f"{a.name}: {a.levels[0]} -> {a.levels[1]}",
            "b": f"{b.name}: {b.levels[0]} -> {b.levels[1]}",
            "a0": f"{a.name} {a.levels[0]}", "a1": f"{a.name} {a.levels[1]}",
            "b0": f"{b.name} {b.levels[0]}", "b1": f"{b.name} {b.levels[1]}",
            "A": a.name, "B": b.name, "low": cells[0], "high": cells[3],
        }  # fmt: skip
        return [
            Contrast(kind, label.format(**names), _nonzero(cells, weights))
            for kind, label, weights in _CONTRASTS
        ]

    def to_dict(self) -> dict[str, dict[str, list[str]]]:
        return {factor.name: factor.to_dict() for factor in (self.first, self.second)}


def _nonzero(arms: Sequence[str], weights: Sequence[float]) -> dict[str, float]:
    return {arm: weight for arm, weight in zip(arms, weights, strict=True) if weight}


def parse_factors(path: Path, section: Any, arms: Sequence[str]) -> Factorial | None:
    """The ``factors:`` section of an ablation file, checked against its arms."""
    if section is None:
        return None
    example = "e.g. `factors: {LRN: {off: [a, b], on: [c, d]}, width: {32: [a, c], 64: [b, d]}}`"
    if not isinstance(section, dict) or len(section) != 2:
        raise AblationError(f"{path}: `factors:` must name exactly two factors, {example}")
    factors = []
    for name, levels in section.items():
        if not isinstance(levels, dict) or len(levels) != 2:
            raise AblationError(
                f"{path}: factor {name!r} must have exactly two levels, each a list of arms, "
                f"{example}"
            )
        arm_levels: dict[str, int] = {}
        for index, members in enumerate(levels.values()):
            if not isinstance(members, list):
                raise AblationError(f"{path}: factor {name!r}: list the arms of each level")
            for arm in map(str, members):
                if arm not in arms:
                    raise AblationError(
                        f"{path}: factor {name!r} names arm {arm!r}, which is not one of the "
                        f"arms ({', '.join(arms)})"
                    )
                if arm in arm_levels:
                    raise AblationError(f"{path}: factor {name!r} puts arm {arm!r} at both levels")
                arm_levels[arm] = index
        unplaced = [arm for arm in arms if arm not in arm_levels]
        if unplaced:
            raise AblationError(
                f"{path}: factor {name!r} gives no level to arm(s) {', '.join(unplaced)}: "
                "a 2x2 reading needs every arm in one level of each factor"
            )
        factors.append(Factor(str(name), tuple(map(str, levels)), arm_levels))
    first, second = factors
    cells = [(first.arm_levels[arm], second.arm_levels[arm]) for arm in arms]
    if len(arms) != 4 or len(set(cells)) != 4:
        raise AblationError(
            f"{path}: `factors:` needs exactly four arms, one per combination of levels; "
            f"got {len(arms)} arm(s) covering {len(set(cells))} combination(s)"
        )
    return Factorial(first, second)


def effects(
    contrasts: Sequence[Contrast],
    values: Mapping[str, Mapping[int, float]],
    confidence: float = stats.CONFIDENCE,
) -> list[Effect]:
    """Each contrast (e.g. :meth:`Factorial.contrasts`) over the arms' values (keyed by seed)."""
    found = []
    for contrast in contrasts:
        arms = list(contrast.weights)
        weights = [contrast.weights[arm] for arm in arms]
        groups = [values.get(arm, {}) for arm in arms]
        welch = stats.contrast_test([list(g.values()) for g in groups], weights, confidence)
        paired, seeds = stats.paired_contrast_test(groups, weights, confidence)
        found.append(Effect(contrast, welch, paired, seeds, sum(len(g) for g in groups)))
    return found
