"""What the benchmark's measuring processes share: their settings and the device they run on."""

from __future__ import annotations

import json
import os
import platform
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convrepro.data.cifar import CUDA_CONVNET_CROP
from convrepro.runs.scrub import REPOSITORY, MachinePaths


@dataclass(frozen=True)
class Spec:
    """Everything a measuring process needs (picklable: it crosses a process boundary)."""

    config: dict[str, Any]
    data_dir: str
    made_up: bool
    folder_dir: str  # an image folder (``train/<class>/<files>``) for the folder loaders
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
        """The side of the network's input as the config's data protocol makes it."""
        if self.data_args.get("preprocessing") == "cuda-convnet":
            return CUDA_CONVNET_CROP
        return self.data_args.get("resize") or 32


def write_record(
    stem: Path, report: dict[str, Any], markdown: str, data: Sequence[str] = ()
) -> None:
    """``<stem>.json`` and ``<stem>.md``, naming no path of this machine: the records are
    committed. Files in the repository become relative, the ``data`` folders (which the user
    supplies) ``<DATA_DIR>`` (convrepro.runs.scrub)."""
    here = MachinePaths(
        repositories=(os.getcwd(), *([str(REPOSITORY)] if REPOSITORY else [])),
        data=tuple(str(Path(folder).absolute()) for folder in data),
    )
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(here.scrub(json.dumps(report, indent=2) + "\n"))
    stem.with_suffix(".md").write_text(here.scrub(markdown))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(on: torch.device) -> None:
    if on.type == "cuda":
        torch.cuda.synchronize(on)


def device_name(of: torch.device) -> str:
    if of.type == "cuda":
        return torch.cuda.get_device_name(of)
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "CPU",
    )
    return f"{model}, {os.cpu_count()} cores"


def peak_memory() -> dict[str, float | str]:
    if torch.cuda.is_available():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "memory": "CUDA"}
    max_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_memory_gib": max_rss_kib / 2**20, "memory": "max RSS of the process"}
