"""The real CLI under the local launcher: a grid killed mid-run (every process at once, as a
lost machine) resumes where it stopped, and its finished runs are not touched."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_ablate_runner import assert_png, commands_in, read_csv, write_ablation

from convrepro.ablate.__main__ import main
from convrepro.ablate.point import Status, status_of
from convrepro.runs import RunFolder
from convrepro.testing import make_cifar10, skip_md5_checks

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_killed_grid_resumes_with_the_real_cli(tmp_path, monkeypatch):
    cifar_dir = make_cifar10(tmp_path / "data", n_train=96, n_test=32)
    ablation = write_ablation(tmp_path, cifar_dir, overrides={"trainer.limit_train_batches": 2})
    out = tmp_path / "out"
    runs = out / "runs" / "tiny_lrn"
    # sitecustomize there lets torchvision accept made-up CIFAR files (md5 check only); this
    # process opens the data too, before the grid runs
    site = TESTS / "subprocess_site"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(TESTS)]))
    monkeypatch.setenv("WANDB_MODE", "offline")
    skip_md5_checks(monkeypatch)
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
    before = {r: r.summary_file.stat().st_mtime_ns for r in others}

    assert main([str(ablation), "--out", str(out)]) == 0

    assert {r: r.summary_file.stat().st_mtime_ns for r in others} == before
    assert all(len(commands_in(r.log)) == 2 for r in others)  # fit + test, once
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
