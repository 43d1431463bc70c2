"""The one bypass of torchvision's md5 checks, so that made-up CIFAR-10/STL-10 files are read.

torchvision's CIFAR10 and STL10 compare every file's md5 sum with the real archive's, which
made-up files cannot match. Only that comparison is replaced (a file just has to exist); the
reading code stays torchvision's own, so the made-up files test it. Three ways to switch it on:

* in a test: ``skip_md5_checks(monkeypatch)``, undone when the test ends;
* in a block: ``with accepting_made_up_files(): ...`` (notebooks, the benchmark);
* in a whole process: ``skip_md5_checks()`` (``tests/subprocess_site/sitecustomize.py``, for the
  CLI subprocesses the tests start).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

# The torchvision modules whose `check_integrity` guards the files of a data set.
CHECKED_MODULES = ("torchvision.datasets.cifar", "torchvision.datasets.stl10")


class AttributeSetter(Protocol):
    """What :func:`skip_md5_checks` needs of pytest's ``monkeypatch`` (pytest is not needed)."""

    def setattr(self, target: Any, name: str, value: Any) -> None: ...


def file_exists(fpath: str | Path, md5: str | None = None) -> bool:
    """Stands in for torchvision's ``check_integrity``: the file exists, whatever its md5."""
    return os.path.isfile(fpath)


def skip_md5_checks(monkeypatch: AttributeSetter | None = None) -> None:
    """Let torchvision's CIFAR-10/STL-10 accept made-up files.

    With ``monkeypatch`` (pytest's fixture) the checks come back when the test ends; without,
    they stay off for the rest of the process.
    """
    patch = setattr if monkeypatch is None else monkeypatch.setattr
    for module in _checked_modules():
        patch(module, "check_integrity", file_exists)


@contextmanager
def accepting_made_up_files() -> Iterator[None]:
    """Inside this block torchvision's CIFAR-10/STL-10 only check that their files exist."""
    originals = {module: module.check_integrity for module in _checked_modules()}
    skip_md5_checks()
    try:
        yield
    finally:
        for module, check in originals.items():
            module.check_integrity = check


def _checked_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in CHECKED_MODULES]
