"""The benchmark's markdown report: the training table, the data delivery table, or both."""

from __future__ import annotations

from typing import Any

from delivery import BASELINES, LOADERS
from delivery import TITLES as LOADER_TITLES

PATHS = ("plain", "lightning", "fast")
TITLES = {path: LOADER_TITLES[path] for path in PATHS}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Training throughput: {report['config']} on {report['device']}",
        "",
        f"{report['date']}; torch {report['torch']}, lightning {report['lightning']}; "
        f"{report['data']}.",
    ]
    if "runs" in report:
        lines += ["", *_training(report)]
    if "data_delivery" in report:
        lines += ["", *_delivery(report)]
    return "\n".join(lines) + "\n"


def _training(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    lines = [
        f"Batch {report['batch_size']}, {report['num_workers']} loader workers, "
        f"{report['threads']} torch threads. Median over {report['windows'] * report['rounds']} "
        f"windows of {report['steps']} steps after {report['warmup']} warm-up steps. Model: "
        f"{report['gflops_per_image']:.3f} GFLOP per training image (forward + backward).",
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
    return [
        *lines,
        "",
        "Host CPU per step: CPU time of the training process (loader workers not included). "
        f"Peak memory: {runs['plain']['memory']}. MFU needs the device's peak FLOP/s "
        "(lightning's table; none for CPUs).",
    ]


def _delivery(report: dict[str, Any]) -> list[str]:
    delivery = report["data_delivery"]
    lines = [
        "## Data delivery alone (training loaders, no model; one process, one thread, no workers)",
        "",
        "CIFAR-10: crop + flip. Image folder: random resized crop to 224 + flip, "
        f"{report['folder_data']}.",
        "",
        "| loader | images/s | images/s per CPU core | per core vs (a) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for path in LOADERS:
        per_core = delivery[path]["images_per_cpu_s"]
        baseline = BASELINES.get(path, path)
        lines.append(
            f"| {LOADER_TITLES[path]} | {delivery[path]['images_per_s']:.0f} | {per_core:.0f} "
            f"| {per_core / delivery[baseline]['images_per_cpu_s']:.1f}x |"
        )
    return lines
