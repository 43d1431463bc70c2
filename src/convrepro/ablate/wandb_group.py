"""An ablation's runs on W&B copied into the runner's on-disk format, for the report code.

The runner groups an ablation's W&B runs under its name; this turns such a group back into an
ablation folder (``ablation.yaml`` and one :class:`~convrepro.runs.folder.RunFolder` per run),
so the report and the notebooks read it like one the runner wrote.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from convrepro.ablate.spec import SPEC_FILE, AblationSpec, Run
from convrepro.runs.summary import Summary
from convrepro.training import metrics


def download_wandb_group(
    project: str,
    group: str,
    out: str | Path,
    baseline: str | None = None,
    api: Any = None,
) -> AblationSpec:
    """Copy the runs of a W&B group (an ablation run by the runner) into its on-disk format.

    The runner groups an ablation's W&B runs under its name and appends the tags ``<arm>``,
    ``seed-<N>`` to those the config gives; this reads the arm and seed from them, the run's
    ``test/acc``, ``test/acc_top5`` and ``val/acc_best`` summary values and its ``val/acc``
    history, and writes them where the CLI would, so the same report code reads them. Runs
    without a ``seed-<N>`` tag after an arm tag are skipped; of two runs with the same arm and
    seed, the one W&B lists last. ``project`` is ``"entity/project"``; ``baseline`` defaults to
    the first arm by name; ``api`` defaults to ``wandb.Api()`` (needs network access and a W&B
    login).
    """

    if api is None:
        import wandb

        api = wandb.Api()
    out = Path(out)
    tagged: dict[tuple[str, int], Any] = {}  # (arm, seed): W&B run
    for wandb_run in api.runs(project, filters={"group": group}):
        tags = list(wandb_run.tags)
        seed_at = next((i for i, tag in enumerate(tags) if re.fullmatch(r"seed-\d+", tag)), 0)
        if seed_at > 0:  # else no seed tag, or no arm tag before it
            arm, seed = tags[seed_at - 1], int(tags[seed_at].removeprefix("seed-"))
            tagged[arm, seed] = wandb_run
    arms = sorted({arm for arm, _ in tagged})
    if not arms:
        raise ValueError(f"no runs with arm and seed-<N> tags in W&B group {group!r} of {project}")
    if baseline is not None and baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not an arm of {group!r}: {', '.join(arms)}")
    spec = AblationSpec(
        name=group,
        base=Path(f"wandb-{group}.yaml"),
        seeds=tuple(sorted({seed for _, seed in tagged})),
        arms={arm: {} for arm in arms},
        overrides={},
        baseline=baseline or arms[0],
    )
    for (arm, seed), wandb_run in tagged.items():
        history = {
            int(row["epoch"]): float(row[metrics.VAL_ACC])
            for row in wandb_run.scan_history(keys=["epoch", metrics.VAL_ACC])
        }
        values = wandb_run.summary
        folder = spec.run_folder(out, Run(arm, seed, {}))
        folder.write_history(
            [{"epoch": epoch, metrics.VAL_ACC: acc} for epoch, acc in sorted(history.items())]
        )
        folder.write_summary(
            Summary(
                best_val_acc=values.get(
                    metrics.VAL_ACC_BEST, max(history.values(), default=math.nan)
                ),
                best_checkpoint="",
                epochs=len(history),
                test={
                    key: float(values[key])
                    for key in (metrics.TEST_ACC, metrics.TEST_ACC_TOP5)
                    if values.get(key) is not None
                },
            )
        )
    (out / SPEC_FILE).write_text(spec.to_yaml())
    return spec
