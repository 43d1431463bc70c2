"""Training-time augmentations beyond crop and flip, from the papers.

* :class:`TrainingScale` - VGG's training scale S, fixed or jittered (``data.train_scale``).
* :class:`PCALighting` - AlexNet's PCA colour augmentation (``data.pca_lighting``); the device
  path applies the same shift batch-wise (:mod:`convrepro.data.augment.batch`).
"""

from convrepro.data.augment.lighting import PCALighting
from convrepro.data.augment.scales import TrainingScale

__all__ = ["PCALighting", "TrainingScale"]
