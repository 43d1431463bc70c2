"""Where a result came from: ``provenance.json``, one record per command that touched a run.

Every ``fit``, resume, ``validate``, ``test`` and ``predict`` of a run appends an
:class:`Invocation` to its folder's ``provenance.json`` (next to ``config.yaml``; the path is
:attr:`~convrepro.runs.folder.RunFolder.provenance_file`): the exact command line, the code
version, the software and devices it ran on, a fingerprint of the data it read, its start and
end times and how it ended, and, for a resume, the settings it changed. The W&B run gets the same
record in its config (``provenance``). :func:`compare_provenance` tells whether runs (an
ablation's) share one code version and one data set.

The data fingerprint is cheap: the md5 sums of the archive files CIFAR-10/STL-10 read (the sums
torchvision publishes, so ``published`` says whether they are the real data set), or for image
folders the sha256 of the sorted list of files read and their sizes (of their paths and contents
for CIFAR-10 read from class folders, which it decodes whole anyway); plus the split seed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning
import torch
import torchvision
from lightning.pytorch import Trainer
from torchvision.datasets import CIFAR10, STL10

from convrepro.files import write_atomic
from convrepro.runs.folder import RunFolder

_CHUNK = 1 << 20
CHANGED = " (changed during the run)"
UNRECORDED = "no provenance.json"
#: The folder of a checkout where grids keep their committed records (``grids/<name>/``, see
#: :mod:`convrepro.ablate.grid_records`): results, not code, so the code version leaves it out.
GRID_RECORDS = "grids"
_CODE = (".", f":(exclude){GRID_RECORDS}")  # git pathspec: the checkout but its records


def utc_now() -> str:
    """The time now, ISO 8601 in UTC to the second: ``2026-12-01T19:49:02Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CodeVersion:
    """The code a command ran: a git checkout's commit and changes, else the package version.

    Attributes:
        git_commit: The commit of the code in the checkout the package was imported from:
            ``HEAD``, or where grids' records were committed on top of it (they are not code,
            see :data:`GRID_RECORDS`), the newest commit before them that changed the code.
        git_dirty: Whether tracked files differ from ``HEAD`` or untracked files exist
            (outside :data:`GRID_RECORDS`).
        git_diff_sha256: sha256 of ``git diff HEAD --binary`` and of every untracked (not
            ignored) file's name and content, outside :data:`GRID_RECORDS`: equal hashes mean
            equal code.
        package_version: The installed ``convrepro`` distribution's version.
    """

    git_commit: str | None = None
    git_dirty: bool | None = None
    git_diff_sha256: str | None = None
    package_version: str | None = None

    @property
    def label(self) -> str:
        """Short and unique: ``git 1a2b3c4d``, ``git 1a2b3c4d + changes 9f8e7d6c``, ``0.1.0``."""
        if self.git_commit is None:
            return f"convrepro {self.package_version or 'unknown version'}"
        changes = f" + changes {self.git_diff_sha256[:8]}" if self.git_dirty else ""
        return f"git {self.git_commit[:8]}{changes}"


#: The subcommands of an invocation that trains (``resume``: a ``fit`` from a checkpoint).
TRAINING_SUBCOMMANDS = ("fit", "resume")


@dataclass
class Invocation:
    """One command that touched the run.

    Attributes:
        subcommand: ``fit``, ``resume`` (a ``fit`` with ``--ckpt_path``), ``validate``, ``test``
            or ``predict``.
        command: The command line: ``sys.orig_argv``, or for an in-process call
            (``convrepro.cli.main(args)``) the equivalent ``python -m convrepro ...``.
        cwd: The folder it ran in (relative paths in ``command`` start there).
        host: The machine (rank 0's).
        started: When the command started (UTC, ISO 8601).
        ended: When it ended; ``None`` if it is running or was killed.
        outcome: ``finished``, ``stopped by SIGTERM``, ``diverged``, ``lost another process:
            <what happened>`` (a peer of a multi-process run died or hung), ``failed: <error>``.
        checkpoint: The checkpoint it started from (``--ckpt_path``), if any.
        checkpoint_step: That checkpoint's optimiser step: which weights, not only which file
            (``best.ckpt`` is rewritten while a run trains).
        changed_settings: For a resume, the settings it changed: ``{key: [old, new]}``.
        code: :class:`CodeVersion`.
        software: Versions of python, torch, torchvision, lightning, CUDA and cuDNN.
        devices: Accelerator, device names and count, world size, nodes and precision.
        data: What :func:`data_fingerprint` found.
    """

    subcommand: str
    command: list[str]
    cwd: str
    host: str
    started: str
    ended: str | None = None
    outcome: str | None = None
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    changed_settings: dict[str, list[Any]] = field(default_factory=dict)
    code: CodeVersion = field(default_factory=CodeVersion)
    software: dict[str, str | None] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Invocation:
        return cls(**{**values, "code": CodeVersion(**values.get("code", {}))})


def read_provenance(run: RunFolder) -> list[Invocation]:
    """The run's invocations, oldest first; empty if it has no ``provenance.json``."""
    path = run.provenance_file
    if not path.is_file():
        return []
    return [Invocation.from_dict(entry) for entry in json.loads(path.read_text())["invocations"]]


def record_invocation(run: RunFolder, invocation: Invocation) -> dict[str, Any]:
    """Add ``invocation`` to the run's ``provenance.json``, or update its entry there (the same
    command: start time, host and command line), keeping whatever other commands wrote in the
    meantime; returns the file's content."""
    with run.records_lock():
        invocations = read_provenance(run)
        key = _identity(invocation)
        position = next((i for i, x in enumerate(invocations) if _identity(x) == key), None)
        if position is None:
            invocations.append(invocation)
        else:
            invocations[position] = invocation
        return write_provenance(run, invocations)


def _identity(invocation: Invocation) -> tuple[str, str, tuple[str, ...]]:
    return invocation.started, invocation.host, tuple(invocation.command)


def write_provenance(run: RunFolder, invocations: Sequence[Invocation]) -> dict[str, Any]:
    """Write the run's ``provenance.json``; returns its content (for the W&B run config)."""
    content = {"invocations": [asdict(invocation) for invocation in invocations]}
    write_atomic(run.provenance_file, json.dumps(content, indent=2, default=str) + "\n")
    return content


def command_line(args: Sequence[str] | None) -> list[str]:
    """The command that runs the CLI with ``args`` (``None``: this process's own arguments)."""
    if args is None:
        return list(sys.orig_argv)
    return [Path(sys.executable).name, "-m", "convrepro", *args]


def new_invocation(subcommand: str, command: list[str], started: str) -> Invocation:
    """The record of a command that is starting, with what is known before the Trainer runs."""
    return Invocation(
        subcommand=subcommand,
        command=command,
        cwd=os.getcwd(),
        host=socket.gethostname(),
        started=started,
        code=code_version(),
        software=software_versions(),
    )


@functools.cache
def code_version() -> CodeVersion:
    """The version of the ``convrepro`` code imported in this process (looked up once)."""
    try:
        package_version = importlib.metadata.version("convrepro")
    except importlib.metadata.PackageNotFoundError:
        package_version = None
    package = Path(__file__).resolve().parents[1]
    top = _git(package, "rev-parse", "--show-toplevel")
    # An installed package may sit inside someone else's repository: only our own checkout counts.
    if top is None or Path(top.decode().strip()) / "src" / "convrepro" != package:
        return CodeVersion(package_version=package_version)
    return checkout_version(Path(top.decode().strip()), package_version)


def checkout_version(root: Path, package_version: str | None = None) -> CodeVersion:
    """The code of the git checkout at ``root`` (see :class:`CodeVersion`), its records of
    grids left out: a grid that commits them as its points finish keeps one code version."""
    commit = _git(root, "rev-list", "-1", "HEAD", "--", *_CODE) or _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--", *_CODE)
    diff = hashlib.sha256(_git(root, "diff", "HEAD", "--binary", "--", *_CODE) or b"")
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *_CODE) or b""
    for name in sorted(filter(None, untracked.split(b"\0"))):
        if (root / name.decode()).is_file():
            diff.update(name + b"\0" + (root / name.decode()).read_bytes())
    return CodeVersion(
        git_commit=commit.decode().strip() if commit and commit.strip() else None,
        git_dirty=bool(status and status.strip()),
        git_diff_sha256=diff.hexdigest(),
        package_version=package_version,
    )


def _git(folder: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    return done.stdout if done.returncode == 0 else None


def software_versions() -> dict[str, str | None]:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(cudnn) if cudnn is not None else None,
    }


def device_record(trainer: Trainer) -> dict[str, Any]:
    """What the run computes on: rank 0's devices, and how many processes and nodes."""
    if trainer.strategy.root_device.type == "cuda":
        names = [torch.cuda.get_device_name(index) for index in trainer.device_ids]
    else:
        name = f"{trainer.strategy.root_device.type} ({platform.machine()})"
        names = [name] * trainer.num_devices
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "names": names,
        "count": trainer.num_devices,
        "world_size": trainer.world_size,
        "nodes": trainer.num_nodes,
        "precision": str(trainer.precision),
    }


def data_fingerprint(datamodule: Any) -> dict[str, Any]:
    """A fingerprint of the data the datamodule's built splits read (see the module docstring).

    Works on the sources of ``datamodule.splits`` (CIFAR-10, STL-10 or image files); anything
    else is named by its class only, with no fingerprint.
    """
    splits = getattr(datamodule, "splits", {}) or {}
    sources = {id(split.source): split.source for split in splits.values()}.values()
    files: dict[str, str] = {}
    published: bool | None = None  # the archive's md5 sums are torchvision's
    for source in sources:
        archive = _archive_files(source)
        if archive is not None:
            for path, expected in archive:
                files[path.name] = _md5(path)
                published = published is not False and expected in (None, files[path.name])
        elif hasattr(source, "content_sha256"):  # CIFAR-10 from class folders
            files[f"{source.split}/"] = source.content_sha256
            published = False
        elif hasattr(source, "samples"):  # image files: (path, label) pairs
            listing = sorted(
                (os.path.relpath(path, datamodule.data_dir), os.path.getsize(path))
                for path, _ in source.samples
            )
            folder = Path(listing[0][0]).parts[0] if listing else "empty"
            files[f"{folder}/"] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        else:
            return {"datamodule": type(datamodule).__qualname__, "fingerprint": None}
    return {
        "datamodule": type(datamodule).__qualname__,
        "data_dir": str(Path(getattr(datamodule, "data_dir", ".")).resolve()),
        "files": files,
        "published": published,
        "fingerprint": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        "split_seed": getattr(datamodule, "seed", None),
        "val_size": getattr(datamodule, "val_size", None),
    }


def _archive_files(source: Any) -> list[tuple[Path, str | None]] | None:
    """The files a torchvision CIFAR-10/STL-10 data set read, with their published md5 sums."""
    if isinstance(source, CIFAR10):
        entries = [*(source.train_list if source.train else source.test_list)]
        entries.append([source.meta["filename"], source.meta["md5"]])
    elif isinstance(source, STL10):
        entries = [*(source.test_list if source.split == "test" else source.train_list[:2])]
        if source.folds is not None:  # which images a fold holds (torchvision has no md5 of it)
            entries.append([source.folds_list_file, None])
    else:
        return None
    folder = Path(source.root) / source.base_folder
    return [(folder / name, md5) for name, md5 in entries]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def compare_provenance(runs: Sequence[RunFolder]) -> list[str]:
    """Markdown lines saying whether ``runs`` share one code version and one data fingerprint,
    with a table of the runs that differ from the most common ones or have no record. A run that
    read only some of the common files (unfinished: no test yet) agrees with them."""
    code: dict[str, str] = {}
    read: dict[str, set[tuple[str, str]]] = {}
    for run in runs:
        invocations = read_provenance(run)
        labels = list(dict.fromkeys(i.code.label for i in invocations))
        code[run.id] = " then ".join(labels) + (CHANGED if len(labels) > 1 else "") or UNRECORDED
        read[run.id] = _files_read(i.data for i in invocations)
    common_code = _most_common(code)
    if common_code == UNRECORDED:
        return ["## Provenance", "", f"- None of the {len(runs)} runs recorded its provenance."]
    per_file = [pair for pair, _ in Counter(p for f in read.values() for p in f).most_common()]
    common_files: dict[str, str] = {}  # each file's most common checksum
    for name, md5 in per_file:
        common_files.setdefault(name, md5)
    common_data = _files_label(set(common_files.items()))
    data = {
        run: common_data if files and files <= common_files.items() else _files_label(files)
        for run, files in read.items()
    }
    partly = sum(1 for files in read.values() if files and files < common_files.items())
    lines = [
        "## Provenance",
        "",
        _agreement("code version", common_code, code),
        _agreement("data fingerprint", common_data, data, partly),
    ]
    odd = [run.id for run in runs if (code[run.id], data[run.id]) != (common_code, common_data)]
    if odd:
        lines += ["", "| run | code | data |", "| --- | --- | --- |"]
        lines += [
            f"| {run} | {_cell(code[run], common_code)} | {_cell(data[run], common_data)} |"
            for run in odd
        ]
    return lines


def run_data_label(data: Iterable[Mapping[str, Any]]) -> str:
    """A short fingerprint of the files all of one run's commands read, from their records' data.
    Each command reads the splits it needs (fit: train/val, test: test), so a run's data is the
    union; a file read with two checksums changed in between and is marked so."""
    return _files_label(_files_read(data))


def _files_read(data: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    return {(name, md5) for record in data for name, md5 in record.get("files", {}).items()}


def _files_label(read: set[tuple[str, str]]) -> str:
    if not read:
        return UNRECORDED
    changed = len({name for name, _ in read}) < len(read)
    short = hashlib.sha256(json.dumps(sorted(read)).encode()).hexdigest()[:12]
    return short + (CHANGED if changed else "")


def _most_common(labels: dict[str, str]) -> str:
    """The most common recorded label (:data:`UNRECORDED` if there is none)."""
    counts = Counter(label for label in labels.values() if label != UNRECORDED)
    return counts.most_common(1)[0][0] if counts else UNRECORDED


def _agreement(what: str, common: str, labels: dict[str, str], partly: int = 0) -> str:
    same = sum(1 for label in labels.values() if label == common)
    if same == len(labels):
        unfinished = f" ({partly} of them, unfinished, read only some of its files)" * bool(partly)
        return f"- All {len(labels)} runs share one {what}: {common}{unfinished}."
    return f"- Only {same} of {len(labels)} runs share the {what} {common}; the others are below."


def _cell(label: str, common: str) -> str:
    return "same" if label == common else f"**{label}**"
