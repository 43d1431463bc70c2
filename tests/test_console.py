"""What a first ``python main.py fit`` prints: the run's essentials, none of the known noise."""

import os
import re
import stat
import warnings

import pytest
import torch
from test_cli import TINY_ARGS, run_main
from torch import nn

from convrepro.runs.console import KNOWN_WARNINGS, forward_flops, silence_known_noise
from convrepro.testing import make_cifar10

from tiny_backbone import TinyNet

# What the libraries printed at every start before (see convrepro.runs.console).
NOISE = (
    "litlogger",
    "anonymous setting",
    "git root",
    "LeafSpec",
    "`srun` command is available",
    "Total FLOPs: 0",
    "seamless cloud uploads",  # litmodels, at test and predict
    "Be aware that when using `ckpt_path`",
)


@pytest.mark.slow  # main.py fit, validate, test and predict: ~60 s on 2 cores
def test_first_fit_prints_the_essentials_and_no_known_noise(tmp_path, monkeypatch):
    # A machine with SLURM installed, outside any git repository: both used to add noise.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    make_cifar10(tmp_path / "data" / "cifar10", n_train=400, n_test=20)
    result = run_main(tmp_path, "fit", *TINY_ARGS, "--trainer.max_epochs=1")
    printed = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in printed, noise
    run_dir = next((tmp_path / "runs" / "vgg11_cifar").iterdir()).relative_to(tmp_path)
    assert f"Run folder: {run_dir}" in printed
    assert "W&B is logging offline (WANDB_MODE=offline)." in printed
    flops = forward_flops(TinyNet(), (3, 32, 32)) / 1e6
    assert re.search(
        rf"Model: TinyNet, 1.56 k parameters, {flops:.3g} MFLOPs per 3x32x32 image \(forward\); "
        r"32-true precision on cpu\.",
        printed,
    ), printed
    assert re.search(r"Epoch 0/0 .* 7/7", result.stdout)  # the progress bar
    assert f"Checkpoints: {run_dir / 'checkpoints'}/ (best.ckpt, last.ckpt; best val/acc" in printed
    # Every other subcommand starts as quietly.
    for subcommand in ("validate", "test", "predict"):
        result = run_main(tmp_path, subcommand, *TINY_ARGS, "--ckpt_path=best")
        printed = result.stdout + result.stderr
        for noise in NOISE:
            assert noise not in printed, (subcommand, noise)
        assert f"Run folder: {run_dir}" in printed, subcommand


def test_flops_are_counted_on_the_eager_model_without_changing_it():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)
    )
    model.train()
    before = model[1].running_mean.clone()
    flops = forward_flops(model, (3, 32, 32))
    conv, linear = 2 * 4 * 30 * 30 * 27, 2 * 4 * 30 * 30 * 2
    assert flops == conv + linear  # FlopCounterMode counts convolutions and matmuls
    assert model.training and torch.equal(model[1].running_mean, before)


def test_only_the_known_messages_are_silenced():
    silence_known_noise()
    silence_known_noise()  # idempotent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_known_noise()
        (category, known), _ = KNOWN_WARNINGS
        warnings.warn(known, category, stacklevel=1)
        warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
