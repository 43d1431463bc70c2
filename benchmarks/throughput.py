"""Training throughput on this machine: a plain PyTorch loop, our Lightning path, our fast path.

    python benchmarks/throughput.py --config configs/vgg16_cifar.yaml

Three ways to train the config's backbone on CIFAR-10, side by side:

(a) plain: as seed scripts do it: torchvision's CIFAR10 with PIL transforms (the config's crop,
    flip and resize) in a DataLoader, fp32, ``model(x)``, ``loss.backward()``, ``opt.step()``.
(b) lightning: ImageClassifier + CIFAR10DataModule + Trainer with (a)'s settings: fp32, same
    batch size, same loader workers, no cuDNN autotuning; with what runs every step of a real
    run: progress bar, metrics, the CLI's exact-resume seeding and divergence guard.
(c) fast: the same with the fast path's settings for this device: device-resident data,
    channels_last and cuDNN autotuning; on a GPU also the CLI's mixed precision and torch.compile.

Each runs in a fresh process (no warm caches from the others; its own peak memory): ``--warmup``
steps, then ``--windows`` windows of ``--steps`` optimizer steps, timed at step boundaries with
the device synchronized there; a path's images/s is the median over its windows (pooled over
``--rounds``, which interleave the paths so that drifts in machine load hit all alike; the best
window is the least disturbed one, for a machine shared with other jobs). "Data
delivery" iterates the three training loaders without a model, in one process with one thread
and no workers, and divides the images by the process's CPU time: images/s per CPU core.

Without CIFAR-10 in ``--data-dir`` (the config's), made-up images in the real file format are
used (throughput does not depend on pixel values). Writes ``<out>/throughput_<config>_<device>``
``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from lightning.pytorch.cli import instantiate_class
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import CIFAR10

from convrepro.cli import default_precision
from convrepro.data import CIFAR10DataModule
from convrepro.data.synthetic import accepting_made_up_files, write_cifar10
from convrepro.data.transforms import CIFAR10_STATS
from convrepro.reliability.divergence import DivergenceGuard
from convrepro.reliability.resume import ExactResume
from convrepro.training.classifier import ImageClassifier

PATHS = ("plain", "lightning", "fast")
TITLES = {
    "plain": "(a) plain PyTorch loop",
    "lightning": "(b) Lightning, same settings",
    "fast": "(c) Lightning, fast path",
}
MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class Spec:
    """Everything a measuring process needs (picklable: it crosses a process boundary)."""

    config: dict[str, Any]
    data_dir: str
    made_up: bool
    batch_size: int
    num_workers: int
    warmup: int
    windows: int
    steps: int
    threads: int
    delivery_seconds: float

    @property
    def data_args(self) -> dict[str, Any]:
        """The config's CIFAR10DataModule arguments with the benchmark's data, batch, workers.
        No validation split: (a) trains on every training image, so (b) and (c) do too."""
        args = dict(self.config["data"].get("init_args") or {})
        args.update(
            data_dir=self.data_dir,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            val_size=0,
            download=False,
        )
        return args

    @property
    def image_size(self) -> int:
        return self.data_args.get("resize") or 32


class StepClock:
    """Wall-clock and process CPU time at the boundaries of the timed windows of steps.

    The process's CPU time per step is the host's share of the work (all of it on a CPU, the
    Python and launch overhead on a GPU); unlike wall time it barely moves when other jobs
    share the machine.
    """

    def __init__(self, spec: Spec, device: torch.device) -> None:
        self.device = device
        self.total_steps = spec.warmup + spec.windows * spec.steps
        self._boundaries = {spec.warmup + i * spec.steps for i in range(spec.windows + 1)}
        self._steps_done = 0
        self.times: list[tuple[float, float]] = []  # (wall, process CPU) seconds

    @property
    def finished(self) -> bool:
        return self._steps_done >= self.total_steps

    def tick(self) -> None:
        """Call after every optimizer step."""
        self._steps_done += 1
        if self._steps_done in self._boundaries:
            _synchronize(self.device)  # count the queued work in the window it was launched in
            self.times.append((time.perf_counter(), time.process_time()))

    def windows(self) -> dict[str, list[float]]:
        """Wall and CPU seconds of each window."""
        pairs = list(itertools.pairwise(self.times))
        return {
            "windows_s": [end[0] - start[0] for start, end in pairs],
            "windows_cpu_s": [end[1] - start[1] for start, end in pairs],
        }


class ClockCallback(pl.Callback):
    """Ticks a :class:`StepClock` at each training batch end (one optimizer step each)."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.tick()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_backbone(spec: Spec) -> nn.Module:
    """The config's backbone for CIFAR-10's ten classes."""
    backbone = dict(spec.config["model"]["backbone"])
    backbone["init_args"] = {**(backbone.get("init_args") or {}), "num_classes": 10}
    return instantiate_class((), backbone)


def build_optimizer(spec: Spec, parameters: Any) -> torch.optim.Optimizer:
    """The config's optimizer (the papers' SGD if it names none)."""
    optimizer = spec.config["model"].get("optimizer") or {
        "class_path": "torch.optim.SGD",
        "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    }
    return instantiate_class(parameters, optimizer)


def seed_script_transform(spec: Spec) -> transforms.Compose:
    """(a)'s augmentation: the config's recipe written with classic PIL transforms."""
    data = CIFAR10DataModule(**spec.data_args)
    steps: list[Any] = []
    if data.crop_padding:
        steps.append(transforms.RandomCrop(32, padding=data.crop_padding))
    if data.horizontal_flip:
        steps.append(transforms.RandomHorizontalFlip())
    if data.resize:
        steps.append(transforms.Resize((data.resize, data.resize)))
    normalize = transforms.Normalize(CIFAR10_STATS.mean, CIFAR10_STATS.std)
    return transforms.Compose([*steps, transforms.ToTensor(), normalize])


def plain_loader(spec: Spec, num_workers: int) -> DataLoader:
    dataset = CIFAR10(spec.data_dir, train=True, transform=seed_script_transform(spec))
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def run_plain(spec: Spec) -> dict[str, Any]:
    """(a): the training loop of a seed script."""
    device = _device()
    pl.seed_everything(0, verbose=False)  # the same initial weights as (b) and (c)
    model = build_backbone(spec).to(device)
    optimizer = build_optimizer(spec, model.parameters())
    loader = plain_loader(spec, spec.num_workers)
    clock = StepClock(spec, device)
    model.train()
    while not clock.finished:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            clock.tick()
            if clock.finished:
                break
    settings = {"precision": "32-true", "loader": f"DataLoader, {spec.num_workers} workers"}
    return {**clock.windows(), "settings": settings}


def lightning_settings(spec: Spec, fast: bool) -> dict[str, Any]:
    """(b)'s settings are (a)'s. (c)'s are the fast configs' for this device: mixed precision
    and compile only on a GPU (compiling a VGG takes minutes on a CPU, for little gain)."""
    if not fast:
        loader = f"DataLoader, {spec.num_workers} workers"
        return {"precision": "32-true", "loader": loader, "channels_last": False, "compile": False}
    on_gpu = _device().type == "cuda"
    return {
        "precision": default_precision(),
        "loader": "device-resident",
        "channels_last": True,
        "compile": on_gpu,
        "cudnn_benchmark": True,
    }


def run_lightning(spec: Spec, fast: bool) -> dict[str, Any]:
    """(b) and (c): ImageClassifier + CIFAR10DataModule + Trainer."""
    settings = lightning_settings(spec, fast)
    pl.seed_everything(0, verbose=False)
    datamodule = CIFAR10DataModule(**spec.data_args, device_resident=fast)
    model = ImageClassifier(
        build_backbone(spec),
        num_classes=10,
        optimizer=partial(build_optimizer, spec),
        # A constant LR: the config's schedule may wait for validation, which is not run here.
        lr_scheduler=partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0),
        channels_last=settings["channels_last"],
        compile=settings["compile"],
    )
    clock = StepClock(spec, _device())
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        precision=settings["precision"],
        benchmark=fast,
        max_steps=clock.total_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        # The per-step callbacks every CLI run has, and the clock.
        callbacks=[ExactResume(), DivergenceGuard(), ClockCallback(clock)],
    )
    trainer.fit(model, datamodule)
    return {**clock.windows(), "settings": settings}


def run_delivery(spec: Spec) -> dict[str, Any]:
    """Images/s of each path's training loader alone, per CPU core (one thread, no workers)."""
    torch.set_num_threads(1)
    device = _device()
    # The device path makes its batches on the Trainer's device.
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False)
    loaders: dict[str, Any] = {"plain": plain_loader(spec, num_workers=0)}
    for path, fast in (("lightning", False), ("fast", True)):
        datamodule = CIFAR10DataModule(**{**spec.data_args, "num_workers": 0}, device_resident=fast)
        datamodule.trainer = trainer
        datamodule.setup("fit")
        loaders[path] = datamodule.train_dataloader()
    results = {}
    for path, loader in loaders.items():
        delivered = _endless(loader)
        for _ in range(spec.warmup):
            next(delivered)
        # At least delivery_seconds: the device path delivers a window's batches in
        # milliseconds, too short to time on a shared machine.
        _synchronize(device)
        wall, cpu, images = time.perf_counter(), time.process_time(), 0
        while images < spec.windows * spec.steps * spec.batch_size or (
            time.perf_counter() - wall < spec.delivery_seconds
        ):
            images += len(next(delivered)[1])
        _synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[path] = {"images_per_s": images / wall, "images_per_cpu_s": images / cpu}
    return results


def _endless(loader: Any) -> Any:
    """Batches from ``loader``, epoch after epoch."""
    while True:
        yield from loader


def _peak_memory() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "memory": "CUDA"}
    max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_gib": max_rss_kib / 2**20, "memory": "max RSS of the process"}


RUNNERS = {
    "plain": run_plain,
    "lightning": partial(run_lightning, fast=False),
    "fast": partial(run_lightning, fast=True),
    "delivery": run_delivery,
}


def _measure_in_child(name: str, spec: Spec, results: multiprocessing.Queue) -> None:
    try:
        torch.set_num_threads(spec.threads)
        with accepting_made_up_files() if spec.made_up else nullcontext():
            result = RUNNERS[name](spec)
        results.put({**result, **_peak_memory()})
    except BaseException:
        results.put({"error": traceback.format_exc()})


def measure(name: str, spec: Spec) -> dict[str, Any]:
    """Run ``RUNNERS[name]`` in a fresh process; its result, or its error raised here."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_measure_in_child, args=(name, spec, results))
    process.start()
    result = results.get()
    process.join()
    if "error" in result:
        raise RuntimeError(f"the {name!r} measurement failed:\n{result['error']}")
    return result


def flops_per_image(spec: Spec) -> int:
    """Training FLOPs of one image, forward and backward (lightning's ``measure_flops``)."""
    with torch.device("meta"):
        model = build_backbone(spec)
        images = torch.empty(1, 3, spec.image_size, spec.image_size)
    return measure_flops(model, lambda: model(images), lambda logits: logits.sum())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "CPU",
    )
    return f"{model}, {os.cpu_count()} cores"


def summarise(results: list[dict[str, Any]], spec: Spec, flops: int) -> dict[str, Any]:
    """One path's figures from its measurements (one per round)."""
    seconds = [window for result in results for window in result["windows_s"]]
    cpu_seconds = [window for result in results for window in result["windows_cpu_s"]]
    window_rates = [spec.steps * spec.batch_size / s for s in seconds]
    images_per_s = spec.steps * spec.batch_size / statistics.median(seconds)
    settings = results[0]["settings"]
    dtype = MIXED_PRECISION_DTYPES.get(settings["precision"], torch.float32)
    peak_flops = get_available_flops(_device(), dtype)
    return {
        "images_per_s": images_per_s,
        "step_ms": 1000 * statistics.median(seconds) / spec.steps,
        "host_cpu_ms_per_step": 1000 * statistics.median(cpu_seconds) / spec.steps,
        "best_window_images_per_s": max(window_rates),
        "windows_images_per_s": window_rates,
        "tflops_per_s": flops * images_per_s / 1e12,
        "mfu": flops * images_per_s / peak_flops if peak_flops else None,
        "settings": settings,
        "peak_memory_gib": max(result["peak_memory_gib"] for result in results),
        "memory": results[0]["memory"],
    }


def markdown(report: dict[str, Any]) -> str:
    runs, delivery = report["runs"], report["data_delivery"]
    lines = [
        f"# Training throughput: {report['config']} on {report['device']}",
        "",
        f"{report['date']}; torch {report['torch']}, lightning {report['lightning']}; "
        f"{report['data']}; batch {report['batch_size']}, {report['num_workers']} loader "
        f"workers, {report['threads']} torch threads. Median over "
        f"{report['windows'] * report['rounds']} windows of {report['steps']} steps after "
        f"{report['warmup']} warm-up steps. Model: {report['gflops_per_image']:.3f} GFLOP per "
        "training image (forward + backward).",
        "",
        "| path | settings | images/s (median) | best window | vs (a) | step (ms) "
        "| host CPU per step (ms) | TFLOP/s | MFU | peak memory (GiB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for path in PATHS:
        run = runs[path]
        settings = ", ".join(f"{k}={v}" for k, v in run["settings"].items())
        ratio = run["images_per_s"] / runs["plain"]["images_per_s"]
        mfu = f"{100 * run['mfu']:.1f}%" if run["mfu"] is not None else "n/a"
        lines.append(
            f"| {TITLES[path]} | {settings} | {run['images_per_s']:.1f} "
            f"| {run['best_window_images_per_s']:.1f} | {ratio:.3f} | {run['step_ms']:.1f} "
            f"| {run['host_cpu_ms_per_step']:.1f} | {run['tflops_per_s']:.3f} | {mfu} "
            f"| {run['peak_memory_gib']:.2f} |"
        )
    lines += [
        "",
        "Host CPU per step: CPU time of the training process (loader workers not included). "
        f"Peak memory: {runs['plain']['memory']}. MFU needs the device's peak FLOP/s "
        "(lightning's table; none for CPUs).",
        "",
        "## Data delivery alone (training loaders, no model; one process, one thread, no workers)",
        "",
        "| loader | images/s | images/s per CPU core | per core vs (a) | per core vs (b) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for path in PATHS:
        per_core = delivery[path]["images_per_cpu_s"]
        lines.append(
            f"| {TITLES[path]} | {delivery[path]['images_per_s']:.0f} | {per_core:.0f} "
            f"| {per_core / delivery['plain']['images_per_cpu_s']:.1f}x "
            f"| {per_core / delivery['lightning']['images_per_cpu_s']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/vgg16_cifar.yaml", type=Path)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per window")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per run")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each path, interleaved")
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--num-workers", type=int, help="default: the datamodule's default")
    parser.add_argument("--threads", type=int, help="torch threads; default: torch's default")
    parser.add_argument(
        "--delivery-seconds", type=float, default=3.0, help="least time per loader, data alone"
    )
    parser.add_argument("--data-dir", help="holding cifar-10-batches-py/; default: the config's")
    parser.add_argument(
        "--made-up-images", type=int, default=50_000, help="training images if made up"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "windows", "rounds", "made_up_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    data = config.get("data") or {}
    if not str(data.get("class_path", "")).endswith("CIFAR10DataModule"):
        raise SystemExit(f"{args.config}: the benchmark needs a CIFAR-10 config")
    init_args = data.get("init_args") or {}
    data_dir = args.data_dir or init_args.get("data_dir", "data/cifar10")
    made_up = not (Path(data_dir) / CIFAR10.base_folder).is_dir()
    scratch = tempfile.mkdtemp(prefix="throughput-") if made_up else None
    try:
        if scratch:
            data_dir = str(write_cifar10(scratch, n_train=args.made_up_images, n_test=1))
        spec = Spec(
            config=config,
            data_dir=data_dir,
            made_up=made_up,
            batch_size=args.batch_size or init_args.get("batch_size", 256),
            num_workers=(
                args.num_workers
                if args.num_workers is not None
                else CIFAR10DataModule(data_dir=data_dir).resolved_num_workers
            ),
            warmup=args.warmup,
            windows=args.windows,
            steps=args.steps,
            threads=args.threads or torch.get_num_threads(),
            delivery_seconds=args.delivery_seconds,
        )
        report = run_all(spec, args.rounds)
    finally:
        if scratch:
            shutil.rmtree(scratch)
    report.update(
        config=args.config.stem,
        data=(
            f"made-up images in CIFAR-10's format ({args.made_up_images})"
            if made_up
            else f"CIFAR-10 from {data_dir}"
        ),
        rounds=args.rounds,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"throughput_{args.config.stem}_{_device().type}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report), end="")
    return report


def run_all(spec: Spec, rounds: int) -> dict[str, Any]:
    """Measure the three paths ``rounds`` times, in turn, then data delivery."""
    measured: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path in PATHS:
            measured[path].append(measure(path, spec))
    flops = flops_per_image(spec)
    runs = {path: summarise(results, spec, flops) for path, results in measured.items()}
    plain = runs["plain"]["images_per_s"]
    return {
        "runs": runs,
        "ratios": {
            "lightning/plain": runs["lightning"]["images_per_s"] / plain,
            "fast/plain": runs["fast"]["images_per_s"] / plain,
        },
        "data_delivery": measure("delivery", spec),
        "device": device_name(_device()),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "gflops_per_image": flops / 1e9,
        **{k: v for k, v in asdict(spec).items() if k not in ("config", "data_dir", "made_up")},
    }


if __name__ == "__main__":
    main()
