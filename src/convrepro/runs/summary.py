"""``summary.json``: what a run achieved, in one small file the ablation runner and reports read.

The file is a flat JSON object (``best_val_acc``, ``best_checkpoint``, ..., and the test metrics
under their logged names, ``test/acc`` etc.), written by the CLI's
:class:`~convrepro.runs.records.RunSummary` callback; :class:`Summary` is its typed form. A field
that is ``None`` has not happened yet and is left out of the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from convrepro.training import metrics


@dataclass
class Summary:
    """The typed content of a run's ``summary.json``.

    Attributes:
        best_val_acc: Best validation accuracy of the fit (a fraction).
        best_checkpoint: Path of the checkpoint with ``best_val_acc``.
        last_checkpoint: Path of the end-of-fit checkpoint.
        epochs: Epochs trained when the fit ended; ``None`` until a fit has ended.
        global_step: Optimiser steps when the fit ended.
        fit_seconds: Wall time of the fit, summed over resumes.
        test: Test metrics by logged name (``test/acc``, ``test/acc_top5``, ...); empty until
            ``test`` ran.
        test_checkpoint: The checkpoint ``test`` scored, so that a result says which weights
            it is of (``best.ckpt``, or one asked for explicitly).
        test_checkpoint_step: That checkpoint's optimiser step (which weights, not only which
            file).
        earlier_tests: Test results that a later ``fit`` made out of date (its checkpoints
            replaced the weights they were of), each with its checkpoint and the optimiser step
            the run had reached: kept, never erased, but no longer the run's result.
    """

    best_val_acc: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    epochs: int | None = None
    global_step: int | None = None
    fit_seconds: float | None = None
    test: dict[str, float] = field(default_factory=dict)
    test_checkpoint: str | None = None
    test_checkpoint_step: int | None = None
    earlier_tests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fit_finished(self) -> bool:
        """Whether a ``fit`` of this run has run to its end."""
        return self.epochs is not None

    @property
    def tested(self) -> bool:
        """Whether the run has a test result."""
        return metrics.TEST_ACC in self.test

    @property
    def test_acc(self) -> float | None:
        return self.test.get(metrics.TEST_ACC)

    @property
    def test_acc_top5(self) -> float | None:
        return self.test.get(metrics.TEST_ACC_TOP5)

    def to_json(self) -> str:
        values: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "test"
        }
        values = {key: value for key, value in values.items() if value not in (None, [])}
        return json.dumps({**values, **self.test}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Summary:
        values = json.loads(text)
        test = {k: float(v) for k, v in values.items() if k.startswith(metrics.TEST_PREFIX)}
        known = {f.name for f in fields(cls)} - {"test"}
        return cls(**{k: v for k, v in values.items() if k in known}, test=test)
