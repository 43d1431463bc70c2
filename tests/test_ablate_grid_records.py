"""A grid that outlives its machine (``--commit-records``): stopped between points on one clone
of the repository, it continues on a fresh clone of what it pushed, with the data elsewhere,
without redoing a finished point; records of other code or other data are refused.

The grid is the runner tests' tiny one (a real config, made-up CIFAR-10, each CLI step a
stand-in script that also writes the provenance a run keeps); its repository is a temporary one
with a bare ``origin``, each "machine" a clone with its own data folder and ``--out``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
from test_ablate_runner import (
    commands_in,
    fake_cli,  # noqa: F401  (the fixture, used by name below)
    read_csv,
    write_ablation,
)

from convrepro.ablate import local
from convrepro.ablate.__main__ import main
from convrepro.ablate.grid_records import GridRecords
from convrepro.ablate.local import run_grid
from convrepro.ablate.publish import RUN_RECORDS, publish
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, load_spec
from convrepro.data import CIFAR10DataModule
from convrepro.errors import AblationError
from convrepro.runs.provenance import checkout_version, data_fingerprint
from convrepro.testing import make_cifar10

pytestmark = pytest.mark.usefixtures("fake_cli", "git_identity")
POINTS = ["no-lrn-seed0", "lrn-seed0", "no-lrn-seed1", "lrn-seed1"]  # seed by seed


class MachineGone(Exception):
    """The machine went away between two points."""


@pytest.fixture
def git_identity(monkeypatch):
    """Commits by a test identity, whatever this machine's git config says."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Grid Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "grid@example.org")


def git(repository: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def first_machine(tmp_path: Path) -> tuple[Path, Path]:
    """The grid's repository on branch ``grid`` (code, base config, ablation file), pushed to a
    bare ``origin``; returns that first clone and ``origin``."""
    origin, repository = tmp_path / "origin.git", tmp_path / "a"
    repository.mkdir()
    write_ablation(repository)  # the data folder comes with --set, per machine
    (repository / "code.py").write_text("VERSION = 1\n")
    git(tmp_path, "init", "--quiet", "--bare", str(origin))
    git(repository, "init", "--quiet", "-b", "grid")
    git(repository, "add", ".")
    git(repository, "commit", "--quiet", "-m", "the grid's code")
    git(repository, "push", "--quiet", "-u", str(origin), "grid")
    return repository, origin


def clone(origin: Path, where: Path) -> Path:
    git(where.parent, "clone", "--quiet", "-b", "grid", str(origin), str(where))
    return where


def grid_on(repository: Path, data: Path, monkeypatch) -> AblationSpec:
    """The grid as a machine with the clone ``repository`` and ``data`` runs it: its steps
    record that clone's code version and the fingerprint of ``data``."""
    datamodule = CIFAR10DataModule(
        data_dir=str(data), batch_size=16, val_size=32, num_workers=0, download=False
    )
    datamodule.setup()
    code = asdict(checkout_version(repository))
    provenance = {"code": code, "data": data_fingerprint(datamodule)}
    monkeypatch.setenv("FAKE_PROVENANCE", json.dumps(provenance))
    ablation = repository / "ablation.src.yaml"
    return load_spec(ablation).with_settings([f"data.init_args.data_dir={data}"])


def points_run(monkeypatch, until_gone: int | None = None) -> list[str]:
    """The points the launcher starts from now on (filled in as it runs); after
    ``until_gone`` of them the machine is gone."""
    started: list[str] = []
    run_command = getattr(local.run_command, "runs", local.run_command)  # the fake CLI's

    def run_or_vanish(command: list[str], device: str | None) -> int:
        if len(started) == until_gone:
            raise MachineGone
        arm, seed = (next(a.split("=")[1] for a in command if a.startswith(k)) for k in WHERE)
        started.append(f"{arm}-seed{seed}")
        return run_command(command, device)

    run_or_vanish.runs = run_command  # type: ignore[attr-defined]
    monkeypatch.setattr(local, "run_command", run_or_vanish)
    return started


WHERE = ("--arm=", "--seed=")


def stopped_after_seed_0(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """Machine A runs the grid with records committed and pushed, and is gone after two points;
    returns its data folder and ``origin``."""
    repository, origin = first_machine(tmp_path)
    data = make_cifar10(tmp_path / "data-a", n_train=96, n_test=32)
    spec, out = grid_on(repository, data, monkeypatch), tmp_path / "out-a"
    started = points_run(monkeypatch, until_gone=2)
    with pytest.raises(MachineGone):
        run_grid(spec, out, records=GridRecords.open(spec, out, repository, push=True))
    assert started == POINTS[:2]
    return data, origin


def test_a_grid_stopped_between_points_continues_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    data_a, origin = stopped_after_seed_0(tmp_path, monkeypatch)
    repository = clone(origin, tmp_path / "b")  # what machine A pushed, on another machine
    data = shutil.copytree(data_a, tmp_path / "data-b")  # the same data, elsewhere
    spec, out = grid_on(repository, data, monkeypatch), tmp_path / "out-b"
    started = points_run(monkeypatch)

    assert run_grid(spec, out, records=GridRecords.open(spec, out, repository, push=True)) == []

    assert started == POINTS[2:]  # the finished points were not run again
    grid = repository / "grids" / "tiny_lrn"
    assert f"2 of 4 runs done (2 committed in {grid}), 2 to go" in capsys.readouterr().out
    runs = out / "runs" / "tiny_lrn"
    for point in POINTS[:2]:  # restored: machine A's fit and test, nothing more
        assert len(commands_in(runs / point / "log.txt")) == 2
        assert not (runs / point / "checkpoints").exists()
    published = publish(spec, out, tmp_path / "results")
    assert not published.missing
    rows = read_csv(published.folder / "results.csv")
    assert [float(row["test_acc"]) for row in rows] == pytest.approx([0.80, 0.81, 0.82, 0.83])

    # one commit per finished point, on top of the code, pushed; the code version unchanged
    subjects = git(origin, "log", "--format=%s", "grid").splitlines()
    assert subjects == [
        *(f"grid tiny_lrn: records of {p} (finished points, no checkpoints)" for p in POINTS[::-1]),
        "the grid's code",
    ]
    first = git(repository, "rev-list", "--max-parents=0", "HEAD")
    assert checkout_version(repository).git_commit == first
    assert not git(repository, "status", "--porcelain")
    files = [path for path in grid.rglob("*") if path.is_file()]
    assert {path.name for path in files} == {SPEC_FILE, "ablation_run.json", *RUN_RECORDS} - {
        "config.yaml"  # the stand-in CLI writes none
    }
    assert not [path for path in files if str(tmp_path) in path.read_text()]  # no machine path
    assert "data.init_args.data_dir: <DATA_DIR>" in (grid / SPEC_FILE).read_text()


def test_records_of_other_code_data_or_settings_are_refused_before_anything_runs(
    tmp_path, monkeypatch
):
    data_a, origin = stopped_after_seed_0(tmp_path, monkeypatch)
    started = points_run(monkeypatch)

    changed = clone(origin, tmp_path / "changed")
    (changed / "code.py").write_text("VERSION = 2\n")
    git(changed, "commit", "--quiet", "-am", "other code")
    spec, out = grid_on(changed, data_a, monkeypatch), tmp_path / "out-changed"
    records = GridRecords.open(spec, out, changed)
    other_code = r"2 committed record\(s\) in .* no-lrn-seed0: made by other code \(git \w{8};"
    with pytest.raises(AblationError, match=other_code):
        run_grid(spec, out, records=records)

    same = clone(origin, tmp_path / "same")
    spec = grid_on(same, data_a, monkeypatch).with_settings(["trainer.max_epochs=3"])
    out = tmp_path / "out-settings"
    other_settings = r"its settings differ \(recorded --trainer.max_epochs=2; now --trainer.max_"
    with pytest.raises(AblationError, match=other_settings):
        run_grid(spec, out, records=GridRecords.open(spec, out, same))

    other_data = make_cifar10(tmp_path / "data-other", n_train=96, n_test=32, seed=1)
    spec, out = grid_on(same, other_data, monkeypatch), tmp_path / "out-other"
    with pytest.raises(AblationError, match=r"lrn-seed0: made from other data \(fingerprint"):
        run_grid(spec, out, records=GridRecords.open(spec, out, same))

    assert started == []  # refused before anything ran or was written:
    assert not [path for path in tmp_path.glob("out-*") if path.name != "out-a"]
    (same / "code.py").write_text("VERSION = 3\n")
    with pytest.raises(AblationError, match="has uncommitted changes"):
        GridRecords.open(spec, out, same)
    with pytest.raises(AblationError, match="is not in a git repository"):
        GridRecords.open(spec, out, tmp_path)


def test_push_without_commit_records_is_one_error_line(tmp_path, capsys):
    ablation = write_ablation(tmp_path)
    assert main([str(ablation), "--push", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --push pushes what --commit-records commits") and (
        error.count("\n") == 1
    )
