"""The ``slurm:`` section of an ablation file: what each grid point asks SLURM for.

```yaml
slurm:
  partition: gpu
  account: my-lab              # optional, as qos
  time: "12:00:00"             # per job: minutes or [D-]HH:MM:SS; a job stopped by it resumes
  gpus_per_run: 1              # one task (process) per GPU; more than one = DDP inside the job
  nodes: 1                     # nodes per run; gpus_per_run is split evenly over them
  cpus_per_task: 8
  mem: 32G                     # per node, in sbatch's --mem syntax
  array_parallelism: 8         # at most this many grid points at once
  signal_delay: 120            # seconds between the warning signal and the time limit
  max_timeouts: 3              # requeues of a point stopped by the time limit (then: failed)
  sbatch: {constraint: a100}   # any other sbatch flag, without the dashes
```

Every key can be overridden on the command line (``--partition debug --time 30 --sbatch
constraint=v100``). Keys are checked when the ablation file is read, so a typo shows before a
local run too. Submitting needs ``time``; keys left out take the cluster's defaults.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from convrepro.errors import AblationError

#: Flags the launcher and submitit manage themselves (the array, logs, signal, requeueing).
MANAGED_SBATCH_FLAGS = ("array", "output", "error", "open-mode", "signal", "requeue", "job-name")
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")

_HELP = {
    "partition": "SLURM partition",
    "account": "account to charge",
    "qos": "quality of service",
    "time": "time limit per job: minutes or [D-]HH:MM:SS (a job stopped by it is requeued)",
    "gpus_per_run": "GPUs per grid point; one task per GPU, several = DDP inside the job",
    "tasks_per_run": "processes per grid point when gpus_per_run is 0 (CPU DDP)",
    "nodes": "nodes per grid point",
    "cpus_per_task": "CPUs per task",
    "mem": "memory per node, as sbatch --mem (32G)",
    "array_parallelism": "at most this many grid points at once",
    "signal_delay": "seconds between the pre-timeout signal and the time limit",
    "max_timeouts": "requeues of a point stopped by the time limit before it counts as failed",
}


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of one grid point's job (see the module docstring for each key)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    gpus_per_run: int = 1
    tasks_per_run: int | None = None
    nodes: int = 1
    cpus_per_task: int | None = None
    mem: str | None = None
    array_parallelism: int | None = None
    signal_delay: int = 120
    max_timeouts: int = 3  # submitit's default; a run longer than 4 time limits needs more
    sbatch: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = self.tasks
        if self.gpus_per_run and self.tasks_per_run not in (None, self.gpus_per_run):
            raise AblationError(
                f"slurm: tasks_per_run={self.tasks_per_run} with gpus_per_run="
                f"{self.gpus_per_run}: a run has one task per GPU; leave tasks_per_run out"
            )
        if tasks % self.nodes:
            raise AblationError(
                f"slurm: {tasks} task(s) per run do not split evenly over nodes={self.nodes}"
            )
        if self.time is not None:
            self.time_minutes()  # fails here, when the file is read, not at submission

    @property
    def tasks(self) -> int:
        """Processes per grid point: one per GPU, else ``tasks_per_run`` (default 1)."""
        return self.gpus_per_run or self.tasks_per_run or 1

    def time_minutes(self) -> int:
        """``time`` in whole minutes (rounded up), as submitit takes it."""
        match = _SLURM_TIME.fullmatch(str(self.time))
        if match is None:
            raise AblationError(
                f"slurm: time {self.time!r} is not minutes or [D-]HH:MM:SS, e.g. 90 or 12:00:00"
            )
        days, first, second, third = (int(g) if g else None for g in match.groups())
        if days is not None:  # D-HH[:MM[:SS]]
            seconds = ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
        elif third is not None:  # HH:MM:SS
            seconds = (first * 60 + second) * 60 + third
        elif second is not None:  # MM:SS
            seconds = first * 60 + second
        else:  # MM
            seconds = first * 60
        if seconds <= 0:
            raise AblationError(f"slurm: time {self.time!r} must be longer than 0")
        return math.ceil(seconds / 60)

    def with_overrides(self, overrides: Mapping[str, Any]) -> SlurmOptions:
        """These options with command-line values (strings) replacing the file's."""
        values = {key: _convert(key, value) for key, value in overrides.items() if key != "sbatch"}
        sbatch = {**self.sbatch, **_sbatch_flags(overrides.get("sbatch") or {})}
        return replace(self, **values, sbatch=sbatch)

    def to_dict(self) -> dict[str, Any]:
        """The keys that differ from the defaults, for the ablation file."""
        default = SlurmOptions()
        return {
            f.name: dict(value) if f.name == "sbatch" else value
            for f in fields(self)
            if (value := getattr(self, f.name)) != getattr(default, f.name)
        }


def parse_slurm_section(section: Any) -> SlurmOptions:
    """Validate the ``slurm:`` mapping of an ablation file (``None``: all defaults)."""
    if section is None:
        return SlurmOptions()
    if not isinstance(section, dict):
        raise AblationError(f"slurm: expected a mapping of {', '.join(_keys())}, got {section!r}")
    unknown = sorted(set(section) - set(_keys()))
    if unknown:
        raise AblationError(
            f"slurm: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(_keys())}"
            " (other sbatch flags go under `sbatch:`)"
        )
    values = {key: _convert(key, value) for key, value in section.items() if key != "sbatch"}
    return SlurmOptions(**values, sbatch=_sbatch_flags(section.get("sbatch") or {}))


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line flags that override the file's ``slurm:`` keys (``--time``, ``--sbatch``)."""
    group = parser.add_argument_group("SLURM (with --launcher slurm; override the file's slurm:)")
    for key, text in _HELP.items():
        flag = f"--{key.replace('_', '-')}"
        group.add_argument(flag, dest=f"slurm_{key}", metavar=key.upper(), help=text)
    group.add_argument(
        "--sbatch",
        dest="slurm_sbatch",
        action="append",
        metavar="FLAG=VALUE",
        help="another sbatch flag (repeatable), e.g. --sbatch constraint=a100",
    )


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``slurm:`` keys given on the command line."""
    overrides: dict[str, Any] = {
        key: value
        for key in _keys()
        if key != "sbatch" and (value := getattr(args, f"slurm_{key}")) is not None
    }
    flags = {}
    for item in args.slurm_sbatch or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise AblationError(f"--sbatch {item!r}: write FLAG=VALUE, e.g. constraint=a100")
        flags[name] = value
    if flags:
        overrides["sbatch"] = flags
    return overrides


def _keys() -> list[str]:
    return [f.name for f in fields(SlurmOptions)]


def _convert(key: str, value: Any) -> Any:
    """A file or command-line value of ``key`` as its field's type; ``None`` keeps the default."""
    if value is None:
        return None
    if key in {"partition", "account", "qos", "time", "mem"}:
        if isinstance(value, bool) or not str(value).strip():
            raise AblationError(f"slurm: {key} must be a non-empty value, got {value!r}")
        return str(value).strip()
    smallest = 0 if key in {"gpus_per_run", "signal_delay", "max_timeouts"} else 1
    try:
        number = int(value) if not isinstance(value, bool | float) else None
    except ValueError:
        number = None
    if number is None or number < smallest:
        raise AblationError(f"slurm: {key} must be a whole number >= {smallest}, got {value!r}")
    return number


def _sbatch_flags(flags: Any) -> dict[str, str]:
    if not isinstance(flags, dict):
        raise AblationError(f"slurm: sbatch must map flag names to values, got {flags!r}")
    checked = {}
    for name, value in flags.items():
        flag = str(name).lstrip("-").replace("_", "-")
        if flag in MANAGED_SBATCH_FLAGS:
            raise AblationError(
                f"slurm: sbatch flag {name!r} is set by the launcher "
                f"({', '.join(MANAGED_SBATCH_FLAGS)}); use the slurm: keys instead"
            )
        if flag in {f.name.replace("_", "-") for f in fields(SlurmOptions)}:
            raise AblationError(f"slurm: set {flag} as `{flag.replace('-', '_')}:`, not in sbatch")
        checked[flag] = str(value)
    return checked
