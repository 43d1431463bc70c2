"""Ablations: arms x seeds of one base config, run through the CLI, summarised with statistics.

``python -m convrepro.ablate configs/ablations/lrn_vgg_a_cifar.yaml`` runs (or resumes) the grid
and writes ``results.csv``, ``summary.md`` and plots; see :mod:`convrepro.ablate.__main__`.
"""

from convrepro.ablate.report import PUBLISHED, render_paper_comparison, write_report
from convrepro.ablate.runner import Failure, Status, run_grid, status_of
from convrepro.ablate.spec import AblationSpec, Run, load_spec
from convrepro.errors import AblationError

__all__ = [
    "PUBLISHED",
    "AblationError",
    "AblationSpec",
    "Failure",
    "Run",
    "Status",
    "load_spec",
    "render_paper_comparison",
    "run_grid",
    "status_of",
    "write_report",
]
