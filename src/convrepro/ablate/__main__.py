"""Command line of the ablation runner.

    python -m convrepro.ablate ABLATION.yaml [--out DIR] [--devices 0,1] [--dry-run]
    python -m convrepro.ablate report OUT_DIR
    python -m convrepro.ablate compare RESULTS.csv|OUT_DIR [...] [--output FILE]

The first runs (or resumes) every arm x seed and writes the report into ``--out`` (default
``runs/ablations/<name>``); ``report`` re-renders it from the run folders without training;
``compare`` puts the results of one or more ablations next to published numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convrepro.ablate.report import RESULTS_FILE, render_paper_comparison, write_report
from convrepro.ablate.runner import run_grid
from convrepro.ablate.spec import SPEC_FILE, default_out, load_spec
from convrepro.errors import AblationError, UserError

PROG = "python -m convrepro.ablate"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"report": _report, "compare": _compare}
    command = commands.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else _run(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run every arm x seed of an ablation (resuming unfinished runs), then write "
        "results.csv, summary.md and plots. Other commands: `report OUT_DIR`, "
        "`compare RESULTS.csv ...`.",
    )
    parser.add_argument("ablation", type=Path, help="the ablation file (configs/ablations/*.yaml)")
    parser.add_argument("--out", type=Path, help="output folder; default runs/ablations/<name>")
    parser.add_argument(
        "--devices",
        type=_device_list,
        help="comma-separated CUDA_VISIBLE_DEVICES values, one run at a time on each "
        "(default: every visible GPU when there are several)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    spec = load_spec(args.ablation)
    out = args.out or default_out(spec.name)
    failures = run_grid(spec, out, args.devices, args.dry_run)
    if not args.dry_run:
        for path in write_report(spec, out):
            print(f"wrote {path}")
    if failures:
        print(f"{len(failures)} run(s) failed; rerun the same command to retry them:")
        for failure in failures:
            print(f"  {failure}")
    return 1 if failures else 0


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} report", description="Re-render an ablation's report from its run folders."
    )
    parser.add_argument("out", type=Path, help="the ablation's output folder")
    args = parser.parse_args(argv)
    spec_file = args.out / SPEC_FILE
    if not spec_file.is_file():
        raise AblationError(
            f"{spec_file} not found: {args.out} is not an ablation output folder; run the "
            f"ablation first ({PROG} ABLATION.yaml --out {args.out})"
        )
    for path in write_report(load_spec(spec_file, need_base=False), args.out):
        print(f"wrote {path}")
    return 0


def _compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} compare",
        description="Markdown table of ablation results next to published numbers.",
    )
    parser.add_argument(
        "results", type=Path, nargs="+", help="results.csv files, or ablation output folders"
    )
    parser.add_argument("--output", type=Path, help="write the table here instead of stdout")
    args = parser.parse_args(argv)
    files = [path / RESULTS_FILE if path.is_dir() else path for path in args.results]
    table = render_paper_comparison(files)
    if args.output:
        args.output.write_text(table)
        print(f"wrote {args.output}")
    else:
        print(table)
    return 0


def _device_list(value: str) -> list[str]:
    devices = [device.strip() for device in value.split(",") if device.strip()]
    if not devices:
        raise argparse.ArgumentTypeError("give device ids separated by commas, e.g. 0,1")
    return devices


if __name__ == "__main__":
    sys.exit(main())
