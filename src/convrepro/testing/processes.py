"""Processes that start without importing torch and Lightning again (~10 s of CPU each), and a
process held at a known training step until SIGTERM (:func:`hold_until_sigterm`).

They fork from multiprocessing's fork server, which imports :data:`PRELOADED` once when it
starts (once per process that uses it) and never runs anything else: each child starts with
clean state, as a spawned one would, but with the libraries already imported. The server
touches no CUDA device, so forking from it is safe where one is used.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

PRELOADED = ["torch", "torchvision", "lightning.pytorch", "convrepro.cli"]


def preloaded_context() -> BaseContext:
    """The fork server's context, with :data:`PRELOADED` set for when the server starts."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)
    return context


def start_processes(function: Callable[..., Any], args: tuple, nprocs: int) -> None:
    """``function(rank, *args)`` in ``nprocs`` processes from the fork server; returns when all
    have finished, raising if one failed (``torch.multiprocessing.start_processes``)."""
    import torch.multiprocessing

    preloaded_context()
    torch.multiprocessing.start_processes(
        function, args=args, nprocs=nprocs, start_method="forkserver"
    )


def hold_until_sigterm(marker: Path, timeout_s: float) -> None:
    """Touch ``marker``, then wait (at most ``timeout_s``) for a SIGTERM, passing it on to the
    handler installed before (a run's own, which saves at the step's end): how a test stops a
    training process at a step it knows."""
    stopped: list[int] = []
    previous = signal.getsignal(signal.SIGTERM)

    def note(signum: int, frame: Any) -> None:
        stopped.append(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, note)
    marker.touch()
    deadline = time.monotonic() + timeout_s
    try:
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, previous)
