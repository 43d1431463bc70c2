"""Writing a file so that a reader, or a crash, never sees it half-written; reading YAML so that a
key written twice is an error, not a silent last-one-wins."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import yaml

Content = str | bytes | Callable[[BinaryIO], None]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping in a YAML text names the same key twice."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise DuplicateKeyError(
                    None,
                    None,
                    f"key {key!r} appears twice, on lines {first_line[key]} and {line}; "
                    "keep one (YAML would silently use the last)",
                    key_node.start_mark,
                )
            first_line.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def check_unique_keys(text: str) -> None:
    """Raise :class:`DuplicateKeyError` if any mapping in the YAML ``text`` repeats a key. Other
    YAML errors are left to the caller's own parser, which reports them its way."""
    try:
        yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError:
        raise
    except yaml.YAMLError:
        return


def write_atomic(path: str | Path, content: Content) -> Path:
    """Write ``content`` to ``path`` through a private temporary file renamed into place.

    Readers see the old file or the new one, never part of one; a process killed while writing
    leaves the old file intact. The temporary name is unique per writer, so several processes
    (DDP ranks) may write the same path at once; data and rename are fsynced, so the file also
    survives a crash of the machine. ``content`` is text, bytes, or a function that writes into
    the open binary file (``lambda f: torch.save(obj, f)``). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    _remove_orphans(path.parent, prefix)
    descriptor, partial = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{os.getpid()}-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _remove_orphans(folder: Path, prefix: str) -> None:
    """Delete temporary files left by writers that were killed (their process is gone)."""
    for orphan in folder.glob(f"{prefix}*"):
        pid = orphan.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            orphan.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
