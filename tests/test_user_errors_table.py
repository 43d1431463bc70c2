"""Every bad input and fault found so far, one row each: the command, its exit status, phrases
its message must hold, and what it must leave on disk (see :class:`bad_inputs.Row`).

Exit 2 (a user error) and 3 (diverged) print exactly one ``error:`` line and no traceback; a
command that fails before training leaves no run folder, one that fails later leaves the run
resumable. The next bad input found is one more row. Rows run the CLI in this process (fast);
a stop signal that could kill the test process if handled wrongly is tested in a subprocess
(``test_reliability_resume.py``).
"""

from __future__ import annotations

import pickle
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from bad_inputs import (
    CIFAR,
    CONFIGS,
    CSV_LOGGER,
    FOLDER,
    RUN,
    TINY,
    Malicious,
    Row,
    cifar_folders,
    data_folder_removed,
    file,
    in_workdir,
    last_good_checkpoint_is_good,
    launched_by,
    make_data,
    make_prepared_runs,
    no_gpu,
    no_interrupt_checkpoint,
    no_network,
    nothing_outside_the_root,
    pets,
    prepared,
    prepared_config_kept,
    read_only_root,
    recorded_classes,
    resumable,
    resumed_with_more_epochs,
    run_main,
    save,
    scored,
    second_ctrl_c_while_saving,
    signal_at,
    started_alone,
    training_log_kept,
)
from torch import nn

from convrepro.training.classifier import ImageClassifier

from tiny_backbone import TinyNet

# Damaged files of every kind: tests/test_weights.py
RANDOM_BYTES = random.Random(0).randbytes(99)


def fit(*extra: str) -> list[str]:
    return ["fit", *TINY, *extra]


def fit_folder(*extra: str) -> list[str]:
    return ["fit", *FOLDER, "--data.init_args.on_bad_image=skip", *extra]


def bad_ckpt(kind: str, says: str | tuple[str, ...], write: Callable[[Path], None]) -> Row:
    return Row(
        f"--ckpt_path {kind}", fit("--ckpt_path=x.ckpt"), 2, says, setup=file("x.ckpt", write)
    )


SIGTERM, SIGINT = signal.SIGTERM, signal.SIGINT
TWICE = "trainer:\n  max_epochs: 1\ntrainer:\n  max_epochs: 2\n"
COSINE = "convrepro.training.WarmupCosineLR"
ROWS = [
    # Issue 6: config typos and types, data, files, checkpoints, sizes, stops, divergence.
    Row("unknown option", fit("--trainer.max_epoks=3"), 2, "--trainer.max_epoks=3"),
    Row(
        "wrong type",
        fit("--trainer.max_epochs=three"),
        2,
        "error: trainer.max_epochs: expected int; Given value: three",
    ),
    Row(
        "bad value inside a class",
        fit("--data.init_args.crop_padding=-1"),
        2,
        "error: data.crop_padding must be >= 0, got -1",
    ),
    Row(
        "missing data",
        fit("--data.init_args.data_dir=nowhere", "--data.init_args.download=false"),
        2,
        ("CIFAR-10 is missing or incomplete in", "data.download=true"),
    ),
    Row(
        "download without network (no data folder left)",
        fit("--data.init_args.data_dir=fresh/cifar10"),
        2,
        ("could not download CIFAR-10", "name resolution"),
        data_folder_removed,
        no_network,
    ),
    Row("unreadable images", ["fit", *FOLDER], 2, "3 unreadable image files in", setup=pets()),
    Row(
        "train and test classes differ",
        fit_folder(),
        2,
        ("class folders", "wolf"),
        setup=pets(lambda f: (f / "test" / "dog").rename(f / "test" / "wolf")),
    ),
    Row(
        "checkpoint of another architecture",
        fit("--ckpt_path=other.ckpt"),
        2,
        ("--ckpt_path other.ckpt was saved from another model", "Missing keys: features.0.weight"),
        setup=file(
            "other.ckpt",
            save({"state_dict": nn.Linear(3, 4).state_dict(), "pytorch-lightning_version": "2"}),
        ),
    ),
    Row(
        "weights file holding code is not unpickled",
        ["fit", *CIFAR, "--trainer.max_epochs=1", "--model.backbone.init_args.weights=model.pt"],
        2,
        "refusing to read model.pt",
        setup=file("model.pt", save({"model": ImageClassifier})),
    ),
    Row(
        "batch larger than the data",
        fit("--data.init_args.batch_size=512"),
        2,
        "batch size 512 is larger than the 128-image training split",
    ),
    Row(
        "images too small for the model",
        ["fit", "--config", str(CONFIGS / "alexnet_cifar.yaml"), *CIFAR[2:], "--data.resize=null"],
        2,
        ("needs inputs of at least 67x67 px, got 32x32", "resize: 227"),
    ),
    Row(
        "resume without a checkpoint",
        fit("--ckpt_path=last"),
        2,
        (
            "--ckpt_path last: no run of experiment 'vgg11_cifar' has a checkpoint (looked in "
            "runs/vgg11_cifar/*/checkpoints/)"
        ),
    ),
    # Reliability item 8: a launcher's id made up for this launch names no run to resume.
    Row(
        "resume under torchrun --standalone without a checkpoint",
        fit("--ckpt_path=last"),
        2,
        ("looked in runs/vgg11_cifar/*/checkpoints/", "torchrun's id for this launch"),
        setup=launched_by(
            TORCHELASTIC_RUN_ID="0f8e2a6c-5b1d-4c3e-9a7f-2d4b6c8e0a1f", LOCAL_RANK="0"
        ),
    ),
    Row(
        "resume in a new SLURM job without a checkpoint",
        fit("--ckpt_path=last"),
        2,
        ("looked in runs/vgg11_cifar/*/checkpoints/", "SLURM job 88 is this launch's own"),
        setup=launched_by(SLURM_JOB_ID="88"),
    ),
    Row(
        "resume a named torchrun run that has no checkpoint",
        fit("--ckpt_path=last"),
        2,
        "the run of torchrun --rdzv-id=vgg-run1, runs/vgg11_cifar/vgg-run1, has no checkpoint",
        setup=launched_by(TORCHELASTIC_RUN_ID="vgg-run1", LOCAL_RANK="0"),
    ),
    Row(
        "SIGTERM while training",
        fit(*signal_at(SIGTERM, step=2)),
        143,
        "SIGTERM: stopped at step 2 and saved",
        resumable,
    ),
    Row("Ctrl+C", fit(*signal_at(SIGINT, step=2)), 130, "SIGINT: stopped at step 2", resumable),
    # Issue 10, 1: only weights whose loss was seen finite are named good.
    Row(
        "diverged, a checkpoint every step",
        fit("--run.checkpoint_every_n_steps=1", "--model.optimizer.init_args.lr=1e12"),
        3,
        ("error: training diverged", "the last good checkpoint is", "(step 1)"),
        last_good_checkpoint_is_good,
    ),
    # 2: later commands add to CSVLogger's metrics.csv.
    Row(
        "test adds to the training log",
        ["test", *TINY, *CSV_LOGGER, "--run.id=prepared", "--ckpt_path=best"],
        0,
        left=training_log_kept,
        setup=prepared("finished"),
    ),
    # 3: a resume applies a setting (and records it) or refuses naming it; config.yaml stays.
    Row(
        "resume with another learning rate",
        fit("--ckpt_path=last", "--model.optimizer.init_args.lr=0.5"),
        2,
        "model.optimizer.init_args.lr (0.01 in the checkpoint, 0.5 now)",
        prepared_config_kept,
        prepared("finished"),
    ),
    Row(
        "resume with another batch size",
        fit("--ckpt_path=last", "--data.init_args.batch_size=16"),
        2,
        "data.init_args.batch_size (32 in the checkpoint, 16 now)",
        prepared_config_kept,
        prepared("finished"),
    ),
    Row(
        "resume for more epochs",
        fit("--ckpt_path=last", "--trainer.max_epochs=2"),
        0,
        left=resumed_with_more_epochs,
        setup=prepared("finished"),
    ),
    Row(
        "new fit into a run that has checkpoints",
        fit("--run.id=prepared"),
        2,
        ("run.id=prepared", "holds a run with checkpoints already", "--ckpt_path last"),
        prepared_config_kept,
        prepared("finished"),
    ),
    # 4: a schedule that needs validation, without any, fails before training.
    Row(
        "plateau schedule without validation",
        fit("--data.init_args.val_size=0"),
        2,
        ("model.lr_scheduler: ReduceLROnPlateau", "data.val_size"),
    ),
    Row(
        "no validation, a schedule without it",
        fit("--data.init_args.val_size=0", "--model.lr_scheduler=" + COSINE),
        0,
        left=resumable,
    ),
    Row(
        "weights-only LR drop on a model without named weight groups",
        fit(
            "--model.lr_scheduler=convrepro.training.WeightsMultiStepLR",
            "--model.lr_scheduler.init_args.milestones=[1]",
        ),
        2,
        ("model.lr_scheduler: WeightsMultiStepLR", "'*.weight'", "MultiStepLR to lower every"),
    ),
    # 6: --ckpt_path files that are not checkpoints, read by the same reader as weights=.
    bad_ckpt("text", "--ckpt_path: ", lambda p: p.write_text("hello")),
    bad_ckpt("random bytes", "--ckpt_path: ", lambda p: p.write_bytes(RANDOM_BYTES)),
    bad_ckpt("empty", "--ckpt_path: cannot read", lambda p: p.write_bytes(b"")),
    bad_ckpt("pickled list", "holds no state dict (list)", save([1, 2])),
    bad_ckpt(
        "malicious pickle",
        "--ckpt_path: refusing to read",
        lambda p: p.write_bytes(pickle.dumps(Malicious())),
    ),
    bad_ckpt(
        "weights only",
        ("holds network weights only", "model.backbone.init_args.weights"),
        save(TinyNet().state_dict()),
    ),
    Row(
        "predict on a folder without images",
        ["predict", *TINY, "--data.init_args.predict_path=empty"],
        2,
        "data.predict_path=empty: no image files in it or any folder below it",
        setup=lambda workdir, monkeypatch: (workdir / "empty" / "sub").mkdir(parents=True),
    ),
    # 7: image-folder structure.
    Row(
        "empty class folder",
        fit_folder(),
        2,
        ("no image files", "pets/train/bird/"),
        setup=pets(lambda f: [(f / split / "bird").mkdir() for split in ("train", "test")]),
    ),
    Row(
        "CIFAR-10 folders with an empty class folder (trained as 9 classes)",
        fit("--data.init_args.source=folders", "--data.init_args.data_dir=cifar_folders"),
        2,
        ("no image files", "cifar_folders/train/frog/: add the images"),
        setup=cifar_folders(lambda f: [p.unlink() for p in (f / "train" / "frog").iterdir()]),
    ),
    Row(
        "test split without images",
        ["test", *FOLDER],
        2,
        ("no image files", "pets/test/cat/, pets/test/dog/"),
        setup=pets(lambda f: [p.unlink() for p in (f / "test").glob("*/*")]),
    ),
    Row(
        "hidden folders are not classes",
        fit_folder(),
        0,
        left=resumable,
        setup=pets(lambda f: [(f / "train" / name).mkdir() for name in (".git", "__MACOSX")]),
    ),
    # reliability 7: the class count is the data's; one given otherwise is said and recorded.
    Row(
        "num_classes given that disagrees with the data",
        fit_folder("--model.backbone.init_args.num_classes=10"),
        0,
        (
            "model.backbone.init_args.num_classes=10 is not the data's class count: pets has 2 "
            "classes, so the model is built for 2",
        ),
        recorded_classes(2),
        pets(),
    ),
    Row(
        "num_classes left to the data (the backbone's default is another)",
        fit_folder(),
        0,
        left=recorded_classes(2),
        setup=pets(),
        never_says="is not the data's class count",
    ),
    Row(
        "one class",
        fit_folder(),
        2,
        "at least two (only one, cat/)",
        setup=pets(lambda f: [shutil.rmtree(f / split / "dog") for split in ("train", "test")]),
    ),
    Row(
        "images but no class folders",
        fit_folder(),
        2,
        "at least two (none)",
        setup=pets(lambda f: [shutil.rmtree(f / "train" / c) for c in ("cat", "dog")]),
    ),
    # 8: the informative part of a parser error is kept.
    Row("config missing", ["fit", "--config=no.yaml"], 2, "error: config: File does not exist"),
    Row("config is a folder", ["fit", "--config=."], 2, "error: config: Path is not a file"),
    # 9: tracebacks that are one line now.
    Row(
        "negative learning rate (no config.yaml left)",
        fit("--model.optimizer.init_args.lr=-0.1"),
        2,
        "model.optimizer: Invalid learning rate: -0.1",
    ),
    Row(
        "GPU asked for, none there",
        fit("--trainer.accelerator=gpu"),
        2,
        ("No supported gpu backend", "trainer.accelerator"),
        setup=no_gpu,
    ),
    # issue 19: a launch of another layout than the config's (each process would train alone)
    Row(
        "torchrun started two nodes, the config says one",
        fit(),
        2,
        (
            "trainer.num_nodes=1 x trainer.devices=1: torchrun (WORLD_SIZE=2, LOCAL_WORLD_SIZE=1) "
            "started this run as 2 node(s) x 1 process(es) each",
            "Pass --trainer.num_nodes=2 --trainer.devices=1",
        ),
        setup=launched_by(
            TORCHELASTIC_RUN_ID="tr",
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="1",
            RANK="0",
            LOCAL_RANK="0",
            GROUP_RANK="0",
        ),
    ),
    Row(
        "srun started two nodes, the config one node of two devices",
        fit("--trainer.devices=2"),
        2,
        "SLURM (SLURM_NTASKS=2, SLURM_NNODES=2) started this run as 2 node(s) x 1 process(es)",
        setup=launched_by(
            SLURM_JOB_ID="77",
            SLURM_JOB_NAME="train",
            SLURM_NTASKS="2",
            SLURM_NNODES="2",
            SLURM_NTASKS_PER_NODE="1",
            SLURM_PROCID="0",
            SLURM_LOCALID="0",
            SLURM_NODEID="0",
        ),
    ),
    # reliability 6: several nodes asked of a plain process (it waited for the timeout, 600 s;
    # 5 s here, so that the row fails rather than hangs if the check goes)
    Row(
        "two nodes asked of a process started alone",
        fit("--trainer.num_nodes=2", "--run.process_group_timeout_s=5"),
        2,
        (
            "trainer.num_nodes=2, but this process was started on its own",
            "torchrun --nnodes=2 --nproc-per-node=1 --node-rank=<0..1>",
            "srun python main.py",
        ),
        setup=started_alone,
    ),
    Row(
        "run.root is a file",
        fit("--run.root=x.ckpt"),
        2,
        ("run.root=x.ckpt", "is a file, not a folder"),
        setup=file("x.ckpt", lambda p: p.write_text("")),
    ),
    Row(
        "run.root read-only",
        fit("--run.root=readonly"),
        2,
        ("run.root=readonly", "cannot write into"),
        setup=read_only_root,
    ),
    Row(
        "Ctrl+C again while saving",
        fit("--run.checkpoint_every_n_steps=1", *signal_at(SIGINT, step=2)),
        130,
        "stopped without saving",
        no_interrupt_checkpoint,
        second_ctrl_c_while_saving,
    ),
    # 10: "best" is the best checkpoint or an error; what test scored is recorded.
    Row(
        "test best of a run without one",
        ["test", *TINY, "--run.id=prepared", "--ckpt_path=best"],
        2,
        ("--ckpt_path best: ", "has no best checkpoint", "interrupted.ckpt (mid-epoch weights)"),
        scored(""),
        prepared("interrupted"),
    ),
    Row(
        "test mid-epoch weights asked for by name",
        ["test", *TINY, f"--ckpt_path={RUN}/checkpoints/interrupted.ckpt"],
        0,
        left=scored("interrupted.ckpt"),
        setup=prepared("interrupted"),
    ),
    # 11: names are single path components.
    Row(
        "run name ..",
        fit("--run.name=.."),
        2,
        "run.name='..' must be one folder name",
        nothing_outside_the_root,
    ),
    # 12: no W&B sync hint for a folder just removed; a stop during the sanity check saves.
    Row(
        "W&B offline, a failed start",
        fit("--trainer.logger=true", "--model.optimizer.init_args.lr=-0.1"),
        2,
        "Invalid learning rate",
        never_says="wandb sync",
    ),
    Row(
        "SIGTERM during the sanity check",
        fit("--trainer.num_sanity_val_steps=1", *signal_at(SIGTERM, hook="on_sanity_check_start")),
        143,
        "stopped at step 0 and saved",
        resumable,
    ),
    # 19: a key written twice in a config (YAML would silently keep the second).
    Row(
        "config with a key written twice",
        ["fit", "--config=twice.yaml"],
        2,
        "error: config: key 'trainer' appears twice, on lines 1 and 3",
        setup=file("twice.yaml", lambda p: p.write_text(TWICE)),
    ),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    data = make_data(tmp_path_factory.mktemp("data"))
    make_prepared_runs(data)
    return data


@pytest.fixture
def workdir(tmp_path, data, monkeypatch) -> Path:
    in_workdir(tmp_path, monkeypatch)
    (tmp_path / "data").symlink_to(data)
    return tmp_path


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_or_fault(row: Row, workdir, monkeypatch, capfd, caplog):
    if row.setup is not None:
        row.setup(workdir, monkeypatch)
    code = run_main(row.args)
    captured = capfd.readouterr()
    output = captured.out + captured.err + caplog.text
    assert code == row.code, output[-4000:]
    assert "Traceback" not in output
    said = output
    if row.code in (2, 3):
        errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, captured.err[-4000:]
        said = errors[0]
    for phrase in (row.says,) if isinstance(row.says, str) else row.says:
        assert phrase in said
    if row.never_says:
        assert row.never_says not in output
    row.left(workdir)
