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
import math
from pathlib import Path
from typing import Any

import torch
from paper_scale import (
    WINDOW,
    add_run_arguments,
    data_folders,
    header,
    record,
    short_run,
    step_label,
)

CONFIG = "configs/paper/vgg11_imagenet.yaml"
STDS = (0.1, 0.01)


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
            f"{step_label(bad)} | {run['loss_first']:.3f} | "
            f"{'-' if last is None else f'{last:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folders: train/ and test/")
    add_run_arguments(parser, steps=300, batch_size=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [
        {
            "init_std": std,
            **short_run(
                CONFIG,
                [
                    f"--data.init_args.data_dir={args.data}",
                    "--data.init_args.test_split=test",
                    f"--model.backbone.init_args.init_std={std}",
                    *(f"--{setting}" for setting in args.set),
                ],
                args.steps,
                args.batch_size,
            ),
        }
        for std in STDS
    ]
    classes = len([p for p in (Path(args.data) / "train").iterdir() if p.is_dir()])
    command = (
        "python benchmarks/vgg_init.py "
        f"--data {args.data} --steps {args.steps} --batch-size {args.batch_size}"
        + "".join(f" --set {setting}" for setting in args.set)
    )
    report = {
        **header(command),
        "data": args.data,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "chance_loss": math.log(classes),
        "runs": runs,
    }
    record("vgg_init", report, markdown(report), args.out, [args.data, *data_folders(args.set)])
    return report


if __name__ == "__main__":
    main()
