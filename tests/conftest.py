"""Test-wide settings: tests import ``tiny_backbone`` (a tiny network for CLI configs) from here.

Made-up data sets and the md5 bypass come from :mod:`convrepro.testing`.
"""

import os
import sys
from pathlib import Path

import pytest
import torchvision

from convrepro.models import weights as weights_module

sys.path.insert(0, str(Path(__file__).parent))

# The suite starts ~40 interpreters that import this package and the tests' helpers: with
# PYTHONDONTWRITEBYTECODE (set in some CI images) each would compile them from source again.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

#: The files that take longest (minutes, mostly in processes they start). pytest-xdist's
#: ``--dist loadfile`` hands out files in collection order: these go first, and the short ones
#: fill the other worker meanwhile and at the end.
LONGEST_FIRST = (
    "test_slurm_ablation.py",
    "test_multinode.py",
    "test_ablate_resume.py",
    "test_ddp_reliability.py",
    "test_lrn_regime.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def fake_imagenet_download(monkeypatch):
    """The torchvision weights path, with the download replaced by a randomly initialised model."""

    def download(entry):
        builder = getattr(torchvision.models, entry.url.rsplit("/", 1)[-1].split("-")[0])
        return builder(weights=None).state_dict()

    monkeypatch.setattr(weights_module, "_download", download)
