"""The ablation runner: ablation files, grid execution and resume, reports, the paper table.

Most tests swap the CLI for a stand-in script that honours the CLI's file contract (run folder,
``history.csv``, ``summary.json``, ``last.ckpt``) in milliseconds; the one marked slow runs the
real CLI with a tiny network, kills the grid mid-run and resumes it.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image
from scipy import stats as scipy_stats

from convrepro.ablate import runner
from convrepro.ablate.__main__ import main
from convrepro.ablate.report import (
    PUBLISHED,
    RESULT_COLUMNS,
    RunResult,
    render_paper_comparison,
    write_results_csv,
)
from convrepro.ablate.runner import Status, status_of
from convrepro.ablate.spec import format_cli_value, load_spec
from convrepro.errors import AblationError
from convrepro.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Stands in for `python -m convrepro`: writes what the CLI writes, no training. The test
# accuracy is 80% + 1 point per seed + 2 points with LRN. FAKE_FAIL="<run id>:<step>,..." makes
# that step exit 3 before doing anything; FAKE_CRASH="<run id>" dies in fit right after epoch 0's
# checkpoint, as a killed run would.
FAKE_CLI = r"""
import json, os, sys
from pathlib import Path

subcommand = sys.argv[1]
args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
run_id = args["run.id"]
run_dir = Path(args["run.root"], args["run.name"], run_id)
print("fake", subcommand, "CUDA_VISIBLE_DEVICES =", os.environ.get("CUDA_VISIBLE_DEVICES"))
if f"{run_id}:{subcommand}" in os.environ.get("FAKE_FAIL", "").split(","):
    sys.exit(3)
seed = int(args["seed_everything"])
summary_file = run_dir / "summary.json"
summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
if subcommand == "fit":
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    history = run_dir / "history.csv"
    rows = [] if history.exists() else ["epoch,step,val/acc"]
    first = 1 if args.get("ckpt_path") == "last" else 0
    for epoch in range(first, 2):
        rows.append(f"{epoch},{epoch + 1},{0.3 + 0.2 * epoch + 0.01 * seed}")
        if epoch == 0:
            (run_dir / "checkpoints" / "last.ckpt").write_text("")
            if os.environ.get("FAKE_CRASH") == run_id:
                history.open("a").write("\n".join(rows) + "\n")
                sys.exit(1)
    history.open("a").write("\n".join(rows) + "\n")
    summary.update(best_val_acc=0.5 + 0.01 * seed, epochs=2, fit_seconds=1.5,
                   best_checkpoint=str(run_dir / "checkpoints" / "best.ckpt"))
else:
    lrn = args.get("model.backbone.init_args.lrn") == "true"
    summary.update({"test/acc": 0.80 + 0.01 * seed + 0.02 * lrn, "test/acc_top5": 0.99})
summary_file.write_text(json.dumps(summary))
"""


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)
    monkeypatch.setattr(runner, "CLI_COMMAND", (sys.executable, str(script)))
    for variable in ("FAKE_FAIL", "FAKE_CRASH"):
        monkeypatch.delenv(variable, raising=False)


def write_ablation(folder: Path, seeds=(0, 1), **changes) -> Path:
    base = folder / "base.yaml"
    base.write_text("trainer:\n  max_epochs: 1\n")
    data = {
        "name": "tiny_lrn",
        "base": "base.yaml",
        "seeds": list(seeds),
        "baseline": "no-lrn",
        "overrides": {"trainer.max_epochs": 2},
        "arms": {
            "no-lrn": {"model.backbone.init_args.lrn": False},
            "lrn": {"model.backbone.init_args.lrn": True},
        },
        **changes,
    }
    path = folder / "ablation.src.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def commands_in(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("=== ")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 200


# -- the ablation file -------------------------------------------------------------------------


def test_ablation_file_becomes_runs_with_cli_arguments(tmp_path):
    spec = load_spec(
        write_ablation(tmp_path, overrides={"model.optimizer": {"class_path": "torch.optim.SGD"}})
    )
    assert spec.name == "tiny_lrn" and spec.base == (tmp_path / "base.yaml").resolve()
    assert [run.id for run in spec.runs()] == [
        "no-lrn-seed0",
        "no-lrn-seed1",
        "lrn-seed0",
        "lrn-seed1",
    ]
    assert spec.runs()[3].cli_args() == [
        "--seed_everything=1",
        "--data.init_args.seed=1",
        '--model.optimizer={"class_path": "torch.optim.SGD"}',
        "--model.backbone.init_args.lrn=true",
    ]
    assert [format_cli_value(v) for v in ("A-LRN", 2, 0.5, None, [1, 2])] == [
        "A-LRN",
        "2",
        "0.5",
        "null",
        "[1, 2]",
    ]


def test_arm_overrides_win_over_common_ones(tmp_path):
    spec = load_spec(
        write_ablation(
            tmp_path, baseline=None, arms={"short": {}, "long": {"trainer.max_epochs": 9}}
        )
    )
    assert [dict(run.overrides) for run in spec.runs()[::2]] == [
        {"trainer.max_epochs": 2},
        {"trainer.max_epochs": 9},
    ]
    assert spec.baseline == "short"  # no baseline given: the first arm


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": "missing.yaml"}, "base config 'missing.yaml' not found"),
        ({"arms": {}}, "`arms:` must map arm names"),
        ({"seeds": []}, "non-empty list of integers"),
        ({"seeds": [0, "1"]}, "non-empty list of integers"),
        ({"seeds": [1, 1]}, "lists a seed twice"),
        ({"baseline": "bn"}, "baseline 'bn' is not an arm"),
        ({"arms": {"a/b": {}}}, "arm name 'a/b' names a folder"),
        ({"seed": [0]}, "unknown key(s) seed"),
        ({"overrides": {"seed_everything": 3}}, "which the runner sets"),
        ({"overrides": {"--trainer.max_epochs": 3}}, "write keys without dashes"),
        ({"overrides": ["trainer.max_epochs=3"]}, "must map dotted config keys"),
    ],
)
def test_bad_ablation_files_say_what_to_fix(tmp_path, changes, message):
    with pytest.raises(AblationError) as error:
        load_spec(write_ablation(tmp_path, **changes))
    assert message in str(error.value)


def test_one_seed_warns_that_there_will_be_no_statistics(tmp_path):
    with pytest.warns(UserWarning, match="no spread estimate"):
        load_spec(write_ablation(tmp_path, seeds=[0]))


@pytest.mark.parametrize("name", ["lrn_vgg_a_cifar", "lrn_alexnet_cifar", "depth_vgg_cifar"])
def test_shipped_ablations_override_keys_their_base_config_has(name):
    spec = load_spec(ROOT / "configs" / "ablations" / f"{name}.yaml")
    assert spec.name == name and len(spec.seeds) >= 3 and len(spec.arms) >= 2
    base = yaml.safe_load(spec.base.read_text())
    for run in spec.runs():
        for key in run.overrides:
            node = base
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key} not in base config"
                node = node[part]


# -- running the grid --------------------------------------------------------------------------


def test_runs_spread_over_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(runner.torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert runner.visible_devices() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a scheduler's pick: keep its numbering
    assert runner.visible_devices() == ["3", "5"]


def test_grid_runs_every_run_in_parallel_and_reports(tmp_path, fake_cli, capsys):
    ablation = write_ablation(tmp_path, seeds=(0, 1, 2))
    out = tmp_path / "out"
    assert main([str(ablation), "--out", str(out), "--devices", "0,1"]) == 0

    rows = read_csv(out / "results.csv")
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [(r["arm"], r["seed"]) for r in rows] == [
        (arm, str(seed)) for arm in ("no-lrn", "lrn") for seed in (0, 1, 2)
    ]
    assert [float(r["test_acc"]) for r in rows] == pytest.approx(
        [0.80, 0.81, 0.82, 0.82, 0.83, 0.84]
    )
    assert {r["epochs"] for r in rows} == {"2"}

    run_dir = out / "runs" / "tiny_lrn" / "lrn-seed1"
    fit, test = commands_in(run_dir / "log.txt")
    assert "--run.group=tiny_lrn" in fit and """'--run.tags=["lrn", "seed-1"]'""" in fit
    assert "--seed_everything=1 --data.init_args.seed=1 --trainer.max_epochs=2" in fit
    assert test.endswith("--ckpt_path=best")
    devices = {
        line.split("CUDA_VISIBLE_DEVICES=")[1].split()[0]
        for log in out.glob("runs/tiny_lrn/*/log.txt")
        for line in commands_in(log)
    }
    assert devices == {"0", "1"}  # two runs at a time, one per device

    summary = (out / "summary.md").read_text()
    assert "| no-lrn | 3 | 81.00 ± 1.00 | [78.52, 83.48] |" in summary
    welch = scipy_stats.ttest_ind([82, 83, 84], [80, 81, 82], equal_var=False)
    low, high = welch.confidence_interval()
    assert (
        f"| lrn | +2.00 | [{low:+.2f}, {high:+.2f}] | {welch.pvalue:.3f} ({welch.df:.1f}) "
        "| n/a (3) | 0.200 (20) |" in summary
    )
    assert "the same difference for every seed" in summary  # why the paired p is n/a
    for plot in ("val_acc_curves.png", "test_acc.png"):
        assert_png(out / plot)
    assert "wrote" in capsys.readouterr().out


def test_rerun_skips_finished_runs_resumes_partial_ones_and_retries_failures(
    tmp_path, fake_cli, monkeypatch, capsys
):
    ablation = write_ablation(tmp_path)
    out = tmp_path / "out"
    runs = out / "runs" / "tiny_lrn"
    monkeypatch.setenv("FAKE_FAIL", "no-lrn-seed1:fit,lrn-seed1:test")
    monkeypatch.setenv("FAKE_CRASH", "lrn-seed0")
    assert main([str(ablation), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    for failed, step, code in (("no-lrn-seed1", "fit", 3), ("lrn-seed0", "fit", 1)):
        assert f"{failed}: {step} exited with {code}; see {runs / failed / 'log.txt'}" in printed
    assert "lrn-seed1: test exited with 3" in printed
    assert [
        status_of(RunFolder(runs / r)) for r in ("no-lrn-seed0", "no-lrn-seed1", "lrn-seed0")
    ] == [
        Status.DONE,
        Status.NEW,
        Status.PARTIAL,
    ]
    assert status_of(RunFolder(runs / "lrn-seed1")) is Status.UNTESTED
    assert [r["arm"] for r in read_csv(out / "results.csv")] == ["no-lrn"]
    assert (
        "no test result yet (left out): no-lrn-seed1, lrn-seed0, lrn-seed1"
        in (out / "summary.md").read_text()
    )

    finished = runs / "no-lrn-seed0"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.rglob("*") if p.is_file()}
    monkeypatch.delenv("FAKE_FAIL")
    monkeypatch.delenv("FAKE_CRASH")
    assert main([str(ablation), "--out", str(out)]) == 0
    assert "1 of 4 runs done, 3 to go" in capsys.readouterr().out

    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.rglob("*") if p.is_file()}
    assert after == before  # the finished run was not touched
    partial = commands_in(runs / "lrn-seed0" / "log.txt")
    assert [c.split(" fit ")[-1].endswith("--ckpt_path=last") for c in partial[:2]] == [False, True]
    assert partial[2].endswith("--ckpt_path=best")
    epochs = [row["epoch"] for row in read_csv(runs / "lrn-seed0" / "history.csv")]
    assert epochs == ["0", "1"]  # continued from epoch 0's checkpoint, not restarted
    retried = commands_in(runs / "no-lrn-seed1" / "log.txt")
    assert len(retried) == 3 and "--ckpt_path" not in retried[1]  # failed fit, fresh fit, test
    assert len(commands_in(runs / "lrn-seed1" / "log.txt")) == 3  # fit, failed test, test
    assert len(read_csv(out / "results.csv")) == 4


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, fake_cli, capsys):
    out = tmp_path / "out"
    assert main([str(write_ablation(tmp_path)), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "0 of 4 runs done, 4 to go" in printed
    assert "[new] lrn-seed1" in printed and "--run.id=lrn-seed1" in printed
    assert not out.exists()


def test_changed_settings_are_refused_before_anything_runs(tmp_path, fake_cli, monkeypatch, capsys):
    out = tmp_path / "out"
    ablation = write_ablation(tmp_path)
    monkeypatch.setenv("FAKE_FAIL", "lrn-seed1:fit")
    assert main([str(ablation), "--out", str(out)]) == 1
    monkeypatch.delenv("FAKE_FAIL")
    changed = write_ablation(tmp_path, overrides={"trainer.max_epochs": 3})
    assert main([str(changed), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "were started with other settings" in error and "lrn-seed0" in error
    assert len(commands_in(out / "runs" / "tiny_lrn" / "lrn-seed1" / "log.txt")) == 1


def test_report_command_rerenders_without_training(tmp_path, fake_cli, capsys):
    out = tmp_path / "out"
    assert main([str(write_ablation(tmp_path)), "--out", str(out)]) == 0
    results = (out / "results.csv").read_text()
    for name in ("results.csv", "summary.md", "val_acc_curves.png", "test_acc.png"):
        (out / name).unlink()
    (tmp_path / "fake_cli.py").unlink()  # nothing may run
    assert main(["report", str(out)]) == 0
    assert (out / "results.csv").read_text() == results
    assert "## Difference from `no-lrn`" in (out / "summary.md").read_text()
    assert_png(out / "test_acc.png")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an ablation output folder" in capsys.readouterr().err


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


def test_compare_command_reads_ablation_folders(tmp_path, fake_cli, capsys):
    out = tmp_path / "out"
    assert main([str(write_ablation(tmp_path)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), "--output", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| tiny_lrn | no-lrn | 2 | 19.50 ± 0.71 |" in table  # name from its ablation.yaml
    assert main(["compare", str(tmp_path / "nowhere.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


# -- the real CLI, killed and resumed ----------------------------------------------------------

TINY_BASE = """
trainer:
  max_epochs: 2
  logger: false
  accelerator: cpu
  devices: 1
  limit_val_batches: 1
  limit_test_batches: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  callbacks: [{class_path: tiny_backbone.HoldAtEpoch, init_args: {epoch: 1}}]
model:
  backbone: {class_path: tiny_backbone.TinyNet}
  optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.05}}
data:
  class_path: convrepro.data.CIFAR10DataModule
  init_args: {data_dir: DATA, batch_size: 16, val_size: 32, num_workers: 0, download: false}
"""

# torchvision checks CIFAR-10's md5 sums; made-up files need the check skipped in every process.
SITECUSTOMIZE = """
import pytest
from datasets import skip_md5_checks

skip_md5_checks(pytest.MonkeyPatch())
"""


@pytest.mark.slow
def test_killed_grid_resumes_with_the_real_cli(tmp_path, monkeypatch):
    from datasets import make_cifar10

    make_cifar10(tmp_path / "data", n_train=96, n_test=32)
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "tiny.yaml").write_text(TINY_BASE.replace("DATA", str(tmp_path / "data")))
    ablation = write_ablation(
        tmp_path,
        base="tiny.yaml",
        overrides={"trainer.limit_train_batches": 2},
    )
    out = tmp_path / "out"
    runs = out / "runs" / "tiny_lrn"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(TESTS)]))
    monkeypatch.setenv("WANDB_MODE", "offline")
    marker = tmp_path / "held"
    held = "lrn-seed1"  # the last run: the first three are finished when it is held

    grid_log = tmp_path / "grid.log"
    command = [sys.executable, "-m", "convrepro.ablate", str(ablation), f"--out={out}"]
    with grid_log.open("w") as log:
        grid = subprocess.Popen(
            [*command, "--devices=0,1"],
            env={**os.environ, "TINY_HOLD_RUN": held, "TINY_HOLD_MARKER": str(marker)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        others = [RunFolder(runs / r) for r in ("no-lrn-seed0", "no-lrn-seed1", "lrn-seed0")]
        while not (marker.exists() and all(status_of(r) is Status.DONE for r in others)):
            assert grid.poll() is None, grid_log.read_text()
            assert time.monotonic() < deadline, "the grid did not reach the held run"
            time.sleep(0.2)
    finally:
        os.killpg(grid.pid, signal.SIGKILL)  # the runner and every run it started
        grid.wait()
    assert status_of(RunFolder(runs / held)) is Status.PARTIAL
    before = {r: (r / "summary.json").stat().st_mtime_ns for r in others}

    assert main([str(ablation), "--out", str(out)]) == 0

    assert {r: (r / "summary.json").stat().st_mtime_ns for r in others} == before
    assert all(len(commands_in(r / "log.txt")) == 2 for r in others)  # fit + test, once
    fresh, resumed, tested = commands_in(runs / held / "log.txt")
    assert "--ckpt_path" not in fresh
    assert resumed.endswith("--ckpt_path=last") and tested.endswith("--ckpt_path=best")
    log = (runs / held / "log.txt").read_text()
    assert "Restoring states from the checkpoint path at" in log
    assert [row["epoch"] for row in read_csv(runs / held / "history.csv")] == ["0", "1"]
    rows = read_csv(out / "results.csv")
    assert len(rows) == 4 and all(0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)
    assert all(not math.isnan(float(r["best_val_acc"])) for r in rows)
    summary = (out / "summary.md").read_text()
    assert " ± " in summary and "95% CI" in summary and "Welch p" in summary
    for plot in ("val_acc_curves.png", "test_acc.png"):
        assert_png(out / plot)
