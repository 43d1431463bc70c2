"""A 2x2 factorial reading of four arms: the file format, the contrasts and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ablate_publish import grid_with_records
from test_ablate_spec import write_ablation_file

from convrepro.ablate import factorial
from convrepro.ablate.publish import publish
from convrepro.ablate.readme import render_results_section
from convrepro.ablate.report import render_summary
from convrepro.ablate.results import RunResult
from convrepro.ablate.spec import load_spec
from convrepro.errors import AblationError
from convrepro.testing import write_made_up_ablation

ROOT = Path(__file__).resolve().parents[1]

ARMS = {
    "13pct": {"model.backbone.init_args.definition": "13pct"},
    "13pct-with-lrn": {"model.backbone.init_args.lrn": True},
    "11pct-without-lrn": {"model.backbone.init_args.lrn": False},
    "11pct": {"model.backbone.init_args.definition": "11pct"},
}
FACTORS = {
    "LRN": {"off": ["13pct", "11pct-without-lrn"], "on": ["13pct-with-lrn", "11pct"]},
    "width": {"32": ["13pct", "13pct-with-lrn"], "64": ["11pct-without-lrn", "11pct"]},
}
# Test accuracy (%) by arm and seed: LRN +0.3 at width 32, +1.1 at width 64; width +0.5 / +1.3.
VALUES = {
    "13pct": {0: 61.0, 1: 61.4, 2: 60.8},
    "13pct-with-lrn": {0: 61.2, 1: 61.8, 2: 61.1},
    "11pct-without-lrn": {0: 61.6, 1: 61.7, 2: 61.4},
    "11pct": {0: 62.9, 1: 62.6, 2: 62.5},
}


def spec_with(tmp_path, **changes):
    changes.setdefault("factors", FACTORS)
    return load_spec(write_ablation_file(tmp_path, baseline="13pct", arms=ARMS, **changes))


def mean(arm: str) -> float:
    return sum(VALUES[arm].values()) / len(VALUES[arm])


def test_factors_are_read_and_written_back(tmp_path):
    spec = spec_with(tmp_path)
    assert spec.factors.cell(0, 0) == "13pct" and spec.factors.cell(1, 1) == "11pct"
    assert spec.factors.cell(1, 0) == "13pct-with-lrn"
    assert spec.factors.cell(0, 1) == "11pct-without-lrn"
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "ablation.yaml").write_text(spec.to_yaml())
    assert load_spec(copy / "ablation.yaml").factors == spec.factors


def test_every_contrast_is_its_arms_means(tmp_path):
    effects = {
        e.contrast.label: e
        for e in factorial.effects(spec_with(tmp_path).factors.contrasts(), VALUES)
    }
    lrn_at_32 = mean("13pct-with-lrn") - mean("13pct")
    lrn_at_64 = mean("11pct") - mean("11pct-without-lrn")
    width_at_off = mean("11pct-without-lrn") - mean("13pct")
    width_at_on = mean("11pct") - mean("13pct-with-lrn")
    expected = {
        "LRN: off -> on, at width 32": lrn_at_32,
        "LRN: off -> on, at width 64": lrn_at_64,
        "width: 32 -> 64, at LRN off": width_at_off,
        "width: 32 -> 64, at LRN on": width_at_on,
        "LRN: off -> on, averaged over width": (lrn_at_32 + lrn_at_64) / 2,
        "width: 32 -> 64, averaged over LRN": (width_at_off + width_at_on) / 2,
        "LRN x width": lrn_at_64 - lrn_at_32,
        "both changes: `11pct` - `13pct`": mean("11pct") - mean("13pct"),
    }
    assert {label: e.welch.difference for label, e in effects.items()} == pytest.approx(expected)
    # The decomposition adds up: both changes = one main effect + the other.
    both = expected["both changes: `11pct` - `13pct`"]
    mains = expected["LRN: off -> on, averaged over width"]
    mains += expected["width: 32 -> 64, averaged over LRN"]
    assert both == pytest.approx(mains)
    assert {e.runs for e in effects.values()} == {6, 12}  # two arms or four, 3 seeds each
    assert all(e.paired_seeds == (0, 1, 2) for e in effects.values())


def test_a_missing_run_leaves_the_other_effects_and_pairs_fewer_seeds(tmp_path):
    values = {**VALUES, "11pct": {0: 62.9, 2: 62.5}}
    effects = factorial.effects(spec_with(tmp_path).factors.contrasts(), values)
    interaction = next(e for e in effects if e.contrast.kind == "interaction")
    assert interaction.paired_seeds == (0, 2) and interaction.runs == 11
    untouched = next(e for e in effects if e.contrast.label == "LRN: off -> on, at width 32")
    assert untouched.paired_seeds == (0, 1, 2)


def test_summary_has_the_factorial_reading(tmp_path):
    spec = spec_with(tmp_path)
    results = [
        RunResult(arm, seed, 0.6, value / 100, 0.95, 4, 10.0, "")
        for arm, seeds in VALUES.items()
        for seed, value in seeds.items()
    ]
    summary = render_summary(spec, results, [])
    assert "## Factorial reading (test accuracy, percentage points)" in summary
    interaction = mean("11pct") - mean("11pct-without-lrn") - mean("13pct-with-lrn") + mean("13pct")
    assert f"| LRN x width | interaction | {interaction:+.2f} |" in summary
    assert "Welch-Satterthwaite" in summary
    (tmp_path / "plain").mkdir()
    without = render_summary(load_spec(write_ablation_file(tmp_path / "plain")), [], [])
    assert "Factorial" not in without


@pytest.mark.parametrize(
    ("factors", "message"),
    [
        ({"LRN": FACTORS["LRN"]}, "exactly two factors"),
        ({**FACTORS, "third": FACTORS["LRN"]}, "exactly two factors"),
        ({**FACTORS, "width": {"32": ["13pct"], "48": [], "64": ["11pct"]}}, "two levels"),
        ({**FACTORS, "width": {"32": "13pct", "64": ["11pct"]}}, "list the arms"),
        ({**FACTORS, "width": {"32": ["13pct", "nope"], "64": []}}, "arm 'nope', which is not"),
        (
            {**FACTORS, "width": {"32": ["13pct", "13pct-with-lrn"], "64": ["13pct", "11pct"]}},
            "puts arm '13pct' at both levels",
        ),
        ({**FACTORS, "width": {"32": ["13pct"], "64": ["11pct"]}}, "gives no level to arm"),
        (
            {
                **FACTORS,
                "width": {"32": ["13pct", "11pct-without-lrn"], "64": FACTORS["LRN"]["on"]},
            },
            "one per combination of levels",
        ),
    ],
)
def test_bad_factors_are_one_clear_error(tmp_path, factors, message):
    with pytest.raises(AblationError, match=message):
        spec_with(tmp_path, factors=factors)


def test_the_readme_section_of_a_factorial_grid_opens_with_the_answer(tmp_path):
    """The real files grid, its runs made up (LRN +1 point of accuracy in the 11pct file
    only): the README gets the answer table first, then the grid with its 2x2 reading."""
    spec = load_spec(ROOT / "configs" / "ablations" / "files_conv_local_cifar.yaml")
    out = tmp_path / "grid"
    grid_with_records(out, spec)
    effects = {"13pct": 0.0, "13pct-with-lrn": 0.0, "11pct-without-lrn": 0.0, "11pct": 0.01}
    write_made_up_ablation(out, effects=effects, spec=spec, seed_spread=0.0, run_noise=0.0)
    publish(spec, out, tmp_path / "results")
    section = render_results_section(tmp_path / "results", tmp_path)
    answer, detail = section.split("### `files_conv_local_cifar`")
    assert "### In short: `files_conv_local_cifar`" in answer
    files = "| both changes: `11pct` - `13pct` | both | -1.00 |"
    assert files in answer and "-2 (13% -> 11%): the paper" in answer
    assert "| LRN x local3 width + fc10 wc | interaction | -1.00 |" in answer
    lrn_alone = "| LRN: off -> on, at local3 width + fc10 wc 13pct (32, 0.004) | simple | +0.00 |"
    assert lrn_alone in answer and "3878e8f" in answer
    assert "The 2x2 reading of the four arms (multiview error" not in answer
    assert "The 2x2 reading of the four arms" in detail
    assert "| 13pct | 5 |" in detail and "4-layer CNN, layers-conv-local-13pct.cfg" in detail
