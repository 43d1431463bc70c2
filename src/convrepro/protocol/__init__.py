"""The papers' training and test protocols, each selected in the config.

* :class:`TrainingScale` - VGG's training scale S, fixed or jittered (``data.train_scale``).
* :class:`PCALighting` - AlexNet's PCA colour augmentation (``data.pca_lighting``).
* :class:`DenseEvaluation`, :class:`MultiCropEvaluation`, :class:`TenCropEvaluation`,
  :class:`CombinedEvaluation` - test-time evaluation (``model.test_protocol``).
"""

from convrepro.protocol.evaluation import (
    CombinedEvaluation,
    DenseEvaluation,
    EvaluationProtocol,
    MultiCropEvaluation,
    TenCropEvaluation,
)
from convrepro.protocol.lighting import RGBPCA, PCALighting, cached_rgb_pca, rgb_pca
from convrepro.protocol.scales import TrainingScale

__all__ = [
    "RGBPCA",
    "CombinedEvaluation",
    "DenseEvaluation",
    "EvaluationProtocol",
    "MultiCropEvaluation",
    "PCALighting",
    "TenCropEvaluation",
    "TrainingScale",
    "cached_rgb_pca",
    "rgb_pca",
]
