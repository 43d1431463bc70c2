"""Named arm differences (``contrasts:``) set beside the same differences in published grids
(``compare_with:``): the file format and the README's opening table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from test_ablate_publish import grid_with_records
from test_ablate_spec import write_ablation_file

from convrepro.ablate import factorial
from convrepro.ablate.answers import render_comparison
from convrepro.ablate.publish import publish
from convrepro.ablate.published import PUBLISHED_EFFECTS
from convrepro.ablate.readme import PublishedAblation, render_results_section
from convrepro.ablate.spec import load_spec
from convrepro.errors import AblationError
from convrepro.testing import write_made_up_ablation

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / "configs" / "ablations"
PAIRS = {"LRN alone": ["lrn", "no-lrn"]}


def test_contrasts_are_read_and_written_back(tmp_path):
    spec = load_spec(write_ablation_file(tmp_path, contrasts=PAIRS, compare_with=["shorter"]))
    (pair,) = spec.contrasts
    assert (pair.label, pair.changed, pair.reference) == ("LRN alone", "lrn", "no-lrn")
    assert pair.contrast().weights == {"lrn": 1.0, "no-lrn": -1.0}
    assert spec.compare_with == ("shorter",)
    copy = tmp_path / "copy.yaml"
    copy.write_text(spec.to_yaml())
    again = load_spec(copy)
    assert (again.contrasts, again.compare_with) == (spec.contrasts, spec.compare_with)


def test_a_pair_contrast_is_welchs_difference_of_its_arms():
    values = {"lrn": {0: 61.0, 1: 62.0, 2: 61.5}, "no-lrn": {0: 60.0, 1: 60.4, 2: 60.2}}
    spec_pair = load_spec(ABLATIONS / "cpu_long_conv_local_cifar.yaml").contrasts[0]
    assert spec_pair.contrast().kind == "pair"
    (effect,) = factorial.effects(
        [factorial.Contrast("pair", "x", {"lrn": 1.0, "no-lrn": -1.0})], values
    )
    assert effect.welch.difference == pytest.approx(61.5 - 60.2)
    assert effect.paired_seeds == (0, 1, 2) and effect.runs == 6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"contrasts": ["lrn", "no-lrn"]}, "must map labels to two arms"),
        ({"contrasts": {"x": ["lrn"]}}, "must list two different arms"),
        ({"contrasts": {"x": ["lrn", "lrn"]}}, "must list two different arms"),
        ({"contrasts": {"x": ["lrn", "wide"]}}, "names wide, not among the arms"),
        ({"contrasts": PAIRS, "compare_with": "shorter"}, "must list published grid names"),
        ({"compare_with": ["shorter"]}, "this file names none"),
    ],
)
def test_bad_contrasts_are_one_clear_error(tmp_path, changes, message):
    with pytest.raises(AblationError, match=message):
        load_spec(write_ablation_file(tmp_path, **changes))


def test_published_effects_name_effects_of_their_ablation():
    """Every number measured elsewhere sits next to an effect the ablation's file has."""
    for ablation, label in PUBLISHED_EFFECTS:
        spec = load_spec(ABLATIONS / f"{ablation}.yaml")
        labels = {pair.label for pair in spec.contrasts}
        if spec.factors is not None:
            labels |= {contrast.label for contrast in spec.factors.contrasts()}
        assert label in labels, (ablation, label)


def published_grid(results: Path, name: str, epochs: int, effects: dict[str, float]) -> None:
    """The real ablation file ``name``, its runs made up (``epochs`` each), published."""
    spec = load_spec(ABLATIONS / f"{name}.yaml")
    out = results.parent / "grids" / name
    grid_with_records(out, spec)
    write_made_up_ablation(
        out, effects=effects, spec=spec, epochs=epochs, seed_spread=0.0, run_noise=0.0
    )
    publish(spec, out, results)


def test_the_readme_sets_the_long_grid_beside_the_short_one(tmp_path):
    """The cpu-long grid (LRN +1 point of accuracy, the files +2) next to the 4-epoch files
    grid (LRN nothing, the files +1): one row per contrast, one column per grid."""
    results = tmp_path / "results"
    short = {"13pct": 0.0, "13pct-with-lrn": 0.0, "11pct-without-lrn": 0.0, "11pct": 0.01}
    published_grid(results, "files_conv_local_cifar", 4, short)
    with pytest.raises(AblationError, match="compares itself with files_conv_local_cifar, not"):
        alone = tmp_path / "alone" / "results"
        published_grid(alone, "cpu_long_conv_local_cifar", 16, {})
        render_results_section(alone, tmp_path)
    long = {"13pct": 0.0, "13pct-with-lrn": 0.01, "11pct": 0.02}
    published_grid(results, "cpu_long_conv_local_cifar", 16, long)

    section = render_results_section(results, tmp_path)
    answer = section.split("### In short: `files_conv_local_cifar`")[0]
    assert "### In short: `cpu_long_conv_local_cifar` beside `files_conv_local_cifar`" in answer
    columns = "`cpu_long_conv_local_cifar` (16 epochs) | `files_conv_local_cifar` (4 epochs)"
    assert f"| change | {columns} | measured elsewhere |" in answer
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in answer.splitlines()}
    lrn = rows["| LRN alone, at 13pct widths: `13pct-with-lrn` - `13pct`"]
    assert lrn[0].startswith("-1.00 ") and "; paired " in lrn[0] and lrn[0].endswith("(5+5)")
    assert lrn[1].startswith("+0.00 ") and "3878e8f" in lrn[2]
    width = rows["| local3 width + fc10 wc, with LRN: `11pct` - `13pct-with-lrn`"]
    assert width[0].startswith("-1.00 ") and width[1].startswith("-1.00 ")
    files = rows["| the files' difference: `11pct` - `13pct`"]
    assert files[0].startswith("-2.00 ") and files[1].startswith("-1.00 ")
    assert "-2 (13% -> 11%): the paper" in files[2]
    long_section = section.split("### `cpu_long_conv_local_cifar`")[1].split("###")[0]
    assert "4-layer CNN, layers-conv-local-11pct.cfg" in long_section
    # every named contrast also in full (p-values, paired intervals) in the grid's section
    detail = long_section.split("The grid's named contrasts (")[1]
    assert "| LRN alone, at 13pct widths | pair | -1.00 |" in detail
    assert "| the files' difference | pair | -2.00 |" in detail and "Pair: one arm" in detail


def test_a_difference_resting_on_too_few_runs_says_so(tmp_path):
    """A grid published before every seed finished: no interval from one run, none from none."""
    results = tmp_path / "results"
    published_grid(results, "files_conv_local_cifar", 4, {})
    published_grid(results, "cpu_long_conv_local_cifar", 16, {})
    grids = {path.name: PublishedAblation.read(path) for path in results.iterdir()}
    long = grids["cpu_long_conv_local_cifar"]
    kept = [r for r in long.results if r.arm != "11pct" and (r.arm == "13pct" or r.seed == 0)]
    partial = replace(long, results=kept)

    table = render_comparison(partial, grids).splitlines()
    rows = {line.split(" | ")[0]: line.split(" | ")[1] for line in table if " | " in line}
    assert rows["| LRN alone, at 13pct widths: `13pct-with-lrn` - `13pct`"] == (
        "+0.00 (1+5 runs: too few for a CI)"
    )
    assert rows["| the files' difference: `11pct` - `13pct`"] == "no run of `11pct`"

    # arms of the same name that are other networks in the grid compared with: no number
    short = grids["files_conv_local_cifar"]
    other = {**short.spec.arms, "13pct": {**short.spec.arms["13pct"], "trainer.max_epochs": 1}}
    grids["files_conv_local_cifar"] = replace(short, spec=replace(short.spec, arms=other))
    table = render_comparison(long, grids).splitlines()
    rows = {line.split(" | ")[0]: line.split(" | ")[2] for line in table if " | " in line}
    assert rows["| the files' difference: `11pct` - `13pct`"] == "other arms of these names"
    assert rows["| local3 width + fc10 wc, with LRN: `11pct` - `13pct-with-lrn`"] != (
        "other arms of these names"
    )


def test_the_shipped_long_grid_is_the_short_grids_arms():
    """The same arm names mean the same networks in both grids (the README compares them)."""
    long = load_spec(ABLATIONS / "cpu_long_conv_local_cifar.yaml")
    for name in long.compare_with:
        short = load_spec(ABLATIONS / f"{name}.yaml")
        for pair in long.contrasts:
            for arm in (pair.changed, pair.reference):
                assert yaml.safe_dump(dict(short.arms[arm])) == yaml.safe_dump(
                    dict(long.arms[arm])
                ), arm
