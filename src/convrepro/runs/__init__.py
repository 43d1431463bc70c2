"""Runs on disk: the run folder and its files (:mod:`~convrepro.runs.folder`), which run a command
works on (:mod:`~convrepro.runs.identity`), the typed summary
(:mod:`~convrepro.runs.summary`), where each result came from (:mod:`~convrepro.runs.provenance`),
the callbacks that write them (:mod:`~convrepro.runs.records`), W&B set-up
(:mod:`~convrepro.runs.tracking`). Atomic writes are :mod:`convrepro.files`, below every package
(data and reliability write files too, and sit below this one).
"""

from convrepro.runs.folder import RunFolder
from convrepro.runs.identity import RunOptions
from convrepro.runs.summary import Summary

__all__ = ["RunFolder", "RunOptions", "Summary"]
