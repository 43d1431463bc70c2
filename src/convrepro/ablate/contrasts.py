"""Named differences of two arms, read the same way in this grid and in published others.

A grid whose arms are not a 2x2 design (``factors:``) can still name the comparisons it was run
for, and the published grids (``results/<name>/``) that measured the same arms under another
protocol, e.g. a shorter schedule::

    contrasts:                                  # label -> [changed arm, reference arm]
      LRN alone, 13pct widths: [13pct-with-lrn, 13pct]
      files' difference: [11pct, 13pct]
    compare_with: [files_conv_local_cifar]      # published grids that have these arms

The README then opens with one table: each contrast in this grid and in each grid it is
compared with, side by side (``convrepro.ablate.readme``). Each is the contrast ``m[changed] -
m[reference]`` of arm means with its Welch interval (:func:`factorial.effects`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convrepro.ablate.factorial import Contrast
from convrepro.errors import AblationError


@dataclass(frozen=True)
class ArmPair:
    """``changed - reference``: what one arm changes relative to another."""

    label: str
    changed: str
    reference: str

    def contrast(self) -> Contrast:
        return Contrast("pair", self.label, {self.changed: 1.0, self.reference: -1.0})


def parse_contrasts(path: Path, section: Any, arms: Sequence[str]) -> tuple[ArmPair, ...]:
    """The ``contrasts:`` section of an ablation file, checked against its arms."""
    if section is None:
        return ()
    example = "e.g. `contrasts: {LRN alone: [13pct-with-lrn, 13pct]}` (changed arm first)"
    if not isinstance(section, dict) or not section:
        raise AblationError(f"{path}: `contrasts:` must map labels to two arms, {example}")
    pairs = []
    for label, members in section.items():
        if not isinstance(members, list) or len(members) != 2 or members[0] == members[1]:
            raise AblationError(
                f"{path}: contrast {label!r} must list two different arms, {example}"
            )
        unknown = [str(arm) for arm in members if str(arm) not in arms]
        if unknown:
            raise AblationError(
                f"{path}: contrast {label!r} names {', '.join(unknown)}, not among the arms "
                f"({', '.join(arms)})"
            )
        pairs.append(ArmPair(str(label), str(members[0]), str(members[1])))
    return tuple(pairs)


def parse_compare_with(path: Path, section: Any, contrasts: Sequence[ArmPair]) -> tuple[str, ...]:
    """The ``compare_with:`` section: names of published grids (``results/<name>/``)."""
    if section is None:
        return ()
    if not isinstance(section, list) or not all(isinstance(name, str) for name in section):
        raise AblationError(
            f"{path}: `compare_with:` must list published grid names, e.g. "
            "`compare_with: [files_conv_local_cifar]`"
        )
    if not contrasts:
        raise AblationError(
            f"{path}: `compare_with:` compares `contrasts:`, and this file names none"
        )
    return tuple(section)
