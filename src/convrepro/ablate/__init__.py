"""Ablations: arms x seeds of one base config, run through the CLI, summarised with statistics.

``python -m convrepro.ablate configs/ablations/lrn_vgg_a_cifar.yaml`` runs (or resumes) the grid
here, ``--launcher slurm`` submits it; see :mod:`convrepro.ablate.__main__`.

The names below are loaded on first use: a SLURM task imports this package to unpickle its job
(:mod:`~convrepro.ablate.slurm_job`) and must not wait for torch, SciPy and matplotlib first.
"""

import importlib
from typing import Any

_EXPORTS = {
    "PUBLISHED": "published",
    "render_paper_comparison": "report",
    "write_report": "report",
    "run_grid": "local",
    "Failure": "point",
    "Status": "point",
    "run_point": "point",
    "status_of": "point",
    "AblationSpec": "spec",
    "Run": "spec",
    "load_spec": "spec",
    "AblationError": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
