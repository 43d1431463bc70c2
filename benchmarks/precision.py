"""The conv-local training step under each arithmetic and layout choice, against this machine's
peak, and Lightning against a plain loop doing the same thing.

    python benchmarks/precision.py [--config configs/conv_local_cifar.yaml] [--compile]

For each network (cuda-convnet's 11pct and 13pct files) and each setting (fp32; channels_last;
bf16 autocast; bf16 + channels_last; with ``--compile`` also torch.compile on top of the fastest),
two loops train the same backbone with the config's optimiser (its per-layer groups) on the same
in-memory batches of 24x24 crops at the scale of mean-subtracted pixels:

* plain: ``backbone(x)``, ``cross_entropy``, ``backward``, ``step``, under ``torch.autocast``
  for bf16;
* lightning: ``ImageClassifier`` + ``Trainer`` at the matching ``precision`` and
  ``channels_last``, with the per-step callbacks every CLI run has (exact resume, divergence
  guard) and the metrics of a real run.

The data path is left out on purpose (both loops read the same tensors): this measures the
training step, where the choices act; ``throughput.py`` measures the datamodules. Settings and
loops are interleaved over ``--rounds`` so that drifts in machine load fall on all alike; a
figure is the median over every timed window. The ceiling: FLOPs per training image from the
model (lightning's ``measure_flops``, forward + backward), over the peak FLOP/s of an fp32 and a
bf16 matmul measured in the same process with the same threads.
Writes ``<out>/precision_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import lightning
import torch
import torch.nn.functional as F
import yaml
from common import device_name, write_record
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.cli import instantiate_class
from throughput import StepClock, timed_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convrepro.models import ConvLocalNet
from convrepro.runs.console import silence_known_noise
from convrepro.training.classifier import ImageClassifier

CONV_LOCAL_CONFIG = Path("configs/conv_local_cifar.yaml")
SETTINGS = {
    "fp32": {"precision": "32-true", "channels_last": False, "compile": False},
    "channels_last": {"precision": "32-true", "channels_last": True, "compile": False},
    "bf16": {"precision": "bf16-mixed", "channels_last": False, "compile": False},
    "bf16 + channels_last": {"precision": "bf16-mixed", "channels_last": True, "compile": False},
}
COMPILED = {"bf16 + channels_last + compile": {**SETTINGS["bf16 + channels_last"], "compile": True}}
LOOPS = ("plain", "lightning")
BATCH = 128
CROP = 24
PIXEL_STD = 60.0  # CIFAR-10's 0-255 pixels minus the mean image


class Timing:
    """The number of windows, steps per window and warm-up steps of every measurement."""

    def __init__(self, warmup: int, windows: int, steps: int) -> None:
        self.warmup, self.windows, self.steps = warmup, windows, steps

    def clock(self) -> StepClock:
        spec = argparse.Namespace(warmup=self.warmup, windows=self.windows, steps=self.steps)
        return StepClock(spec, torch.device("cpu"))


def batches(count: int) -> DataLoader:
    """``count`` fixed batches, the same for every loop and setting."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count * BATCH, 3, CROP, CROP, generator=generator) * PIXEL_STD
    labels = torch.randint(0, 10, (count * BATCH,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=BATCH, shuffle=False)


def classifier(definition: str, setting: dict[str, Any], config: dict[str, Any]) -> ImageClassifier:
    """The config's model with ``definition``'s network: its optimiser and per-layer groups."""
    torch.manual_seed(0)
    return ImageClassifier(
        ConvLocalNet(definition=definition),
        num_classes=10,
        optimizer=partial(instantiate_class, init=config["model"]["optimizer"]),
        # A constant LR: the config's drop is an epoch away; it changes no step's cost.
        lr_scheduler=partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0),
        channels_last=setting["channels_last"],
        compile=setting["compile"],
    )


def run_plain(model: ImageClassifier, setting: dict[str, Any], timing: Timing) -> list[float]:
    optimizer = model.configure_optimizers()["optimizer"]
    network: nn.Module = torch.compile(model.backbone) if setting["compile"] else model.backbone
    bf16 = setting["precision"] == "bf16-mixed"
    loader, clock = batches(4), timing.clock()
    network.train()
    while not clock.finished:
        for images, labels in loader:
            if setting["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            clock.tick()
            if clock.finished:
                break
    return clock.windows()["windows_s"]


def run_lightning(model: ImageClassifier, setting: dict[str, Any], timing: Timing) -> list[float]:
    clock = timing.clock()
    trainer = timed_trainer(
        clock, setting["precision"], accelerator="cpu", enable_progress_bar=False
    )
    trainer.fit(model, batches(4))
    return clock.windows()["windows_s"]


RUNNERS = {"plain": run_plain, "lightning": run_lightning}


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a square matmul in ``dtype``: what this CPU's threads reach at best."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def flops_per_image(definition: str) -> int:
    """Training FLOPs of one image, forward and backward."""
    with torch.device("meta"):
        model = ConvLocalNet(definition=definition)
        images = torch.empty(1, 3, CROP, CROP)
    return measure_flops(model, lambda: model(images), lambda logits: logits.sum())


def measure(
    definitions: list[str], settings: dict[str, dict], timing: Timing, rounds: int, config: dict
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Seconds of every timed window, by network, setting and loop, interleaved over rounds."""
    windows: dict[str, dict[str, dict[str, list[float]]]] = {
        d: {s: {loop: [] for loop in LOOPS} for s in settings} for d in definitions
    }
    for _ in range(rounds):
        for definition in definitions:
            for name, setting in settings.items():
                for loop in LOOPS:
                    model = classifier(definition, setting, config)
                    windows[definition][name][loop] += RUNNERS[loop](model, setting, timing)
    return windows


def summarise(
    windows: dict[str, dict[str, dict[str, list[float]]]], timing: Timing, peaks: dict[str, float]
) -> dict[str, Any]:
    """Images/s (median window), ratios and share of peak for every cell."""
    figures: dict[str, Any] = {}
    for definition, by_setting in windows.items():
        flops = flops_per_image(definition)
        cells = {}
        for name, by_loop in by_setting.items():
            peak = peaks["bf16" if "bf16" in name else "fp32"]
            cell = {}
            for loop, seconds in by_loop.items():
                rate = timing.steps * BATCH / statistics.median(seconds)
                cell[loop] = {
                    "images_per_s": rate,
                    "windows_images_per_s": [timing.steps * BATCH / s for s in seconds],
                    "share_of_peak": flops * rate / peak,
                }
            cell["lightning_over_plain"] = (
                cell["lightning"]["images_per_s"] / cell["plain"]["images_per_s"]
            )
            cells[name] = cell
        fp32 = cells["fp32"]["lightning"]["images_per_s"]
        for cell in cells.values():
            cell["lightning_over_fp32_lightning"] = cell["lightning"]["images_per_s"] / fp32
        figures[definition] = {"gflops_per_image": flops / 1e9, "settings": cells}
    return figures


def markdown(report: dict[str, Any]) -> str:
    timing = report["timing"]
    lines = [
        f"Conv-local training step on {report['device']} ({report['threads']} threads), "
        f"{report['date']}; torch {report['torch']}, lightning {report['lightning']}. "
        f"Batch {BATCH} of {CROP}x{CROP} crops in memory; median of {timing['windows']} windows "
        f"x {report['rounds']} rounds of {timing['steps']} steps after {timing['warmup']} "
        f"warm-up steps. Peak (a {report['matmul_size']}^2 matmul, same process): fp32 "
        f"{report['peak_gflops']['fp32']:.0f} GFLOP/s, bf16 {report['peak_gflops']['bf16']:.0f} "
        "GFLOP/s.",
        "",
        "| network | setting | plain images/s | Lightning images/s | Lightning / plain "
        "| vs fp32 (Lightning) | share of peak (Lightning) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for definition, figures in report["networks"].items():
        network = f"{definition} ({figures['gflops_per_image'] * 1000:.0f} MFLOP/image)"
        for name, cell in figures["settings"].items():
            lines.append(
                f"| {network} | {name} | {cell['plain']['images_per_s']:.0f} "
                f"| {cell['lightning']['images_per_s']:.0f} | {cell['lightning_over_plain']:.3f} "
                f"| {cell['lightning_over_fp32_lightning']:.2f}x "
                f"| {100 * cell['lightning']['share_of_peak']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONV_LOCAL_CONFIG)
    parser.add_argument("--definitions", nargs="+", default=["11pct", "13pct"])
    parser.add_argument(
        "--compile", action="store_true", help="also bf16 + channels_last + compile"
    )
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per window")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each, interleaved")
    parser.add_argument("--threads", type=int, help="torch threads; default: torch's default")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "windows", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    silence_known_noise()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    settings = {**SETTINGS, **(COMPILED if args.compile else {})}
    timing = Timing(args.warmup, args.windows, args.steps)
    peaks = {
        "fp32": matmul_peak(torch.float32, args.matmul_size),
        "bf16": matmul_peak(torch.bfloat16, args.matmul_size),
    }
    windows = measure(args.definitions, settings, timing, args.rounds, config)
    report = {
        "command": shlex.join(
            ["python", "benchmarks/precision.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "config": str(args.config),
        "device": device_name(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "timing": vars(timing),
        "rounds": args.rounds,
        "matmul_size": args.matmul_size,
        "peak_gflops": {name: flops / 1e9 for name, flops in peaks.items()},
        "networks": summarise(windows, timing, peaks),
    }
    write_record(args.out / "precision_cpu", report, markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
