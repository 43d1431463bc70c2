"""Records that ship with the repository name no path of the machine they were made on.

A run's own folder keeps the full paths (they say where things are on that machine). Its copies
in ``results/`` and the benchmark records in ``benchmarks/results/`` are read on other machines,
where ``/work/gridrun/configs/x.yaml`` means nothing and a home folder should not be shown, so
:class:`MachinePaths` rewrites them:

* a repository checkout (the folder a command ran in) -> relative: ``configs/x.yaml``, ``.``;
* an ablation's output folder -> :data:`OUT`;
* a data folder the user supplies (outside the repository) -> :data:`DATA_DIR`, the placeholder
  the README's Redo line explains;
* anything under a Python installation -> ``<site-packages>/lightning/...``;
* any other absolute path -> :data:`ELSEWHERE` and its last part (``<machine>/best.ckpt``).

:func:`found_in_provenance` reads the first three from the ``provenance.json`` files of a folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = "<DATA_DIR>"
OUT = "<out>"
SITE_PACKAGES = "<site-packages>"
ELSEWHERE = "<machine>"
#: Files of records: text, rewritten in place. (Plots and checkpoints hold no paths.)
TEXT_SUFFIXES = (".json", ".md", ".csv", ".txt", ".yaml", ".yml")
_PACKAGE = Path(__file__).resolve().parents[1]
#: This checkout (src/convrepro -> the repository root); ``None`` for an installed package.
REPOSITORY = _PACKAGE.parents[1] if _PACKAGE.parent.name == "src" else None

# A path ends where a character that cannot be part of a name follows; "cifar10." at the end of
# a sentence ends before the full stop.
_END = r"(/|(?![\w+~@-]|\.\w))"
# An absolute path starts a token: not after a word character, a slash (URLs: https://x/y) or a
# placeholder's '>' (<out>/runs/...).
_ABSOLUTE = re.compile(r"(?<![\w.:/<>+~@-])/[\w.+~@-]+(?:/[\w.+~@-]+)+/?")
_SITE = re.compile(r"(?<![\w.:/<>+~@-])(?:/[\w.+~@-]+)*?/(?:site|dist)-packages/")


@dataclass(frozen=True)
class MachinePaths:
    """Paths of the machine a record was made on, and what each becomes."""

    repositories: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    data: tuple[str, ...] = ()

    def __add__(self, other: MachinePaths) -> MachinePaths:
        return MachinePaths(
            self.repositories + other.repositories,
            self.outputs + other.outputs,
            self.data + other.data,
        )

    def scrub(self, text: str) -> str:
        """``text`` with every machine path replaced (see the module docstring)."""
        repositories = _absolute(self.repositories)
        replacements = [(path, "") for path in repositories]
        replacements += [(path, OUT) for path in _absolute(self.outputs)]
        # A data folder inside the repository (data/cifar10) is a relative path on any clone.
        replacements += [
            (path, DATA_DIR)
            for path in _absolute(self.data)
            if not any(_under(path, repository) for repository in repositories)
        ]
        # Longest first: an output folder inside a checkout is the output folder.
        for path, replacement in sorted(replacements, key=lambda pair: -len(pair[0])):
            text = re.compile(re.escape(path) + _END).sub(_replace_with(replacement), text)
        text = _SITE.sub(f"{SITE_PACKAGES}/", text)
        return _ABSOLUTE.sub(lambda match: f"{ELSEWHERE}/{Path(match[0]).name}", text)

    def scrub_files(self, paths: Iterable[Path]) -> list[Path]:
        """Rewrite each text file among ``paths`` in place; returns those that changed."""
        changed = []
        for path in paths:
            if path.suffix not in TEXT_SUFFIXES or not path.is_file():
                continue
            text = path.read_text()
            scrubbed = self.scrub(text)
            if scrubbed != text:
                path.write_text(scrubbed)
                changed.append(path)
        return changed


def found_in_provenance(folder: Path) -> MachinePaths:
    """The checkouts commands ran in, the ablation output folders (``--run.root``'s parent) and
    the data folders recorded in the ``provenance.json`` files under ``folder``."""
    repositories, outputs, data = [REPOSITORY.as_posix()] if REPOSITORY else [], [], []
    for path in sorted(folder.rglob("provenance.json")):
        for invocation in json.loads(path.read_text()).get("invocations", []):
            repositories.append(invocation.get("cwd") or "")
            data.append((invocation.get("data") or {}).get("data_dir") or "")
            for argument in invocation.get("command", []):
                key, _, value = argument.partition("=")
                if key == "--run.root":
                    outputs.append(Path(value).parent.as_posix())
                elif key == "--data.init_args.data_dir":
                    data.append(value)
    return MachinePaths(tuple(repositories), tuple(outputs), tuple(data))


def _absolute(paths: Iterable[str]) -> list[str]:
    """The distinct absolute paths among ``paths``, without a trailing slash ("/" left out)."""
    return sorted({p.rstrip("/") for p in paths if p.startswith("/") and p.rstrip("/")})


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _replace_with(replacement: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        slash = match[1]
        if replacement:  # a placeholder keeps what follows: <out>/runs/...
            return replacement + slash
        return "" if slash else "."  # a checkout: configs/x.yaml, and "." for itself

    return replace


def machine_paths_in(text: str) -> list[str]:
    """The absolute paths left in ``text`` (what :meth:`MachinePaths.scrub` would replace)."""
    return _ABSOLUTE.findall(text)
