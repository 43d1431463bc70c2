"""A made-up finished ablation in the runner's on-disk format, for demos and tests of the report.

Its runs are written through :class:`~convrepro.runs.folder.RunFolder`, as the CLI writes real
ones, so the report code and the notebooks read it exactly like a real ablation. NOT real
results: its name, :data:`MADE_UP_NAME`, ends up in every title and table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from convrepro.ablate.spec import SPEC_FILE, AblationSpec
from convrepro.runs.summary import Summary
from convrepro.training import metrics

MADE_UP_NAME = "MADE-UP-demo-not-real-results"


def write_made_up_ablation(
    out: str | Path,
    effects: Mapping[str, float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 15,
    final_accuracy: float = 0.88,
    seed_spread: float = 0.004,
    run_noise: float = 0.002,
    rng_seed: int = 0,
    spec: AblationSpec | None = None,
) -> AblationSpec:
    """Fabricate a finished ablation under ``out``; returns its spec. NOT real results.

    Writes ``<out>/ablation.yaml`` and, per arm and seed, the run folder the CLI would
    (``<out>/runs/<name>/<arm>-seed<N>/``, with ``history.csv`` and ``summary.json``).
    ``effects`` maps arm names to their true effect on accuracy (fractions; the first arm is
    the baseline). Each seed shifts all arms alike by ``N(0, seed_spread)`` (the paired
    design), each run adds ``N(0, run_noise)``; validation accuracy rises to the test level
    like ``1 - exp(-epoch/3)``.

    ``spec``: fabricate the runs of this grid instead (a real ablation file's, for tests of what
    a published grid's records say; its seeds, not ``seeds``; every effect 0 unless ``effects``
    says). Its name is not :data:`MADE_UP_NAME`: keep such runs in tests.
    """
    if spec is not None:
        effects = {arm: 0.0 for arm in spec.arms} | dict(effects or {})
        seeds = spec.seeds
    effects = dict(effects or {"A": 0.0, "A-LRN": -0.003})
    out = Path(out)
    spec = spec or AblationSpec(
        name=MADE_UP_NAME,
        base=Path("made-up.yaml"),
        seeds=tuple(seeds),
        arms={arm: {"model.backbone.init_args.config": arm} for arm in effects},
        overrides={"trainer.max_epochs": epochs},
        baseline=next(iter(effects)),
    )
    rng = np.random.default_rng(rng_seed)
    seed_shift = {seed: rng.normal(0.0, seed_spread) for seed in seeds}
    for run in spec.runs():
        folder = spec.run_folder(out, run)
        test_acc = final_accuracy + effects[run.arm] + seed_shift[run.seed]
        test_acc += rng.normal(0.0, run_noise)
        curve = [
            test_acc * (1 - 0.85 * math.exp(-epoch / 3)) + rng.normal(0.0, run_noise)
            for epoch in range(epochs)
        ]
        folder.write_history(
            [
                {"epoch": epoch, "step": 100 * (epoch + 1), metrics.VAL_ACC: f"{acc:.4f}"}
                for epoch, acc in enumerate(curve)
            ]
        )
        folder.write_summary(
            Summary(
                best_val_acc=max(curve),
                best_checkpoint="",
                epochs=epochs,
                fit_seconds=60.0 * epochs,
                test={metrics.TEST_ACC: test_acc, metrics.TEST_ACC_TOP5: min(1.0, test_acc + 0.1)},
            )
        )
    (out / SPEC_FILE).write_text(spec.to_yaml())
    return spec
