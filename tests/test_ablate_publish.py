"""Results that ship with the repository: records copied into results/, the README rendered."""

import json
import math
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from convrepro.ablate import stats
from convrepro.ablate.__main__ import main
from convrepro.ablate.budget import budget_line
from convrepro.ablate.publish import RUN_RECORDS, publish
from convrepro.ablate.readme import BEGIN, END, render_results_section, update_readme
from convrepro.ablate.results import RunResult, read_results_csv
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, load_spec, runs_root
from convrepro.runs.provenance import CodeVersion, Invocation, run_data_label, write_provenance
from convrepro.runs.scrub import TEXT_SUFFIXES, machine_paths_in
from convrepro.testing import MADE_UP_NAME, make_cifar10_folders, write_made_up_ablation

ROOT = Path(__file__).resolve().parents[1]


def grid_with_records(out: Path, spec: AblationSpec | None = None) -> AblationSpec:
    """A made-up finished grid whose runs also have what a real run leaves: config, provenance,
    log, a checkpoint and W&B files, naming the machine's paths as real ones do: the checkout
    the grid ran in (``<out>/../checkout``), its output folder and the data folder
    (``<out>/../cifar-jpegs``)."""
    checkout, data_dir = out.parent / "checkout", out.parent / "cifar-jpegs"
    spec = write_made_up_ablation(out, spec=spec)
    if spec.name == MADE_UP_NAME:  # where a real grid's file names its base config and data
        spec = replace(
            spec,
            base=checkout / "configs" / "made-up.yaml",
            overrides={**spec.overrides, "data.init_args.data_dir": str(data_dir)},
        )
        (out / SPEC_FILE).write_text(spec.to_yaml())
    for number, run in enumerate(spec.runs()):
        folder = spec.run_folder(out, run)
        best = folder.checkpoints / "best.ckpt"
        folder.write_summary(
            replace(folder.read_summary(), best_checkpoint=str(best), test_checkpoint=str(best))
        )
        (folder.path / "config.yaml").write_text(
            f"trainer:\n  max_epochs: 15\n  default_root_dir: {folder.path}\n"
            f"data:\n  init_args:\n    data_dir: {data_dir}\n"
        )
        command = [
            "python",
            "-m",
            "convrepro",
            "fit",
            f"--config={spec.base}",
            f"--data.init_args.data_dir={data_dir}",
            f"--run.root={runs_root(out)}",
        ]
        (folder.path / "log.txt").write_text(
            f"=== {' '.join(command)}\nRun folder: {folder.path}\nUsing checkpoint {best}\n"
            "/usr/lib/python3.11/site-packages/lightning/call.py:283: a warning\n"
        )
        fit = Invocation(
            subcommand="fit",
            command=command,
            cwd=str(checkout),
            host="made-up",
            started=f"2026-01-01T10:{number:02d}:00+00:00",
            ended=f"2026-01-01T10:{number:02d}:30+00:00",
            outcome="finished",
            code=CodeVersion(git_commit="abc123", git_dirty=False),
            software={"torch": "2.x", "lightning": "2.y"},
            devices={"names": ["cpu (x86_64)"]},
            data={
                "datamodule": "CIFAR10DataModule",
                "data_dir": str(data_dir),
                "published": False,
                "files": {"train/": "f" * 64},
                "fingerprint": "e" * 64,
                "val_size": 100,
            },
        )
        write_provenance(folder, [fit])
        folder.checkpoints.mkdir()
        best.write_bytes(b"weights")
        (folder.path / "wandb").mkdir()
    return spec


def files_of(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_publish_copies_the_records_and_nothing_heavy(tmp_path):
    out = tmp_path / "grid"
    spec = grid_with_records(out)
    published = publish(spec, out, tmp_path / "results").folder
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


# -- publish never loses published results ----------------------------------------------------


def published_grid(tmp_path: Path) -> tuple[AblationSpec, Path, Path]:
    """A grid in ``tmp_path/grid``, published into ``tmp_path/results``."""
    out, results = tmp_path / "grid", tmp_path / "results"
    spec = grid_with_records(out)
    assert main(["publish", str(out), "--results", str(results)]) == 0
    return spec, out, results


def test_the_budget_of_a_grid_run_in_two_sessions_says_so(tmp_path):
    """A fit killed with its session records no end and its run's fit time only the resumed
    part: the budget line leaves that run out of the per-run times and names the pause."""
    out, results = tmp_path / "grid", tmp_path / "results"
    spec = grid_with_records(out)
    stopped = spec.run_folder(out, spec.run("A-LRN", 1))
    killed, *_ = json.loads(stopped.provenance_file.read_text())["invocations"]
    killed = Invocation.from_dict(killed | {"ended": None, "outcome": None})
    resumed = replace(
        killed,
        subcommand="resume",
        started="2026-01-02T08:59:30+00:00",
        ended="2026-01-02T09:30:00+00:00",
        outcome="finished",
    )
    write_provenance(stopped, [killed, resumed])
    publish(spec, out, results)
    section = render_results_section(results, tmp_path)
    assert (
        "training (fit) took 15.0 min per run on average (15.0-15.0) over the 5 runs trained in "
        "one go; 1 run was stopped mid-fit and resumed from the last checkpoint" in section
    )
    # six runs of 30 s on the first day, the resumed part (30.5 min) on the next
    assert (
        "ran from 2026-01-01T10:00:00Z to 2026-01-02T09:30:00Z with pauses: runs were in "
        "progress for 33 of those 1410 min (at least: a stopped fit records no end)" in section
    )


def test_the_budget_of_a_single_run_gives_its_time_and_no_spread():
    fit = {"subcommand": "fit", "started": "2026-01-01T10:00:00+00:00"}
    fit["ended"] = "2026-01-01T11:09:18+00:00"
    test = {"subcommand": "test", "started": fit["ended"], "ended": "2026-01-01T11:10:00+00:00"}
    run = RunResult("64-epochs", 100, 0.81, 0.84, 0.99, 64, 69.3 * 60, "checkpoints/best.ckpt")
    line = budget_line([run], [{"fit": fit, "invocations": [fit, test]}])
    assert line == (
        "Budget: 64 epochs per run; training (fit) took 69.3 min; the whole grid, tests "
        "included, 70 min (2026-01-01T10:00:00Z to 2026-01-01T11:10:00Z)."
    )


def test_publish_where_the_runs_are_not_refuses_and_keeps_the_published_grid(tmp_path, capsys):
    spec, out, results = published_grid(tmp_path)
    before = files_of(results)
    capsys.readouterr()
    # The ablation file without --out: the default output folder, where this machine has no runs.
    elsewhere = tmp_path / "elsewhere"
    for flags in ([], ["--replace"], ["--replace", "--allow-incomplete"]):
        code = main(
            [
                "publish",
                str(out / SPEC_FILE),
                "--out",
                str(elsewhere),
                "--results",
                str(results),
                *flags,
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
        assert f"{elsewhere}/runs/{spec.name}/" in err and "6 runs, 6 with a result" in err
        assert files_of(results) == before
    # Nor is an empty grid published where nothing was.
    assert (
        main(
            [
                "publish",
                str(out / SPEC_FILE),
                "--out",
                str(elsewhere),
                "--results",
                str(tmp_path / "new"),
            ]
        )
        == 2
    )
    assert "nothing to publish" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_publish_never_replaces_a_grid_by_one_with_fewer_results(tmp_path, capsys):
    spec, out, results = published_grid(tmp_path)
    before = files_of(results)
    folder = spec.run_folder(out, spec.run("A", 1))
    folder.write_summary(replace(folder.read_summary(), test={}))  # its result gone
    capsys.readouterr()
    code = main(["publish", str(out), "--results", str(results), "--replace", "--allow-incomplete"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "would lose the result of A-seed1" in err and files_of(results) == before


def test_replacing_a_published_grid_takes_a_flag_and_says_what_changes(tmp_path, capsys):
    spec, out, results = published_grid(tmp_path)
    before = files_of(results)
    capsys.readouterr()
    assert main(["publish", str(out), "--results", str(results)]) == 2
    assert "--replace" in capsys.readouterr().err and files_of(results) == before
    assert main(["publish", str(out), "--results", str(results), "--replace"]) == 0
    assert "same results (6 runs)" in capsys.readouterr().out
    folder = spec.run_folder(out, spec.run("A", 0))
    summary = folder.read_summary()
    folder.write_summary(replace(summary, test={**summary.test, "test/acc": 0.5}))
    assert main(["publish", str(out), "--results", str(results), "--replace"]) == 0
    printed = capsys.readouterr().out
    assert f"changed: A-seed0, test acc {100 * summary.test_acc:.2f}% -> 50.00%" in printed


# -- an incomplete grid names its missing runs -------------------------------------------------


def test_an_incomplete_grid_is_published_only_when_asked_and_names_its_missing_runs(
    tmp_path, capsys
):
    out, results = tmp_path / "grid", tmp_path / "results"
    spec = grid_with_records(out)
    diverged = spec.run_folder(out, spec.run("A-LRN", 1))
    diverged.write_summary(replace(diverged.read_summary(), test={}))
    fit = Invocation(
        subcommand="fit",
        command=["python"],
        cwd="/",
        host="made-up",
        started="2026-01-01T11:00:00+00:00",
        ended="2026-01-01T11:01:00+00:00",
        outcome="diverged",
    )
    write_provenance(diverged, [fit])
    never = spec.run_folder(out, spec.run("A", 2))
    shutil.rmtree(never.path)

    assert main(["publish", str(out), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 6 planned runs" in err
    assert "A-seed2 (never ran)" in err and "A-LRN-seed1 (diverged)" in err
    assert "--allow-incomplete" in err and not results.exists()

    assert main(["publish", str(out), "--results", str(results), "--allow-incomplete"]) == 0
    printed = capsys.readouterr().out
    assert "2 of 6 planned runs have no result" in printed
    assert "A seed 2: never ran" in printed and "A-LRN seed 1: diverged" in printed
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    update_readme(readme, results)
    text = readme.read_text()
    assert f"### `{spec.name}`: 4 runs of 6 planned (2 arms x 3 seeds)" in text
    assert "`A` seed 2: never ran; `A-LRN` seed 1: diverged" in text
    assert "nan" not in text
    assert "A-seed2 (never ran)" in (results / spec.name / "summary.md").read_text()


# -- no machine paths in what ships --------------------------------------------------------------


def test_published_records_name_no_path_of_the_machine(tmp_path):
    out = tmp_path / "grid"
    spec = grid_with_records(out)
    published = publish(spec, out, tmp_path / "results").folder
    for path, content in files_of(published).items():
        if path.suffix != ".png":
            text = content.decode()
            assert str(tmp_path) not in text and not machine_paths_in(text), (path, text)
    assert "Base config `configs/made-up.yaml`" in (published / "summary.md").read_text()
    assert "data.init_args.data_dir=<DATA_DIR>" in (published / "summary.md").read_text()
    assert {row.checkpoint for row in read_results_csv(published / "results.csv")} == {
        "checkpoints/best.ckpt"
    }
    log = spec.run_folder(published, spec.runs()[0]).path / "log.txt"
    assert f"Run folder: <out>/runs/{spec.name}/A-seed0" in log.read_text()
    assert "<site-packages>/lightning/call.py" in log.read_text()
    # The run's own folder keeps the full paths.
    assert str(out) in (spec.run_folder(out, spec.runs()[0]).path / "log.txt").read_text()


def test_scrub_takes_the_machine_paths_out_of_a_grid_published_before(tmp_path, capsys):
    out, results = tmp_path / "grid", tmp_path / "results"
    spec = grid_with_records(out)
    old = results / spec.name  # as publish copied before it scrubbed
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    main(["report", str(old)])
    assert machine_paths_in((old / "summary.md").read_text())
    assert main(["scrub", str(old)]) == 0
    for path, content in files_of(old).items():
        if path.suffix != ".png":
            assert not machine_paths_in(content.decode()), path
    scrubbed = files_of(old)
    assert main(["scrub", str(old)]) == 0  # once is enough
    assert files_of(old) == scrubbed and "0 file(s) changed" in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    assert main(["readme", "--results", str(results), "--readme", str(readme)]) == 0
    assert "<DATA_DIR>" in readme.read_text()


def test_what_ships_with_the_repository_names_no_machine_path():
    for folder in (ROOT / "results", ROOT / "benchmarks" / "results"):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                found = machine_paths_in(path.read_text())
                assert not found, f"{path}: {found[:3]}; python -m convrepro.ablate scrub"
    results_section = (ROOT / "README.md").read_text().split(BEGIN)[1].split(END)[0]
    assert not machine_paths_in(results_section)


def test_a_published_report_rendered_again_in_the_checkout_is_the_published_one(
    tmp_path, monkeypatch
):
    """`report` over a published grid, run from the repository (where its base config is found
    and resolved), writes the same summary.md: no path of this machine gets into it."""
    published = ROOT / "results" / "files_conv_local_cifar"
    copy = Path(shutil.copytree(published, tmp_path / published.name))
    monkeypatch.chdir(ROOT)
    assert main(["report", str(copy)]) == 0
    assert (copy / "summary.md").read_text() == (published / "summary.md").read_text()


@pytest.mark.parametrize("where", ["configs-ablations", "a-folder-in-it", "outside"])
def test_the_redo_line_runs_as_printed_on_a_fresh_clone(tmp_path, monkeypatch, where):
    """The README's Redo line, its placeholder filled in, starts the grid on a clone (a dry run:
    every arm's config parsed, the data opened), whether its ablation file is in
    configs/ablations/, in a folder of it, or nowhere in the clone."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "configs", clone / "configs")
    ablations = clone / "configs" / "ablations"
    spec = load_spec(ablations / "lrn_conv_local_cifar.yaml")
    if where != "configs-ablations":
        spec = replace(spec, name="my_lrn_grid")
    if where == "a-folder-in-it":
        (ablations / "mine").mkdir()
        text = (ablations / "lrn_conv_local_cifar.yaml").read_text()
        (ablations / "mine" / "my_lrn_grid.yaml").write_text(
            text.replace("base: ../", "base: ../../").replace("name: lrn_conv", "name: my_lrn_grid")
        )
    data = tmp_path / "cifar-jpegs"  # the grid's data, outside the clone
    spec = spec.with_settings(["data.init_args.source=folders", f"data.init_args.data_dir={data}"])
    out = tmp_path / "grid"
    grid_with_records(out, spec)
    for run in spec.runs():  # ran in the clone
        folder = spec.run_folder(out, run)
        provenance = json.loads(folder.provenance_file.read_text())
        provenance["invocations"][0]["cwd"] = str(clone)
        folder.provenance_file.write_text(json.dumps(provenance))
    publish(spec, out, clone / "results")
    readme = clone / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    update_readme(readme, clone / "results")
    redo = next(line for line in readme.read_text().splitlines() if line.startswith("Redo"))
    command = redo.split("`")[1]
    assert "--set data.init_args.data_dir=<DATA_DIR>" in command and str(tmp_path) not in redo
    assert ("lay outside configs/" in redo) is (where == "outside")
    if where == "a-folder-in-it":
        assert "configs/ablations/mine/my_lrn_grid.yaml" in command
    mine = make_cifar10_folders(tmp_path / "my-cifar", 100, 20, image_format="JPEG")
    argv = shlex.split(command.replace("<DATA_DIR>", str(mine)))
    assert argv[:3] == ["python", "-m", "convrepro.ablate"]
    monkeypatch.chdir(clone)
    assert main([*argv[3:], "--dry-run", "--out", str(tmp_path / "redo")]) == 0


# -- bad input: one line ------------------------------------------------------------------------


def test_readme_of_missing_folders_or_files_is_one_error_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    for argv, named in (
        (["--results", str(tmp_path / "nowhere"), "--readme", str(readme)], "nowhere"),
        (["--results", str(tmp_path), "--readme", str(tmp_path / "NOPE.md")], "NOPE.md"),
    ):
        assert main(["readme", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and named in err


def test_a_one_seed_grid_reads_as_single_runs_validation_first(tmp_path):
    """A selection grid (one seed per arm): each run's last and best validation accuracy, then
    its test error, and no intervals or p-values, which one run per arm cannot give."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    selection = tmp_path / "configs" / "ablations" / "selection"
    with pytest.warns(UserWarning, match="one seed per arm"):
        spec = load_spec(selection / "cpu_long_lr_conv_local_cifar.yaml")
    out = tmp_path / "grid"
    grid_with_records(out, spec)
    effects = {"lr-0.005": 0.02, "lr-0.04": -0.5}
    write_made_up_ablation(out, effects=effects, spec=spec, epochs=4, run_noise=0.0)
    publish(spec, out, tmp_path / "results")
    section = render_results_section(tmp_path / "results", tmp_path)
    assert "5 runs of 5 planned (5 arms x 1 seed)" in section
    assert "| arm | epochs | validation accuracy, last epoch | best | test error |" in section
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in section.splitlines()}
    published = tmp_path / "results" / spec.name
    history = spec.run_folder(published, spec.run("lr-0.005", 100)).read_history()
    last = 100 * float(history[-1]["val/acc"])
    assert rows["lr-0.005"][:2] == ["4", f"{last:.2f}"]
    assert float(rows["lr-0.04"][3].rstrip(" |")) > float(rows["lr-0.005"][3].rstrip(" |"))
    assert "95% CI" not in section and "Welch p" not in section
    redo = "Redo, from the repository's root: `python -m convrepro.ablate configs/ablations/"
    assert redo + "selection/cpu_long_lr_conv_local_cifar.yaml" in section
