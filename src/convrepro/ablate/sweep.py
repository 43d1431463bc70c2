"""``python -m convrepro.ablate sweep FILE``: the grid as a W&B sweep, for machines that share no
queue and no file system.

The sweep is a grid over ``arm`` x ``seed``; its command is the one-run entry
(``python -m convrepro.ablate one FILE --out OUT --arm=A --seed=N``, the last two passed by the
agent), so an agent's run is the same grid point the local or SLURM launcher would run, logged
to the ablation's W&B group with its arm and seed tags. Agents start the command in their own
working directory: ``FILE`` and ``OUT`` stay as given (relative paths resolve in each agent's
checkout). ``report FILE --wandb ENTITY/PROJECT`` then collects the results from W&B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from convrepro.ablate.point import ONE_COMMAND
from convrepro.ablate.spec import AblationSpec

SWEEP_FILE = "sweep.yaml"
#: The agent's stand-ins: ``${env}`` is /usr/bin/env, ``${interpreter}`` python, ``${args}``
#: the parameters as ``--arm=A --seed=0``.
AGENT_COMMAND_PREFIX = ("${env}", "${interpreter}")
AGENT_ARGS = "${args}"


def sweep_config(spec: AblationSpec, spec_file: Path, out: Path) -> dict[str, Any]:
    """The W&B sweep config of the grid of ``spec`` (read from ``spec_file``)."""
    module_and_command = list(ONE_COMMAND[1:])  # -m convrepro.ablate one
    return {
        "name": spec.name,
        "description": f"ablation {spec.name}: every arm x seed as one grid point each",
        "program": str(spec_file),  # for W&B's records; the command below is what runs
        "method": "grid",
        "parameters": {
            "arm": {"values": list(spec.arms)},
            "seed": {"values": list(spec.seeds)},
        },
        "command": [
            *AGENT_COMMAND_PREFIX,
            *module_and_command,
            str(spec_file),
            f"--out={out}",
            AGENT_ARGS,
        ],
    }


def write_sweep(spec: AblationSpec, spec_file: Path, out: Path, path: Path) -> Path:
    """Write the sweep config to ``path``; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sweep_config(spec, spec_file, out), sort_keys=False))
    return path


def how_to_run(spec: AblationSpec, spec_file: Path, path: Path, project: str) -> str:
    """The commands that create the sweep, start agents and collect the results."""
    points = len(spec.arms) * len(spec.seeds)
    return "\n".join(
        [
            f"wrote {path} (grid: {len(spec.arms)} arms x {len(spec.seeds)} seeds = {points} runs)",
            f"create the sweep:  wandb sweep --project {project} {path}",
            "start agents:      wandb agent ENTITY/PROJECT/SWEEP_ID   (the id `wandb sweep` "
            "prints; on any number of machines, each in a checkout of this repository)",
            f"collect results:   python -m convrepro.ablate report {spec_file} --wandb "
            f"ENTITY/{project}",
        ]
    )
