"""Checks before a grid runs or is submitted, so that no run trains before a bad one is found.

* Every arm's full config (base config, overrides, the runner's arguments) goes through the CLI's
  own parser, which knows every key and type: a misspelled key fails here, in one line naming the
  arm, before anything trains (``--dry-run`` included).
* The code that runs is the checkout's the grid is started from: a grid started in a checkout
  (or a worktree pinned to a commit) whose ``src/convrepro`` is not the package Python imports
  (an editable install of another checkout, say) would train with the other code, point by
  point as it changes there, while the user thinks it is pinned.
* The data each arm reads is opened once (``prepare_data`` and ``setup``, as a run would: with
  ``download: true`` that downloads it here, once). Runs that share missing data would all fail
  alike; they are stopped here, at the first, and nothing runs or is submitted.

Both need the CLI (torch, Lightning), so the launchers import this module when they run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import instantiate_class

import convrepro
from convrepro.ablate.point import cli_args
from convrepro.ablate.spec import AblationSpec
from convrepro.cli import ConvReproCLI
from convrepro.errors import AblationError, UserError
from convrepro.runs.provenance import data_fingerprint

# What seed_everything leaves in the environment; a parse must not pass it on to later runs.
_SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
_SEED_LOGGER = "lightning.fabric.utilities.seed"


def check_code_is_this_checkout(here: Path | None = None) -> None:
    """Refuse to run a grid from a checkout whose code is not the code Python imports."""
    here = (here or Path.cwd()).resolve()
    own = here / "src" / "convrepro"
    imported = Path(convrepro.__file__).resolve().parent
    if own.is_dir() and imported != own.resolve():
        raise AblationError(
            f"this grid would not run the code of {here}: Python imports convrepro from "
            f"{imported} (an install of another checkout); run it with PYTHONPATH=src, or "
            f"pip install -e . here, so the runs train with this checkout's code"
        )


class _ParseOnlyCLI(ConvReproCLI):
    """The CLI's parser with its defaults and links; builds nothing (no run folder, model,
    data or W&B run)."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_every_arm(spec: AblationSpec, out: Path) -> dict[str, Namespace]:
    """Each arm's config as the CLI parses it (with the first seed; seeds only change numbers).

    Raises an :class:`AblationError` with the CLI's own one-line message for the first arm whose
    config does not parse.
    """
    configs = {}
    for arm in spec.arms:
        run = spec.run(arm, spec.seeds[0])
        args = cli_args(spec, out, run, "fit")[1:]  # no subcommand: the parser without them
        configs[arm] = _parse(arm, args)
    return configs


def check_data(configs: dict[str, Namespace]) -> dict[str, dict[str, Any]]:
    """Open the data of every arm once per distinct data config (the seed left out); returns
    each arm's data fingerprint, as a run's provenance records it (every split read)."""
    arms_by_data: dict[str, list[str]] = {}
    for arm, config in configs.items():
        arms_by_data.setdefault(_data_key(config.data), []).append(arm)
    fingerprints = {}
    for arms in arms_by_data.values():
        try:
            datamodule = instantiate_class((), configs[arms[0]].data.as_dict())
            datamodule.prepare_data()
            datamodule.setup()
        except UserError as error:
            every = "every arm" if len(arms) == len(configs) else f"arm(s) {', '.join(arms)}"
            raise AblationError(
                f"data of {every}: {error} (checked before any run started; nothing was run)"
            ) from error
        fingerprints.update(dict.fromkeys(arms, data_fingerprint(datamodule)))
    return fingerprints


def _parse(arm: str, args: list[str]) -> Namespace:
    errors = io.StringIO()
    try:
        with _quiet_parse(errors):
            return _ParseOnlyCLI(args=args, run=False).config
    except SystemExit:  # the CLI's parser printed `error: <one line>` and exited
        lines = [line for line in errors.getvalue().splitlines() if line.startswith("error: ")]
        message = lines[0].removeprefix("error: ") if lines else errors.getvalue().strip()
        raise AblationError(f"arm {arm!r}: {message} (checked before any run started)") from None


def _data_key(data: Namespace) -> str:
    values = data.as_dict()
    values.get("init_args", {}).pop("seed", None)
    return json.dumps(values, sort_keys=True, default=str)


@contextlib.contextmanager
def _quiet_parse(errors: io.StringIO) -> Iterator[None]:
    """The parser's complaints into ``errors``; the environment as it was before."""
    saved = {name: os.environ.get(name) for name in _SEED_VARIABLES}
    seed_log = logging.getLogger(_SEED_LOGGER)
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)  # not "Seed set to 0" once per arm
    try:
        with contextlib.redirect_stderr(errors), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            yield
    finally:
        seed_log.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
