"""benchmarks/throughput.py end to end on the CPU, tiny settings: its reports, not its timings."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from convrepro.data import CIFAR10DataModule
from convrepro.data.synthetic import accepting_made_up_files, write_cifar10
from convrepro.models import VGG

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("plain", "lightning", "fast")


def test_made_up_cifar10_reads_back_through_torchvision(tmp_path):
    write_cifar10(tmp_path, n_train=23, n_test=7, seed=1)
    datamodule = CIFAR10DataModule(
        data_dir=str(tmp_path), val_size=3, batch_size=4, num_workers=0, download=False
    )
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        datamodule.setup("fit")  # the md5 check refuses made-up files ...
    with accepting_made_up_files():
        datamodule.setup(None)  # ... unless told to accept them
    assert [len(datamodule.splits[s]) for s in ("train", "val", "test")] == [20, 3, 7]
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.long
    source = datamodule.splits["train"].source
    assert sorted(set(source.targets)) == list(range(10))  # every class, balanced
    assert source.classes == datamodule.class_names


@pytest.mark.slow  # five fresh processes that import torch and Lightning: ~50 s on 2 cores
def test_throughput_benchmark_writes_sane_reports(tmp_path):
    out = tmp_path / "results"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "throughput.py"),
        "--config=configs/vgg11_cifar.yaml",
        "--steps=2",
        "--warmup=1",
        "--windows=2",
        "--batch-size=8",
        "--num-workers=0",
        "--made-up-images=48",
        "--delivery-seconds=0.1",
        f"--data-dir={tmp_path / 'no-cifar-here'}",
        f"--out={out}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]

    report = json.loads((out / "throughput_vgg11_cifar_cpu.json").read_text())
    assert report["data"] == "made-up images in CIFAR-10's format (48)"
    assert (report["batch_size"], report["steps"], report["windows"]) == (8, 2, 2)
    # Training FLOPs are about three forward passes (backward costs two).
    model = VGG(config="A", head="cifar", num_classes=10)
    with FlopCounterMode(display=False) as forward:
        model(torch.zeros(1, 3, 32, 32))
    gflops = report["gflops_per_image"]
    assert 2.5 < gflops / (forward.get_total_flops() / 1e9) < 3.5
    for path in PATHS:
        run = report["runs"][path]
        assert len(run["windows_images_per_s"]) == 2
        assert all(rate > 0 and math.isfinite(rate) for rate in run["windows_images_per_s"])
        assert run["step_ms"] == pytest.approx(1000 * 8 / run["images_per_s"])
        assert 0 < run["host_cpu_ms_per_step"] < 10 * run["step_ms"]
        assert run["tflops_per_s"] == pytest.approx(gflops * run["images_per_s"] / 1000)
        assert run["mfu"] is None  # no peak FLOP/s is known for CPUs
        assert run["peak_memory_gib"] > 0
        delivery = report["data_delivery"][path]
        assert delivery["images_per_s"] > 0 and delivery["images_per_cpu_s"] > 0
    fast = report["runs"]["fast"]["settings"]
    assert fast["loader"] == "device-resident" and fast["precision"] == "32-true"
    assert not fast["compile"]  # not on a CPU
    assert report["ratios"]["lightning/plain"] == pytest.approx(
        report["runs"]["lightning"]["images_per_s"] / report["runs"]["plain"]["images_per_s"]
    )

    table = (out / "throughput_vgg11_cifar_cpu.md").read_text()
    assert table.startswith("# Training throughput: vgg11_cifar on ")
    for title in ("(a) plain PyTorch loop", "(b) Lightning", "(c) Lightning, fast path"):
        assert table.count(title) == 2  # the training table and the data delivery table
    assert result.stdout.endswith(table)  # and printed
