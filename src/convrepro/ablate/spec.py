"""The ablation file: which base config, which seeds, which arms (config overrides).

```yaml
name: lrn_vgg_a_cifar              # W&B group and folder name; default: the file's stem
base: ../vgg11_cifar.yaml          # relative to this file, or to the working directory
seeds: [0, 1, 2]                   # every arm runs with every seed (see below)
baseline: A                        # arm the others are compared with; default: the first arm
overrides:                         # applied to every arm
  trainer.max_epochs: 30
arms:                              # arm name -> dotted config keys (as on the command line)
  A: {model.backbone.init_args.config: A}
  A-LRN: {model.backbone.init_args.config: A-LRN}
slurm: {partition: gpu, time: "4:00:00"}   # optional: --launcher slurm (see slurm_options)
factors:                           # optional: four arms read as a 2x2 design (see factorial)
  LRN: {off: [A, B-wide], on: [A-LRN, B-wide-LRN]}
  width: {narrow: [A, A-LRN], wide: [B-wide, B-wide-LRN]}
contrasts:                         # optional: named arm differences (see contrasts)
  LRN alone: [A-LRN, A]
compare_with: [lrn_vgg_a_cifar_short]  # optional: published grids with the same arms
```

Seed ``N`` sets ``--seed_everything=N`` and ``--data.init_args.seed=N``, so weight initialisation,
dropout, data order, augmentation and the held-out validation images all vary with the seed: the
spread over seeds is the whole run-to-run variation, not only that of the initialisation. Every
arm uses the same seeds, so runs of one seed share their data (a paired design); the test set is
the same for all runs. The datamodules draw the split from the same seed as the order; to keep
the split fixed, set ``data.init_args.seed`` in ``overrides`` (order and augmentation then stay
fixed too). Arm overrides win over common ``overrides``.

The file is read as YAML 1.2 reads numbers: ``4:00:00`` stays a string (YAML 1.1, PyYAML's
default, would make it the integer 14400).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from convrepro.ablate.contrasts import ArmPair, parse_compare_with, parse_contrasts
from convrepro.ablate.factorial import Factorial, parse_factors
from convrepro.ablate.slurm_options import SlurmOptions, parse_slurm_section
from convrepro.errors import AblationError
from convrepro.files import DuplicateKeyError, UniqueKeyLoader
from convrepro.runs.folder import RunFolder

ALLOWED_KEYS = (
    "name", "base", "seeds", "baseline", "overrides", "arms", "slurm", "factors", "contrasts",
    "compare_with",
)  # fmt: skip
#: Options the runner sets for every run; an ablation file must not set them itself.
RUNNER_KEYS = ("seed_everything", "ckpt_path", "run", "config")
DATA_SEED_KEY = "data.init_args.seed"
SPEC_FILE = "ablation.yaml"
_NAME = re.compile(r"[\w.-]+")


@dataclass(frozen=True)
class Run:
    """One cell of the grid: an arm trained with one seed."""

    arm: str
    seed: int
    overrides: Mapping[str, Any]

    @property
    def id(self) -> str:
        """The run folder's name, the same on every invocation so that a grid can resume."""
        return f"{self.arm}-seed{self.seed}"

    def cli_args(self) -> list[str]:
        """Seed and overrides as ``--key=value`` arguments of ``python -m convrepro``."""
        # jsonargparse lets the last value win: overrides may fix the data seed.
        seeds = [f"--seed_everything={self.seed}", f"--{DATA_SEED_KEY}={self.seed}"]
        return seeds + [f"--{key}={format_cli_value(v)}" for key, v in self.overrides.items()]


@dataclass(frozen=True)
class AblationSpec:
    """A parsed, validated ablation file (see the module docstring for the format)."""

    name: str
    base: Path
    seeds: tuple[int, ...]
    arms: Mapping[str, Mapping[str, Any]]
    overrides: Mapping[str, Any]
    baseline: str
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    factors: Factorial | None = None
    contrasts: tuple[ArmPair, ...] = ()
    compare_with: tuple[str, ...] = ()

    def runs(self) -> list[Run]:
        """Every arm x seed, arm-major (the order they are run and reported in)."""
        return [
            Run(arm, seed, {**self.overrides, **arm_overrides})
            for arm, arm_overrides in self.arms.items()
            for seed in self.seeds
        ]

    def run(self, arm: str, seed: int) -> Run:
        """The grid point ``arm`` x ``seed``."""
        found = next((r for r in self.runs() if (r.arm, r.seed) == (arm, seed)), None)
        if found is None:
            raise AblationError(
                f"{self.name} has no run {arm!r} with seed {seed}: arms {', '.join(self.arms)}, "
                f"seeds {', '.join(map(str, self.seeds))}"
            )
        return found

    def run_folder(self, out: Path, run: Run) -> RunFolder:
        """Where the CLI keeps ``run``: ``<out>/runs/<name>/<arm>-seed<N>``."""
        return RunFolder.at(runs_root(out), self.name, run.id)

    def with_settings(self, settings: list[str]) -> AblationSpec:
        """This spec with ``KEY=VALUE`` settings from the command line (``--set``) added to
        its common overrides: e.g. where this machine keeps the data. The grid's own copy of
        the file (``<out>/ablation.yaml``) records them."""
        added = {}
        for setting in settings:
            key, equals, value = setting.partition("=")
            if not equals or not key:
                raise AblationError(
                    f"--set {setting!r}: write KEY=VALUE with a dotted config key, e.g. "
                    "--set data.init_args.data_dir=/data/cifar10"
                )
            added[key] = yaml.load(value, Loader=_Yaml12Numbers) if value else ""
        checked = _overrides(Path("--set"), "the command line", added)
        return replace(self, overrides={**self.overrides, **checked})

    def to_yaml(self) -> str:
        """The spec as a self-contained ablation file (absolute base path)."""
        data = {
            "name": self.name,
            "base": str(self.base),
            "seeds": list(self.seeds),
            "baseline": self.baseline,
            "overrides": dict(self.overrides),
            "arms": {arm: dict(values) for arm, values in self.arms.items()},
        }
        if self.slurm.to_dict():
            data["slurm"] = self.slurm.to_dict()
        if self.factors is not None:
            data["factors"] = self.factors.to_dict()
        if self.contrasts:
            data["contrasts"] = {p.label: [p.changed, p.reference] for p in self.contrasts}
        if self.compare_with:
            data["compare_with"] = list(self.compare_with)
        return yaml.safe_dump(data, sort_keys=False)


def runs_root(out: Path) -> Path:
    """The ``--run.root`` of an ablation's runs."""
    return out / "runs"


def default_out(name: str) -> Path:
    """Where an ablation writes when ``--out`` is not given."""
    return Path("runs", "ablations", name)


def format_cli_value(value: Any) -> str:
    """A value as jsonargparse parses it: strings verbatim, anything else as JSON (valid YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def load_spec(path: str | Path, *, need_base: bool = True) -> AblationSpec:
    """Read and validate an ablation file.

    ``need_base=False`` skips the check that the base config exists, for re-rendering the
    report of runs that are already done (and the warning that one seed gives no intervals,
    which is for planning a grid).
    """
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"ablation file {path} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_Yaml12Numbers)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if isinstance(error, DuplicateKeyError):  # the problem names the key and both lines
            raise AblationError(f"{path}: {problem}") from error
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise AblationError(f"{path}: not valid YAML{line}: {problem}") from error
    if not isinstance(data, dict):
        raise AblationError(f"{path}: expected a mapping with keys {', '.join(ALLOWED_KEYS)}")
    unknown = sorted(set(data) - set(ALLOWED_KEYS))
    if unknown:
        raise AblationError(
            f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ALLOWED_KEYS)}"
        )
    name = str(data.get("name") or path.stem)
    _check_name(path, "name", name)
    arms = _arms(path, data.get("arms"))
    baseline = data.get("baseline") or next(iter(arms))
    contrasts = parse_contrasts(path, data.get("contrasts"), list(arms))
    if baseline not in arms:
        raise AblationError(
            f"{path}: baseline {baseline!r} is not an arm; choose one of {', '.join(arms)}"
        )
    return AblationSpec(
        name=name,
        base=_base(path, data.get("base"), need_base),
        seeds=_seeds(path, data.get("seeds"), warn_one=need_base),
        arms=arms,
        overrides=_overrides(path, "overrides", data.get("overrides")),
        baseline=baseline,
        slurm=_slurm(path, data.get("slurm")),
        factors=parse_factors(path, data.get("factors"), list(arms)),
        contrasts=contrasts,
        compare_with=parse_compare_with(path, data.get("compare_with"), contrasts),
    )


class _Yaml12Numbers(UniqueKeyLoader):
    """PyYAML's safe loader without YAML 1.1's base-60 integers (``4:00:00`` -> 14400), and
    refusing a key written twice (a second arm of the same name would replace the first)."""


_INT_TAG = "tag:yaml.org,2002:int"
_Yaml12Numbers.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _INT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Numbers.add_implicit_resolver(  # SafeLoader's int pattern minus its base-60 branch
    _INT_TAG,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _slurm(path: Path, section: Any) -> SlurmOptions:
    try:
        return parse_slurm_section(section)
    except AblationError as error:
        raise AblationError(f"{path}: {error}") from None


def _check_name(path: Path, what: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise AblationError(
            f"{path}: {what} {value!r} names a folder and may only hold letters, digits, '.', "
            "'_' and '-'"
        )


def _base(path: Path, base: Any, need_base: bool) -> Path:
    if not base:
        raise AblationError(f"{path}: set `base:` to the config every arm starts from")
    candidates = [path.parent / base, Path(base)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None and need_base:
        tried = " or ".join(str(c) for c in candidates)
        raise AblationError(f"{path}: base config {base!r} not found (tried {tried})")
    # Not found (need_base=False): as written, not resolved against this machine's folders; a
    # published copy's `configs/x.yaml` would otherwise read as a path on the reader's machine.
    return found.resolve() if found else Path(base)


def _seeds(path: Path, seeds: Any, warn_one: bool) -> tuple[int, ...]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise AblationError(f"{path}: `seeds:` must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise AblationError(f"{path}: `seeds:` lists a seed twice: {seeds}")
    if len(seeds) < 2 and warn_one:  # planning a grid, not reading one that ran
        warnings.warn(
            f"{path}: one seed per arm gives no spread estimate, so no confidence intervals or "
            "p-values; use 3 or more seeds to compare arms",
            stacklevel=3,  # point at whoever called load_spec
        )
    return tuple(seeds)


def _arms(path: Path, arms: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(arms, dict) or not arms:
        raise AblationError(
            f"{path}: `arms:` must map arm names to config overrides, e.g. "
            "`arms: {lrn: {model.backbone.init_args.lrn: true}, no-lrn: {...}}`"
        )
    for arm in arms:
        _check_name(path, "arm name", str(arm))
    return {str(arm): _overrides(path, f"arm {arm!r}", values) for arm, values in arms.items()}


def _overrides(path: Path, where: str, overrides: Any) -> dict[str, Any]:
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise AblationError(
            f"{path}: {where} must map dotted config keys to values, e.g. "
            f"`trainer.max_epochs: 30`, got {overrides!r}"
        )
    for key in overrides:
        if not isinstance(key, str) or key.startswith("-"):
            raise AblationError(
                f"{path}: {where}: {key!r} is not a config key; write keys without dashes, "
                "e.g. `trainer.max_epochs`"
            )
        if key.split(".", 1)[0] in RUNNER_KEYS:
            raise AblationError(
                f"{path}: {where} sets {key!r}, which the runner sets for every run "
                f"({', '.join(RUNNER_KEYS)}); remove it (seeds go in `seeds:`)"
            )
    return dict(overrides)
