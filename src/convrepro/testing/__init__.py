"""Made-up data and results in the real on-disk formats, as ``lightning.pytorch.demos`` is
Lightning's: for the tests, the notebooks and the benchmark alike, so there is one writer per
format and one way past torchvision's md5 checks.

* :mod:`~convrepro.testing.datasets`: CIFAR-10 pickles, STL-10 binaries, image folders.
* :mod:`~convrepro.testing.integrity`: the md5 bypass (in a test, a block or a process).
* :mod:`~convrepro.testing.ablation`: a finished ablation of made-up runs.
* :mod:`~convrepro.testing.processes`: processes forked with torch and Lightning imported.

Nothing here is needed to train; nothing in the package outside it imports it.
"""

from convrepro.testing.ablation import MADE_UP_NAME, write_made_up_ablation
from convrepro.testing.datasets import (
    BAD_FILES,
    CIFAR_TRAIN_BATCHES,
    IMAGE_KINDS,
    STL10_FOLDS,
    balanced_labels,
    make_cifar10,
    make_cifar10_folders,
    make_image_folder,
    make_images,
    make_stl10,
)
from convrepro.testing.integrity import accepting_made_up_files, skip_md5_checks
from convrepro.testing.processes import hold_until_sigterm, preloaded_context, start_processes

__all__ = [
    "BAD_FILES",
    "CIFAR_TRAIN_BATCHES",
    "IMAGE_KINDS",
    "MADE_UP_NAME",
    "STL10_FOLDS",
    "accepting_made_up_files",
    "balanced_labels",
    "hold_until_sigterm",
    "make_cifar10",
    "make_cifar10_folders",
    "make_image_folder",
    "make_images",
    "make_stl10",
    "preloaded_context",
    "skip_md5_checks",
    "start_processes",
    "write_made_up_ablation",
]
