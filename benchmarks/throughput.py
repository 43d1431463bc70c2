"""Training throughput on this machine: a plain PyTorch loop, our Lightning path, our fast path.

    python benchmarks/throughput.py --config configs/vgg16_cifar.yaml [--only training|delivery]

Three ways to train the config's backbone on CIFAR-10, side by side:

(a) plain: as seed scripts do it: torchvision's CIFAR10 with PIL transforms (the config's crop,
    flip and resize) in a DataLoader, fp32, ``model(x)``, ``loss.backward()``, ``opt.step()``.
(b) lightning: ImageClassifier + CIFAR10DataModule + Trainer with (a)'s settings: fp32, same
    batch size, same loader workers, no cuDNN autotuning; with what runs every step of a real
    run: progress bar, metrics, the CLI's exact-resume seeding and divergence guard.
(c) fast: the same with the fast path's settings for this device: device-resident data,
    channels_last and cuDNN autotuning; on a GPU also the CLI's mixed precision and torch.compile.

Each runs in a process of its own (no warm caches from the others; its own peak memory), forked
from a server that has only imported the libraries (so ~10 s of imports are paid once): ``--warmup``
steps, then ``--windows`` windows of ``--steps`` optimizer steps, timed at step boundaries with
the device synchronized there; a path's images/s is the median over its windows (pooled over
``--rounds``, which interleave the paths so that drifts in machine load hit all alike; the best
window is the least disturbed one, for a machine shared with other jobs). "Data
delivery" (:mod:`delivery`) iterates the training loaders without a model, the three above and
an image folder's, in one process with one thread and no workers, and divides the images by the
process's CPU time: images/s per CPU core. ``--only`` runs one of the two parts (delivery alone
takes under a minute).

Without CIFAR-10 in ``--data-dir`` (the config's), made-up images in the real file format are
used (throughput does not depend on pixel values); likewise made-up photo-sized JPEGs without
``--folder``. Writes ``<out>/throughput_<config>_<device>[_<part>]`` ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import shutil
import statistics
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import yaml
from common import Spec, device, device_name, peak_memory, synchronize, write_record
from delivery import delivery_ratios, plain_loader, run_delivery, write_photo_folder
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from lightning.pytorch.cli import instantiate_class
from report import PATHS, markdown
from torch import nn
from torchvision.datasets import CIFAR10

from convrepro.data import CIFAR10DataModule
from convrepro.reliability.divergence import DivergenceGuard
from convrepro.reliability.resume import ExactResume
from convrepro.runs.console import silence_known_noise
from convrepro.runs.trainer_setup import default_precision
from convrepro.testing import accepting_made_up_files, make_cifar10, preloaded_context
from convrepro.training.classifier import ImageClassifier

MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
PARTS = ("training", "delivery")


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
            synchronize(self.device)  # count the queued work in the window it was launched in
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


def run_plain(spec: Spec) -> dict[str, Any]:
    """(a): the training loop of a seed script."""
    on = device()
    pl.seed_everything(0, verbose=False)  # the same initial weights as (b) and (c)
    model = build_backbone(spec).to(on)
    optimizer = build_optimizer(spec, model.parameters())
    loader = plain_loader(spec, spec.num_workers)
    clock = StepClock(spec, on)
    model.train()
    while not clock.finished:
        for images, labels in loader:
            images = images.to(on, non_blocking=True)
            labels = labels.to(on, non_blocking=True)
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
    on_gpu = device().type == "cuda"
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
    clock = StepClock(spec, device())
    trainer = timed_trainer(
        clock, settings["precision"], benchmark=fast, use_distributed_sampler=False
    )
    trainer.fit(model, datamodule)
    return {**clock.windows(), "settings": settings}


def timed_trainer(clock: StepClock, precision: str, **settings: Any) -> pl.Trainer:
    """A Trainer for ``clock``'s steps: no validation, logging or checkpoints, with the per-step
    callbacks every CLI run has and the clock."""
    return pl.Trainer(
        devices=1,
        precision=precision,
        max_steps=clock.total_steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[ExactResume(), DivergenceGuard(), ClockCallback(clock)],
        **settings,
    )


RUNNERS = {
    "plain": run_plain,
    "lightning": partial(run_lightning, fast=False),
    "fast": partial(run_lightning, fast=True),
    "delivery": run_delivery,
}


def _measure_in_child(name: str, spec: Spec, results: multiprocessing.Queue) -> None:
    try:
        silence_known_noise()  # the libraries' start-up noise, as in the CLI
        torch.set_num_threads(spec.threads)
        with accepting_made_up_files() if spec.made_up else nullcontext():
            result = RUNNERS[name](spec)
        results.put({**result, **peak_memory()})
    except BaseException:
        results.put({"error": traceback.format_exc()})


def measure(name: str, spec: Spec) -> dict[str, Any]:
    """Run ``RUNNERS[name]`` in a process of its own; its result, or its error raised here."""
    context = preloaded_context()
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


def summarise(results: list[dict[str, Any]], spec: Spec, flops: int) -> dict[str, Any]:
    """One path's figures from its measurements (one per round)."""
    seconds = [window for result in results for window in result["windows_s"]]
    cpu_seconds = [window for result in results for window in result["windows_cpu_s"]]
    window_rates = [spec.steps * spec.batch_size / s for s in seconds]
    images_per_s = spec.steps * spec.batch_size / statistics.median(seconds)
    settings = results[0]["settings"]
    dtype = MIXED_PRECISION_DTYPES.get(settings["precision"], torch.float32)
    peak_flops = get_available_flops(device(), dtype)
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/vgg16_cifar.yaml", type=Path)
    parser.add_argument("--only", choices=PARTS, help="run one part; default: both")
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
    parser.add_argument(
        "--folder", type=Path, help="an image folder (train/<class>/...); default: made up"
    )
    parser.add_argument(
        "--made-up-photos", type=int, default=256, help="JPEGs in the made-up image folder"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    for name in ("steps", "warmup", "windows", "rounds", "made_up_images", "made_up_photos"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.folder is not None and not (args.folder / "train").is_dir():
        parser.error(f"--folder {args.folder}: no train/ folder in it")
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
    parts = (args.only,) if args.only else PARTS
    scratch = Path(tempfile.mkdtemp(prefix="throughput-"))
    try:
        if made_up:
            data_dir = str(make_cifar10(scratch / "cifar", args.made_up_images, 1, learnable=False))
        folder = args.folder
        if folder is None and "delivery" in parts:
            folder = write_photo_folder(scratch / "photos", args.made_up_photos)
        spec = Spec(
            config=config,
            data_dir=data_dir,
            made_up=made_up,
            folder_dir=str(folder),
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
        report = run_all(spec, args.rounds, parts)
    finally:
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
    if "delivery" in parts:
        report["folder_data"] = (
            f"image folder {args.folder}"
            if args.folder
            else f"{args.made_up_photos} made-up photo-sized JPEGs (500 x 375 and 375 x 500)"
        )
    part = f"_{args.only}" if args.only else ""
    stem = args.out / f"throughput_{args.config.stem}_{device().type}{part}"
    write_record(
        stem, report, markdown(report), [data_dir, *([args.folder] if args.folder else [])]
    )
    print(markdown(report), end="")
    return report


def run_all(spec: Spec, rounds: int, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Measure the three paths ``rounds`` times, in turn, then data delivery (or one part)."""
    report: dict[str, Any] = {"ratios": {}}
    if "training" in parts:
        measured: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
        for _ in range(rounds):
            for path in PATHS:
                measured[path].append(measure(path, spec))
        flops = flops_per_image(spec)
        runs = {path: summarise(results, spec, flops) for path, results in measured.items()}
        plain = runs["plain"]["images_per_s"]
        report["runs"] = runs
        report["ratios"].update(
            {
                "lightning/plain": runs["lightning"]["images_per_s"] / plain,
                "fast/plain": runs["fast"]["images_per_s"] / plain,
            }
        )
        report["gflops_per_image"] = flops / 1e9
    if "delivery" in parts:
        report["data_delivery"] = measure("delivery", spec)
        report["ratios"].update(delivery_ratios(report["data_delivery"]))
    excluded = ("config", "data_dir", "made_up", "folder_dir")
    return {
        **report,
        "device": device_name(device()),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        **{k: v for k, v in asdict(spec).items() if k not in excluded},
    }


if __name__ == "__main__":
    main()
