"""Does a config train at the papers' input scale, and does its LRN act there? A short run.

    python benchmarks/paper_scale.py --config configs/vgg11_lrn_cifar.yaml --steps 200 \\
        [--batch-size 128] [--set KEY=VALUE ...] [--out benchmarks/results]

Builds the config through the CLI as a library (its network, init, data pipeline and
optimiser as written, ``--set`` applied, e.g. where the data is), then trains ``--steps`` SGD
steps in a plain loop and records: ``alpha * sum(a^2) / k`` at every LRN before and after
(:func:`convrepro.explore.lrn_regime`, on ``--batch-size`` validation images evenly spaced over
the validation split), the logits' spread at step 0, every step's loss and the first non-finite
one, and the accuracy on those validation images at the end. Writes
``<out>/paper_scale_<config name>_<device>.json``/``.md``.
``benchmarks/vgg_init.py`` uses the same run for the VGG paper's two init readings.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import device, device_name, write_record

from convrepro.cli import ConvReproCLI
from convrepro.explore import lrn_regime

DATA_DIR_KEY = "data.init_args.data_dir"
#: Steps averaged for the loss at the start and at the end of a run.
WINDOW = 20


def short_run(config: str, settings: list[str], steps: int, batch_size: int) -> dict[str, Any]:
    """Train ``config`` (with ``--key=value`` ``settings``) for ``steps`` steps; see above."""
    cli = ConvReproCLI(
        args=[
            "--config",
            config,
            "--seed_everything=0",
            f"--data.init_args.batch_size={batch_size}",
            "--data.init_args.num_workers=1",
            "--trainer.logger=false",
            *settings,
        ],
        run=False,
    )
    model, datamodule = cli.model, cli.datamodule
    model.trainer = cli.trainer
    optimizer = model.configure_optimizers()["optimizer"]
    datamodule.setup("fit")
    on = device()
    model.to(on)
    val_images, val_labels = (t.to(on) for t in _spread_batch(datamodule.splits["val"], batch_size))
    regime_before = lrn_regime(model, val_images)
    model.train()
    losses: list[float] = []
    first_bad = None
    started = time.perf_counter()
    batches = iter(datamodule.train_dataloader())
    for step in range(steps):
        images, labels = (tensor.to(on) for tensor in next(batches))
        logits = model(images)
        if step == 0:
            initial_logit_std = logits.detach().float().std().item()
        loss = F.cross_entropy(logits, labels)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            first_bad = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    finite = [value for value in losses if math.isfinite(value)]
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_images).argmax(dim=1) == val_labels).float().mean().item()
    return {
        "settings": settings,
        "steps_run": len(losses),
        "initial_logit_std": initial_logit_std,
        "first_non_finite_step": first_bad,
        "loss_first": statistics.fmean(finite[:WINDOW]) if finite else None,
        "loss_last": statistics.fmean(finite[-WINDOW:]) if first_bad is None else None,
        "val_batch_accuracy": None if first_bad is not None else accuracy,
        "val_batch_images": len(val_labels),
        "lrn_regime_before": regime_before,
        "lrn_regime_after": None if first_bad is not None else lrn_regime(model, val_images),
        "seconds": round(seconds, 1),
        "losses": losses,
    }


def _spread_batch(split: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` validation images evenly spaced over the split: class-sorted sources (CIFAR-10
    read from class folders) would make the first batch a single class."""
    positions = torch.linspace(0, len(split) - 1, min(size, len(split))).long().tolist()
    images, labels = zip(*(split[position] for position in positions), strict=True)
    return torch.stack(images), torch.tensor(labels)


def record(stem: str, report: dict[str, Any], markdown: str, out: str, data: list[str]) -> None:
    """Write ``<out>/<stem>_<device>.json`` and ``.md`` (the ``data`` folders shown as
    ``<DATA_DIR>``) and print the markdown."""
    write_record(Path(out) / f"{stem}_{device().type}", report, markdown, data)
    print(markdown)


def data_folders(settings: list[str]) -> list[str]:
    """The data folders among ``--set`` settings."""
    return [value for key, _, value in (s.partition("=") for s in settings) if key == DATA_DIR_KEY]


def header(command: str) -> dict[str, Any]:
    """What every record starts with: command, date, machine."""
    return {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(device()),
    }


def add_run_arguments(parser: argparse.ArgumentParser, steps: int, batch_size: int) -> None:
    """The options every short-run script takes: length, batch, settings, threads, output."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results")


def step_label(step: int | None) -> str:
    return "never" if step is None else f"step {step}"


def _regime(values: dict[str, float] | None) -> str:
    if values is None:
        return "-"
    return ", ".join(f"{layer}: {value:.2g}" for layer, value in values.items()) or "no LRN"


def markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    last = run["loss_last"]
    accuracy = run["val_batch_accuracy"]
    return "\n".join(
        [
            f"`{report['config']}`, {run['steps_run']} steps of batch {report['batch_size']} on "
            f"{report['device']} ({run['seconds']} s); `{report['command']}`.",
            "",
            "| | value |",
            "| --- | --- |",
            f"| alpha * sum(a^2) / k, initialisation | {_regime(run['lrn_regime_before'])} |",
            f"| alpha * sum(a^2) / k, after training | {_regime(run['lrn_regime_after'])} |",
            f"| logits' std at step 0 | {run['initial_logit_std']:.3g} |",
            f"| first non-finite loss | {step_label(run['first_non_finite_step'])} |",
            f"| mean loss, first {WINDOW} steps | {run['loss_first']:.3f} |",
            f"| mean loss, last {WINDOW} steps | {'-' if last is None else f'{last:.3f}'} |",
            f"| accuracy on {run['val_batch_images']} validation images | "
            f"{'-' if accuracy is None else f'{accuracy:.1%}'} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    add_run_arguments(parser, steps=200, batch_size=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = [f"--{setting}" for setting in args.set]
    command = (
        f"python benchmarks/paper_scale.py --config {args.config} --steps {args.steps} "
        f"--batch-size {args.batch_size}" + "".join(f" --set {s}" for s in args.set)
    )
    report = {
        **header(command),
        "config": args.config,
        "batch_size": args.batch_size,
        "run": short_run(args.config, settings, args.steps, args.batch_size),
    }
    data = data_folders(args.set)
    record(f"paper_scale_{Path(args.config).stem}", report, markdown(report), args.out, data)
    return report


if __name__ == "__main__":
    main()
