"""Arguments that several commands of ``python -m convrepro.ablate`` share."""

from __future__ import annotations

import argparse
from pathlib import Path

from convrepro.ablate.spec import SPEC_FILE, AblationSpec, default_out, load_spec
from convrepro.errors import AblationError

PROG = "python -m convrepro.ablate"


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config setting for every run (repeatable), on top of the file's overrides, "
        "e.g. --set data.init_args.data_dir=/data/cifar10",
    )


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", type=Path, help="the ablation file, or the ablation's output folder"
    )
    parser.add_argument(
        "--out", type=Path, help="with an ablation file: its output folder, if not the default"
    )


def spec_and_out(source: Path, out: Path | None) -> tuple[AblationSpec, Path]:
    """The ablation and its output folder, from an ablation file or from an output folder."""
    if source.is_dir():
        spec_file = source / SPEC_FILE
        if not spec_file.is_file():
            raise AblationError(
                f"{spec_file} not found: {source} is not an ablation output folder; run the "
                f"ablation first ({PROG} ABLATION.yaml --out {source})"
            )
        return load_spec(spec_file, need_base=False), source
    spec = load_spec(source, need_base=False)
    return spec, out or default_out(spec.name)


def device_list(value: str) -> list[str]:
    devices = [device.strip() for device in value.split(",") if device.strip()]
    if not devices:
        raise argparse.ArgumentTypeError("give device ids separated by commas, e.g. 0,1")
    return devices
