"""ImageClassifier: the one LightningModule every experiment trains.

It owns what is common to all runs - loss, metrics, optimisation, fine-tuning switches and
speed switches - and wraps any backbone (our VGG/AlexNet or a torchvision model) given by
``class_path`` in the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from convrepro.data.contract import datamodule_of
from convrepro.errors import ConfigError
from convrepro.training import metrics
from convrepro.training.evaluation import EvaluationProtocol
from convrepro.training.schedules import WarmupCosineLR

#: The papers' optimiser (VGG sec. 3.1, AlexNet sec. 5): SGD, momentum 0.9, weight decay 5e-4.
PAPER_LR = 1e-2
PAPER_MOMENTUM = 0.9
PAPER_WEIGHT_DECAY = 5e-4


def _accuracy(num_classes: int, top_k: int = 1) -> MulticlassAccuracy:
    # Papers report micro accuracy (correct / total); torchmetrics defaults to the per-class mean.
    return MulticlassAccuracy(
        num_classes=num_classes, top_k=min(top_k, num_classes), average="micro"
    )


class ImageClassifier(LightningModule):
    """Cross-entropy image classification around any backbone.

    Args:
        backbone: The network; its ``classifier[-1]`` (torchvision layout) is the "last layer" for
            fine-tuning and ``features`` the pretrained trunk that ``freeze_features`` freezes.
        num_classes: Linked from the datamodule by the CLI; never written in a config.
        class_names: Linked from the datamodule; used for prediction files and W&B plots.
        label_smoothing: Cross-entropy label smoothing (0 = the papers' plain loss).
        optimizer: Optimiser factory from the config. ``None`` = the papers' SGD (lr 1e-2,
            momentum 0.9, weight decay 5e-4). A backbone with a ``parameter_groups()`` method
            (:class:`~convrepro.models.ConvLocalNet`) gives its own groups: each may set
            ``lr_scale`` (times the optimiser's lr), ``momentum`` and ``weight_decay``, which
            override the optimiser's for that group.
        lr_scheduler: Scheduler factory from the config. ``None`` = the papers' schedule:
            ``ReduceLROnPlateau`` x0.1 when ``val/acc`` stops improving. ``WarmupCosineLR`` is the
            modern option; any torch scheduler works (plateau schedulers monitor ``val/acc``).
        freeze_features: Freeze ``backbone.features`` (weights and BatchNorm statistics): the
            pets recipe of training only the classifier on top of ImageNet features.
        backbone_lr_scale: Learning-rate multiplier for every parameter except the last layer,
            e.g. 0.1 to fine-tune pretrained layers gently while the new head learns at full LR.
        decay_biases_and_norms: Apply the optimiser's weight decay to biases and BatchNorm
            parameters too. ``False`` (default): weights only, as the papers' own code did
            (cuda-convnet's ``wc`` acts on weights; the VGG paper's Caffe models set
            ``decay_mult: 0`` on biases). ``True``: every parameter, as many modern CIFAR
            recipes do (``vgg16_bn_cifar``).
        channels_last: Run convolutions in NHWC memory format (faster with tensor cores).
        compile: ``torch.compile`` the backbone in place; state-dict keys stay unprefixed so
            checkpoints load whether or not it was on.
        test_protocol: How ``test`` and ``predict`` score the test images, e.g. the VGG paper's
            dense or multi-crop evaluation or AlexNet's ten crops
            (:mod:`convrepro.training.evaluation`).
            ``None`` = one forward pass of what the datamodule gives (its center crops).
            ``test`` always logs ``test/error`` and ``test/error_top5`` too, as the papers'
            tables do. Top-5 metrics exist only with more than five classes (with five or
            fewer, top-5 is always 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 1000,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        freeze_features: bool = False,
        backbone_lr_scale: float = 1.0,
        decay_biases_and_norms: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        test_protocol: EvaluationProtocol | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        # Speed switches and the test protocol are not hyperparameters: LightningCLI re-applies
        # a checkpoint's hyperparameters over the command line, and these must stay switchable
        # on resume and when testing a checkpoint.
        self.save_hyperparameters(
            ignore=[
                "backbone",
                "optimizer",
                "lr_scheduler",
                "channels_last",
                "compile",
                "test_protocol",
            ]
        )
        if test_protocol is not None:
            test_protocol.check(backbone)
        self.test_protocol = test_protocol
        self.channels_last = channels_last
        self.backbone = backbone
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        # torchmetrics' default NaN check reads the loss on the host at every update (a GPU sync
        # per step) and would drop NaN losses from the mean; a diverged run should show NaN.
        # Without the check torchmetrics ignores `weight=`, so updates repeat a batch's mean
        # loss once per image: the epoch value stays the mean over images, not over batches.
        self.train_loss, self.val_loss, self.test_loss = (
            MeanMetric(nan_strategy="disable") for _ in range(3)
        )
        self.train_acc, self.val_acc, self.test_acc = (_accuracy(num_classes) for _ in range(3))
        # Top-5 of five classes or fewer is always 1: those runs log no top-5 at all.
        self.has_top5 = num_classes > 5
        self.val_acc_top5, self.test_acc_top5 = _accuracy(num_classes, 5), _accuracy(num_classes, 5)
        self.test_acc_center = _accuracy(num_classes)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints: a resumed run keeps its best
        # Also in checkpoints: the epoch a run resumes in (a stop mid-epoch) reports its training
        # loss and accuracy over all of its batches, as the uninterrupted run does.
        self.train_loss.persistent(True)
        self.train_acc.persistent(True)

        if freeze_features:
            self._features().requires_grad_(False)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()

    # -- model -------------------------------------------------------------------------------
    def _features(self) -> nn.Module:
        features = getattr(self.backbone, "features", None)
        if not isinstance(features, nn.Module):
            raise ConfigError(
                f"freeze_features needs a backbone with a `features` module (torchvision layout); "
                f"{type(self.backbone).__name__} has none. Set model.freeze_features: false."
            )
        return features

    def _last_layer(self) -> nn.Module:
        classifier = getattr(self.backbone, "classifier", None)
        if isinstance(classifier, nn.Sequential):
            return classifier[-1]
        for name in ("fc", "head"):  # torchvision ResNet-style and ViT-style backbones
            if isinstance(getattr(self.backbone, name, None), nn.Module):
                return getattr(self.backbone, name)
        raise ConfigError(
            f"Cannot find the last layer of {type(self.backbone).__name__} (looked for "
            "classifier[-1], fc, head). Set model.backbone_lr_scale: 1.0."
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(self._in_memory_format(images))

    def _in_memory_format(self, images: Tensor) -> Tensor:
        if not self.channels_last:
            return images
        if images.ndim == 5:
            return channels_last_views(images)
        return images.contiguous(memory_format=torch.channels_last)

    def _test_scores(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Class scores of test images: the test protocol's log-posteriors, else the logits;
        and the scores of the protocol's single centre view where it has one."""
        if self.test_protocol is None:
            return self(images), None
        return self.test_protocol.evaluate(self.backbone, self._in_memory_format(images))

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if mode and self.hparams.freeze_features:
            self._features().eval()  # frozen BatchNorm keeps its pretrained running statistics
        return self

    # -- steps -------------------------------------------------------------------------------
    def _shared_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        images, targets = batch
        logits = self(images)
        return self.criterion(logits, targets), logits, targets

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, logits, targets = self._shared_step(batch)
        # The per-step loss is only read when the logger writes (every log_every_n_steps); the
        # epoch values are torchmetrics states, so no step forces a host sync.
        self.log(metrics.TRAIN_LOSS_STEP, loss, on_step=True, on_epoch=False)
        self.train_loss(loss.detach().expand(targets.numel()))
        self.train_acc(logits.detach(), targets)
        self.log(metrics.TRAIN_LOSS, self.train_loss, on_step=False, on_epoch=True)
        self.log(metrics.TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        loss, logits, targets = self._shared_step(batch)
        self.val_loss(loss.expand(targets.numel()))
        self.val_acc(logits, targets)
        self.log(metrics.VAL_LOSS, self.val_loss, prog_bar=True)
        self.log(metrics.VAL_ACC, self.val_acc, prog_bar=True)
        if self.has_top5:
            self.val_acc_top5(logits, targets)
            self.log(metrics.VAL_ACC_TOP5, self.val_acc_top5)
        return {"predictions": logits.argmax(dim=1)}  # for ValidationPlots

    def on_train_start(self) -> None:
        # Sanity-check batches must not count towards the best accuracy; a resumed run keeps
        # the best of its earlier part, restored from the checkpoint.
        if self.trainer.ckpt_path is None:
            self.val_acc_best.reset()
        # A checkpoint from an epoch's end holds that whole epoch's training counts (saved
        # after validation, before the epoch's metrics were reset): the next epoch starts anew.
        loop = self.trainer.fit_loop
        if loop.restarted_on_epoch_end or loop.resumed_on_epoch_end:
            self.train_loss.reset()
            self.train_acc.reset()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the training metrics were saved in them still load; the
        # epoch such a run resumes in then reports only the batches after the resume.
        state = checkpoint.get("state_dict", {})
        for name, value in self.state_dict().items():
            if name.startswith(("train_loss.", "train_acc.")):
                state.setdefault(name, value)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log(metrics.VAL_ACC_BEST, self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits, center_logits = self._test_scores(images)
        if center_logits is not None:
            self.test_acc_center(center_logits, targets)
            self.log(metrics.TEST_ACC_CENTER, self.test_acc_center)
        loss = self.criterion(logits, targets)
        self.test_loss(loss.expand(targets.numel()))
        self.test_acc(logits, targets)
        self.log(metrics.TEST_LOSS, self.test_loss)
        self.log(metrics.TEST_ACC, self.test_acc)
        if self.has_top5:
            self.test_acc_top5(logits, targets)
            self.log(metrics.TEST_ACC_TOP5, self.test_acc_top5)

    def on_test_epoch_end(self) -> None:
        # The papers report error rates. compute() has already gathered every process's counts;
        # sync_dist only averages identical values (and keeps Lightning from warning under DDP).
        self.log(metrics.TEST_ERROR, 1.0 - self.test_acc.compute(), sync_dist=True)
        if self.has_top5:
            error_top5 = 1.0 - self.test_acc_top5.compute()
            self.log(metrics.TEST_ERROR_TOP5, error_top5, sync_dist=True)
        if self.test_acc_center.update_called:
            error = 1.0 - self.test_acc_center.compute()
            self.log(metrics.TEST_ERROR_CENTER, error, sync_dist=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        probabilities = self._test_scores(batch[0])[0].float().softmax(dim=1)
        probability, index = probabilities.max(dim=1)
        return {"index": index, "probability": probability, "probabilities": probabilities}

    # -- optimisation ------------------------------------------------------------------------
    def _parameter_groups(self) -> list[dict]:
        own_groups = getattr(self.backbone, "parameter_groups", None)
        if callable(own_groups):
            if self.hparams.backbone_lr_scale != 1.0:
                raise ConfigError(
                    f"{type(self.backbone).__name__} sets its own per-layer learning rates; "
                    "model.backbone_lr_scale must stay 1.0 with it"
                )
            groups = [
                {**group, "params": [p for p in group["params"] if p.requires_grad]}
                for group in own_groups()
            ]
            return [group for group in groups if group["params"]]
        trainable = [p for p in self.backbone.parameters() if p.requires_grad]
        if self.hparams.backbone_lr_scale == 1.0:
            groups = [{"params": trainable}]
        else:
            head_ids = {id(p) for p in self._last_layer().parameters()}
            groups = [
                {
                    "name": "head",
                    "params": [p for p in trainable if id(p) in head_ids],
                    "lr_scale": 1.0,
                },
                {
                    "name": "backbone",
                    "params": [p for p in trainable if id(p) not in head_ids],
                    "lr_scale": self.hparams.backbone_lr_scale,
                },
            ]
        if self.hparams.decay_biases_and_norms:
            return groups
        # Biases and normalisation scales/shifts are the 1-D parameters.
        # The groups are named for LearningRateMonitor's columns (lr-SGD/weights, ...).
        split = []
        for group in groups:
            prefix = f"{group['name']}." if "name" in group else ""
            weights = [p for p in group["params"] if p.ndim > 1]
            others = [p for p in group["params"] if p.ndim <= 1]
            split.append({**group, "name": f"{prefix}weights", "params": weights})
            split.append(
                {**group, "name": f"{prefix}biases_norms", "params": others, "weight_decay": 0.0}
            )
        return [group for group in split if group["params"]]

    def configure_optimizers(self) -> dict:
        groups = self._parameter_groups()
        if self.optimizer_factory is None:
            optimizer = torch.optim.SGD(
                groups, lr=PAPER_LR, momentum=PAPER_MOMENTUM, weight_decay=PAPER_WEIGHT_DECAY
            )
        else:
            optimizer = _built("model.optimizer", self.optimizer_factory, groups)
        for group in optimizer.param_groups:
            group["lr"] *= group.pop("lr_scale", 1.0)

        if self.lr_scheduler_factory is None:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.1
            )
        else:
            scheduler = _built("model.lr_scheduler", self.lr_scheduler_factory, optimizer)
        config: dict = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if scheduler.mode != "max":
                raise ConfigError(
                    "ReduceLROnPlateau monitors val/acc, which should rise: set its mode: max"
                )
            self._check_validation_runs()
            config["monitor"] = metrics.VAL_ACC
        if isinstance(scheduler, WarmupCosineLR):
            scheduler.set_total_steps(int(self.trainer.estimated_stepping_batches))
            config["interval"] = "step"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _check_validation_runs(self) -> None:
        """A plateau schedule steps on val/acc: without validation, Lightning would fail only
        at the end of the first epoch, having saved nothing."""
        trainer = self._trainer  # None when optimisers are built outside a Trainer
        datamodule = datamodule_of(trainer)
        names = datamodule.sample_names("val") if datamodule is not None else None
        if trainer is not None and (trainer.limit_val_batches == 0 or names == []):
            raise ConfigError(
                "model.lr_scheduler: ReduceLROnPlateau (also the default for null) steps on "
                "val/acc, and this fit validates on nothing (data.val_size=0 or "
                "trainer.limit_val_batches=0). Hold out validation images with data.val_size, "
                "or pick a schedule that needs none, e.g. "
                "--model.lr_scheduler=convrepro.training.WarmupCosineLR."
            )


def _built(setting: str, factory: Callable[[Any], Any], argument: Any) -> Any:
    """``factory(argument)``; torch's own checks of hyperparameters (``Invalid learning rate:
    -0.1``, ``Factor should be < 1.0``) raise ValueError, which is the setting's fault."""
    try:
        return factory(argument)
    except ValueError as error:
        raise ConfigError(f"{setting}: {error} (fix its init_args)") from error


def channels_last_views(views: Tensor) -> Tensor:
    """A stack of views (N, V, C, H, W) laid out so that every view ``views[:, v]`` is a
    channels-last (N, C, H, W) batch: stored as (V, N, H, W, C) (``contiguous`` has no
    channels-last format for rank 5)."""
    stored = views.permute(1, 0, 3, 4, 2).contiguous()
    return stored.permute(1, 0, 4, 2, 3)
