"""Which reading of the VGG paper's initialisation trains: std 0.1 or 0.01 (issue 21, item 2).

    python benchmarks/vgg_init.py --data DIR [--steps 300] [--batch-size 16] [--out DIR]

The paper (sec. 3.1) draws net A's weights from "a normal distribution with the zero mean and
10^-2 variance": std 0.1 as printed, std 0.01 as Caffe-era reimplementations read it. For each
std this builds ``configs/paper/vgg11_imagenet.yaml`` through the CLI as a library (net A, the
papers' 0-255 input scale minus the training images' mean RGB, training scale 256 and random
224 crops, the paper's SGD: LR 0.01, momentum 0.9, weight decay 5e-4) on the image folders in
``DIR`` (``train/<class>/<images>``, ``test/<class>/<images>``; the benchmark's record used
CIFAR-10's 32x32 JPEGs, upsampled to 256 by the training scale), trains ``--steps`` steps on
the same seeded batches and records the initial logits' spread, every step's loss, and the first
non-finite one. Writes ``<out>/vgg_init_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import device, device_name

from convrepro.cli import ConvReproCLI

CONFIG = "configs/paper/vgg11_imagenet.yaml"
STDS = (0.1, 0.01)
#: Steps averaged for the loss at the start and at the end of a run.
WINDOW = 20


def train(data: str, std: float, steps: int, batch_size: int) -> dict[str, Any]:
    cli = ConvReproCLI(
        args=[
            "--config",
            CONFIG,
            "--seed_everything=0",
            f"--data.init_args.data_dir={data}",
            "--data.init_args.test_split=test",
            f"--data.init_args.batch_size={batch_size}",
            "--data.init_args.num_workers=1",
            f"--model.backbone.init_args.init_std={std}",
            "--trainer.logger=false",
        ],
        run=False,
    )
    model, datamodule = cli.model, cli.datamodule
    model.trainer = cli.trainer
    optimizer = model.configure_optimizers()["optimizer"]
    datamodule.setup("fit")
    on = device()
    model.to(on).train()
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
    return {
        "init_std": std,
        "steps_run": len(losses),
        "initial_logit_std": initial_logit_std,
        "first_non_finite_step": first_bad,
        "loss_first": statistics.fmean(finite[:WINDOW]) if finite else None,
        "loss_last": statistics.fmean(finite[-WINDOW:]) if first_bad is None else None,
        "seconds": round(seconds, 1),
        "losses": losses,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"VGG net A, `{CONFIG}` (0-255 pixels minus the mean RGB, 224 px crops, "
        f"SGD LR 0.01), batch {report['batch_size']}, {report['steps']} steps, on "
        f"{report['device']}; data: {report['data']}. Chance loss: ln(classes) = "
        f"{report['chance_loss']:.3f}.",
        "",
        "| init std | logits' std at step 0 | first non-finite loss | mean loss, first "
        f"{WINDOW} steps | mean loss, last {WINDOW} steps |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in report["runs"]:
        bad = run["first_non_finite_step"]
        last = run["loss_last"]
        lines.append(
            f"| {run['init_std']} | {run['initial_logit_std']:.3g} | "
            f"{'never' if bad is None else f'step {bad}'} | {run['loss_first']:.3f} | "
            f"{'-' if last is None else f'{last:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folders: train/ and test/")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [train(args.data, std, args.steps, args.batch_size) for std in STDS]
    classes = len([p for p in (Path(args.data) / "train").iterdir() if p.is_dir()])
    report = {
        "command": "python benchmarks/vgg_init.py "
        f"--data {args.data} --steps {args.steps} --batch-size {args.batch_size}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name(device()),
        "data": args.data,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "chance_loss": math.log(classes),
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"vgg_init_{device().type}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
