"""benchmarks/throughput.py and gpu_check.py end to end on the CPU, tiny settings: their reports,
not their timings.

Their ``main`` runs in this process (a script's start would import torch and Lightning again);
the processes they start themselves are theirs: throughput's measuring processes (forked from one
server per test process, which the tests here share), gpu_check's runs of other scripts.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from convrepro.data import CIFAR10DataModule
from convrepro.models import VGG
from convrepro.runs.scrub import machine_paths_in
from convrepro.testing import (
    accepting_made_up_files,
    make_cifar10,
    make_cifar10_folders,
    make_image_folder,
)

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("plain", "lightning", "fast")
LOADERS = (*PATHS, "folder_plain", "folder_lightning")


def test_made_up_cifar10_reads_back_through_torchvision(tmp_path):
    make_cifar10(tmp_path, n_train=23, n_test=7, learnable=False, seed=1)
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


@pytest.fixture
def scripts_importable(monkeypatch):
    """The scripts in benchmarks/ importable, as when run from there."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.chdir(ROOT)


@pytest.mark.scripts
@pytest.mark.slow  # four measuring processes: ~40 s on 2 cores
def test_throughput_benchmark_writes_sane_reports(tmp_path, scripts_importable, capsys):
    import throughput

    out = tmp_path / "results"
    command = [
        "--config=configs/vgg11_cifar.yaml",
        "--steps=2",
        "--warmup=1",
        "--windows=2",
        "--batch-size=8",
        "--num-workers=0",
        "--made-up-images=48",
        "--made-up-photos=4",
        "--delivery-seconds=0.1",
        f"--data-dir={tmp_path / 'no-cifar-here'}",
        f"--out={out}",
    ]
    throughput.main(command)

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
    for loader in LOADERS:
        delivery = report["data_delivery"][loader]
        assert delivery["images_per_s"] > 0 and delivery["images_per_cpu_s"] > 0
    assert report["folder_data"] == "4 made-up photo-sized JPEGs (500 x 375 and 375 x 500)"
    fast = report["runs"]["fast"]["settings"]
    assert fast["loader"] == "device-resident" and fast["precision"] == "32-true"
    assert not fast["compile"]  # not on a CPU
    assert report["ratios"]["lightning/plain"] == pytest.approx(
        report["runs"]["lightning"]["images_per_s"] / report["runs"]["plain"]["images_per_s"]
    )
    delivery = report["data_delivery"]
    assert report["ratios"]["delivery:folder_lightning/folder_plain"] == pytest.approx(
        delivery["folder_lightning"]["images_per_cpu_s"]
        / delivery["folder_plain"]["images_per_cpu_s"]
    )

    table = (out / "throughput_vgg11_cifar_cpu.md").read_text()
    assert table.startswith("# Training throughput: vgg11_cifar on ")
    for title in ("(a) plain PyTorch loop", "(b) Lightning", "(c) Lightning, fast path"):
        assert table.count(title) == 2  # the training table and the data delivery table
    for title in ("(a) plain loader, image folder", "(b) ImageFolderDataModule"):
        assert table.count(title) == 1
    assert capsys.readouterr().out.endswith(table)  # and printed


def test_flops_are_counted_at_the_input_size_of_the_configs_protocol(scripts_importable):
    """The conv-local config's network takes cuda-convnet's 24x24 crops, not 32x32 images."""
    import throughput
    from common import Spec

    config = yaml.safe_load((ROOT / "configs" / "conv_local_cifar.yaml").read_text())
    spec = Spec(config, "unused", True, "unused", 8, 0, 1, 1, 1, 1, 0.1)
    assert spec.image_size == 24
    model = throughput.build_backbone(spec)
    with FlopCounterMode(display=False) as forward:
        model(torch.zeros(1, 3, 24, 24))
    assert 2.5 < throughput.flops_per_image(spec) / forward.get_total_flops() < 3.5


@pytest.mark.scripts
@pytest.mark.slow  # one measuring process for the five loaders: ~10 s on 2 cores
def test_delivery_alone_keeps_the_report_keys(tmp_path, scripts_importable):
    import throughput

    out = tmp_path / "results"
    command = [
        "--config=configs/vgg11_cifar.yaml",
        "--only=delivery",
        "--warmup=1",
        "--batch-size=8",
        "--made-up-images=48",
        "--made-up-photos=4",
        "--delivery-seconds=0.1",
        f"--data-dir={tmp_path / 'no-cifar-here'}",
        f"--out={out}",
    ]
    throughput.main(command)
    report = json.loads((out / "throughput_vgg11_cifar_cpu_delivery.json").read_text())
    assert "runs" not in report and set(LOADERS) <= set(report["data_delivery"])
    assert set(report["ratios"]) == {
        "delivery:lightning/plain",
        "delivery:fast/plain",
        "delivery:folder_lightning/folder_plain",
    }
    table = (out / "throughput_vgg11_cifar_cpu_delivery.md").read_text()
    assert "## Data delivery alone" in table and "| path | settings |" not in table


@pytest.mark.scripts
@pytest.mark.slow  # the GPU check's every part on tiny sizes: ~1 minute on 2 cores
def test_gpu_check_runs_in_cpu_mode(tmp_path, scripts_importable):
    import gpu_check

    exit_status = gpu_check.main(["--cpu", f"--out={tmp_path}"])
    report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
    assert exit_status == 0, json.dumps(report, indent=2)[-5000:]
    checks = report["checks"]
    assert report["mode"] == "cpu" and report["passed"]
    assert set(checks) == {"throughput", "fast_configs", "lrn", "gpu_tests"}
    assert set(checks["throughput"]["paths"]) == set(PATHS)
    fast_configs = sorted(path.stem for path in (ROOT / "configs").glob("*_fast.yaml"))
    assert {k for k in checks["fast_configs"] if k not in ("status", "seconds")} == set(
        fast_configs
    )
    for name in fast_configs:
        run = checks["fast_configs"][name]
        assert run["status"] == "passed" and run["quiet_steps_checked"] > 0
        assert run["settings"]["device_resident"] and run["settings"]["channels_last"]
    assert {"float16", "bfloat16"} <= set(checks["lrn"])
    gpu_tests = checks["gpu_tests"]
    assert gpu_tests["tests"] >= 4 and gpu_tests["skipped"] == gpu_tests["tests"]  # no CUDA
    assert (tmp_path / "gpu_check_cpu.md").read_text().startswith("# GPU check (cpu mode)")


@pytest.mark.scripts
@pytest.mark.slow  # AlexNet at 227 px dominates: ~1 minute on 2 cores
def test_lrn_benchmark_reports_the_ratios(tmp_path, scripts_importable):
    import lrn

    report = lrn.main(["--repeats=1", "--no-lightning", f"--out={tmp_path}"])
    assert report["op"]["max_abs_difference"] < 1e-4
    assert report["op"]["speed_up"] > 1 and report["network"]["lrn_arm_over_no_lrn_arm"] > 0
    assert set(report["before_after"]) == {"VGG A-LRN", "AlexNet (paper)"}
    saved = json.loads((tmp_path / "lrn_cpu.json").read_text())
    assert saved["op"] == report["op"]
    assert (tmp_path / "lrn_cpu.md").read_text().startswith("LRN benchmark on ")


def test_readme_lrn_speed_table_is_the_committed_benchmark_record():
    """The README's LRN timings are a copy of what benchmarks/lrn.py wrote, not typed."""
    record = (ROOT / "benchmarks" / "results" / "lrn_cpu.md").read_text().strip()
    assert record in (ROOT / "README.md").read_text()


@pytest.mark.slow  # VGG A at 224 px, twice
def test_the_vgg_init_and_paper_scale_runs_record_what_happened(tmp_path, scripts_importable):
    import paper_scale
    import vgg_init

    folders = make_image_folder(tmp_path / "photos", n_per_class=6, splits=("train", "test"))
    report = vgg_init.main(
        [
            f"--data={folders}",
            "--steps=2",
            "--batch-size=2",
            "--set=data.init_args.val_size=2",
            f"--out={tmp_path}",
        ]
    )
    literal, caffe = report["runs"]
    assert (literal["init_std"], caffe["init_std"]) == (0.1, 0.01)
    assert literal["initial_logit_std"] > 1e3 * caffe["initial_logit_std"]  # the blow-up
    assert caffe["steps_run"] == 2 and caffe["first_non_finite_step"] is None
    saved = json.loads((tmp_path / "vgg_init_cpu.json").read_text())
    settings = [s.replace(str(folders), "<DATA_DIR>") for s in caffe["settings"]]
    assert saved["runs"][1] == {**caffe, "settings": settings}  # the data folder: a placeholder
    assert "| 0.01 |" in (tmp_path / "vgg_init_cpu.md").read_text()

    cifar = make_cifar10_folders(tmp_path / "cifar", n_train=60, n_test=10)
    report = paper_scale.main(
        [
            "--config=configs/conv_local_cifar.yaml",
            "--steps=3",
            "--batch-size=8",
            "--set=data.init_args.source=folders",
            f"--set=data.init_args.data_dir={cifar}",
            "--set=data.init_args.val_size=10",
            f"--out={tmp_path}",
        ]
    )
    run = report["run"]
    assert run["steps_run"] == 3 and all(map(math.isfinite, run["losses"]))
    assert set(run["lrn_regime_before"]) == {
        "backbone.features.rnorm1",
        "backbone.features.rnorm2",
    }
    assert run["lrn_regime_after"]["backbone.features.rnorm1"] > 0
    saved = (tmp_path / "paper_scale_conv_local_cifar_cpu.md").read_text()
    assert "alpha * sum(a^2) / k, initialisation" in saved


def test_benchmark_records_name_no_path_of_the_machine(tmp_path, scripts_importable, capsys):
    import paper_scale

    data = tmp_path / "cifar-jpegs"
    command = (
        f"python benchmarks/paper_scale.py --config {ROOT}/configs/conv_local_cifar.yaml "
        f"--set data.init_args.data_dir={data}"
    )
    report = {"command": command, "settings": [f"--data.init_args.data_dir={data}"]}
    paper_scale.record("made_up", report, f"`{command}`; data: {data}.", str(tmp_path), [str(data)])
    written = sorted(tmp_path.glob("made_up_*"))  # _cpu or _cuda
    assert [path.suffix for path in written] == [".json", ".md"]
    for path in written:
        text = path.read_text()
        assert "--config configs/conv_local_cifar.yaml" in text and "<DATA_DIR>" in text
        assert not machine_paths_in(text), text


@pytest.mark.parametrize(
    "record",
    [
        "vgg_init_cpu.md",
        *(
            f"paper_scale_{n}_cpu.md"
            for n in ("vgg11_lrn_cifar", "conv_local_cifar", "alexnet_cifar")
        ),
    ],
)
def test_readme_input_scale_figures_are_the_committed_records(record):
    """The README's input-scale and VGG-init figures are copies of what the scripts wrote."""
    text = (ROOT / "benchmarks" / "results" / record).read_text().strip()
    assert text in (ROOT / "README.md").read_text()


@pytest.mark.scripts
def test_precision_benchmark_reports_every_setting_and_loop(tmp_path, scripts_importable):
    import precision

    argv = ["--steps=1", "--windows=1", "--rounds=1", "--warmup=1", "--definitions", "13pct"]
    report = precision.main([*argv, "--matmul-size=256", f"--out={tmp_path}"])
    cells = report["networks"]["13pct"]["settings"]
    assert set(cells) == set(precision.SETTINGS)
    for cell in cells.values():
        assert cell["plain"]["images_per_s"] > 0 and cell["lightning"]["images_per_s"] > 0
        assert 0 < cell["lightning"]["share_of_peak"] < 1
    assert cells["fp32"]["lightning_over_fp32_lightning"] == 1
    # 13pct: about 19 M multiply-adds forward, so about 3 x 2 x 19 M FLOPs a training image.
    assert 0.08 < report["networks"]["13pct"]["gflops_per_image"] < 0.14
    assert report["command"].startswith("python benchmarks/precision.py --steps=1")
    saved = json.loads((tmp_path / "precision_cpu.json").read_text())
    assert saved["networks"] == json.loads(json.dumps(report["networks"]))
    assert "| 13pct (" in (tmp_path / "precision_cpu.md").read_text()


def test_readme_precision_table_is_the_committed_benchmark_record():
    """The README's precision timings are a copy of what benchmarks/precision.py wrote."""
    record = (ROOT / "benchmarks" / "results" / "precision_cpu.md").read_text().strip()
    assert record in (ROOT / "README.md").read_text()
