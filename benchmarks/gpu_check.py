"""Everything that needs a GPU, in one command and one report (at most 8 minutes on one GPU).

    python benchmarks/gpu_check.py        # on a GPU machine: benchmarks/results/gpu_check_gpu.*
    python benchmarks/gpu_check.py --cpu  # the same checks, tiny, on a CPU (the test suite)

1. throughput: ``throughput.py --only training`` on ``vgg16_cifar``: (a) plain loop, (b) Lightning,
   (c) fast path with the CLI's mixed precision and ``torch.compile``; images/s and MFU.
2. fast configs: every ``configs/*_fast.yaml`` through ``main.py fit`` for a few hundred steps
   (bf16, compile, channels_last, device-resident data): the loss stays finite and no step
   between logging steps makes the host wait for the device (CUDA's sync debug mode; the CPU
   mode counts aten ops, as ``tests/test_host_sync.py`` does).
3. LRN: :class:`~convrepro.models.PaperLRN` after a convolution under fp16 and bf16 autocast,
   against the paper's formula in float64.
4. the tests marked ``gpu`` (they skip without CUDA).

Data are made up in the real on-disk formats (the GPU machine has no internet). Each check runs
with a time limit; one that fails or runs out of time is reported and the others still run. The
exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from common import write_record
from host_syncs import quiet_steps

from convrepro.models import PaperLRN
from convrepro.testing import make_cifar10
from convrepro.training import metrics

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))  # the float64 LRN formula of the LRN tests
from test_alexnet import paper_lrn_formula  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """How big each check runs, and for how long it may."""

    throughput_args: list[str]
    fast_steps: int
    log_every: int
    batch_size: int
    compile_steps: int  # the first steps compile and autotune: their syncs are expected
    fast_args: list[str] = field(default_factory=list)  # extra main.py arguments
    timeouts_s: dict[str, float] = field(default_factory=dict)


GPU = Sizes(
    throughput_args=["--made-up-images=20000", "--steps=20", "--windows=3", "--warmup=10"],
    fast_steps=200,
    log_every=50,
    batch_size=128,
    compile_steps=2,
    timeouts_s={"throughput": 200, "fast_configs": 180, "lrn": 30, "gpu_tests": 60},
)
CPU = Sizes(
    throughput_args=[
        "--made-up-images=8",
        "--steps=1",
        "--windows=1",
        "--warmup=1",
        "--batch-size=2",
        "--num-workers=0",
    ],
    fast_steps=8,
    log_every=4,
    batch_size=8,
    compile_steps=0,
    fast_args=["--model.backbone=tiny_backbone.TinyNet", "--model.compile=false"],
    timeouts_s={"throughput": 300, "fast_configs": 300, "lrn": 60, "gpu_tests": 300},
)


def subprocess_env() -> dict[str, str]:
    """Made-up CIFAR files accepted (md5 check only), test helpers and host_syncs importable."""
    paths = [TESTS / "subprocess_site", TESTS, ROOT / "benchmarks", os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths if p)}
    env["WANDB_MODE"] = "offline"
    return env


def run(command: list[str], timeout_s: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}: {' '.join(command)}\n{result.stderr[-3000:]}"
        )
    return result


def check_throughput(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    out = scratch / "throughput"
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py")]
    command += ["--config=configs/vgg16_cifar.yaml", "--only=training", f"--out={out}"]
    run(command + sizes.throughput_args, sizes.timeouts_s["throughput"])
    report = json.loads(next(out.glob("*.json")).read_text())
    paths = {
        path: {
            "images_per_s": round(values["images_per_s"], 1),
            "mfu": values["mfu"],
            "precision": values["settings"]["precision"],
            "compile": values["settings"].get("compile", False),
        }
        for path, values in report["runs"].items()
    }
    assert all(math.isfinite(p["images_per_s"]) and p["images_per_s"] > 0 for p in paths.values())
    if torch.cuda.is_available():
        fast = paths["fast"]
        assert fast["compile"] and fast["precision"] != "32-true", f"fast path ran with {fast}"
    return {"paths": paths, "ratios": report["ratios"], "device": report["device"]}


def check_fast_config(config: Path, sizes: Sizes, data_dir: Path, scratch: Path) -> dict:
    """One fast config through main.py: finite loss, no host syncs between logging steps."""
    syncs = scratch / f"{config.stem}_syncs.json"
    command = [sys.executable, str(ROOT / "main.py"), "fit", f"--config={config}"]
    command += [
        f"--run.root={scratch / 'runs'}",
        f"--data.init_args.data_dir={data_dir}",
        f"--data.init_args.batch_size={sizes.batch_size}",
        f"--data.init_args.val_size={2 * sizes.batch_size}",
        f"--trainer.max_steps={sizes.fast_steps}",
        "--trainer.limit_val_batches=2",
        f"--trainer.log_every_n_steps={sizes.log_every}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        "--trainer.callbacks+=host_syncs.HostReadsPerStep",
        f"--trainer.callbacks.report={syncs}",
        *sizes.fast_args,
    ]
    run(command, sizes.timeouts_s["fast_configs"])
    run_dir = next((scratch / "runs" / config.stem).iterdir())
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    with (run_dir / "metrics.csv").open() as table:
        losses = [
            float(r[metrics.TRAIN_LOSS_STEP])
            for r in csv.DictReader(table)
            if r.get(metrics.TRAIN_LOSS_STEP)
        ]
    counts = {int(step): n for step, n in json.loads(syncs.read_text())["counts"].items()}
    quiet = quiet_steps(counts, sizes.log_every, warmup=sizes.compile_steps)
    settings = {
        "precision": resolved["trainer"]["precision"],
        "compile": resolved["model"]["compile"],
        "channels_last": resolved["model"]["channels_last"],
        "device_resident": resolved["data"]["init_args"]["device_resident"],
    }
    noisy = {step: n for step, n in quiet.items() if n}
    assert losses and all(map(math.isfinite, losses)), f"losses {losses}"
    assert quiet and not noisy, f"host syncs between logging steps: {noisy}"
    if torch.cuda.is_available():
        assert settings["precision"] == "bf16-mixed" and settings["compile"], settings
    assert settings["channels_last"] and settings["device_resident"], settings
    return {
        "steps": max(counts),
        "losses": [round(loss, 4) for loss in losses],
        "quiet_steps_checked": len(quiet),
        "host_reads_at_logging_steps_and_epoch_end": sum(counts.values()),
        "settings": settings,
    }


def check_fast_configs(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    # One epoch is the whole run: validation (device-resident too) runs once, at its end.
    n_train = (sizes.fast_steps + 2) * sizes.batch_size
    data_dir = make_cifar10(scratch / "cifar", n_train=n_train, n_test=sizes.batch_size)
    configs = sorted((ROOT / "configs").glob("*_fast.yaml"))
    # Correctness, not timing: the runs share the device.
    with ThreadPoolExecutor(len(configs)) as pool:
        results = pool.map(
            lambda c: (c.stem, _captured(check_fast_config, c, sizes, data_dir, scratch)), configs
        )
        outcomes = dict(results)
    failed = {name: o["error"] for name, o in outcomes.items() if "error" in o}
    assert not failed, "\n".join(f"{name}: {error}" for name, error in failed.items())
    return outcomes


def check_lrn(device: torch.device) -> dict[str, Any]:
    """Conv -> ReLU -> PaperLRN under autocast, activations in the hundreds (their squares
    overflow fp16), against the float64 formula of the same activations."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3).to(device)
    torch.nn.init.constant_(conv.weight, 30.0)
    images = torch.rand(4, 3, 16, 16, device=device)
    errors = {}
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast(device.type, dtype=dtype):
            activations = torch.relu(conv(images))
            out = PaperLRN()(activations)
        expected = paper_lrn_formula(activations.cpu())
        relative = ((out.double().cpu() - expected).abs() / expected.abs().clamp_min(1e-6)).max()
        name = str(dtype).removeprefix("torch.")
        errors[name] = {
            "max_activation": float(activations.float().max()),
            "finite": bool(torch.isfinite(out).all()),
            "max_relative_error": float(relative),
            "dtype_out": str(out.dtype).removeprefix("torch."),
        }
        assert out.dtype == dtype and errors[name]["finite"], errors[name]
        # One rounding of the output to a 8-bit (bf16) or 11-bit (fp16) mantissa.
        assert relative < (1e-2 if dtype == torch.bfloat16 else 2e-3), errors[name]
    return errors


def check_gpu_tests(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    xml = scratch / "gpu_tests.xml"
    # Only the files that use the marker: collecting the whole suite would take longer than
    # running these tests.
    files = [str(f) for f in sorted(TESTS.glob("test_*.py")) if "mark.gpu" in f.read_text()]
    # One process (-n 0): the suite's own two workers would each import torch for a few tests.
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-n",
        "0",
        "-p",
        "no:cacheprovider",
    ]
    result = subprocess.run(
        [*command, f"--junitxml={xml}", *files],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=sizes.timeouts_s["gpu_tests"],
    )
    suite = ElementTree.parse(xml).getroot().find("testsuite")
    counts: dict[str, Any] = {
        k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    }
    assert result.returncode == 0, result.stdout[-3000:]
    counts["files"] = [Path(f).name for f in files]
    return counts


def _captured(check: Callable[..., dict], *args: Any) -> dict[str, Any]:
    """The check's details and time, or its error, without stopping the other checks."""
    started = time.monotonic()
    try:
        details, status, error = check(*args), "passed", None
    except Exception as exception:  # a failed check is a result, not a crash
        details, status = {}, "failed"
        error = "".join(traceback.format_exception_only(exception)).strip()
        if not isinstance(exception, AssertionError | subprocess.TimeoutExpired):
            error = traceback.format_exc()
    outcome = {"status": status, "seconds": round(time.monotonic() - started, 1), **details}
    return {**outcome, "error": error} if error else outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the suite)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.cpu
    if not on_gpu and not args.cpu:
        parser.error("no CUDA device here: run on a GPU machine, or with --cpu for the CPU mode")
    sizes, device = (GPU, torch.device("cuda")) if on_gpu else (CPU, torch.device("cpu"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch_dir:
        scratch = Path(scratch_dir)
        checks = {
            "throughput": _captured(check_throughput, sizes, scratch),
            "fast_configs": _captured(check_fast_configs, sizes, scratch),
            "lrn": _captured(check_lrn, device),
            "gpu_tests": _captured(check_gpu_tests, sizes, scratch),
        }
    report = {
        "mode": "gpu" if on_gpu else "cpu",
        "device": torch.cuda.get_device_name() if on_gpu else "CPU",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "seconds": round(time.monotonic() - started, 1),
        "passed": all(check["status"] == "passed" for check in checks.values()),
        "checks": checks,
    }
    write_record(args.out / f"gpu_check_{report['mode']}", report, markdown(report))
    print(markdown(report), end="")
    return 0 if report["passed"] else 1


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check ({report['mode']} mode) on {report['device']}",
        "",
        f"{report['date']}; torch {report['torch']}, CUDA {report['cuda']}; "
        f"{report['seconds']:.0f} s; {'all passed' if report['passed'] else 'FAILED'}.",
        "",
        "| check | status | seconds |",
        "| --- | --- | ---: |",
        *(f"| {name} | {c['status']} | {c['seconds']} |" for name, c in report["checks"].items()),
    ]
    throughput = report["checks"]["throughput"]
    if "paths" in throughput:
        lines += [
            "",
            "| path | precision | compile | images/s | MFU |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        for path, values in throughput["paths"].items():
            mfu = f"{100 * values['mfu']:.1f}%" if values["mfu"] is not None else "n/a"
            lines.append(
                f"| {path} | {values['precision']} | {values['compile']} "
                f"| {values['images_per_s']} | {mfu} |"
            )
    for name, check in report["checks"].items():
        details = {key: value for key, value in check.items() if key not in ("status", "seconds")}
        lines += ["", f"## {name}", "", "```", json.dumps(details, indent=2), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
