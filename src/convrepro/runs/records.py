"""Callbacks that turn a run into the files of its :class:`~convrepro.runs.folder.RunFolder`."""

from __future__ import annotations

import csv
import io
import json
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from convrepro.data.contract import datamodule_of
from convrepro.errors import TrainingDiverged
from convrepro.files import write_atomic
from convrepro.reliability.distributed import lost_peer
from convrepro.reliability.preemption import StopRequested
from convrepro.runs.folder import RunFolder
from convrepro.runs.prediction_grid import GRID_IMAGES, save_prediction_grid
from convrepro.runs.provenance import (
    Invocation,
    data_fingerprint,
    device_record,
    record_invocation,
    utc_now,
)
from convrepro.runs.summary import Summary
from convrepro.training import metrics

TOP_K = 5  # classes listed per image in predictions.csv


def _scalar_metrics(trainer: Trainer, prefixes: Sequence[str]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(tuple(prefixes)) and torch.as_tensor(value).numel() == 1
    }


class RunSummary(Callback):
    """Keeps the run folder's ``history.csv`` (one row per validation epoch) and ``summary.json``.

    The summary holds the best validation accuracy, checkpoint paths, epochs, wall time and,
    after ``test``, the test metrics: everything the ablation runner and a report need.
    """

    def __init__(self, run: RunFolder, checkpoint_step: int | None = None) -> None:
        self.run = run
        self.checkpoint_step = checkpoint_step  # of the command's --ckpt_path, if any
        self._fit_started = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.monotonic()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # history.csv is the fit's epochs; a `validate` command is no epoch of it.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if trainer.sanity_checking or not trainer.is_global_zero or not fitting:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update(_scalar_metrics(trainer, (metrics.VAL_PREFIX, "lr")))
        self.run.append_history(row)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        best = _scalar_metrics(trainer, (metrics.VAL_ACC_BEST,)).get(metrics.VAL_ACC_BEST)
        with self.run.records_lock():
            summary = self.run.read_summary()
            if summary.tested and trainer.global_step != summary.global_step:
                _retire_test_result(summary)
            # A fit that validated nothing (a resume of a finished run) keeps the recorded best.
            summary.best_val_acc = best if best is not None else summary.best_val_acc
            summary.best_checkpoint = _absolute(checkpoint.best_model_path if checkpoint else "")
            summary.last_checkpoint = _absolute(checkpoint.last_model_path if checkpoint else "")
            summary.epochs = trainer.current_epoch
            summary.global_step = trainer.global_step
            # a resumed run adds its time to that of the runs before it
            elapsed = time.monotonic() - self._fit_started
            summary.fit_seconds = (summary.fit_seconds or 0.0) + elapsed
            self.run.write_summary(summary)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        with self.run.records_lock():
            summary = self.run.read_summary()
            summary.test.update(_scalar_metrics(trainer, (metrics.TEST_PREFIX,)))
            summary.test_checkpoint = _absolute(trainer.ckpt_path) if trainer.ckpt_path else None
            summary.test_checkpoint_step = self.checkpoint_step if trainer.ckpt_path else None
            self.run.write_summary(summary)


def _retire_test_result(summary: Summary) -> None:
    """The run trained on after its test: the result is of weights its checkpoints no longer
    hold. It moves to ``earlier_tests`` and the run counts as untested again."""
    summary.earlier_tests.append(
        {
            "checkpoint": summary.test_checkpoint,
            "checkpoint_step": summary.test_checkpoint_step,
            "global_step": summary.global_step,
            **summary.test,
        }
    )
    summary.test, summary.test_checkpoint, summary.test_checkpoint_step = {}, None, None
    rank_zero_info(
        "The run trained on after its last test: that test result is now under earlier_tests "
        "in summary.json. Test again for a result of the new weights."
    )


def _absolute(path: str | Path) -> str:
    """Every path in a summary absolute, whichever way the command named it; '' stays ''."""
    return str(Path(path).resolve()) if path else ""


class RunProvenance(Callback):
    """Appends this command's :class:`~convrepro.runs.provenance.Invocation` to the run's
    ``provenance.json`` (and W&B run config) once the data is read, and its end when it ends.
    """

    def __init__(self, run: RunFolder, invocation: Invocation) -> None:
        self.run = run
        self.invocation = invocation

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        self.invocation.devices = device_record(trainer)
        self.invocation.data = data_fingerprint(trainer.datamodule)
        record = record_invocation(self.run, self.invocation)
        skipped = getattr(trainer.datamodule, "skipped_files", None)
        if skipped:
            self.run.record_skipped_images(self.invocation.subcommand, skipped)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"provenance": record}, allow_val_change=True)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._end(trainer, "finished")

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, StopRequested):
            outcome = f"stopped by {signal.Signals(exception.signum).name}"
        elif isinstance(exception, TrainingDiverged):
            outcome = "diverged"
        elif (lost := lost_peer(exception)) is not None:
            outcome = f"lost another process: {lost.detail}"
        else:
            outcome = f"failed: {type(exception).__name__}: {exception}"
        self._end(trainer, outcome)

    def _end(self, trainer: Trainer, outcome: str) -> None:
        # Not written yet (failed before setup), or its folder was removed (a failed start).
        if trainer.is_global_zero and self.invocation.devices and self.run.path.is_dir():
            self.invocation.ended, self.invocation.outcome = utc_now(), outcome
            record_invocation(self.run, self.invocation)


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (sample, predicted index and class, probability, the top 5
    classes with theirs) in data order, and ``predictions.png``, the first images with their
    predicted classes (when the datamodule can show its images).

    Under DDP each rank writes its share and rank 0 merges them, so the file lists every sample
    exactly once.
    """

    def __init__(self, run: RunFolder) -> None:
        super().__init__(write_interval="epoch")
        self.run = run

    def write_on_epoch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # One predict dataloader: Lightning flattens `predictions` to batches but keeps the
        # dataloader level in `batch_indices`.
        if batch_indices and batch_indices[0] and isinstance(batch_indices[0][0], list):
            batch_indices = batch_indices[0]
        names = _sample_names(trainer)
        class_names = pl_module.class_names
        rows = []
        for output, indices in zip(predictions, batch_indices, strict=True):
            top = output["probabilities"].topk(min(TOP_K, len(class_names)), dim=1)
            for sample, index, probability, top_p, top_i in zip(
                indices,
                output["index"].tolist(),
                output["probability"].tolist(),
                top.values.tolist(),
                top.indices.tolist(),
                strict=True,
            ):
                name = names[sample] if names else str(sample)
                top_k = "; ".join(
                    f"{class_names[i]} {p:.4f}" for i, p in zip(top_i, top_p, strict=True)
                )
                predicted = (index, class_names[index], f"{probability:.6f}", top_k)
                rows.append((sample, name, *predicted))
        part = self.run.path / f".predictions.rank{trainer.global_rank}.json"
        write_atomic(part, json.dumps(rows))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged = []
            for rank in range(trainer.world_size):
                rank_part = self.run.path / f".predictions.rank{rank}.json"
                merged.extend(json.loads(rank_part.read_text()))
                rank_part.unlink()
            merged.sort(key=lambda row: row[0])
            table = io.StringIO()
            writer = csv.writer(table, lineterminator="\n")
            header = ("sample", "predicted_index", "predicted_class", "probability", "top5")
            writer.writerow(header)
            writer.writerows(row[1:] for row in merged)
            write_atomic(self.run.predictions, table.getvalue())
            self._save_grid(trainer, merged[:GRID_IMAGES])
        trainer.strategy.barrier()

    def _save_grid(self, trainer: Trainer, rows: list[list[Any]]) -> None:
        images_of = getattr(trainer.datamodule, "sample_images", None)
        if images_of is None or not rows:
            return
        images = images_of("predict", len(rows))
        captions = [f"{row[3]} ({float(row[4]):.0%})" for row in rows]
        save_prediction_grid(images, captions, self.run.prediction_grid)


def _sample_names(trainer: Trainer) -> list[str] | None:
    datamodule = datamodule_of(trainer)
    return datamodule.sample_names("predict") if datamodule is not None else None
