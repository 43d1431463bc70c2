"""The report: re-rendered from run folders or from a W&B group, and the paper table."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image
from scipy import stats as scipy_stats
from test_ablate_runner import assert_png, read_csv
from test_ablate_spec import write_ablation_file

from convrepro.ablate.__main__ import main
from convrepro.ablate.plots import val_curves
from convrepro.ablate.published import PUBLISHED
from convrepro.ablate.report import collect_results, render_paper_comparison, write_report
from convrepro.ablate.results import RunResult, write_results_csv
from convrepro.errors import AblationError
from convrepro.testing import MADE_UP_NAME, write_made_up_ablation

OUTPUTS = ("results.csv", "summary.md", "val_acc_curves.png", "test_acc.png")


def test_report_command_rerenders_without_training(tmp_path, capsys):
    out = tmp_path / "out"
    write_made_up_ablation(out)  # finished run folders and ablation.yaml, as a grid leaves them
    assert main(["report", str(out)]) == 0
    results = (out / "results.csv").read_text()
    for name in OUTPUTS:
        (out / name).unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.csv").read_text() == results
    assert len(read_csv(out / "results.csv")) == 6
    assert "## Difference from `A`" in (out / "summary.md").read_text()
    assert_png(out / "test_acc.png")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an ablation output folder" in capsys.readouterr().err


def test_curves_draw_only_the_runs_the_numbers_rest_on(tmp_path):
    """A run still training (history, no test result) stays out of its arm's mean and band."""
    out = tmp_path / "out"
    spec = write_made_up_ablation(out, epochs=6)
    running = spec.run_folder(out, spec.run("A-LRN", 2))
    running.write_summary(replace(running.read_summary(), test={}))
    lines = running.history.read_text().splitlines()
    running.history.write_text("\n".join(lines[:3]) + "\n")  # two epochs logged so far

    results = collect_results(spec, out)[0]
    curves = val_curves(spec, out, results)
    assert [len(curves[arm]) for arm in ("A", "A-LRN")] == [3, 2]
    assert all(sorted(history) == list(range(6)) for history in curves["A-LRN"])
    assert val_curves(spec, out, []) == {}


# -- the paper table ---------------------------------------------------------------------------


def test_paper_comparison_puts_published_numbers_next_to_ours(tmp_path):
    folder = tmp_path / "lrn_vgg_a_cifar"
    folder.mkdir()
    results = [
        RunResult(arm, seed, 0.9, acc, 0.995, 2, 10.0, "")
        for arm, accs in (("A", (0.91, 0.92, 0.93)), ("A-LRN", (0.90, 0.91, 0.92)))
        for seed, acc in enumerate(accs)
    ]
    write_results_csv(results, folder / "results.csv")
    table = render_paper_comparison([folder / "results.csv"])
    assert "| lrn_vgg_a_cifar | A | 3 | 8.00 ± 1.00 | 0.50 ± 0.00 | baseline |" in table
    welch = scipy_stats.ttest_ind([10, 9, 8], [9, 8, 7], equal_var=False)
    low, high = welch.confidence_interval()
    assert f"| A-LRN | 3 | 9.00 ± 1.00 | 0.50 ± 0.00 | +1.00 [{low:+.2f}, {high:+.2f}] |" in table
    assert "VGG A-LRN, ImageNet: 29.70 / 10.50 [1]" in table  # Table 3
    assert "vgg11_bn, CIFAR-10: 7.21 / 0.28 [4]" in table  # chenyaofo's, for A
    assert all(f"| {p.model} | {p.dataset} |" in table for p in PUBLISHED)
    assert "1. Simonyan & Zisserman" in table and "S=256" in table


def test_compare_command_reads_ablation_folders(tmp_path, capsys):
    out = tmp_path / "out"
    write_made_up_ablation(out)
    assert main(["report", str(out)]) == 0
    assert main(["compare", str(out), "--output", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert f"| {MADE_UP_NAME} | A | 3 |" in table and "| baseline |" in table  # from ablation.yaml
    assert main(["compare", str(tmp_path / "nowhere.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


# -- from a W&B group --------------------------------------------------------------------------


class FakeWandbRun:
    """The attributes of a ``wandb.apis.public.Run`` that the report reads."""

    def __init__(self, tags, summary, history):
        self.tags, self.summary, self._history = tags, summary, history

    def scan_history(self, keys):
        return [{key: row[key] for key in keys} for row in self._history]


class FakeWandbApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = []

    def runs(self, path, filters):
        self.asked.append((path, filters))
        return self._runs


def test_report_from_a_wandb_group_lists_the_missing_points(tmp_path, monkeypatch, capsys):
    runs = [
        FakeWandbRun(
            ["cifar", arm, f"seed-{seed}"],  # a base config's own tag, then the runner's
            {"test/acc": acc, "test/acc_top5": 1.0, "val/acc_best": acc - 0.1},
            [{"epoch": 0, "val/acc": acc - 0.2}, {"epoch": 1, "val/acc": acc - 0.1}],
        )
        for arm, seed, acc in (("no-lrn", 0, 0.5), ("no-lrn", 1, 0.6), ("lrn", 0, 0.7))
    ]
    api = FakeWandbApi(runs)
    monkeypatch.setattr("wandb.Api", lambda: api)
    ablation, out = write_ablation_file(tmp_path), tmp_path / "from-wandb"
    assert main(["report", str(ablation), "--wandb", "me/convrepro", f"--out={out}"]) == 0
    assert api.asked == [("me/convrepro", {"group": "tiny_lrn"})]  # the ablation's group
    rows = read_csv(out / "results.csv")
    assert [(r["arm"], r["seed"], r["test_acc"], r["epochs"]) for r in rows] == [
        ("no-lrn", "0", "0.5", "2"),
        ("no-lrn", "1", "0.6", "2"),
        ("lrn", "0", "0.7", "2"),
    ]
    assert "1 of 4 runs have no test result yet: lrn-seed1" in capsys.readouterr().out
    assert "no test result yet (left out): lrn-seed1" in (out / "summary.md").read_text()
    monkeypatch.setattr("wandb.Api", lambda: FakeWandbApi([]))
    assert main(["report", str(ablation), "--wandb", "me/convrepro", f"--out={out}"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: W&B group 'tiny_lrn' of me/convrepro: no runs with arm and")


def test_report_refuses_a_test_result_of_another_checkpoint(tmp_path):
    """A later `test --ckpt_path last` in a grid run's folder must not change the ablation."""
    out = tmp_path / "ablation"
    spec = write_made_up_ablation(out)
    folder = spec.run_folder(out, spec.runs()[1])
    summary = folder.read_summary()
    summary.test_checkpoint = str(folder.checkpoints / "last.ckpt")
    folder.write_summary(summary)
    with pytest.raises(AblationError, match=f"{folder.id}: its test result is of .*last.ckpt"):
        write_report(spec, out)
    summary.test_checkpoint = str(folder.checkpoints / "best.ckpt")
    folder.write_summary(summary)
    write_report(spec, out)


def test_compare_of_a_binary_file_is_one_error_line(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(photo)
    assert main(["compare", str(photo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "photo.jpg" in err
