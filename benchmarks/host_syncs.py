"""Counting the times a training step makes the host wait for the device.

On a GPU every ``.item()``, ``bool(tensor)`` or data-dependent shape (``nonzero``, boolean
indexing, ``unique``) stalls the host until the queued kernels finish, so the next step's
launches cannot overlap this step's compute. Two counters see them:

* on CUDA, CUDA's own sync debug mode reports every synchronizing call (also inside compiled
  code);
* anywhere, a dispatch mode counts the aten ops that reach the same calls, which is how a CPU
  machine (the test suite) checks it.

:class:`HostReadsPerStep` counts per training step, from one batch start to the next (the step,
its hooks, logging, the progress bar); ``python main.py fit ...
--trainer.callbacks+=host_syncs.HostReadsPerStep`` with this folder on ``PYTHONPATH`` writes the
counts to ``report`` at the end.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops whose result the host must read (or whose output size depends on the data).
HOST_READS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
}
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"


class CountHostReads(TorchDispatchMode):
    """Counts the aten ops that read device values on the host, on any device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        if func.__name__.split(".")[0] in HOST_READS or _is_boolean_indexing(func, args):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _is_boolean_indexing(func: Any, args: Any) -> bool:
    return func is torch.ops.aten.index.Tensor and any(
        index is not None and index.dtype == torch.bool for index in args[1]
    )


class CountCudaSyncs:
    """Counts synchronizing CUDA calls with CUDA's sync debug mode (warnings, one per call)."""

    def __init__(self) -> None:
        self.count = 0
        self._caught: warnings.catch_warnings | None = None
        self._records: list[warnings.WarningMessage] = []

    def __enter__(self) -> CountCudaSyncs:
        self._caught = warnings.catch_warnings(record=True)
        self._records = self._caught.__enter__()
        warnings.filterwarnings("always", message=CUDA_SYNC_WARNING)
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        assert self._caught is not None
        self._caught.__exit__(*exc_info)
        self.count = sum(CUDA_SYNC_WARNING in str(record.message) for record in self._records)


class HostReadsPerStep(pl.Callback):
    """Host reads from one batch start to the next; ``counts[s]`` covers the step that ends at
    global step ``s`` (the last one at epoch end).

    Args:
        report: Write ``{"counts": {step: n}, "log_every_n_steps": L, "counter": ...}`` there
            when training ends (for runs in another process).
    """

    def __init__(self, report: str | None = None) -> None:
        self.report = report
        self.counts: dict[int, int] = {}
        self._counter: CountHostReads | CountCudaSyncs | None = None

    def _close(self, step: int) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.counts[step] = self._counter.count
            self._counter = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._close(trainer.global_step)
        on_cuda = pl_module.device.type == "cuda"
        self._counter = CountCudaSyncs() if on_cuda else CountHostReads()
        self._counter.__enter__()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer.global_step)  # the epoch's last step: reads at epoch end are fine

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close(trainer.global_step)  # max_steps reached inside an epoch
        if self.report and trainer.is_global_zero:
            counter = "CUDA sync debug mode" if pl_module.device.type == "cuda" else "aten ops"
            Path(self.report).write_text(
                json.dumps(
                    {
                        "counts": self.counts,
                        "log_every_n_steps": trainer.log_every_n_steps,
                        "counter": counter,
                    }
                )
            )


def quiet_steps(counts: dict[int, int], log_every: int, warmup: int = 0) -> dict[int, int]:
    """The counts of the steps that should read nothing: not logging steps, not the last step
    (epoch end), none of the first ``warmup`` (compilation, autotuning)."""
    last = max(counts, default=0)
    return {s: n for s, n in counts.items() if s % log_every and warmup < s < last}
