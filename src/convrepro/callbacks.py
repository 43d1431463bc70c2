"""Callbacks that turn a run into files a person (or the ablation runner) can read."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

HISTORY_FILE = "history.csv"
SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.csv"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of a run folder, or ``{}`` if it has none yet."""
    path = Path(run_dir, SUMMARY_FILE)
    return json.loads(path.read_text()) if path.is_file() else {}


def _scalar_metrics(trainer: Trainer, prefixes: Sequence[str]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(tuple(prefixes)) and torch.as_tensor(value).numel() == 1
    }


class RunSummary(Callback):
    """Keeps ``history.csv`` (one row per validation epoch) and ``summary.json`` in the run folder.

    ``summary.json`` holds the best validation accuracy, checkpoint paths, epochs, wall time and,
    after ``test``, the test metrics: everything the ablation runner and a report need.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fit_started = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.monotonic()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update(_scalar_metrics(trainer, ("val/", "lr")))
        path = self.run_dir / HISTORY_FILE
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
        rows.append(row)
        # Columns of earlier rows first: a resumed run may log its metrics in another order.
        columns = list(dict.fromkeys(key for r in rows for key in r))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, table.getvalue())

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        best = _scalar_metrics(trainer, ("val/acc_best",)).get("val/acc_best", math.nan)
        previous = read_summary(self.run_dir)
        self._update(
            trainer,
            {
                "best_val_acc": best,
                "best_checkpoint": checkpoint.best_model_path if checkpoint else "",
                "last_checkpoint": checkpoint.last_model_path if checkpoint else "",
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                # a resumed run adds its time to that of the runs before it
                "fit_seconds": previous.get("fit_seconds", 0.0)
                + time.monotonic()
                - self._fit_started,
            },
        )

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._update(trainer, _scalar_metrics(trainer, ("test/",)))

    def _update(self, trainer: Trainer, values: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            summary = {**read_summary(self.run_dir), **values}
            write_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (sample, predicted index and class, probability) in data order.

    Under DDP each rank writes its share and rank 0 merges them, so the file lists every sample
    exactly once.
    """

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir)

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
            for sample, index, probability in zip(
                indices, output["index"].tolist(), output["probability"].tolist(), strict=True
            ):
                name = names[sample] if names else str(sample)
                rows.append((sample, name, index, class_names[index], f"{probability:.6f}"))
        part = self.output_dir / f".predictions.rank{trainer.global_rank}.json"
        write_atomic(part, json.dumps(rows))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged = []
            for rank in range(trainer.world_size):
                rank_part = self.output_dir / f".predictions.rank{rank}.json"
                merged.extend(json.loads(rank_part.read_text()))
                rank_part.unlink()
            merged.sort(key=lambda row: row[0])
            table = io.StringIO()
            writer = csv.writer(table, lineterminator="\n")
            writer.writerow(("sample", "predicted_index", "predicted_class", "probability"))
            writer.writerows(row[1:] for row in merged)
            write_atomic(self.output_dir / PREDICTIONS_FILE, table.getvalue())
        trainer.strategy.barrier()


def _sample_names(trainer: Trainer) -> list[str] | None:
    sample_names = getattr(trainer.datamodule, "sample_names", None)
    return sample_names("predict") if callable(sample_names) else None


class ValidationPlots(Callback):
    """Logs a confusion matrix and a grid of sample predictions to W&B after validation.

    Args:
        every_n_epochs: Plot after every n-th validation epoch (and never during sanity checks).
        num_images: Images in the prediction grid (taken from the first validation batch).
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self._confusion: MulticlassConfusionMatrix | None = None
        self._samples: tuple[Tensor, Tensor, Tensor] | None = None

    def _active(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._confusion = MulticlassConfusionMatrix(pl_module.hparams.num_classes).to(
            pl_module.device
        )
        self._samples = None

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer):
            return
        images, targets = batch
        self._confusion.update(outputs["predictions"], targets)
        if self._samples is None:
            n = self.num_images
            self._samples = (images[:n].cpu(), targets[:n].cpu(), outputs["predictions"][:n].cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active(trainer):
            return
        matrix = self._confusion.compute().cpu()  # every rank takes part in the sync
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not trainer.is_global_zero or not wandb_loggers or self._samples is None:
            return
        import wandb

        names = pl_module.class_names
        images, targets, predictions = self._samples
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-8)  # undo normalisation for display
        grid = [
            wandb.Image(image.float(), caption=f"pred {names[p]} / true {names[t]}")
            for image, t, p in zip(images, targets.tolist(), predictions.tolist(), strict=True)
        ]
        table = wandb.Table(
            columns=["true", "predicted", "count"],
            data=[
                [names[t], names[p], int(matrix[t, p])]
                for t in range(len(names))
                for p in range(len(names))
            ],
        )
        for logger in wandb_loggers:
            logger.experiment.log(
                {"val/predictions": grid, "val/confusion_matrix": table},
                step=trainer.global_step,
            )
