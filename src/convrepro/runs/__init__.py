"""Runs on disk: the run folder and its files (:mod:`~convrepro.runs.folder`), which run a command
works on (:mod:`~convrepro.runs.identity`), the typed summary
(:mod:`~convrepro.runs.summary`), where each result came from (:mod:`~convrepro.runs.provenance`),
the callbacks that write them (:mod:`~convrepro.runs.records`), W&B set-up
(:mod:`~convrepro.runs.tracking`) and atomic writes (:mod:`~convrepro.runs.files`).
"""

from convrepro.runs.files import write_atomic
from convrepro.runs.folder import RunFolder
from convrepro.runs.identity import RunOptions
from convrepro.runs.summary import Summary

__all__ = ["RunFolder", "RunOptions", "Summary", "write_atomic"]
