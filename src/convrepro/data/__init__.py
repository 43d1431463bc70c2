"""LightningDataModules: CIFAR-10, STL-10 and image folders, on one shared base.

Pick one in a config with ``data: {class_path: convrepro.data.CIFAR10DataModule, init_args: ...}``.
"""

from convrepro.data.archive import ArchiveDataModule
from convrepro.data.base import BaseImageDataModule
from convrepro.data.cifar import CIFAR10DataModule
from convrepro.data.folder import ImageFolderDataModule
from convrepro.data.samples import SplitView
from convrepro.data.sampling import ShardedEvalBatchSampler, ShuffledShardSampler
from convrepro.data.stl10 import STL10DataModule

__all__ = [
    "ArchiveDataModule",
    "BaseImageDataModule",
    "CIFAR10DataModule",
    "ImageFolderDataModule",
    "STL10DataModule",
    "ShardedEvalBatchSampler",
    "ShuffledShardSampler",
    "SplitView",
]
