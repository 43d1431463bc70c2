"""Training: the one LightningModule, its schedules, test-time evaluation and metric names.

``model: {class_path: convrepro.training.ImageClassifier}`` is implied by every config; the rest is
selected inside it (``model.lr_scheduler: convrepro.training.WarmupCosineLR``,
``model.test_protocol: convrepro.training.DenseEvaluation``, ...).
"""

from convrepro.training.classifier import ImageClassifier
from convrepro.training.evaluation import (
    CombinedEvaluation,
    DenseEvaluation,
    EvaluationProtocol,
    MultiCropEvaluation,
    StackedViewsEvaluation,
    TenCropEvaluation,
)
from convrepro.training.plots import ValidationPlots
from convrepro.training.schedules import WarmupCosineLR, WeightsMultiStepLR

__all__ = [
    "CombinedEvaluation",
    "DenseEvaluation",
    "EvaluationProtocol",
    "ImageClassifier",
    "MultiCropEvaluation",
    "StackedViewsEvaluation",
    "TenCropEvaluation",
    "ValidationPlots",
    "WarmupCosineLR",
    "WeightsMultiStepLR",
]
