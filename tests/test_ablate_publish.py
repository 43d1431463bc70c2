"""Results that ship with the repository: records copied into results/, the README rendered."""

import math
from pathlib import Path

import pytest

from convrepro.ablate import stats
from convrepro.ablate.__main__ import main
from convrepro.ablate.publish import BEGIN, END, RUN_RECORDS, publish, update_readme
from convrepro.ablate.results import read_results_csv
from convrepro.runs.provenance import CodeVersion, Invocation, run_data_label, write_provenance
from convrepro.testing import write_made_up_ablation

ROOT = Path(__file__).resolve().parents[1]


def grid_with_records(out: Path):
    """A made-up finished grid whose runs also have what a real run leaves: config, provenance,
    log, a checkpoint and W&B files."""
    spec = write_made_up_ablation(out)
    for number, run in enumerate(spec.runs()):
        folder = spec.run_folder(out, run)
        (folder.path / "config.yaml").write_text("trainer:\n  max_epochs: 15\n")
        (folder.path / "log.txt").write_text("fit\n")
        fit = Invocation(
            subcommand="fit",
            command=["python", "-m", "convrepro", "fit"],
            cwd="/",
            host="made-up",
            started=f"2026-01-01T10:{number:02d}:00+00:00",
            ended=f"2026-01-01T10:{number:02d}:30+00:00",
            outcome="finished",
            code=CodeVersion(git_commit="abc123", git_dirty=False),
            software={"torch": "2.x", "lightning": "2.y"},
            devices={"names": ["cpu (x86_64)"]},
            data={
                "datamodule": "CIFAR10DataModule",
                "data_dir": "/d",
                "published": False,
                "files": {"train/": "f" * 64},
                "fingerprint": "e" * 64,
                "val_size": 100,
            },
        )
        write_provenance(folder, [fit])
        folder.checkpoints.mkdir()
        (folder.checkpoints / "best.ckpt").write_bytes(b"weights")
        (folder.path / "wandb").mkdir()
    return spec


def test_publish_copies_the_records_and_nothing_heavy(tmp_path):
    out = tmp_path / "grid"
    spec = grid_with_records(out)
    published = publish(spec, out, tmp_path / "results")
    assert published == tmp_path / "results" / spec.name
    for run in spec.runs():
        copied = spec.run_folder(published, run).path
        present = sorted(p.name for p in copied.iterdir())
        assert present == sorted(
            name for name in RUN_RECORDS if (spec.run_folder(out, run).path / name).is_file()
        )
        assert "summary.json" in present and "provenance.json" in present
    for name in ("results.csv", "summary.md", "val_acc_curves.png", "test_acc.png"):
        assert (published / name).is_file()
    assert not list(published.rglob("*.ckpt")) and not list(published.rglob("wandb"))
    # The copy is an ablation folder of its own: the report re-renders from it alone.
    assert main(["report", str(published)]) == 0


def test_readme_section_is_what_the_records_say(tmp_path):
    out = tmp_path / "grid"
    spec = grid_with_records(out)
    results = tmp_path / "results"
    publish(spec, out, results)
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Results\n\n{BEGIN}\nstale figures\n{END}\n\n## After\n")
    assert update_readme(readme, results) is False  # rewritten
    text = readme.read_text()
    assert text.startswith("# Title") and text.endswith("## After\n")
    assert "stale figures" not in text
    assert update_readme(readme, results, check=True) is True

    rows = read_results_csv(results / spec.name / "results.csv")
    for arm in spec.arms:
        errors = [100 - 100 * r.test_acc for r in rows if r.arm == arm]
        summary = stats.summarize(errors)
        assert f"| {arm} | {summary.n} | {summary.mean:.2f} ± {summary.std:.2f} |" in text
        assert f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}]" in text
        low, high = summary.prediction_interval()
        assert f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}] | [{low:.2f}, {high:.2f}] |" in text
    baseline = [100 - 100 * r.test_acc for r in rows if r.arm == spec.baseline]
    other = next(arm for arm in spec.arms if arm != spec.baseline)
    errors = [100 - 100 * r.test_acc for r in rows if r.arm == other]
    welch = stats.welch_test(errors, baseline)
    assert f"Δ {welch.difference:+.2f} points" in text and "exact permutation" in text
    assert "commit `abc123`" in text and "15 epochs per run" in text
    # The README names the data by the fingerprint the grid's own summary.md shows.
    label = run_data_label([{"files": {"train/": "f" * 64}}])
    assert f"fingerprint `{label}`" in text
    assert f"data fingerprint: {label}." in (results / spec.name / "summary.md").read_text()
    assert f"results/{spec.name}/test_acc.png" in text.replace(str(tmp_path) + "/", "")

    # A figure typed over by hand is found.
    first = f"{stats.summarize(baseline).mean:.2f}"
    readme.write_text(text.replace(first, "99.99", 1))
    assert update_readme(readme, results, check=True) is False
    assert main(["readme", "--check", "--results", str(results), "--readme", str(readme)]) == 1
    assert main(["readme", "--results", str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_the_repositorys_readme_is_rendered_from_its_results():
    """CI's check: README.md's results section is exactly what results/ gives."""
    results = ROOT / "results"
    assert results.is_dir(), "results/ holds the published grids the README reports"
    readme = ROOT / "README.md"
    original = readme.read_text()
    try:
        up_to_date = update_readme(readme, results, check=True)
    finally:
        assert readme.read_text() == original
    assert up_to_date, "README.md's results differ from results/: python -m convrepro.ablate readme"


def test_no_nan_in_published_results():
    for path in (ROOT / "results").glob("*/results.csv"):
        for row in read_results_csv(path):
            assert not math.isnan(row.test_acc), path
            assert row.checkpoint.endswith("best.ckpt"), path


@pytest.mark.parametrize("bad", ["nothing", "no_markers"])
def test_readme_errors_are_one_line(tmp_path, bad, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no section\n")
    results = tmp_path / "results"
    results.mkdir()
    if bad == "no_markers":
        publish(grid_with_records(tmp_path / "grid"), tmp_path / "grid", results)
    code = main(["readme", "--results", str(results), "--readme", str(readme)])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1
