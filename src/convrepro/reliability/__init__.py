"""Training that survives being stopped: atomic and periodic checkpoints, a checkpoint on a stop
signal, exact resume (and what it may change: :mod:`~convrepro.reliability.settings`), and a stop
before a diverged loss reaches a checkpoint.

The CLI adds all of these to every ``fit``; they are plain Lightning callbacks and plugins, so a
script with its own Trainer can use them too.
"""

from convrepro.reliability.checkpoint_io import (
    AtomicCheckpointIO,
    PeriodicCheckpoint,
    RunCheckpoint,
)
from convrepro.reliability.divergence import DivergenceGuard
from convrepro.reliability.preemption import PreemptionCheckpoint, StopRequested
from convrepro.reliability.resume import ExactResume

__all__ = [
    "AtomicCheckpointIO",
    "DivergenceGuard",
    "ExactResume",
    "PeriodicCheckpoint",
    "PreemptionCheckpoint",
    "RunCheckpoint",
    "StopRequested",
]
