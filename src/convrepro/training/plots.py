"""Pictures of what the model gets right and wrong, logged to W&B after validation."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


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
