"""Command line of the ablation runner.

    python -m convrepro.ablate ABLATION.yaml [--out DIR] [--devices 0,1] [--dry-run]
        [--commit-records [--push]]
    python -m convrepro.ablate ABLATION.yaml --launcher slurm [--partition P --time 4:00:00 ...]
    python -m convrepro.ablate one ABLATION.yaml --arm A --seed 0 [--out DIR]
    python -m convrepro.ablate status ABLATION.yaml|OUT_DIR
    python -m convrepro.ablate sweep ABLATION.yaml [--project P]
    python -m convrepro.ablate report ABLATION.yaml|OUT_DIR [--wandb ENTITY/PROJECT]
    python -m convrepro.ablate compare RESULTS.csv|OUT_DIR [...] [--output FILE]
    python -m convrepro.ablate publish ABLATION.yaml|OUT_DIR [--results results] [--replace]
        [--allow-incomplete]
    python -m convrepro.ablate scrub PUBLISHED_DIR|RECORDS_DIR [--data-dir PATH ...]
    python -m convrepro.ablate readme [--check] [--results results] [--readme README.md]

The first runs (or resumes) every arm x seed here and writes the report into ``--out`` (default
``runs/ablations/<name>``; with ``--commit-records`` it continues from, and commits each finished
point's records to, ``grids/<name>/``: :mod:`~convrepro.ablate.grid_records`), or submits the
unfinished points to SLURM and returns; ``one`` runs a single grid point (what every launcher
runs); ``status`` shows every point's state; ``sweep`` writes a W&B sweep of the grid;
``report`` re-renders the report from the run folders (or from a W&B group) without training;
``compare`` puts results next to published numbers; ``publish`` copies a finished grid's records
(no checkpoints, no machine paths) into ``results/<name>/``; ``scrub`` takes the machine paths
out of records published before, in place; ``readme`` renders the README's results section from
``results/`` (``--check``: fail if the README differs).

Each command imports what it needs when it runs: ``one`` starts once per grid point and should
not wait for the plotting and statistics libraries.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from convrepro.ablate.arguments import (
    PROG,
    add_set_argument,
    add_source_arguments,
    device_list,
    spec_and_out,
)
from convrepro.ablate.slurm_options import add_override_arguments, overrides_from_args
from convrepro.ablate.spec import SPEC_FILE, AblationSpec, default_out, load_spec
from convrepro.errors import AblationError, UserError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "one": _one,
        "status": _status,
        "sweep": _sweep,
        "report": _report,
        "compare": _compare,
        "publish": _publish,
        "scrub": _scrub,
        "readme": _readme,
    }
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
        "results.csv, summary.md and plots; or submit them to SLURM. Other commands: `one`, "
        "`status`, `sweep`, `report`, `compare` (each with --help).",
    )
    parser.add_argument("ablation", type=Path, help="the ablation file (configs/ablations/*.yaml)")
    parser.add_argument("--out", type=Path, help="output folder; default runs/ablations/<name>")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local: run here (default); slurm: submit one job array and return",
    )
    parser.add_argument(
        "--devices",
        type=device_list,
        help="local: comma-separated CUDA_VISIBLE_DEVICES values, one run at a time on each "
        "(default: every visible GPU when there are several)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the configs, print the plan, run nothing"
    )
    parser.add_argument(
        "--commit-records",
        action="store_true",
        help="local: keep the grid's records in grids/<name>/ of this checkout: points "
        "committed there count as done (refused if made by other code, data or settings), and "
        "each point's records (no checkpoints) are committed there as it finishes",
    )
    parser.add_argument(
        "--push",
        action="store_true",
        help="with --commit-records: push the branch to its upstream after each commit",
    )
    add_set_argument(parser)
    add_override_arguments(parser)
    args = parser.parse_args(argv)
    if args.push and not args.commit_records:
        raise AblationError("--push pushes what --commit-records commits: give both, or neither")
    if args.commit_records and args.launcher != "local":
        raise AblationError("--commit-records works with the local launcher (--launcher local)")
    spec = load_spec(args.ablation).with_settings(args.set)
    out = args.out or default_out(spec.name)
    if args.launcher == "slurm":
        return _submit(spec, out, args)
    from convrepro.ablate.local import run_grid

    records = None
    if args.commit_records:
        from convrepro.ablate.grid_records import GridRecords
        from convrepro.runs.scrub import REPOSITORY

        records = GridRecords.open(spec, out, REPOSITORY, push=args.push)
    failures = run_grid(spec, out, args.devices, args.dry_run, records)
    if not args.dry_run:
        _write_report(spec, out)
    if failures:
        print(f"{len(failures)} run(s) failed; rerun the same command to retry them:")
        for failure in failures:
            print(f"  {failure}")
    return 1 if failures else 0


def _submit(spec: AblationSpec, out: Path, args: argparse.Namespace) -> int:
    from convrepro.ablate.slurm import submit_grid

    options = spec.slurm.with_overrides(overrides_from_args(args))
    array = submit_grid(spec, out, options, args.dry_run)
    if array is not None:
        where = f" to partition {options.partition}" if options.partition else ""
        print(
            f"submitted job array {array}{where}\n"
            f"  watch:  {PROG} status {out}   (or squeue -j {array})\n"
            f"  logs:   {out}/runs/{spec.name}/<arm>-seed<N>/log.txt, scheduler logs in "
            f"{out}/slurm/\n"
            f"  report: {PROG} report {out}   (any time; it lists the points still missing)"
        )
    return 0


def _one(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} one",
        description="Run one grid point: fit (resumed from its checkpoint if it has one), then "
        "test --ckpt_path best, in the grid's run folder. Every launcher runs this.",
    )
    parser.add_argument("ablation", type=Path, help="the ablation file")
    parser.add_argument("--arm", required=True, help="the arm")
    parser.add_argument("--seed", required=True, type=int, help="the seed")
    parser.add_argument("--out", type=Path, help="output folder; default runs/ablations/<name>")
    parser.add_argument(
        "--devices-per-node",
        type=int,
        help="processes per node of a multi-process (DDP) run: --trainer.devices",
    )
    parser.add_argument("--num-nodes", type=int, help="nodes of a multi-process run")
    add_set_argument(parser)
    args = parser.parse_args(argv)
    from convrepro.ablate.point import run_point

    spec = load_spec(args.ablation).with_settings(args.set)
    out = args.out or default_out(spec.name)
    launch = []
    if args.devices_per_node is not None:
        launch.append(f"--trainer.devices={args.devices_per_node}")
    if args.num_nodes is not None:
        launch.append(f"--trainer.num_nodes={args.num_nodes}")
    failure = run_point(spec, out, spec.run(args.arm, args.seed), launch)
    return failure.returncode if failure else 0


def _status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} status",
        description="Show every grid point as done, running, queued, preempted/requeued, "
        "interrupted, failed (with its log) or not started. Exit status 1 while any failed.",
    )
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    from convrepro.ablate.status import PointState, grid_status, render_status

    spec, out = spec_and_out(args.source, args.out)
    statuses, problem = grid_status(spec, out)
    print(render_status(spec, statuses, problem))
    return 1 if any(s.state is PointState.FAILED for s in statuses) else 0


def _sweep(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} sweep",
        description="Write a W&B sweep (grid over arm x seed) whose agents run `one`.",
    )
    parser.add_argument("ablation", type=Path, help="the ablation file")
    parser.add_argument(
        "--out", type=Path, help="the points' output folder; default runs/ablations/<name>"
    )
    parser.add_argument("--output", type=Path, help="sweep config file; default <out>/sweep.yaml")
    parser.add_argument("--project", default="convrepro", help="W&B project of the sweep")
    args = parser.parse_args(argv)
    from convrepro.ablate import preflight
    from convrepro.ablate.sweep import SWEEP_FILE, how_to_run, write_sweep

    spec = load_spec(args.ablation)
    out = args.out or default_out(spec.name)
    preflight.parse_every_arm(spec, out)  # the agents' machines have the data, maybe not this one
    path = write_sweep(spec, args.ablation, out, args.output or out / SWEEP_FILE)
    print(how_to_run(spec, args.ablation, path, args.project))
    return 0


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} report",
        description="Re-render an ablation's report (results.csv, summary.md, plots) from its "
        "run folders, or from the runs of its W&B group.",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT",
        help="read the runs of the ablation's W&B group instead (into --out, default "
        "runs/ablations/<name>-wandb)",
    )
    args = parser.parse_args(argv)
    if args.wandb:
        spec = spec_and_out(args.source, None)[0]
        out = args.out or default_out(f"{spec.name}-wandb")
        _copy_wandb_group(spec, args.wandb, out)
    else:
        spec, out = spec_and_out(args.source, args.out)
    _write_report(spec, out)
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
    from convrepro.ablate.report import RESULTS_FILE, render_paper_comparison

    files = [path / RESULTS_FILE if path.is_dir() else path for path in args.results]
    table = render_paper_comparison(files)
    if args.output:
        args.output.write_text(table)
        print(f"wrote {args.output}")
    else:
        print(table)
    return 0


def _publish(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} publish",
        description="Copy an ablation's records (report, and per run config.yaml, "
        "provenance.json, summary.json, history.csv, log.txt; no checkpoints, no W&B files, "
        "no paths of this machine) into RESULTS/<name>/, for committing. Refused when no run "
        "has a result, and when it would replace a published copy holding more.",
    )
    add_source_arguments(parser)
    parser.add_argument("--results", type=Path, default=Path("results"), help="default: results")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace an earlier published copy (never by fewer runs or results); the console "
        "lists what changes",
    )
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="publish although planned runs have no result; the README names each",
    )
    args = parser.parse_args(argv)
    spec, out = spec_and_out(args.source, args.out)
    from convrepro.ablate.publish import publish

    done = publish(
        spec, out, args.results, replace=args.replace, allow_incomplete=args.allow_incomplete
    )
    print(f"published {done.folder}")
    for change in done.changes:
        print(f"  {change}")
    if done.missing:
        print(f"{len(done.missing)} of {len(spec.runs())} planned runs have no result:")
        for run in done.missing:
            print(f"  {run.arm} seed {run.seed}: {run.why}")
    return 0


def _scrub(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} scrub",
        description="Take the paths of the machine they were made on out of records published "
        "before publish did so, in place: a published grid (its report re-rendered) or a "
        "folder of records (benchmarks/results).",
    )
    parser.add_argument("folder", type=Path, help="results/<name>, or benchmarks/results")
    parser.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="PATH",
        help="a data folder the records name (repeatable), to show as <DATA_DIR>; a published "
        "grid's own are read from its provenance",
    )
    args = parser.parse_args(argv)
    from convrepro.ablate.publish import scrub_published
    from convrepro.runs.scrub import MachinePaths, found_in_provenance

    if not args.folder.is_dir():
        raise AblationError(f"{args.folder}/ not found: give a published grid or records folder")
    given = MachinePaths(data=tuple(str(Path(p).absolute()) for p in args.data_dir))
    if (args.folder / SPEC_FILE).is_file():
        changed = scrub_published(args.folder, given)
    else:
        paths = found_in_provenance(args.folder) + given
        changed = paths.scrub_files(sorted(args.folder.rglob("*")))
    print(f"{args.folder}: {len(changed)} file(s) changed")
    return 0


def _readme(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} readme",
        description="Render the README's results section from the published records.",
    )
    parser.add_argument("--results", type=Path, default=Path("results"), help="default: results")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="default: README.md")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if the README differs"
    )
    args = parser.parse_args(argv)
    from convrepro.ablate.readme import update_readme

    current = update_readme(args.readme, args.results, check=args.check)
    if current:
        print(f"{args.readme}: results section up to date")
        return 0
    if args.check:
        print(f"{args.readme}: results section differs from {args.results}/; run {PROG} readme")
        return 1
    print(f"{args.readme}: results section rewritten from {args.results}/")
    return 0


def _write_report(spec: AblationSpec, out: Path) -> None:
    from convrepro.ablate.report import collect_results, write_report
    from convrepro.ablate.results import runs_without_result

    for path in write_report(spec, out):
        print(f"wrote {path}")
    missing = runs_without_result(spec, out, collect_results(spec, out)[0])
    if missing:
        total = len(spec.runs())
        listed = ", ".join(map(str, missing))
        print(f"{len(missing)} of {total} runs have no test result yet: {listed}")


def _copy_wandb_group(spec: AblationSpec, project: str, out: Path) -> None:
    """The runs of the ablation's W&B group as run folders under ``out``, for the report."""
    import wandb

    from convrepro.ablate.wandb_group import download_wandb_group

    try:
        download_wandb_group(project, spec.name, out, baseline=spec.baseline)
    except (ValueError, wandb.errors.Error) as error:
        raise AblationError(f"W&B group {spec.name!r} of {project}: {error}") from error
    (out / SPEC_FILE).write_text(spec.to_yaml())  # the file's arms and seeds: missing ones show


if __name__ == "__main__":
    sys.exit(main())
