"""Provenance: each command that touches a run is recorded next to its config (command line, code
version, software, devices, data fingerprint, times), W&B gets the same record, and an ablation
report says whether its runs share one code version and one data set."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from bad_inputs import TINY, in_workdir, make_data, run_main

from convrepro.ablate.report import REPORT_FILE, write_report
from convrepro.data import ImageFolderDataModule
from convrepro.runs import RunFolder
from convrepro.runs.provenance import (
    CodeVersion,
    Invocation,
    code_version,
    compare_provenance,
    data_fingerprint,
    read_provenance,
    run_data_label,
    write_provenance,
)
from convrepro.testing import make_image_folder, write_made_up_ablation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def workdir(tmp_path, data, monkeypatch) -> Path:
    in_workdir(tmp_path, monkeypatch)
    (tmp_path / "data").symlink_to(data)
    return tmp_path


def test_fit_resume_and_test_each_record_where_the_result_came_from(workdir):
    assert run_main(["fit", *TINY, "--run.id=p"]) == 0
    assert run_main(["fit", *TINY, "--run.id=p", "--ckpt_path=last", "--trainer.max_epochs=2"]) == 0
    assert run_main(["test", *TINY, "--run.id=p", "--ckpt_path=best"]) == 0
    run = RunFolder(workdir / "runs" / "vgg11_cifar" / "p")
    fit, resume, test = read_provenance(run)

    assert [fit.subcommand, resume.subcommand, test.subcommand] == ["fit", "resume", "test"]
    assert fit.command[-len(TINY) - 2 :] == ["fit", *TINY, "--run.id=p"]
    assert fit.cwd == str(workdir)
    assert all(i.started <= i.ended and i.outcome == "finished" for i in (fit, resume, test))
    assert resume.checkpoint.endswith("last.ckpt") and test.checkpoint.endswith("best.ckpt")
    assert resume.changed_settings == {"trainer.max_epochs": [1, 2]}

    assert fit.code == code_version()
    if (ROOT / ".git").exists():  # a checkout: the commit of the code it ran, changed or not
        # HEAD, or under grids' records committed on top of it the commit of the same code
        same_code = ["diff", "--quiet", fit.code.git_commit, "HEAD", "--", ".", ":(exclude)grids"]
        assert subprocess.run(["git", "-C", str(ROOT), *same_code]).returncode == 0
        assert isinstance(fit.code.git_dirty, bool) and len(fit.code.git_diff_sha256) == 64
    assert fit.software["torch"] == torch.__version__
    assert set(fit.software) == {"python", "torch", "torchvision", "lightning", "cuda", "cudnn"}
    assert fit.devices["count"] == fit.devices["world_size"] == fit.devices["nodes"] == 1
    assert fit.devices["precision"] == "32-true" and len(fit.devices["names"]) == 1

    # Each command fingerprints what it read: the training batches, or the test batch.
    folder = workdir / "data" / "cifar10" / "cifar-10-batches-py"
    md5 = {
        name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in fit.data["files"]
    }
    assert fit.data["files"] == md5
    assert sorted(fit.data["files"]) == ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6))]
    assert sorted(test.data["files"]) == ["batches.meta", "test_batch"]
    assert fit.data["published"] is False  # made-up files: not torchvision's md5 sums
    assert (fit.data["split_seed"], fit.data["val_size"]) == (0, 32)
    assert fit.data["fingerprint"] == resume.data["fingerprint"] != test.data["fingerprint"]


def test_image_folder_fingerprint_changes_with_the_files_read(tmp_path):
    folder = make_image_folder(tmp_path / "pets", classes=("cat", "dog"), n_per_class=4)

    def fingerprint() -> str:
        datamodule = ImageFolderDataModule(str(folder), image_size=32, batch_size=2)
        datamodule.setup("fit")
        return data_fingerprint(datamodule)["fingerprint"]

    first = fingerprint()
    assert fingerprint() == first
    image = next((folder / "train" / "cat").iterdir())
    shutil.copy(image, image.with_name(f"copy{image.suffix}"))
    assert fingerprint() != first


def test_wandb_run_config_holds_the_same_record(workdir):
    import wandb

    from convrepro.cli import ConvReproCLI

    cli = ConvReproCLI(args=["fit", *TINY, "--trainer.logger=true", "--trainer.max_steps=1"])
    try:
        (recorded,) = read_provenance(RunFolder(cli.trainer.default_root_dir))
        (in_wandb,) = cli.trainer.logger.experiment.config["provenance"]["invocations"]
        assert in_wandb["data"]["fingerprint"] == recorded.data["fingerprint"]
        assert in_wandb["code"] == asdict(recorded.code) and in_wandb["command"] == recorded.command
    finally:
        wandb.finish()


def made_up_run(root: Path, name: str, *codes: str, data: str = "a") -> RunFolder:
    run = RunFolder(root / name)
    invocations = [
        Invocation(
            subcommand="fit",
            command=[],
            cwd="",
            host="",
            started="",
            code=CodeVersion(git_commit=code * 40, git_dirty=False),
            data={"files": {"data_batch_1": data * 32}},
        )
        for code in codes
    ]
    write_provenance(run, invocations)
    return run


def test_compare_provenance_says_what_the_runs_share_and_flags_the_others(tmp_path):
    same = [made_up_run(tmp_path, f"arm-seed{i}", "1") for i in range(3)]
    lines = compare_provenance(same)
    assert lines[2] == "- All 3 runs share one code version: git 11111111."
    assert lines[3].startswith("- All 3 runs share one data fingerprint: ")

    odd = [
        made_up_run(tmp_path, "resumed", "1", "2"),
        made_up_run(tmp_path, "other-data", "1", data="b"),
        RunFolder(tmp_path / "old"),  # no provenance.json
    ]
    table = "\n".join(compare_provenance(same + odd))
    assert "- Only 4 of 6 runs share the code version git 11111111" in table
    assert (
        "| resumed | **git 11111111 then git 22222222 (changed during the run)** | same |" in table
    )
    assert "| other-data | same | **" in table
    assert "| old | **no provenance.json** | **no provenance.json** |" in table
    assert "arm-seed0" not in table


def test_an_unfinished_run_that_has_not_read_the_test_files_agrees_with_the_finished_ones(
    tmp_path,
):
    """A fit that has not been tested yet read the training files only: that is no other data."""
    finished = {"files": {"train/": "t" * 64, "test/": "e" * 64}}
    unfinished = {"files": {"train/": "t" * 64}}
    other = {"files": {"train/": "x" * 64}}
    named = {"done0": finished, "done1": finished, "fitting": unfinished, "other": other}
    runs = [made_up_run(tmp_path, name, "1") for name in named]
    for run, data in zip(runs, named.values(), strict=True):
        (invocation,) = read_provenance(run)
        invocation.data = data
        write_provenance(run, [invocation])
    common = run_data_label([finished])
    lines = compare_provenance(runs[:3])
    assert lines[3] == (
        f"- All 3 runs share one data fingerprint: {common} "
        "(1 of them, unfinished, read only some of its files)."
    )
    table = "\n".join(compare_provenance(runs))
    assert f"- Only 3 of 4 runs share the data fingerprint {common}" in table
    assert "| other | same | **" in table and "| fitting |" not in table


def test_ablation_report_states_the_provenance_of_its_runs(tmp_path):
    spec = write_made_up_ablation(tmp_path)
    runs = [spec.run_folder(tmp_path, run) for run in spec.runs()]
    for run in runs:
        made_up_run(run.path.parent, run.id, "1")
    made_up_run(runs[-1].path.parent, runs[-1].id, "1", "2")
    write_report(spec, tmp_path)
    report = (tmp_path / REPORT_FILE).read_text()
    assert "## Provenance" in report
    assert f"- Only {len(runs) - 1} of {len(runs)} runs share the code version" in report
    assert f"| {runs[-1].id} | **git 11111111 then git 22222222" in report
    assert json.loads(runs[0].provenance_file.read_text())["invocations"]


def test_a_command_ending_keeps_what_another_command_recorded_meanwhile(tmp_path):
    """A `test` that starts and ends while a `fit` runs: the fit's end must not drop it."""
    from convrepro.runs.folder import RunFolder
    from convrepro.runs.provenance import new_invocation, read_provenance, record_invocation

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    fit = new_invocation("fit", ["python", "main.py", "fit"], "2026-01-01T10:00:00Z")
    record_invocation(run, fit)
    test = new_invocation("test", ["python", "main.py", "test"], "2026-01-01T10:05:00Z")
    record_invocation(run, test)
    test.ended, test.outcome = "2026-01-01T10:06:00Z", "finished"
    record_invocation(run, test)
    fit.ended, fit.outcome = "2026-01-01T11:00:00Z", "finished"
    record_invocation(run, fit)
    recorded = read_provenance(run)
    assert [(i.subcommand, i.outcome) for i in recorded] == [
        ("fit", "finished"),
        ("test", "finished"),
    ]
